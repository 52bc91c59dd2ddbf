"""Count-based n-gram language models: additive and interpolated Kneser-Ney smoothing.

An order-n model predicts the next token from the previous n - 1 by counting
how often each continuation followed that context in the training data
(Jurafsky & Martin, "Speech and Language Processing", ch. 3). The bigram is
n = 2; the unigram (n = 1) ignores the context altogether.

Counts are stored sparsely: only the (context, next token) pairs that occurred
in training, with their counts, never a row of ``vocab_size`` counts per
context, so a table costs what the text holds, not contexts x vocabulary (a
5,001-character alphabet would take gigabytes of zeros). An unseen context
gets the uniform distribution under additive smoothing, and the lower-order
estimate under Kneser-Ney.

Both smoothings compute P(w | h) from three looked-up numbers per table: the
count c(h, w), the context's total c(h) and its number of distinct
continuations. ``probs`` gathers them for every w (the sampler needs whole
rows); ``nll`` gathers them for the target alone, so evaluating costs a few
lookups per example instead of a row of V probabilities. Both go through the
same formulas (``NgramModel.smooth``), so they cannot disagree.

Counting goes through the distinct n-grams, each read as one int64 key (its
tokens the digits of a base-V number) with its count; every table, Kneser-Ney's
continuation counts included, is built from them. ``fit`` finds them in
(context, target) arrays, ``fit_stream`` in one token stream a chunk at a
time, so a text of 100 MB is counted in memory bounded by the chunk and its
distinct n-grams; ``nll_stream``, ``grid_search_stream`` and
``bigram_counts_stream`` read a stream the same way, and give the same
numbers, to the last bit, as their counterparts on the materialised windows.

Like every tinylm model, ``NgramModel.forward(idx, targets=None)`` returns
``(logits, loss)``; here the logits are log-probabilities, so the softmax the
shared sampler applies gives back the model's distribution.
"""

from __future__ import annotations

import contextlib

import math
from dataclasses import asdict, dataclass, field

import numpy as np

from tinylm import settings
from tinylm.errors import ConfigError
from tinylm.settings import POSITIVE_FLOAT, POSITIVE_INT, choice, optional, setting

METHODS = ("additive", "kneser-ney")
SMOOTHINGS = (0.01, 0.03, 0.1, 0.3, 1.0)
ORDERS = (1, 2, 3, 4, 5, 6)


@dataclass(frozen=True)
class NgramSettings(settings.Settings):
    """What ``tinylm train --model ngram`` searches (see tinylm.settings for how fields are flags).

    An axis left at None is searched on the validation split: orders
    ``ORDERS``, smoothings ``SMOOTHINGS``. Kneser-Ney has no smoothing knob.
    """

    order: int | None = setting(
        None, "n of the n-gram: predict from the previous n-1 characters (default: search "
        f"{ORDERS[0]}..{ORDERS[-1]} on the validation split)",
        optional(POSITIVE_INT, "a positive whole number"), models="ngram")
    smoothing: float | None = setting(
        None, "additive smoothing, a fake count added to every continuation (default: search "
        f"{', '.join(map(str, SMOOTHINGS))})", optional(POSITIVE_FLOAT, "a positive finite number"),
        models="ngram")
    method: str = setting("additive", "additive smoothing, or interpolated Kneser-Ney",
                          choice(METHODS), models="ngram")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.method == "kneser-ney" and self.smoothing is not None:
            raise ConfigError("--smoothing applies to additive smoothing only; "
                              "Kneser-Ney estimates its discounts")

    @property
    def orders(self) -> tuple[int, ...]:
        return ORDERS if self.order is None else (self.order,)

    @property
    def smoothings(self) -> tuple[float, ...]:
        return SMOOTHINGS if self.smoothing is None else (self.smoothing,)


