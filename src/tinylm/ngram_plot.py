"""The bigram count matrix as a labelled heatmap: which character follows which.

Row i, column j holds how often character j followed character i in the
training data; "." stands for the end-of-text token, so row "." is how items
start and column "." how they end. matplotlib is an optional dependency
(``pip install tinylm[plot]``); it is imported here only when a plot is drawn.
"""

from __future__ import annotations

import io
from typing import Sequence

import numpy as np

from tinylm.errors import ConfigError


def _label(ch: str) -> str:
    return "." if ch == "\n" else ch


def bigram_heatmap_png(counts: np.ndarray, itos: Sequence[str]) -> bytes:
    """PNG bytes of the (V, V) count matrix with every cell labelled."""
    from tinylm.diagnostics import headless_pyplot

    plt = headless_pyplot()
    V = len(itos)
    if counts.shape != (V, V):
        raise ConfigError(f"count matrix {counts.shape} does not match a vocabulary of {V}")
    size = max(6.0, 0.6 * V)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(counts, cmap="Blues")
    labels = [_label(ch) for ch in itos]
    # every cell shows its bigram and count while the grid is readable; large vocabularies get tick labels only
    if V <= 40:
        dark = 0.5 * counts.max()
        for i in range(V):
            for j in range(V):
                color = "white" if counts[i, j] > dark else "dimgray"
                ax.text(j, i, labels[i] + labels[j], ha="center", va="bottom", color=color, fontsize=7)
                ax.text(j, i, str(int(counts[i, j])), ha="center", va="top", color=color, fontsize=7)
    ax.set_xticks(range(V), labels)
    ax.set_yticks(range(V), labels)
    ax.set_xlabel("next character")
    ax.set_ylabel("previous character")
    ax.set_title("bigram counts (. = start / end of an item)")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    plt.close(fig)
    return buf.getvalue()
