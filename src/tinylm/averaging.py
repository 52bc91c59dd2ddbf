"""An average of a model's weights over its last updates, kept beside the weights that train.

The weights at the end of a run are one point of a noisy walk: each update
moves them by a step that the batch's noise decides as much as the loss.
An exponential moving average of the walk (Polyak and Juditsky,
"Acceleration of Stochastic Approximation by Averaging", 1992, in the
exponential form of their continuous-time analysis) keeps the direction
and cancels much of the noise: after update ``t``,

    average_t = sum over i <= t of decay**(t - i) * weights_i, divided by the sum of the factors

so each update's weights count ``decay`` times less than the next one's,
and the last ``1 / (1 - decay)`` updates make most of it. Dividing by the
sum of the factors (as Adam corrects its moments) makes the average one of
weights actually visited from the first update on, not a blend with the
initial draw. It is computed as a running interpolation:

    average += (weights - average) * (1 - decay) / (1 - decay**t)

whose weight is 1 at the first update and tends to ``1 - decay``.

The average is arrays of the backend's own kind (numpy arrays, or torch
tensors on the model's device): an update reads no weight back to the host.
The trainer (tinylm.train) evaluates, keeps and saves the average in place
of the weights; the weights themselves go on training, and a checkpoint
holds both, with the number of updates averaged, so that a resume is exact.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from tinylm.errors import CheckpointError
from tinylm.layers import TORCH_BACKENDS


class WeightAverage:
    """The exponential moving average of ``model``'s parameters with the factor ``decay``
    (0 < decay < 1): ``update()`` after every optimizer step, ``state_dict()`` to read it."""

    def __init__(self, model: Any, decay: float) -> None:
        if not 0 < decay < 1:
            raise ValueError(f"the average's decay must be between 0 and 1, got {decay!r}")
        self.model = model
        self.decay = decay
        self.updates = 0  # how many updates the average holds; none yet: it is the weights
        self._torch = model.backend in TORCH_BACKENDS
        self.average = {name: self._copy(p) for name, p in model._named_parameters().items()}

    def _copy(self, p: Any) -> Any:
        # a torch model's average stays a tensor beside its parameter (on its device)
        return p.detach().clone() if self._torch else self.model.to_numpy(p)

    def update(self) -> None:
        """Fold the model's current weights (those of one more update) into the average."""
        self.updates += 1
        weight = (1 - self.decay) / (1 - self.decay ** self.updates)
        params = self.model._named_parameters()
        for name, average in self.average.items():
            if self._torch:
                average.lerp_(params[name].detach(), weight)
            else:
                step = self.model.to_numpy(params[name])  # a copy: the work array
                step -= average
                step *= weight
                average += step                              # average + (w - average) * weight

    def state_dict(self) -> dict[str, np.ndarray]:
        """The averaged parameters as numpy arrays by state-dict name (buffers not included)."""
        if self._torch:
            return {name: self.model.to_numpy(a) for name, a in self.average.items()}  # copies
        return {name: a.copy() for name, a in self.average.items()}

    def load_state_dict(self, state: Mapping[str, np.ndarray], updates: int) -> None:
        """Continue from a checkpoint's average of ``updates`` updates (``state`` may hold
        the model's buffers too); a CheckpointError where a parameter is missing or of
        another shape."""
        if int(updates) < 0:
            raise CheckpointError(f"the checkpoint's average holds {updates} updates")
        missing = [name for name in self.average if name not in state]
        if missing:
            raise CheckpointError(f"the checkpoint's average of the weights lacks {missing[0]!r}")
        for name in self.average:
            value = np.asarray(state[name])
            if value.shape != tuple(self.average[name].shape):
                raise CheckpointError(f"the checkpoint's average of {name!r} has shape "
                                      f"{value.shape}, the model expects "
                                      f"{tuple(self.average[name].shape)}")
            like = self.average[name]
            self.average[name] = (like.new_tensor(value) if self._torch
                                  else value.astype(like.dtype, copy=True))
        self.updates = int(updates)
