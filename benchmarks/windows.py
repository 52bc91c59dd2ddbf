"""Random training windows of a token array, drawn alike for every contender of a benchmark
(tinylm's steps and the plain PyTorch loop); numpy alone, so a run without torch can use it."""

from __future__ import annotations

import numpy as np


def batch(data, g: np.random.Generator, end: int, T: int, B: int) -> tuple[np.ndarray, np.ndarray]:
    """B windows of T tokens with their targets (the window shifted by one), the starts drawn
    uniformly from ``g`` among those whose targets end before ``end``; int64 arrays (B, T)."""
    starts = g.integers(1, end - T, B)
    x = np.stack([data[s - 1:s - 1 + T] for s in starts]).astype(np.int64)
    y = np.stack([data[s:s + T] for s in starts]).astype(np.int64)
    return x, y
