"""The bigram count matrix as a labelled heatmap: which character follows which.

Row i, column j holds how often character j followed character i in the
training data; "." stands for the end-of-text token, so row "." is how items
start and column "." how they end. A large alphabet (a list of CJK names
has thousands of characters) would need a picture of gigabytes, and no one
could read it: beyond ``MAX_CHARS`` the picture shows the most frequent
characters and says so. matplotlib is an optional dependency (``pip
install tinylm[plot]``); ``headless_pyplot`` imports it only when a plot is drawn.
"""

from __future__ import annotations

import io
import warnings
from typing import Sequence

import numpy as np

from tinylm.plotting import headless_pyplot
from tinylm.errors import ConfigError

MAX_CHARS = 32  # rows and columns drawn at the most: every cell stays labelled and readable


# characters of a token's label at the most: a BPE token can be a whole line of code
LABEL = 4


def _label(ch: str) -> str:
    if ch == "\n":
        return "."
    shown = ch.replace("\n", "⏎").replace("\t", "⇥")
    return shown if len(shown) <= LABEL else shown[:LABEL - 1] + "…"


def most_frequent(counts: np.ndarray, itos: Sequence[str], k: int
                  ) -> tuple[np.ndarray, list[str]]:
    """The rows and columns of the ``k`` most frequent tokens, in vocabulary order.

    Token 0, the end of text, is always kept: its row and column are how
    items start and end.
    """
    totals = (counts.sum(axis=0) + counts.sum(axis=1)).astype(np.float64)
    totals[0] = np.inf
    keep = np.sort(np.argsort(-totals, kind="stable")[:k])
    return counts[np.ix_(keep, keep)], [itos[i] for i in keep]


def frequent_bigrams(tokens: np.ndarray, pad: int, itos: Sequence[str], k: int = MAX_CHARS,
                     chunk: int = 1 << 22) -> tuple[np.ndarray, list[str]]:
    """The bigram counts of a token stream among its ``k`` most frequent tokens, (k, k), and
    their characters, in vocabulary order: the picture of a large alphabet without a V x V
    matrix (8,909 characters would take 635 MB). The first token follows ``pad``."""
    V = len(itos)
    freq = np.zeros(V, dtype=np.int64)
    for lo in range(0, len(tokens), chunk):
        freq += np.bincount(tokens[lo:lo + chunk], minlength=V)
    keep = np.sort(np.argsort(-freq, kind="stable")[:k])
    index = np.full(V, len(keep), dtype=np.int64)  # every other token: one row left out
    index[keep] = np.arange(len(keep))
    K = len(keep) + 1
    counts = np.zeros(K * K, dtype=np.int64)
    previous = index[pad]
    for lo in range(0, len(tokens), chunk):
        now = index[tokens[lo:lo + chunk]]
        before = np.concatenate([[previous], now[:-1]])
        counts += np.bincount(before * K + now, minlength=K * K)
        previous = now[-1]
    return counts.reshape(K, K)[:-1, :-1], [itos[i] for i in keep]


def bigram_heatmap_png(counts: np.ndarray, itos: Sequence[str], of: int | None = None,
                       title: str = "bigram counts (. = start / end of an item)") -> bytes:
    """PNG bytes of the (V, V) count matrix, every cell labelled (the top ``MAX_CHARS`` if
    larger); ``of``: the size of the whole vocabulary, where ``itos`` is already its top."""
    plt = headless_pyplot()
    V = len(itos)
    if counts.shape != (V, V):
        raise ConfigError(f"count matrix {counts.shape} does not match a vocabulary of {V}")
    if V > MAX_CHARS:
        counts, itos = most_frequent(counts, itos, MAX_CHARS)
    if max(V, of or 0) > MAX_CHARS:
        title += f": the {MAX_CHARS} most frequent of {max(V, of or 0)} characters"
    n = len(itos)
    size = max(6.0, 0.6 * n)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(counts, cmap="Blues")
    labels = [_label(ch) for ch in itos]
    dark = 0.5 * counts.max()
    for i in range(n):
        for j in range(n):
            color = "white" if counts[i, j] > dark else "dimgray"
            ax.text(j, i, labels[i] + labels[j], ha="center", va="bottom", color=color, fontsize=7)
            ax.text(j, i, str(int(counts[i, j])), ha="center", va="top", color=color, fontsize=7)
    ax.set_xticks(range(n), labels)
    ax.set_yticks(range(n), labels)
    ax.set_xlabel("next character")
    ax.set_ylabel("previous character")
    ax.set_title(title)
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a script the font lacks: boxes in the picture, not a warning
        fig.tight_layout()
        fig.savefig(buf, format="png", dpi=80)
    plt.close(fig)
    return buf.getvalue()
