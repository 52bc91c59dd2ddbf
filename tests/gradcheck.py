"""Central finite differences, the reference every hand-written gradient is checked against."""

from __future__ import annotations

from typing import Callable

import numpy as np


def finite_difference(f: Callable[[], float], x: np.ndarray, n: int = 20, h: float = 1e-6,
                      seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(flat indices, df/dx there) for ``n`` random entries of ``x``, which f() reads.

    ``x`` is nudged in place by +-h and restored; use float64 so that h can
    be small enough for the error (O(h**2)) to be below 1e-8.
    """
    flat = x.reshape(-1)
    picks = np.random.RandomState(seed).choice(flat.size, size=min(n, flat.size), replace=False)
    grads = []
    for i in picks:
        old = flat[i]
        flat[i] = old + h
        plus = f()
        flat[i] = old - h
        minus = f()
        flat[i] = old
        grads.append((plus - minus) / (2 * h))
    return picks, np.array(grads)
