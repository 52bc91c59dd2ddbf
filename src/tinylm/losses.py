"""The cross-entropy of logits against targets, in numpy, whatever computed the logits.

One implementation of the numbers every evaluation reports: ``cross_entropy``
(one prediction per example), ``sequence_cross_entropy`` (a prediction at
every position, targets equal to ``data.IGNORE`` left out) and ``token_nll``
(each target's own negative log-likelihood, for a text's units). The numpy
backend's training loss (``numpy_layers.CrossEntropy``) is the same
arithmetic, so that a model's train loss and its evaluation agree to the
bit; the torch backends' logits are scored here too, as numpy arrays.
"""

from __future__ import annotations

import math

import numpy as np

from tinylm.data import IGNORE


def softmax_cross_entropy(logits: np.ndarray, targets: np.ndarray) -> tuple[float, np.ndarray]:
    """The mean negative log-likelihood of ``targets`` (B,) under softmax(``logits`` (B, V)),
    and the softmax itself (what a backward pass starts from).

    The row maximum is subtracted before exponentiating: softmax is
    shift-invariant, and exp() then cannot overflow.
    """
    B = logits.shape[0]
    shifted = logits - logits.max(axis=1, keepdims=True)              # (B, V)
    picked = shifted[np.arange(B), targets]                           # (B,) of the targets alone
    # in place from here: one (B, V) array becomes the counts, then the probabilities
    counts = np.exp(shifted, out=shifted)                             # (B, V)
    sums = counts.sum(axis=1, keepdims=True)                          # (B, 1)
    probs = np.divide(counts, sums, out=counts)                       # (B, V)
    logprobs = picked - np.log(sums[:, 0])                            # (B,)
    return float(-logprobs.mean()), probs


def cross_entropy(logits: np.ndarray, targets: np.ndarray) -> float:
    """The mean negative log-likelihood of ``targets`` (B,) under softmax(``logits`` (B, V))."""
    return softmax_cross_entropy(logits, targets)[0]


def scored(logits: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The positions of ``logits`` (B, T, V) whose ``targets`` (B, T) are not IGNORE:
    their logits (N, V), their targets (N,) and the mask over every position (B*T,)."""
    V = logits.shape[-1]
    flat = targets.reshape(-1)                                        # (B*T,)
    valid = flat != IGNORE                                            # (B*T,)
    if not valid.any():
        raise ValueError("every target is IGNORE: there is nothing to score")
    return logits.reshape(-1, V)[valid], flat[valid], valid


def sequence_cross_entropy(logits: np.ndarray, targets: np.ndarray) -> float:
    """The mean negative log-likelihood over every position whose target is not IGNORE:
    logits (B, T, V), targets (B, T); the mean per predicted token."""
    return cross_entropy(*scored(logits, targets)[:2])


def token_nll(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """-log softmax(logits)[target] in float64 for every target, 0 where it is IGNORE."""
    z = logits.astype(np.float64)  # (..., V)
    top = z.max(axis=-1, keepdims=True)
    log_norm = np.log(np.exp(z - top).sum(axis=-1)) + top[..., 0]
    picked = np.take_along_axis(z, np.maximum(targets, 0)[..., None], axis=-1)[..., 0]
    return np.where(targets == IGNORE, 0.0, log_norm - picked)


def perplexity(loss: float) -> float | None:
    """exp(loss), or None where it would overflow (a loss over 709 nats)."""
    return math.exp(loss) if loss < 709 else None
