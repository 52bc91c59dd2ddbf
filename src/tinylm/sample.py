"""Sampling from a trained model with coin flips from the portable RNG.

The next token is chosen the way a C port would choose it: turn the logits
into probabilities (softmax in float64, after dividing by the temperature and
keeping only the top k), draw one coin ``rng.random()`` in [0, 1), and take
the first index whose running sum of probabilities exceeds the coin (the
last index if rounding leaves none). One coin per token, nothing else drawn,
so every backend of a model samples the same text from the same seed.

Generation works on a tape of token ids. ``sample_tokens`` continues a tape
for a fixed number of tokens (the classic ``sample.txt``); ``sample_items``
produces whole items, each ending at the end-of-text token. For a model
trained on independent words the tape restarts from end-of-text padding for
every item (a sequence model, which reads a growing prefix up to its block
size, from one end-of-text token); a model trained on the continuous
stream keeps one tape, so each item sees the end of the previous one as it
did in training.

A sequence model reads the tape through a ``Cache`` (``cache=True``, the
default): each new token costs one position's work, the Transformer
attending to the keys and values it kept and a recurrent net stepping on
from its last state, instead of a forward pass over the whole prefix. The
logits are those of the whole prefix up to float32 rounding (about 1e-6),
so the tokens are the same unless a coin falls within that of a boundary
between two tokens (200 tokens are tested on every backend). Once a tape outgrows the block size the window slides, every
position moves, and each token is a forward pass over the window again.
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Sequence

import numpy as np

from tinylm.data import EOT, Tokenizer
from tinylm.errors import ConfigError
from tinylm.layers.base import Cache
from tinylm.rng import RNG

# An item that never reaches end-of-text is cut here rather than run forever.
MAX_ITEM_TOKENS = 256


def probabilities(logits: np.ndarray, temperature: float = 1.0, top_k: int | None = None) -> np.ndarray:
    """Softmax of one row of logits in float64, after temperature and top-k."""
    if not temperature > 0:
        raise ConfigError(f"temperature must be positive, got {temperature}")
    # This runs once a sampled token, and every numpy call costs a microsecond or more, several
    # once a network has run between two tokens: a float64 copy worked on in place, and the
    # reductions as the ufunc methods that z.max() and z.sum() wrap in Python (the same sums).
    z = np.array(logits, dtype=np.float64).reshape(-1)  # (vocab_size,)
    # Shift before dividing: every value is then <= 0 and the largest exactly 0, so a
    # tiny temperature sends the others to -inf (greedy in the limit) instead of
    # overflowing to inf and making the probabilities nan. Dividing by 1 changes nothing.
    z -= np.maximum.reduce(z)
    if temperature != 1.0:
        with np.errstate(over="ignore"):
            z /= temperature
    if top_k is not None and top_k < len(z):
        if top_k <= 0:
            raise ConfigError(f"top-k must be positive, got {top_k}")
        kth = np.partition(z, -top_k)[-top_k]  # the k-th largest, without sorting them all
        z[z < kth] = -np.inf
    np.exp(z, out=z)
    z /= np.add.reduce(z)
    return z


def pick(probs: np.ndarray, coin: float) -> int:
    """The first index whose running sum of ``probs`` exceeds ``coin``."""
    cdf = np.add.accumulate(probs)  # np.cumsum, without its Python wrapper (see probabilities)
    i = int(cdf.searchsorted(coin, side="right"))
    if i < len(probs):
        return i
    # rounding left the total at or below the coin: the last token that can occur
    return int(np.flatnonzero(probs)[-1])


@contextlib.contextmanager
def eval_mode(model) -> Iterator[None]:
    """Run with the model in eval mode and its inference mode (no autograd for torch),
    then restore."""
    was_training = model.training
    model.eval()
    try:
        with model.inference_mode():
            yield
    finally:
        if was_training:
            model.train()


class Reader:
    """Reads a growing tape into a model and gives the logits of the token after it.

    A fixed-window model reads exactly its context. A sequence model reads up
    to its block size, its prediction the one at the last position; with
    ``cache`` it is fed only the tokens it has not read yet. Call ``reset()``
    when the tape starts over.
    """

    def __init__(self, model, cache: bool = True) -> None:
        self.model = model
        self.cached = cache and model.per_position
        self.reset()

    def reset(self) -> None:
        self.cache = Cache() if self.cached else None
        self.read = 0  # tokens of the tape the cache holds

    def logits(self, tape: list[int]) -> np.ndarray:
        model = self.model
        if self.cache is not None and len(tape) <= model.context:
            idx = np.array([tape[self.read:]], dtype=np.int64)  # (1, new tokens)
            logits, _ = model.forward(idx, cache=self.cache)
            self.read = len(tape)
            return model.to_numpy(logits)[0, -1]
        self.cache = None  # the window slides from here on: nothing kept still holds
        idx = np.array([tape[max(0, len(tape) - model.context):]], dtype=np.int64)  # (1, T)
        logits, _ = model.forward(idx)
        logits = model.to_numpy(logits)
        return logits[0, -1] if model.per_position else logits[0]


def next_token(model, tape: list[int], rng: RNG, temperature: float = 1.0,
               top_k: int | None = None, reader: Reader | None = None) -> int:
    """Sample the token that follows ``tape`` (the model reads its last ``context`` ids),
    through ``reader`` if given (which then must have read this tape's beginning)."""
    reader = reader or Reader(model, cache=False)
    probs = probabilities(reader.logits(tape), temperature, top_k)
    return pick(probs, rng.random())


def sample_tokens(model, tokenizer: Tokenizer, prompt: str, n: int, rng: RNG,
                  temperature: float = 1.0, top_k: int | None = None,
                  cache: bool = True) -> str:
    """The prompt followed by ``n`` sampled tokens (the tape is never reset).

    The prompt is padded on the left with end-of-text tokens if it is shorter
    than the model's context. The text is the prompt's tokens and the sampled ones decoded
    together, so that a character whose bytes two tokens share (a BPE's) reads whole.
    """
    prompt_ids = tokenizer.encode(prompt)
    tape = _start_tape(model, tokenizer) + prompt_ids
    out = []
    reader = Reader(model, cache)
    with eval_mode(model):
        for _ in range(n):
            token = next_token(model, tape, rng, temperature, top_k, reader)
            tape.append(token)
            out.append(token)
    return tokenizer.decode(prompt_ids + out)


def sample_items(model, tokenizer: Tokenizer, n: int, rng: RNG, *, prompt: str = "",
                 temperature: float = 1.0, top_k: int | None = None,
                 continuous: bool = False, cache: bool = True) -> list[str]:
    """``n`` items, each the prompt plus tokens sampled up to end-of-text.

    ``continuous`` keeps one tape across items (for models trained on the
    stream loader); otherwise every item starts from end-of-text padding.
    """
    prompt_ids = _item_prompt(tokenizer, prompt)
    items = []
    tape = _start_tape(model, tokenizer)
    reader = Reader(model, cache)
    with eval_mode(model):
        for _ in range(n):
            if not continuous:
                tape = _start_tape(model, tokenizer)
                reader.reset()
            tape.extend(prompt_ids)
            chars = []
            for _ in range(MAX_ITEM_TOKENS):
                token = next_token(model, tape, rng, temperature, top_k, reader)
                tape.append(token)
                if token == tokenizer.eot:
                    break
                chars.append(token)
            else:
                tape.append(tokenizer.eot)
            items.append(tokenizer.decode(prompt_ids + chars))
    return items


def next_probabilities(model, tokenizer: Tokenizer, prompt: str = "", temperature: float = 1.0,
                       top_k: int | None = None) -> np.ndarray:
    """The probabilities of the token after ``prompt`` at the start of an item: what
    ``sample_items`` draws its first character from (float64, summing to 1)."""
    tape = _start_tape(model, tokenizer) + _item_prompt(tokenizer, prompt)
    with eval_mode(model):
        return probabilities(Reader(model, cache=False).logits(tape), temperature, top_k)


def _item_prompt(tokenizer: Tokenizer, prompt: str) -> list[int]:
    """The ids of an item's prompt, which cannot hold the newline that ends items."""
    if EOT in prompt:
        raise ConfigError("the prompt of an item cannot contain a newline")
    return tokenizer.encode(prompt)


def _start_tape(model, tokenizer: Tokenizer) -> list[int]:
    # a sequence model's items begin with one end-of-text token, as its training rows do
    if model.per_position:
        return [tokenizer.eot]
    return [tokenizer.eot] * max(1, model.context)


def mark_known(items: Sequence[str], known: Sequence[str]) -> list[tuple[str, bool]]:
    """Each item with True if it occurs in ``known`` (the training lines)."""
    seen = set(known)
    return [(item, item in seen) for item in items]