@dataclass(frozen=True)
class NgramConfig:
    order: int
    vocab_size: int
    method: str = "additive"
    smoothing: float = 0.1  # the fake count added to every continuation (additive only)

    def __post_init__(self) -> None:
        if not isinstance(self.order, int) or self.order < 1:
            raise ConfigError(f"--order must be a whole number >= 1, got {self.order!r}")
        if self.method not in METHODS:
            raise ConfigError(f"unknown smoothing method {self.method!r}; choose one of {', '.join(METHODS)}")
        if self.method == "additive" and not (self.smoothing > 0 and math.isfinite(self.smoothing)):
            raise ConfigError(
                f"--smoothing must be a positive number for additive smoothing, got {self.smoothing!r} "
                "(0 gives unseen continuations probability 0 and an infinite loss)"
            )
        if self.vocab_size < 1:
            raise ConfigError(f"vocab_size must be >= 1, got {self.vocab_size}")
        # an n-gram is counted as one int64 key, its tokens the digits of a base-V number;
        # order >= 63 is refused before V ** order is computed (it is too many for any V >= 2)
        if self.vocab_size > 1 and (self.order >= 63 or self.vocab_size**self.order >= 2**63):
            raise ConfigError(
                f"order {self.order} with a vocabulary of {self.vocab_size} characters has too many "
                "possible n-grams; choose a smaller --order"
            )

    @property
    def context(self) -> int:
        return self.order - 1

    def to_dict(self) -> dict:
        return asdict(self)


def context_keys(idx: np.ndarray, vocab_size: int) -> np.ndarray:
    """One int64 key per row of ``idx`` (B, T): the context read as a base-V number."""
    keys = np.zeros(len(idx), dtype=np.int64)
    for t in range(idx.shape[1]):
        keys = keys * vocab_size + idx[:, t]
    return keys


