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

from tinylm.diagnostics import headless_pyplot
from tinylm.errors import ConfigError

MAX_CHARS = 32  # rows and columns drawn at the most: every cell stays labelled and readable


def _label(ch: str) -> str:
    return "." if ch == "\n" else ch


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


def bigram_heatmap_png(counts: np.ndarray, itos: Sequence[str]) -> bytes:
    """PNG bytes of the (V, V) count matrix, every cell labelled (the top ``MAX_CHARS`` if larger)."""
    plt = headless_pyplot()
    V = len(itos)
    if counts.shape != (V, V):
        raise ConfigError(f"count matrix {counts.shape} does not match a vocabulary of {V}")
    title = "bigram counts (. = start / end of an item)"
    if V > MAX_CHARS:
        counts, itos = most_frequent(counts, itos, MAX_CHARS)
        title += f": the {MAX_CHARS} most frequent of {V} characters"
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
