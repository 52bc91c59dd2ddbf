"""What layers and language models are, whatever computes them: the shared part.

``Layer`` and ``Sequential`` are the skeleton every backend's layers hang
on: parameters and buffers found by attribute name, train/eval mode, and
the last output kept in ``.out`` for diagnostics.

A model is a stack of layers (``layers``) that reads the last ``reads``
tokens of each context and returns next-token logits, plus a loss. This
base class holds what does not depend on the array library: the config,
train/eval mode, mean-square weight penalties, and the state dict, whose
names ("layers.0.weight", ...) and layouts (PyTorch's: Linear weight is
(out, in)) are the same for every backend, so a checkpoint written by one
loads into any other. Each backend subclass supplies the arithmetic.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any, ContextManager, Iterable, Iterator, Mapping

import numpy as np

from tinylm.errors import CheckpointError


class Layer:
    """What every layer shares: parameters and buffers by name, train/eval, ``.out``.

    Subclasses list their parameter attributes in ``param_names`` and their
    non-trainable state (running statistics...) in ``buffer_names``, so that
    models can build state dicts without knowing each layer. What a
    parameter is (a numpy Parameter, a tensor, a list of Values) is up to
    the backend.
    """

    param_names: tuple[str, ...] = ()
    buffer_names: tuple[str, ...] = ()
    # attributes holding layers of their own (attention's qkv and proj Linears): their
    # parameters are named "<child>.<name>", PyTorch's convention for nested modules
    child_names: tuple[str, ...] = ()

    def __init__(self) -> None:
        self.training = True
        self.out: Any = None
        self.out_grad: Any = None  # d loss / d out, where a backend records it

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # Calling a layer is calling its forward, bound when the class is made: one Python
        # frame a call, not two (a sampled Transformer token is about fifty layer calls).
        cls.__call__ = cls.forward  # type: ignore[method-assign]

    def __call__(self, x: Any, *args: Any) -> Any:
        return self.forward(x, *args)

    def forward(self, x: Any) -> Any:
        raise NotImplementedError

    def children(self) -> list[tuple[str, "Layer"]]:
        return [(name, getattr(self, name)) for name in self.child_names]

    def named_parameters(self) -> list[tuple[str, Any]]:
        own = [(name, getattr(self, name)) for name in self.param_names
               if getattr(self, name) is not None]
        return own + [(f"{child}.{name}", p) for child, layer in self.children()
                      for name, p in layer.named_parameters()]

    def parameters(self) -> list[Any]:
        return [p for _, p in self.named_parameters()]

    def named_buffers(self) -> list[tuple[str, Any]]:
        own = [(name, getattr(self, name)) for name in self.buffer_names]
        return own + [(f"{child}.{name}", b) for child, layer in self.children()
                      for name, b in layer.named_buffers()]

    def train(self, mode: bool = True) -> "Layer":
        self.training = mode
        for _, layer in self.children():
            layer.train(mode)
        return self

    def eval(self) -> "Layer":
        return self.train(False)


class Sequential(Layer):
    """Layers applied one after another; names its parameters "<index>.<name>"."""

    def __init__(self, layers: Iterable[Layer]) -> None:
        super().__init__()
        self.layers: list[Layer] = list(layers)

    def forward(self, x: Any) -> Any:
        for layer in self.layers:
            x = layer(x)
        self.out = x
        return x

    def __iter__(self) -> Iterator[Layer]:
        return iter(self.layers)

    def __getitem__(self, i: int) -> Layer:
        return self.layers[i]

    def named_parameters(self) -> list[tuple[str, Any]]:
        return [(f"{i}.{name}", p) for i, layer in enumerate(self.layers)
                for name, p in layer.named_parameters()]

    def named_buffers(self) -> list[tuple[str, Any]]:
        return [(f"{i}.{name}", b) for i, layer in enumerate(self.layers)
                for name, b in layer.named_buffers()]

    def train(self, mode: bool = True) -> "Sequential":
        self.training = mode
        for layer in self.layers:
            layer.train(mode)
        return self


def dropout_mask(rng: Any, shape: tuple[int, ...], p: float, dtype: Any = np.float32,
                 part: tuple[slice, int] | None = None) -> np.ndarray:
    """Inverted dropout's multiplier for an array of ``shape``: 0 with probability p, else
    1 / (1 - p), so that the expected value is unchanged and eval needs no rescaling.

    One draw of the tinylm RNG per element in C order, an element kept when
    its ``rng.random()`` (k / 2**24) is at least p, compared here as the
    integer k: every backend that asks the same RNG drops the same elements.
    With ``part`` (rows, n) the array holds rows ``rows`` of a batch of n: the
    whole batch's mask is drawn and those rows of it returned, so that a batch
    computed in parts drops what it drops computed whole.
    """
    if rng is None:
        raise ValueError("a Dropout layer in training mode needs the run's RNG "
                         "(model.draw_dropout_from(rng))")
    whole = shape if part is None else (part[1], *shape[1:])
    k = rng.random_u32_array(int(np.prod(whole))) >> np.uint64(8)   # random() * 2**24
    keep = (k >= math.ceil(p * 2**24)).reshape(whole)
    if part is not None:
        keep = keep[part[0]]                                        # (rows, ...)
    scale = np.asarray(1, dtype=dtype) / np.asarray(1 - p, dtype=dtype)
    return np.where(keep, scale, np.zeros((), dtype=dtype))


def walk(layer: Any) -> Iterator[Any]:
    """``layer`` and every layer inside it, depth first in forward order."""
    yield layer
    for child in getattr(layer, "layers", None) or [c for _, c in layer.children()]:
        yield from walk(child)


class Cache:
    """What a sequence model has already computed for the tokens it has read.

    Fed one new token at a time, a Transformer would otherwise recompute the
    keys and values of every earlier position, and a recurrent net rerun
    every earlier step. Each attention layer keeps its keys and values here
    and each recurrent net its last hidden state, under a slot of its own;
    ``length`` counts the tokens read, which is also the position of the
    next one. Only for inference: what a backward pass needs is not kept.
    """

    def __init__(self) -> None:
        self.length = 0
        self._slots: dict[int, dict[str, Any]] = {}

    def slot(self, layer: Any) -> dict[str, Any]:
        """The dict where ``layer`` keeps its state (empty before the first token)."""
        return self._slots.setdefault(id(layer), {})


def first_state(start: Any, cache: Cache | None, layer: Any) -> Any:
    """h_{-1} of a recurrent net: its learned ``start``, or where a cached run left off."""
    carried = None if cache is None else cache.slot(layer).get("h")
    return start if carried is None else carried


def keep_state(cache: Cache | None, layer: Any, hs: Any) -> None:
    """Keep a recurrent net's last hidden state (of hs, (B, T, H)) for the next tokens."""
    if cache is not None:
        cache.slot(layer)["h"] = hs[:, -1]