def _search(sorted_keys: np.ndarray, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Where each of ``queries`` is in ``sorted_keys`` (an index clipped into range), and whether it is there."""
    if len(sorted_keys) == 0:
        return np.zeros(len(queries), np.int64), np.zeros(len(queries), bool)
    # searched as they come: sorting the queries first (neighbouring searches, neighbouring
    # memory) cost about what it saved on 10 and 100 MB of Python source (tables up to 1M keys)
    at = np.minimum(np.searchsorted(sorted_keys, queries), len(sorted_keys) - 1)
    return at, sorted_keys[at] == queries


@dataclass(frozen=True)
class ContextCounts:
    """What one count table says about a batch of contexts h: the smoothing-free part of P(w | h).

    ``count`` is c(h, w), either for every w (B, V) or for one target per
    context (B,); ``total`` is c(h) and ``types`` the number of distinct w
    seen after h, shaped (B, 1) or (B,) to broadcast against ``count``. A
    context the table never saw has all three 0.
    """

    count: np.ndarray
    total: np.ndarray
    types: np.ndarray


@dataclass
class CountTable:
    """The (context, next token) pairs seen in training with their counts; nothing for pairs never seen.

    Row r is the context ``keys[r]`` (a ``context_keys`` key). A pair is keyed
    ``r * V + w``, so sorting the pairs sorts them by context, then by token:
    the pairs of row r lie together, at ``starts[r]:starts[r + 1]``. Every key
    is below V ** order < 2 ** 63 (``NgramConfig`` refuses larger), so none
    overflows.
    """

    keys: np.ndarray  # (K,) int64, sorted: the distinct contexts
    pairs: np.ndarray  # (P,) int64, sorted: row * V + w of each pair seen
    pair_counts: np.ndarray  # (P,) int64 >= 1: c(h, w) of each pair
    vocab_size: int
    # per row, derived from the pairs once here rather than summed again for every lookup
    totals: np.ndarray = field(init=False, repr=False)  # (K,) int64 c(h)
    types: np.ndarray = field(init=False, repr=False)  # (K,) int64 distinct continuations of h
    starts: np.ndarray = field(init=False, repr=False)  # (K + 1,) where each row's pairs begin

    def __post_init__(self) -> None:
        self.types = np.bincount(self.pairs // self.vocab_size, minlength=len(self.keys)).astype(np.int64)
        self.starts = np.concatenate([[0], np.cumsum(self.types)])
        summed = np.concatenate([[0], np.cumsum(self.pair_counts)])  # exact: whole numbers in int64
        self.totals = summed[self.starts[1:]] - summed[self.starts[:-1]]

    @classmethod
    def from_grams(cls, grams: np.ndarray, counts: np.ndarray, vocab_size: int) -> "CountTable":
        """The table of the distinct n-grams ``grams`` (sorted keys, (P,)) seen ``counts`` times.

        An n-gram's context is all but its last token: ``grams // V``, sorted
        since the grams are, so the rows and pairs come out sorted without a sort.
        """
        contexts = grams // vocab_size  # (P,)
        first = np.ones(len(grams), dtype=bool)  # (P,) the first pair of each context
        first[1:] = contexts[1:] != contexts[:-1]
        rows = np.cumsum(first) - 1  # (P,)
        return cls(contexts[first], rows * vocab_size + grams % vocab_size,
                   np.asarray(counts, dtype=np.int64), vocab_size)

    @classmethod
    def from_dense(cls, keys: np.ndarray, counts: np.ndarray) -> "CountTable":
        """The table of ``counts`` (K, V), a row per context of ``keys``: how runs saved it before."""
        rows, tokens = np.nonzero(counts)  # row-major: sorted by row, then token
        vocab_size = counts.shape[1]
        return cls(keys, rows * vocab_size + tokens, counts[rows, tokens].astype(np.int64), vocab_size)

    def lookup(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Row of each context of ``idx`` in the table, and whether it was seen at all."""
        return _search(self.keys, context_keys(idx, self.vocab_size))

    def dense(self, rows: np.ndarray) -> np.ndarray:
        """The counts of the table's ``rows`` (B,) as whole rows (B, V), zeros included.

        For a few contexts at a time (the sampler's); a split is looked up
        one target per context instead.
        """
        lengths = self.types[rows]  # (B,) pairs per row
        ends = np.cumsum(lengths)  # (B,)
        at = np.repeat(self.starts[rows] - (ends - lengths), lengths) + np.arange(ends[-1] if len(ends) else 0)
        out = np.zeros((len(rows), self.vocab_size))
        out[np.repeat(np.arange(len(rows)), lengths), self.pairs[at] % self.vocab_size] = self.pair_counts[at]
        return out

    def context_counts(self, idx: np.ndarray, targets: np.ndarray | None = None) -> ContextCounts:
        """The counts of each context of ``idx``: whole rows, or only each row's ``targets``."""
        rows, found = self.lookup(idx)
        if targets is None:  # (B, V) rows; the per-context numbers as (B, 1) columns
            count = np.zeros((len(rows), self.vocab_size))
            count[found] = self.dense(rows[found])
            rows, found = rows[:, None], found[:, None]
        else:  # (B,): one pair per context, looked up by its key
            at, seen = _search(self.pairs, rows * self.vocab_size + targets)
            count = np.where(found & seen, self.pair_counts[at], 0.0)
        return ContextCounts(count, np.where(found, self.totals[rows], 0.0),
                             np.where(found, self.types[rows], 0))


# --- token streams: a chunk of windows at a time --------------------------------------


def _check_stream(tokens: np.ndarray, pad: int, vocab_size: int, chunk: int) -> None:
    """Refuse what is not a stream of token ids; the ids themselves are checked a chunk at a time."""
    if not (isinstance(tokens, np.ndarray) and tokens.ndim == 1 and np.issubdtype(tokens.dtype, np.integer)):
        raise ConfigError("a token stream must be a 1-D array of integer token ids, got "
                          f"{type(tokens).__name__} {getattr(tokens, 'dtype', '')} of shape "
                          f"{getattr(tokens, 'shape', '?')}")
    if not (isinstance(pad, (int, np.integer)) and 0 <= pad < vocab_size):
        raise ConfigError(f"the padding token must be a token id in 0..{vocab_size - 1}, got {pad!r}")
    if not (isinstance(chunk, (int, np.integer)) and chunk >= 1):
        raise ConfigError(f"chunk must be a whole number >= 1, got {chunk!r}")


def _stream_windows(tokens: np.ndarray, pad: int, context: int, start: int, stop: int,
                    vocab_size: int) -> np.ndarray:
    """The windows of the targets ``tokens[start:stop]``: (stop - start, context + 1), the target last.

    Each target's context is the ``context`` tokens before it, those before
    the start of the stream read as ``pad``. Only this chunk is copied (as
    int64); the windows are a view of it.
    """
    before = max(context - start, 0)  # padding positions this chunk's first windows need
    chunk = np.asarray(tokens[start - context + before : stop]).astype(np.int64)
    if len(chunk) and not (0 <= chunk.min() and chunk.max() < vocab_size):
        raise ConfigError(f"the token stream must hold token ids in 0..{vocab_size - 1}")
    if before:
        chunk = np.concatenate([np.full(before, pad, dtype=np.int64), chunk])
    return np.lib.stride_tricks.sliding_window_view(chunk, context + 1)  # (stop - start, context + 1)


def _merge_counts(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray]
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Two counted runs (sorted distinct keys, their counts) as one: the keys of both, counts summed."""
    keys = np.concatenate([a[0], b[0]])
    counts = np.concatenate([a[1], b[1]])
    order = np.argsort(keys, kind="stable")  # timsort finds the two sorted runs and merges them: linear
    keys, counts = keys[order], counts[order]
    first = np.ones(len(keys), dtype=bool)
    first[1:] = keys[1:] != keys[:-1]
    at = np.flatnonzero(first)
    return keys[at], np.add.reduceat(counts, at)


def count_stream(tokens: np.ndarray, pad: int, order: int, vocab_size: int,
                 chunk: int = 1 << 20) -> tuple[np.ndarray, np.ndarray]:
    """The distinct n-grams of a token stream (sorted keys, (D,)) and how often each occurs, (D,).

    Every token is the last of one n-gram, its context padded with ``pad``
    before the stream's start. Counted ``chunk`` targets at a time: each
    chunk's n-grams are counted alone (a sort of ``chunk`` keys), and the
    counted runs are merged on a stack whose runs shrink towards the top,
    merging while the newest is at least as long as the one below: every
    n-gram takes part in a logarithmic number of merges rather than one per
    chunk, and memory holds a chunk and about twice the distinct n-grams.
    """
    _check_stream(tokens, pad, vocab_size, chunk)
    stack: list[tuple[np.ndarray, np.ndarray]] = []
    for start in range(0, len(tokens), chunk):
        windows = _stream_windows(tokens, pad, order - 1, start, min(start + chunk, len(tokens)), vocab_size)
        run = np.unique(context_keys(windows, vocab_size), return_counts=True)  # whole windows: n-gram keys
        while stack and len(stack[-1][0]) <= len(run[0]):
            run = _merge_counts(stack.pop(), run)
        stack.append(run)
    while len(stack) > 1:
        run = stack.pop()
        stack.append(_merge_counts(stack.pop(), run))
    return stack[0] if stack else (np.zeros(0, np.int64), np.zeros(0, np.int64))


class NgramModel:
    """An order-n character model with additive or interpolated Kneser-Ney smoothing.

    Additive (Lidstone) smoothing: P(w | h) = (c(h, w) + a) / (c(h) + a V).

    Interpolated Kneser-Ney (Kneser & Ney 1995; Chen & Goodman 1998): the
    highest order discounts every count by D and gives the mass it frees to
    the next lower order, in proportion to the number of distinct
    continuations of h; the lower orders count *continuations*, how many
    distinct tokens preceded an n-gram, rather than raw occurrences, so a
    token that is frequent only after one context does not look likely
    everywhere. D = n1 / (n1 + 2 n2) per order, from the count-of-counts, and
    the recursion ends in the uniform distribution, so nothing gets zero.
    """

    def __init__(self, config: NgramConfig) -> None:
        self.config = config
        self.context = config.context
        self.tables: list[CountTable] = []  # tables[k] conditions on k tokens (order k + 1)
        self.discounts: list[float] = []

    def fit(self, idx: np.ndarray, targets: np.ndarray) -> "NgramModel":
        """Count the (context, target) examples; ``idx`` is (N, order - 1)."""
        self._check_idx(idx)
        self._check_targets(idx, targets)
        if len(targets) == 0:
            raise ConfigError("cannot fit an n-gram model on no examples")
        V = self.config.vocab_size
        grams = context_keys(idx, V) * V + targets  # (N,) each example as one n-gram key
        return self._fit_grams(*np.unique(grams, return_counts=True))

    def fit_stream(self, tokens: np.ndarray, pad: int, chunk: int = 1 << 20) -> "NgramModel":
        """Count every token of one continuous text ``tokens`` (N,) as the target of its context.

        A token's context is the ``order - 1`` tokens before it, those before
        the start read as ``pad``: the same model as ``fit`` on those padded
        windows, counted ``chunk`` targets at a time (``count_stream``), never
        holding the (N, order) windows. ``tokens`` may be any integer array,
        a read-only ``np.memmap`` of a large file included.
        """
        V = self.config.vocab_size
        _check_stream(tokens, pad, V, chunk)
        if len(tokens) == 0:
            raise ConfigError("cannot fit an n-gram model on no examples")
        return self._fit_grams(*count_stream(tokens, pad, self.config.order, V, chunk))

    def _fit_grams(self, grams: np.ndarray, counts: np.ndarray) -> "NgramModel":
        """Every table from the distinct n-grams of the training data (sorted keys, (D,)) and their counts.

        The highest order counts the n-grams themselves. Kneser-Ney's lower
        orders count continuations: each distinct (m + 1)-token suffix of an
        n-gram counts once toward its own m-token suffix. A suffix is a key
        modulo V ** m, so each order is one ``np.unique`` of the order above.
        """
        V, n = self.config.vocab_size, self.config.order
        tables = [CountTable.from_grams(grams, counts, V)]
        if self.config.method == "additive":
            self.tables, self.discounts = tables, []
            return self
        suffixes = grams  # the distinct (m + 1)-token suffixes, m + 1 = n to begin with
        for m in range(n - 1, 0, -1):
            suffixes, continuations = np.unique(suffixes % V**m, return_counts=True)
            tables.append(CountTable.from_grams(suffixes, continuations, V))
        tables.reverse()  # tables[k] conditions on k tokens (order k + 1)
        discounts = []
        for table in tables:
            # count-of-counts over the stored pairs: the pairs not stored have count 0, never 1 or 2
            n1 = float(np.sum(table.pair_counts == 1))
            n2 = float(np.sum(table.pair_counts == 2))
            discounts.append(n1 / (n1 + 2 * n2) if n1 > 0 else 0.5)
        self.tables, self.discounts = tables, discounts
        return self

    def probs(self, idx: np.ndarray) -> np.ndarray:
        """P(next token | context) for each row of ``idx`` (B, order - 1): (B, V)."""
        return self.smooth(self.context_counts(idx))

    def target_probs(self, idx: np.ndarray, targets: np.ndarray) -> np.ndarray:
        """P(targets[i] | idx[i]) for each row: (B,), without building the other V - 1 columns."""
        return self.smooth(self.context_counts(idx, targets))

    def context_counts(self, idx: np.ndarray, targets: np.ndarray | None = None) -> list[ContextCounts]:
        """Per table, the counts of the contexts of ``idx`` (all of ``probs`` that is not smoothing).

        With ``targets``, only each target's count (see ``ContextCounts``).
        Looking up once and calling ``smooth`` for each smoothing value is
        how ``grid_search`` avoids repeating the lookups.
        """
        idx = np.asarray(idx)
        self._check_idx(idx)
        if targets is not None:
            targets = np.asarray(targets)
            self._check_targets(idx, targets)
        if not self.tables:
            raise ConfigError("the n-gram model has not been fitted")
        return [table.context_counts(idx[:, idx.shape[1] - width :], targets)
                for table, width in zip(self.tables, self._widths())]

    def _widths(self) -> list[int]:
        """The context each table reads: additive, one table on the whole context; Kneser-Ney,
        tables[k] on the last k tokens."""
        return [self.context] if self.config.method == "additive" else list(range(self.config.order))

    def smooth(self, counts: list[ContextCounts]) -> np.ndarray:
        """The probabilities from ``context_counts``: rows (B, V) or targets (B,), whichever was looked up.

        The one place the smoothing formulas live, so ``probs`` and ``nll``
        cannot drift apart.
        """
        V = self.config.vocab_size
        if self.config.method == "additive":
            c, a = counts[0], self.config.smoothing
            return (c.count + a) / (c.total + a * V)
        p = np.full(counts[0].count.shape, 1.0 / V)
        for c, D in zip(counts, self.discounts):
            safe_total = np.where(c.total > 0, c.total, 1.0)
            mixed = (np.maximum(c.count - D, 0.0) + D * c.types * p) / safe_total
            # an unseen context has nothing to say: keep the lower-order estimate
            p = np.where(c.total > 0, mixed, p)
        return p

    def forward(self, idx: np.ndarray, targets: np.ndarray | None = None):
        """(log-probabilities (B, V), mean negative log-likelihood or None)."""
        logits = np.log(self.probs(np.asarray(idx)))
        if targets is None:
            return logits, None
        return logits, nll(self, idx, targets)

    # a count model has no parameters to train and no modes; these keep it
    # usable wherever a neural model is (see tinylm.layers.base.LanguageModel)
    training = False
    per_position = False

    def parameters(self) -> list:
        return []

    def to_numpy(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(x)

    def inference_mode(self) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()

    def train(self, mode: bool = True) -> "NgramModel":
        return self

    def eval(self) -> "NgramModel":
        return self

    def _check_idx(self, idx: np.ndarray) -> None:
        if idx.ndim != 2 or idx.shape[1] != self.context:
            raise ConfigError(f"an order-{self.config.order} model needs contexts of {self.context} tokens")

    def _check_targets(self, idx: np.ndarray, targets: np.ndarray) -> None:
        # a target outside the vocabulary would index another context's counts, or nothing
        if targets.shape != (len(idx),):
            raise ConfigError(f"{len(idx)} contexts need {len(idx)} targets, "
                              f"got an array of shape {targets.shape}")
        if len(targets) and not (0 <= targets.min() and targets.max() < self.config.vocab_size):
            raise ConfigError(f"targets must be token ids in 0..{self.config.vocab_size - 1}")

    # --- saving: plain arrays, never pickle -----------------------------------------

    def to_arrays(self) -> dict[str, np.ndarray]:
        """The model as plain int64 and float64 arrays: per table its contexts, pairs and counts."""
        arrays = {"discounts": np.array(self.discounts, dtype=np.float64)}
        for k, table in enumerate(self.tables):
            arrays[f"keys_{k}"] = table.keys
            arrays[f"pairs_{k}"] = table.pairs
            arrays[f"pair_counts_{k}"] = table.pair_counts
        return arrays

    @classmethod
    def from_arrays(cls, config: NgramConfig, arrays: dict[str, np.ndarray]) -> "NgramModel":
        """The model ``to_arrays`` saved, every array checked: a damaged file is a ConfigError.

        Runs saved before the counts were sparse hold ``counts_{k}``, one
        dense (K, V) row per context, instead of the pairs; they are read into
        the sparse form, so those run directories still open.
        """
        model = cls(config)
        model.tables = [_saved_table(arrays, k, width, config.vocab_size)
                        for k, width in enumerate(model._widths())]
        discounts = _saved_array(arrays, "discounts", 1, integer=False)
        expected = 0 if config.method == "additive" else config.order
        if len(discounts) != expected or not np.all((discounts >= 0) & (discounts <= 1)):
            raise ConfigError(f"the saved n-gram model needs {expected} discounts between 0 and 1, "
                              f"got {len(discounts)}")
        model.discounts = [float(d) for d in discounts]
        return model


def _saved_array(arrays: dict[str, np.ndarray], name: str, ndim: int, integer: bool = True) -> np.ndarray:
    """``arrays[name]``, refused unless it is an ``ndim``-D array of whole numbers (or of numbers)."""
    if name not in arrays:
        raise ConfigError(f"the saved n-gram model lacks the array {name!r}")
    a = np.asarray(arrays[name])
    if a.ndim != ndim or a.dtype.kind not in ("iu" if integer else "iuf"):
        raise ConfigError(f"the saved n-gram array {name!r} should be {ndim}-D "
                          f"{'whole numbers' if integer else 'numbers'}, got {a.dtype} of shape {a.shape}")
    return a


def _saved_table(arrays: dict[str, np.ndarray], k: int, width: int, vocab_size: int) -> CountTable:
    """Count table ``k`` (contexts of ``width`` tokens) of saved ``arrays``, sparse or dense, checked."""
    keys = _saved_array(arrays, f"keys_{k}", 1)
    if len(keys) == 0:
        raise ConfigError("the saved n-gram model has an empty count table")
    if not (keys[0] >= 0 and int(keys[-1]) < vocab_size**width and np.all(keys[1:] > keys[:-1])):
        raise ConfigError(f"the saved n-gram contexts keys_{k} are not sorted distinct contexts "
                          f"of {width} tokens of the vocabulary")
    keys = keys.astype(np.int64)
    if f"pairs_{k}" not in arrays and f"counts_{k}" in arrays:  # saved before the counts were sparse
        counts = _saved_array(arrays, f"counts_{k}", 2, integer=False)
        if counts.shape != (len(keys), vocab_size):
            raise ConfigError("the saved n-gram counts do not match the vocabulary")
        if not (np.all(np.isfinite(counts)) and np.all(counts >= 0) and np.all(counts == np.floor(counts))
                and counts.sum() < 2**53):
            raise ConfigError(f"the saved n-gram counts counts_{k} must be whole numbers >= 0")
        return CountTable.from_dense(keys, counts)
    pairs = _saved_array(arrays, f"pairs_{k}", 1)
    counts = _saved_array(arrays, f"pair_counts_{k}", 1)
    if pairs.shape != counts.shape:
        raise ConfigError(f"the saved n-gram table {k} has {len(pairs)} pairs but {len(counts)} counts")
    if len(pairs) and not (pairs[0] >= 0 and int(pairs[-1]) < len(keys) * vocab_size
                           and np.all(pairs[1:] > pairs[:-1])):
        raise ConfigError(f"the saved n-gram pairs pairs_{k} are not sorted distinct pairs "
                          f"of its {len(keys)} contexts and the vocabulary")
    # >= 1: only pairs seen are stored; the sum below 2**53: every total is exact, in float64 too
    if len(counts) and not (counts.min() >= 1 and counts.sum(dtype=np.float64) < 2**53):
        raise ConfigError(f"the saved n-gram counts pair_counts_{k} must be whole numbers >= 1")
    return CountTable(keys, pairs.astype(np.int64), counts.astype(np.int64), vocab_size)


def nll(model: NgramModel, idx: np.ndarray, targets: np.ndarray, chunk: int = 65536) -> float:
    """Mean negative log-likelihood (nats per token) of ``targets`` given ``idx``."""
    return _mean_nll(model.target_probs(idx, targets), chunk)


def _mean_nll(p: np.ndarray, chunk: int = 65536) -> float:
    """The mean of -log ``p``: the loss of examples whose targets had probabilities ``p``."""
    if len(p) == 0:
        raise ConfigError("cannot evaluate on an empty split")
    # summed per block of `chunk` examples, then block by block: the order the
    # documented figures were summed in, so they reproduce to the last bit
    total = 0.0
    for start in range(0, len(p), chunk):
        total += -np.log(p[start : start + chunk]).sum()
    return float(total / len(p))


def nll_stream(model: NgramModel, tokens: np.ndarray, pad: int, chunk: int = 65536) -> float:
    """Mean negative log-likelihood of every token of the stream ``tokens`` given its padded context.

    ``nll`` on the windows ``NgramModel.fit_stream`` counts, to the last bit:
    both sum the losses per block of ``chunk`` targets. Looked up a block at a
    time, so memory holds one block's windows, never the whole stream's.
    """
    return _stream_losses([model], tokens, pad, chunk)[0]


def _stream_losses(models: list[NgramModel], tokens: np.ndarray, pad: int, chunk: int = 65536) -> list[float]:
    """The mean loss of the stream under each of ``models``, which share one model's counts.

    The counts are looked up once per block of ``chunk`` targets and smoothed
    for each model: how ``grid_search_stream`` evaluates every smoothing of
    an order with one lookup.
    """
    first = models[0]
    _check_stream(tokens, pad, first.config.vocab_size, chunk)
    if len(tokens) == 0:
        raise ConfigError("cannot evaluate on an empty split")
    totals = [0.0] * len(models)
    for start in range(0, len(tokens), chunk):
        windows = _stream_windows(tokens, pad, first.context, start, min(start + chunk, len(tokens)),
                                  first.config.vocab_size)  # (B, order)
        counts = first.context_counts(windows[:, :-1], windows[:, -1])
        for i, model in enumerate(models):
            # block by block, as _mean_nll sums
            totals[i] += -np.log(model.smooth(counts)).sum()
    return [float(total / len(tokens)) for total in totals]


@dataclass(frozen=True)
class GridPoint:
    order: int
    method: str
    smoothing: float | None
    train_loss: float
    val_loss: float


def grid_search(
    examples: dict[int, dict[str, tuple[np.ndarray, np.ndarray]]],
    vocab_size: int,
    orders: tuple[int, ...] = ORDERS,
    smoothings: tuple[float, ...] = SMOOTHINGS,
    method: str = "additive",
) -> list[GridPoint]:
    """Train and evaluate every (order, smoothing) pair; ``examples[order][split] = (idx, targets)``.

    Kneser-Ney has no smoothing knob (its discounts come from the counts), so
    for it the grid runs over orders only.
    """
    points = []
    for order in orders:
        train, val = examples[order]["train"], examples[order]["val"]
        counted = None
        for a in smoothings if method == "additive" else (None,):
            model = NgramModel(NgramConfig(order, vocab_size, method, a if a is not None else 0.0))
            if counted is None:
                counted = model.fit(*train)
                # neither the counts nor their lookups depend on the smoothing: once per order and split
                looked_up = [counted.context_counts(*split) for split in (train, val)]
            else:
                model.tables, model.discounts = counted.tables, counted.discounts
            train_loss, val_loss = (_mean_nll(model.smooth(counts)) for counts in looked_up)
            points.append(GridPoint(order, method, a, train_loss, val_loss))
    return points


def grid_search_stream(
    train_tokens: np.ndarray,
    val_tokens: np.ndarray,
    pad: int,
    vocab_size: int,
    orders: tuple[int, ...] = ORDERS,
    smoothings: tuple[float, ...] = SMOOTHINGS,
    method: str = "additive",
    chunk: int = 1 << 20,
) -> list[GridPoint]:
    """``grid_search`` on two token streams: the same points as on their padded windows, to the last bit.

    Each order is counted once (``fit_stream``, ``chunk`` targets at a time),
    and each split looked up once per block of 65,536 targets for every
    smoothing. Memory holds one order's distinct n-grams and a block, never
    the windows of a split.
    """
    points = []
    for order in orders:
        knobs = smoothings if method == "additive" else (None,)
        models = [NgramModel(NgramConfig(order, vocab_size, method, a if a is not None else 0.0)) for a in knobs]
        if not models:
            continue
        counted = models[0].fit_stream(train_tokens, pad, chunk)
        for model in models[1:]:  # neither the counts nor their lookups depend on the smoothing
            model.tables, model.discounts = counted.tables, counted.discounts
        train_losses, val_losses = (_stream_losses(models, tokens, pad) for tokens in (train_tokens, val_tokens))
        points += [GridPoint(order, method, a, t, v) for a, t, v in zip(knobs, train_losses, val_losses)]
    return points


def best(points: list[GridPoint]) -> GridPoint:
    """The grid point with the lowest validation loss (the first of any tie)."""
    return min(points, key=lambda p: p.val_loss)


def bigram_counts(idx: np.ndarray, targets: np.ndarray, vocab_size: int) -> np.ndarray:
    """The (V, V) matrix of how often token j followed token i: the classic picture."""
    counts = np.zeros((vocab_size, vocab_size), dtype=np.int64)
    np.add.at(counts, (idx[:, -1], targets), 1)
    return counts


def bigram_counts_stream(tokens: np.ndarray, pad: int, vocab_size: int, chunk: int = 1 << 20) -> np.ndarray:
    """``bigram_counts`` of a token stream: (V, V), how often each token followed the one before it.

    The first token follows ``pad``. Counted ``chunk`` pairs at a time; the
    result is the dense picture the heat map draws, V * V int64 whatever the
    stream's length.
    """
    _check_stream(tokens, pad, vocab_size, chunk)
    counts = np.zeros((vocab_size, vocab_size), dtype=np.int64)
    flat = counts.reshape(-1)  # (V * V,) a view: pair i, j at i * V + j
    for start in range(0, len(tokens), chunk):
        windows = _stream_windows(tokens, pad, 1, start, min(start + chunk, len(tokens)), vocab_size)  # (B, 2)
        pairs, n = np.unique(context_keys(windows, vocab_size), return_counts=True)
        flat[pairs] += n  # distinct pairs: no index repeats
    return counts
