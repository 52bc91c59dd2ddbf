"""Training batches and evaluation passes over a split, for both loaders.

``words`` split: the examples of ``data.word_examples``. A training batch is
``batch_size`` examples drawn uniformly with replacement with the run's RNG
(index = floor(random() * N), vectorised with ``RNG.random_array``, which
yields the very same numbers). Evaluation is the exact mean over every
example of the split.

``stream`` split: every window of ``context + 1`` tokens over the joined text.
Batches are *consecutive* windows: window starts 0, 1, 2, ..., wrapping to 0
when start + context reaches the length of the stream, and a batch takes the
next ``batch_size`` starts. Evaluation is a fresh pass of such batches from
start 0: ``len(tokens) // batch_size`` batches (fewer if limited), the mean of
the batch means. This is the protocol of the classic reference figures.

A batch size of 0 means the full split in every batch (full-batch gradient
descent, as the neural bigram uses).

A sequence model's split (``per_position``: rows of ``block_size`` tokens
with a target at every position, ``data.make_sequences``) draws its batches
uniformly from its rows for either loader (consecutive stream windows would
overlap in all but one token), and its evaluation is the exact mean over
every target that is not IGNORE.

A document (``--format text``) is a ``tinylm.text.TextSplit``: a batch draws
``batch_size`` example starts uniformly with the run's RNG, as the words
loader does, and gathers their windows from the token array when drawn.
Its evaluation is ``tinylm.train.measure`` over ``tinylm.text.units``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator, Sequence

import numpy as np

from tinylm.data import IGNORE, Items, Tokenizer, examples_of, sequences_of
from tinylm.errors import DataError
from tinylm.rng import RNG
from tinylm.text import DEFAULT_BLOCK, TextSplit

if TYPE_CHECKING:  # the settings of a model, not its registry: batching needs no model
    from tinylm.models import ModelConfig

# Forward passes of the exact evaluation use chunks of this many examples:
# large enough to amortise the per-call cost, small enough to bound memory.
EVAL_CHUNK = 4096
# ... and at most this many positions, for sequence models of long blocks
EVAL_POSITIONS = 65536
# ... and at most this many pairs of positions (attention keeps a score for each pair, per head
# and layer: 840 rows of a 78-position block took 2.3 GB at 65,536 positions); the bundled
# names' block of 16 still takes 4,096 rows a chunk
EVAL_PAIRS = 4096 * 16 * 16


@dataclass(frozen=True)
class Split:
    """One split of the data as examples: ``X`` (N, context), ``Y`` (N,)."""

    name: str
    loader: str
    X: np.ndarray
    Y: np.ndarray
    n_tokens: int  # length of the token stream (stream loader) or number of tokens incl. EOTs
    # the items' tokens (each end included) over their characters (each line end included):
    # what turns nats per token into bits per character (tinylm.text.bits); 1 for characters
    tokens_per_char: float = 1.0

    def __len__(self) -> int:
        return len(self.Y)

    @property
    def per_position(self) -> bool:
        """Rows of a sequence model: a target at every position (Y is (N, T))."""
        return self.Y.ndim == 2


def make_split(
    name: str, lines: Sequence[str], tokenizer: Tokenizer, context: int, loader: str,
    block_size: int | None = None,
) -> Split:
    """The examples of ``lines`` for ``loader``; ``DataError`` naming the split if there are none.

    With ``block_size``, the rows of a sequence model (``data.make_sequences``):
    Y is (N, block_size) and ``n_tokens`` counts the targets that are scored.
    """
    return items_split(name, Items(lines, tokenizer), context, loader, block_size)


def items_split(name: str, items: Items, context: int, loader: str,
                block_size: int | None = None) -> Split:
    """``make_split`` of items that may be encoded already (``data.Items``)."""
    try:
        if block_size is None:
            X, Y = examples_of(items, context, loader)
        else:
            X, Y = sequences_of(items, block_size, loader)
    except DataError as e:
        raise DataError(f"the {name} split: {e}") from None
    if len(Y) == 0:
        raise DataError(f"the {name} split has no examples")
    if block_size is not None:
        n_tokens = int((Y != IGNORE).sum())
    else:
        # stream: one window per start position, len(tokens) - context of them
        n_tokens = len(Y) + context if loader == "stream" else len(Y)
    return Split(name, loader, X, Y, n_tokens, items.tokens_per_char)


def split_for(name: str, items: Items, config: ModelConfig, loader: str) -> Split:
    """``items_split`` for the model of ``config``: its context, or its block of positions."""
    block = config.block_size if config.per_position else None
    return items_split(name, items, config.context, loader, block)


def text_split_for(name: str, tokens: np.ndarray, config: ModelConfig, pad: int = 0,
                   characters: int | None = None) -> TextSplit:
    """The ``TextSplit`` of a document's split for the model of ``config``: ``pad`` the end
    token, ``characters`` those the tokens stand for (None: a token is a character)."""
    if len(tokens) == 0:
        raise DataError(f"the {name} split is empty")
    if not config.per_position:
        return TextSplit(name, tokens, config.context, pad=pad, characters=characters)
    block = config.block_size or DEFAULT_BLOCK
    if name == "train" and len(tokens) < block:
        raise DataError(f"the train split has {len(tokens):,} tokens, fewer than a block of "
                        f"{block}; give a smaller --block-size or a longer text")
    return TextSplit(name, tokens, config.context, block, pad, characters=characters)


class Batches:
    """The training batches of one split; ``position`` is all the state besides the RNG.

    A batch is a view of the split where the windows are consecutive, and
    otherwise gathered into arrays made once: a step allocates no batch.
    The arrays are overwritten by the next call, which a training step,
    done with its batch by then, never notices.
    """

    def __init__(self, split: Split, batch_size: int, rng: RNG, position: int = 0) -> None:
        self.split = split
        self.batch_size = batch_size
        self.rng = rng
        self.position = position
        B = batch_size
        if isinstance(split, TextSplit):
            if B == 0:  # the whole split in every batch: gathered once
                self._all = split.examples(np.arange(len(split)))
            self._X = np.empty((B, split.width), dtype=np.int64)
            self._Y = np.empty((B, split.block_size) if split.per_position else (B,), np.int64)
            return
        self._X = np.empty((B,) + split.X.shape[1:], dtype=split.X.dtype)
        self._Y = np.empty((B,) + split.Y.shape[1:], dtype=split.Y.dtype)

    def next(self) -> tuple[np.ndarray, np.ndarray]:
        split, B = self.split, self.batch_size
        if isinstance(split, TextSplit):
            if B == 0:
                return self._all
            starts = (self.rng.random_array(B) * len(split)).astype(np.int64)
            return split.examples(starts, self._X, self._Y)
        if B == 0:
            return split.X, split.Y
        if split.loader == "stream" and not split.per_position:
            start = self.position
            self.position = int((start + B) % len(split))
            if start + B <= len(split):
                return split.X[start:start + B], split.Y[start:start + B]
            starts = (start + np.arange(B)) % len(split)  # the batch that wraps around
        else:
            # the same numbers as int(rng.random() * N) one example at a time
            starts = (self.rng.random_array(B) * len(split)).astype(np.int64)
        np.take(split.X, starts, axis=0, out=self._X)
        np.take(split.Y, starts, axis=0, out=self._Y)
        return self._X, self._Y


def eval_rows(T: int) -> int:
    """Rows of ``T`` positions an evaluation chunk of a lines split holds (the bounds above)."""
    return max(1, min(EVAL_CHUNK, EVAL_POSITIONS // T, EVAL_PAIRS // (T * T)))


def eval_batches(
    split: Split, batch_size: int, max_batches: int | None = None
) -> Iterator[tuple[np.ndarray, np.ndarray, int]]:
    """(X, Y, weight) chunks of an evaluation pass; the loss is sum(w * mean) / sum(w).

    stream: a fresh pass of consecutive batches, each weighted 1 (mean of
    batch means). words: the split in order, each chunk weighted by its size
    (the exact mean over examples); ``max_batches`` limits it to the first
    ``max_batches * batch_size`` examples.
    """
    if split.loader == "stream" and batch_size > 0 and not split.per_position:
        n_batches = max(1, split.n_tokens // batch_size)
        if max_batches is not None:
            n_batches = min(n_batches, max_batches)
        for b in range(n_batches):
            lo = b * batch_size
            if lo + batch_size <= len(split):
                yield split.X[lo:lo + batch_size], split.Y[lo:lo + batch_size], 1
            else:  # a pass longer than the windows wraps to the start
                starts = (lo + np.arange(batch_size)) % len(split)
                yield split.X[starts], split.Y[starts], 1
        return
    n = len(split)
    if max_batches is not None and batch_size > 0:
        n = min(n, max_batches * batch_size)
    rows = eval_rows(split.Y.shape[1] if split.per_position else 1)
    for lo in range(0, n, rows):
        hi = min(n, lo + rows)
        X, Y = split.X[lo:hi], split.Y[lo:hi]
        if not split.per_position:
            yield X, Y, hi - lo
            continue
        scored = Y != IGNORE
        # a block set by one long item leaves most positions padding: where a chunk's items
        # all end within half the block, its positions past them are cut (a prediction reads
        # only what comes before it, so theirs are the same; the bundled names never are)
        used = int(np.flatnonzero(scored.any(axis=0)).max(initial=0)) + 1
        if used <= Y.shape[1] // 2:
            X, Y, scored = X[:, :used], Y[:, :used], scored[:, :used]
        # rows of a sequence model weigh what they score: their targets that are not IGNORE
        yield X, Y, int(scored.sum())
