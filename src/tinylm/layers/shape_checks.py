"""Input checks shared by every backend's BatchNorm1d, FlattenConsecutive, attention and
sequence models.

Kept in one place so that the numpy, PyTorch and scalar-engine layers
refuse the same inputs with the same message.
"""

from __future__ import annotations

from typing import Sequence

from tinylm.errors import ConfigError


def check_group(n: int) -> int:
    """``FlattenConsecutive(n)`` needs a whole number n >= 1."""
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ConfigError(f"FlattenConsecutive needs a whole number n >= 1, got {n!r}")
    return n


def check_flatten_input(shape: Sequence[int], n: int) -> tuple[int, int, int]:
    """(B, T, C) of a FlattenConsecutive input; T must be divisible by n."""
    if len(shape) != 3:
        raise ConfigError(
            f"FlattenConsecutive({n}) takes (B, T, C) input, got shape {tuple(shape)}: "
            "the time axis is already gone (is the context shorter than the stack of levels?)")
    B, T, C = shape
    if T % n != 0:
        raise ConfigError(
            f"FlattenConsecutive({n}) cannot group a time axis of {T} positions in {n}s: "
            f"the context must be divisible by {n} at every level")
    return B, T, C


def check_batch_norm_examples(n: int) -> int:
    """Training-mode BatchNorm needs two examples per channel to have a variance."""
    if n < 2:
        raise ConfigError(
            f"BatchNorm1d in training mode needs at least 2 examples per channel, got {n}; "
            "use a larger batch or put the model in eval mode")
    return n


def check_heads(n_embd: int, n_head: int) -> None:
    """Attention splits the ``n_embd`` channels evenly between ``n_head`` heads."""
    if n_head < 1 or n_embd % n_head:
        raise ConfigError(f"n_embd {n_embd} is not a multiple of n_head {n_head}: attention "
                          "splits the channels evenly between its heads")


def check_block(shape: Sequence[int], block_size: int, past: int = 0) -> int:
    """A sequence model reads (B, T) token ids with 1 <= T <= its block size (less the
    ``past`` positions a cache already holds); returns T."""
    if len(shape) != 2 or not 1 <= shape[1] <= block_size - past:
        after = f" after the {past} a cache holds" if past else ""
        raise ConfigError(f"a sequence model of block size {block_size} reads (B, T) token ids "
                          f"with 1 <= T <= {block_size - past}{after}, got shape {tuple(shape)}")
    return shape[1]


RECURRENT_CELLS = ("rnn", "gru")


def check_cell(cell: str) -> str:
    """A recurrent language model's cell: "rnn" (tanh) or "gru"."""
    if cell not in RECURRENT_CELLS:
        raise ConfigError(f"unknown recurrent cell {cell!r}; choose one of "
                          f"{', '.join(RECURRENT_CELLS)}")
    return cell