def check_cached(targets: Any, cache: Cache | None) -> None:
    """A cache is for generating: a forward pass that trains keeps what backward needs instead."""
    if cache is not None and targets is not None:
        raise ValueError("a forward pass with a cache is for inference: give targets or a cache, "
                         "not both")


class LanguageModel:
    """Backend-independent half of a model; see the module docstring.

    Subclasses implement ``forward(idx, targets=None) -> (logits, loss)``,
    ``backward()``, ``parameters()``, and the three hooks below that let
    this class read and write their tensors by state-dict name.
    """

    backend = ""
    per_position = False  # a sequence model predicts at every position (see the module docstring)
    device = "cpu"        # where its tensors are: a torch model may move (``to_device``)

    def __init__(self, config: Any, net: Any, reads: int,
                 penalties: Mapping[str, float] = {}) -> None:
        self.config = config
        # a sequence model reads up to its block size; a fixed-window model its context
        self.context: int = config.block_size if self.per_position else config.context
        self.reads = reads  # the network sees idx[:, -reads:]
        # state-dict name -> c: the loss gains c * mean(weight**2) (the bigram's smoothing)
        self.penalties = dict(penalties)
        self.training = True
        self.net = net
        # a fixed-window model's net is the Sequential of its layers, its parameters named
        # "layers.<i>.<name>"; a sequence model's is one network with its own dotted names
        self._prefix = "" if self.per_position else "layers."
        self._params = {self._prefix + name: p for name, p in net.named_parameters()}
        self.layers = [net] if self.per_position else list(net)

    # --- hooks for the backends -------------------------------------------------------

    def _named_parameters(self) -> dict[str, Any]:
        """Trainable tensors by state-dict name, as the backend holds them."""
        raise NotImplementedError

    def _named_buffers(self) -> dict[str, Any]:
        """Non-trainable state (e.g. BatchNorm running statistics) by state-dict name."""
        return {}

    def to_numpy(self, x: Any) -> np.ndarray:
        """Anything this backend computes or holds as a numpy array: logits, a layer's
        output, a parameter or buffer (by the object ``_named_parameters`` gives). A
        parameter's is a copy, which the next update does not change; an array the model
        returned is given as it is."""
        raise NotImplementedError

    def grad_of(self, x: Any) -> np.ndarray | None:
        """The gradient of the last loss held by a parameter, or, given a layer, by that
        layer's output, after ``backward`` (None where the backend kept none)."""
        raise NotImplementedError

    def inference_mode(self) -> ContextManager[Any]:
        """A context in which forward passes keep nothing for a backward pass (PyTorch's
        inference mode); the backends that keep nothing anyway need nothing."""
        return contextlib.nullcontext()

    def keep_output_grad(self, layer: Any) -> None:
        """Ask that ``layer``'s last output keep its gradient through the next ``backward``
        (autograd frees it otherwise); backends that keep it anyway need do nothing."""

    def _assign(self, tensor: Any, value: np.ndarray) -> None:
        """Overwrite ``tensor`` in place with ``value`` (same shape)."""
        raise NotImplementedError

    def _set_training(self, mode: bool) -> None:
        raise NotImplementedError

    def draw_dropout_from(self, rng: Any) -> None:
        """Give every Dropout layer the RNG its masks come from (the run's, so that a
        checkpoint of the RNG's state resumes them); models without dropout ignore it."""
        for layer in self._sublayers():
            if getattr(layer, "draws_from_rng", False):
                layer.rng = rng

    @contextlib.contextmanager
    def computing_part(self, rows: slice, n: int) -> Iterator[None]:
        """Inside, the forward passes compute rows ``rows`` of a batch of ``n`` (a micro-batch,
        one process's share): every Dropout layer draws the whole batch's mask and keeps
        those rows (``dropout_mask``). The caller rewinds the RNG before each part, so
        that every part reads the same masks."""
        layers = [layer for layer in self._sublayers() if getattr(layer, "draws_from_rng", False)]
        for layer in layers:
            layer.part = (rows, n)
        try:
            yield
        finally:
            for layer in layers:
                layer.part = None

    def _sublayers(self) -> Iterable[Any]:
        """Every layer of the model's network, depth first."""
        return walk(self.net)

    # --- shared ---------------------------------------------------------------------------

    def train(self, mode: bool = True) -> "LanguageModel":
        self.training = mode
        self._set_training(mode)
        return self

    def eval(self) -> "LanguageModel":
        return self.train(False)

    def _named_state(self) -> dict[str, Any]:
        return {**self._named_parameters(), **self._named_buffers()}

    def state_dict(self) -> dict[str, np.ndarray]:
        """Copies of every parameter and buffer as numpy arrays, in PyTorch layout."""
        return {name: self.to_numpy(t) for name, t in self._named_state().items()}

    def load_state_dict(self, state: Mapping[str, np.ndarray], strict: bool = True) -> None:
        """Copy ``state`` into the model; raises CheckpointError on any mismatch.

        ``strict=False`` allows names to be missing from ``state`` (those keep
        their values), which is how builders set only what they draw at random.
        """
        own = self._named_state()
        unexpected = sorted(set(state) - set(own))
        missing = [name for name in own if name not in state]
        if unexpected or (strict and missing):
            parts = []
            if missing and strict:
                parts.append(f"missing {', '.join(missing)}")
            if unexpected:
                parts.append(f"unexpected {', '.join(unexpected)}")
            raise CheckpointError(
                f"the saved weights do not fit this {self.config.model!r} model: {'; '.join(parts)}")
        for name, value in state.items():
            value = np.asarray(value)
            shape = self.to_numpy(own[name]).shape
            if value.shape != shape:
                raise CheckpointError(
                    f"the saved weight {name!r} has shape {value.shape}, the model expects {shape}")
            self._assign(own[name], value)

    @property
    def batch_statistics(self) -> bool:
        """Whether a layer normalises with statistics of the batch (BatchNorm), so that
        a training batch needs at least two examples."""
        return any(getattr(layer, "batch_statistics", False) for layer in self._sublayers())

    def num_params(self) -> int:
        """How many trainable numbers the model has."""
        return sum(self.to_numpy(t).size for t in self._named_parameters().values())

    def _inputs(self, idx: Any) -> Any:
        """Check that idx is (B, >= reads) and keep its last ``reads`` columns."""
        if len(idx.shape) != 2 or idx.shape[1] < self.reads:
            raise ValueError(
                f"idx must have shape (B, {self.context}) (at least {self.reads} columns), "
                f"got {tuple(idx.shape)}")
        return idx[:, idx.shape[1] - self.reads:]
