"""Memory known before it is spent: what a run will take, against what the machine has.

A setting or an input that cannot fit (a block of 200,001 positions because
one item is that long, ``--n-hidden 100000000``) should be one line before
anything is allocated or written, not a ``MemoryError`` traceback half-way
through a run. ``estimate`` adds up the parts of a neural run from its
settings alone, before the model is built:

* the parameters, float32, kept five times over: the weights, their
  gradients, AdamW's two moments, and a copy for checkpoints or ``--keep best``;
* the activations a training batch keeps for its backward pass, per
  position, by model family (a Transformer's attention adds n_heads * T
  numbers per position and layer, which is what makes a long block costly);
* one evaluation chunk, forward only;
* the data: a lines run's example arrays (int64, one row per item or
  window), a text run's token array and batch windows.

The figures are deliberately generous (a factor for the temporaries numpy
and PyTorch make); ``check`` refuses a run only when the estimate exceeds
what the machine has available, and names the largest part.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from tinylm.errors import ConfigError

FLOAT = 4  # bytes of a float32
# numpy and PyTorch make temporaries beside what a layer keeps: an allowance for them
TEMPORARIES = 2


def available_bytes() -> int:
    """Memory this process may still take: MemAvailable, or a cgroup limit if lower."""
    best = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    best = int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        with open("/sys/fs/cgroup/memory.max") as f:
            limit = f.read().strip()
        if limit.isdigit():
            best = min(best or int(limit), int(limit))
    except OSError:
        pass
    if best is None:
        best = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return best


def parameters(config) -> int:
    """The number of trainable numbers of the model ``config`` (a ModelConfig) describes."""
    V, C, H, N = config.vocab_size, config.n_embd, config.n_hidden, config.n_layers
    if config.model == "bigram":
        return V * V
    if config.model == "transformer":
        T = config.block_size
        return V * C + T * C + N * (12 * C * C + 13 * C) + 2 * C + C * V
    if config.model in ("rnn", "gru"):
        H2, gates = config.n_embd2, 3 if config.model == "gru" else 1
        return V * C + gates * ((C + H2) * H2 + H2) + H2 * V + V + H2
    # the fixed-window nets: an embedding, hidden layers, a read-out (wavenet's are narrower)
    return V * C + config.context * C * H + max(0, N - 1) * (H * H + 2 * H) + 2 * H + H * V + V


def per_position(config, backward: bool) -> int:
    """Floats a position keeps in a forward pass (and its backward, doubling it)."""
    V, C = config.vocab_size, config.n_embd
    if config.model == "transformer":
        T, N = config.block_size, config.n_layers
        floats = N * (30 * C + 3 * config.n_heads * T) + 4 * V
    elif config.model in ("rnn", "gru"):
        floats = C + 12 * config.n_embd2 + 4 * V
    else:
        floats = config.context * C + 6 * config.n_hidden * max(1, config.n_layers) + 4 * V
    return floats * (2 if backward else 1)


@dataclass(frozen=True)
class Estimate:
    """The parts of a run's memory, in bytes, by name."""

    parts: dict[str, int]

    @property
    def total(self) -> int:
        return sum(self.parts.values())

    def largest(self) -> tuple[str, int]:
        return max(self.parts.items(), key=lambda kv: kv[1])


def estimate(config, batch_size: int, positions: int, eval_positions: int,
             data_bytes: int) -> Estimate:
    """The memory of training ``config`` (a ModelConfig): a batch of ``batch_size`` rows of
    ``positions`` positions each, an evaluation chunk of ``eval_positions`` positions, and
    ``data_bytes`` of data arrays."""
    return Estimate({
        "the parameters, gradients and optimizer state": 5 * FLOAT * parameters(config),
        "the activations of a training batch":
            TEMPORARIES * FLOAT * batch_size * positions * per_position(config, backward=True),
        "an evaluation chunk": TEMPORARIES * FLOAT * eval_positions * per_position(config, False),
        "the data": data_bytes,
    })


def gib(n: int) -> str:
    return f"{n / 2**30:.1f} GiB"


def check(estimated: Estimate, advice: str = "", available: int | None = None) -> None:
    """``ConfigError`` naming the largest part if ``estimated`` exceeds the memory available."""
    available = available_bytes() if available is None else available
    if estimated.total <= available:
        return
    name, size = estimated.largest()
    raise ConfigError(f"this run needs about {gib(estimated.total)} of memory ({name}: "
                      f"{gib(size)}), but {gib(available)} are available"
                      + (f"; {advice}" if advice else ""))
