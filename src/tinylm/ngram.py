"""Count-based n-gram language models: additive and interpolated Kneser-Ney smoothing.

An order-n model predicts the next token from the previous n - 1 by counting
how often each continuation followed that context in the training data
(Jurafsky & Martin, "Speech and Language Processing", ch. 3). The bigram is
n = 2; the unigram (n = 1) ignores the context altogether.

Counts are stored sparsely: one row of ``vocab_size`` counts per context that
was seen in training, found by an integer key per context. An unseen context
gets the uniform distribution under additive smoothing, and the lower-order
estimate under Kneser-Ney.

Both smoothings compute P(w | h) from three looked-up numbers per table: the
count c(h, w), the context's total c(h) and its number of distinct
continuations. ``probs`` gathers them for every w (the sampler needs whole
rows); ``nll`` gathers them for the target alone, so evaluating costs a few
lookups per example instead of a row of V probabilities. Both go through the
same formulas (``NgramModel.smooth``), so they cannot disagree.

Like every tinylm model, ``NgramModel.forward(idx, targets=None)`` returns
``(logits, loss)``; here the logits are log-probabilities, so the softmax the
shared sampler applies gives back the model's distribution.
"""

from __future__ import annotations

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
        if float(self.vocab_size) ** (self.order - 1) >= 2.0**62:
            raise ConfigError(
                f"order {self.order} with a vocabulary of {self.vocab_size} characters has too many "
                "possible contexts; choose a smaller --order"
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


def distinct_rows(a: np.ndarray) -> np.ndarray:
    """The distinct rows of the 2-D ``a``, sorted: ``np.unique(a, axis=0)``, faster.

    np.unique sorts the rows as opaque byte strings, which took 1 s per call
    on the bundled names' 214k 6-grams; a lexsort over the columns finds the
    same rows in the same order in a tenth of that.
    """
    a = a[np.lexsort(a.T[::-1])]  # lexsort's last key is the primary one: the first column
    keep = np.ones(len(a), dtype=bool)
    keep[1:] = (a[1:] != a[:-1]).any(axis=1)
    return a[keep]


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
    """Counts of next tokens for each distinct context, rows sorted by context key."""

    keys: np.ndarray  # (K,) int64, sorted
    counts: np.ndarray  # (K, V) float64
    # per row, derived from counts once here rather than summed again for every lookup
    totals: np.ndarray = field(init=False, repr=False)  # (K,) c(h)
    types: np.ndarray = field(init=False, repr=False)  # (K,) distinct continuations of h

    def __post_init__(self) -> None:
        self.totals = self.counts.sum(axis=1)
        self.types = (self.counts > 0).sum(axis=1)

    @classmethod
    def build(cls, idx: np.ndarray, targets: np.ndarray, vocab_size: int) -> "CountTable":
        keys, rows = np.unique(context_keys(idx, vocab_size), return_inverse=True)
        counts = np.zeros((len(keys), vocab_size))
        np.add.at(counts, (rows.reshape(-1), targets), 1.0)
        return cls(keys, counts)

    def lookup(self, idx: np.ndarray, vocab_size: int) -> tuple[np.ndarray, np.ndarray]:
        """Row of each context of ``idx`` in the table, and whether it was seen at all."""
        keys = context_keys(idx, vocab_size)
        rows = np.searchsorted(self.keys, keys)
        rows = np.minimum(rows, max(len(self.keys) - 1, 0))
        found = (self.keys[rows] == keys) if len(self.keys) else np.zeros(len(keys), bool)
        return rows, found

    def context_counts(self, idx: np.ndarray, vocab_size: int,
                       targets: np.ndarray | None = None) -> ContextCounts:
        """The counts of each context of ``idx``: whole rows, or only each row's ``targets``."""
        rows, found = self.lookup(idx, vocab_size)
        if targets is None:  # (B, V) rows; the per-context numbers as (B, 1) columns
            count = np.where(found[:, None], self.counts[rows], 0.0)
            rows, found = rows[:, None], found[:, None]
        else:
            count = np.where(found, self.counts[rows, targets], 0.0)
        return ContextCounts(count, np.where(found, self.totals[rows], 0.0),
                             np.where(found, self.types[rows], 0))


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
        V, n = self.config.vocab_size, self.config.order
        if self.config.method == "additive":
            self.tables = [CountTable.build(idx, targets, V)]
            self.discounts = []
            return self
        grams = np.concatenate([idx, targets[:, None]], axis=1)  # (N, n)
        tables, discounts = [], []
        for k in range(n):
            suffix = grams[:, n - 1 - k :]  # the last k context tokens and the target
            if k < n - 1:
                # continuation counts: each distinct longer n-gram counts once toward its suffix
                longer = distinct_rows(grams[:, n - 2 - k :])
                suffix = longer[:, 1:]
            table = CountTable.build(suffix[:, :-1], suffix[:, -1], V)
            tables.append(table)
            n1 = float(np.sum(table.counts == 1))
            n2 = float(np.sum(table.counts == 2))
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
        V = self.config.vocab_size
        # additive: one table on the whole context; Kneser-Ney: tables[k] on the last k tokens
        widths = [self.context] if self.config.method == "additive" else range(len(self.tables))
        return [table.context_counts(idx[:, idx.shape[1] - width :], V, targets)
                for table, width in zip(self.tables, widths)]

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
    # usable wherever a neural model is (the sampler switches modes)
    training = False

    def parameters(self) -> list:
        return []

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
        arrays = {"discounts": np.array(self.discounts, dtype=np.float64)}
        for k, table in enumerate(self.tables):
            arrays[f"keys_{k}"] = table.keys
            arrays[f"counts_{k}"] = table.counts
        return arrays

    @classmethod
    def from_arrays(cls, config: NgramConfig, arrays: dict[str, np.ndarray]) -> "NgramModel":
        model = cls(config)
        n_tables = 1 if config.method == "additive" else config.order
        try:
            model.tables = [
                CountTable(np.asarray(arrays[f"keys_{k}"], np.int64), np.asarray(arrays[f"counts_{k}"], np.float64))
                for k in range(n_tables)
            ]
            model.discounts = [float(d) for d in arrays["discounts"]]
        except KeyError as e:
            raise ConfigError(f"the saved n-gram model lacks the array {e.args[0]!r}") from None
        for table in model.tables:
            if table.counts.ndim != 2 or table.counts.shape != (len(table.keys), config.vocab_size):
                raise ConfigError("the saved n-gram counts do not match the vocabulary")
            if len(table.keys) == 0:
                raise ConfigError("the saved n-gram model has an empty count table")
        return model


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


def best(points: list[GridPoint]) -> GridPoint:
    """The grid point with the lowest validation loss (the first of any tie)."""
    return min(points, key=lambda p: p.val_loss)


def bigram_counts(idx: np.ndarray, targets: np.ndarray, vocab_size: int) -> np.ndarray:
    """The (V, V) matrix of how often token j followed token i: the classic picture."""
    counts = np.zeros((vocab_size, vocab_size), dtype=np.int64)
    np.add.at(counts, (idx[:, -1], targets), 1)
    return counts
