"""``Value``: a scalar that remembers how it was computed, and backpropagation.

Every arithmetic operation on ``Value`` objects builds one node of a graph:
the new node keeps its ``parents``, the name of its ``op``, and the local
derivative of its result with respect to each parent (``local_grads``),
computed right away from the numbers at hand. ``backward()`` then applies the
chain rule once, from the output back to the leaves:

    parent.grad += local_grad * node.grad     for every edge, outputs first.

Storing the local derivatives (rather than a closure per node) keeps each op
to two readable lines, "what is ``out``" and "how does a change in each
parent change ``out``", and makes the backward pass one short loop.

The zero-grad rule (the same as PyTorch's):
  * Leaves (values with no parents: inputs, weights, constants) *accumulate*:
    each ``backward()`` adds into ``leaf.grad``. Set ``grad = 0.0`` yourself,
    or call ``Module.zero_grad()``, before the next backward pass.
  * Every other node of the graph is reset to 0 at the start of each
    ``backward()``, so calling it twice on the same graph adds the same
    gradient to the leaves twice and never counts a path twice.

Numbers follow IEEE float semantics, as PyTorch's float64 tensors do: an
overflow gives ``inf``, ``0 ** -1`` gives ``inf``, ``log(0)`` gives ``-inf``,
and a negative base with a non-integer exponent gives ``nan``; no operation
raises ``OverflowError``, ``ZeroDivisionError`` or ``ValueError``.
"""

from __future__ import annotations

import contextlib
import gc
import math
from typing import Iterator, Sequence, Union

Number = Union[int, float]


class Value:
    """A scalar node of a computation graph (``==`` and ``hash`` are by identity)."""

    # __slots__ saves the per-object dict: the reference demo builds ~200,000 nodes.
    __slots__ = ("data", "grad", "parents", "op", "local_grads", "_order")

    def __init__(
        self,
        data: Number,
        parents: tuple[Value, ...] = (),
        op: str = "",
        local_grads: tuple[float, ...] = (),
    ) -> None:
        # A new op (see nn.cross_entropy) is a Value whose local_grads[i] is
        # d(data)/d(parents[i]), evaluated at this point.
        self.data = float(data)
        self.grad = 0.0
        self.parents = parents
        self.op = op
        self.local_grads = local_grads

    def __repr__(self) -> str:
        op = f", op={self.op!r}" if self.op else ""
        return f"Value(data={self.data:.6g}, grad={self.grad:.6g}{op})"

    # --- arithmetic: a plain number is a constant and gets no node of its own ------

    def __add__(self, other: Value | Number) -> Value:
        if isinstance(other, Value):
            return Value(self.data + other.data, (self, other), "+", (1.0, 1.0))
        return Value(self.data + _number(other), (self,), "+", (1.0,))

    def __mul__(self, other: Value | Number) -> Value:
        if isinstance(other, Value):
            return Value(self.data * other.data, (self, other), "*", (other.data, self.data))
        other = _number(other)
        return Value(self.data * other, (self,), "*", (other,))

    def __neg__(self) -> Value:
        return Value(-self.data, (self,), "neg", (-1.0,))

    def __sub__(self, other: Value | Number) -> Value:
        if isinstance(other, Value):
            return Value(self.data - other.data, (self, other), "-", (1.0, -1.0))
        return Value(self.data - _number(other), (self,), "-", (1.0,))

    def __rsub__(self, other: Number) -> Value:
        return Value(_number(other) - self.data, (self,), "-", (-1.0,))

    def __truediv__(self, other: Value | Number) -> Value:
        a = self.data
        if isinstance(other, Value):
            b = other.data
            return Value(_div(a, b), (self, other), "/", (_div(1.0, b), _div(-a, b * b)))
        b = _number(other)
        return Value(_div(a, b), (self,), "/", (_div(1.0, b),))

    def __rtruediv__(self, other: Number) -> Value:
        a, b = _number(other), self.data
        return Value(_div(a, b), (self,), "/", (_div(-a, b * b),))

    def __pow__(self, other: Value | Number) -> Value:
        a = self.data
        if isinstance(other, Value):
            b = other.data
            out = _pow(a, b)
            return Value(out, (self, other), "**", (_dpow_dbase(a, b), _dpow_dexp(a, b, out)))
        b = _number(other)
        return Value(_pow(a, b), (self,), f"**{b:g}", (_dpow_dbase(a, b),))

    def __rpow__(self, other: Number) -> Value:
        a, b = _number(other), self.data
        out = _pow(a, b)
        return Value(out, (self,), "**", (_dpow_dexp(a, b, out),))

    __radd__ = __add__
    __rmul__ = __mul__

    # --- functions ------------------------------------------------------------------

    def exp(self) -> Value:
        out = _exp(self.data)
        return Value(out, (self,), "exp", (out,))

    def log(self) -> Value:
        x = self.data
        out = math.log(x) if x > 0 else (-math.inf if x == 0 else math.nan)
        return Value(out, (self,), "log", (_div(1.0, x),))

    def tanh(self) -> Value:
        # math.tanh saturates to +-1; the textbook (e^2x - 1)/(e^2x + 1) overflows.
        t = math.tanh(self.data)
        return Value(t, (self,), "tanh", (1.0 - t * t,))

    def sigmoid(self) -> Value:
        x = self.data
        # Only ever exponentiate a non-positive number, so nothing overflows.
        if x >= 0:
            s = 1.0 / (1.0 + math.exp(-x))
        else:
            e = math.exp(x)
            s = e / (1.0 + e)
        return Value(s, (self,), "sigmoid", (s * (1.0 - s),))

    def relu(self) -> Value:
        x = self.data
        # Written so that relu(nan) and its slope are nan and 1, as in PyTorch; at 0 the slope is 0.
        return Value(0.0 if x <= 0 else x, (self,), "relu", (0.0 if x <= 0 else 1.0,))

    # --- backpropagation --------------------------------------------------------------

    def backward(self) -> None:
        """Add d(self)/d(leaf) into ``leaf.grad`` for every leaf below ``self``.

        See the module docstring for the zero-grad rule.
        """
        order = self.topological_order()
        for node in order:
            if node.parents:
                node.grad = 0.0
        self.grad += 1.0
        for node in reversed(order):
            g = node.grad
            for parent, local in zip(node.parents, node.local_grads):
                parent.grad += local * g

    def topological_order(self) -> list[Value]:
        """Every node below ``self`` (itself last), each after all its parents.

        An explicit stack instead of recursion, so a graph of any depth works.
        A node's parents never change once it exists, so the order is cached
        (without ``self`` in it: a node holding a list that holds the node
        would be a reference cycle, freed only by the garbage collector).
        """
        try:
            return [*self._order, self]
        except AttributeError:
            pass
        order: list[Value] = []
        visited = {self}
        # Depth first; each stack entry keeps its place in the node's parents.
        stack = [(self, iter(self.parents))]
        while stack:
            node, parents = stack[-1]
            for parent in parents:
                if parent not in visited:
                    visited.add(parent)
                    stack.append((parent, iter(parent.parents)))
                    break
            else:  # every parent is placed
                stack.pop()
                order.append(node)
        self._order = order[:-1]
        return order


# --- IEEE arithmetic on Python floats, which raise where a tensor library would not ---


def _number(x: object) -> float:
    if isinstance(x, (int, float)):
        return x  # type: ignore[return-value]
    raise TypeError(f"a Value combines with a Value, int or float, not {type(x).__name__}")


def _div(a: float, b: float) -> float:
    try:
        return a / b
    except ZeroDivisionError:
        if a == 0 or math.isnan(a):
            return math.nan
        return math.copysign(math.inf, a) * math.copysign(1.0, b)


def _pow(a: float, b: float) -> float:
    try:
        out = a**b
    except (ZeroDivisionError, OverflowError):
        # |result| is infinite; negative only for a negative base and an odd exponent.
        odd = b % 2 == 1
        return math.copysign(math.inf, a) if odd else math.inf
    # Python answers (-8.0) ** (1/3) with a complex number; a real engine says nan.
    return math.nan if isinstance(out, complex) else out


def _dpow_dbase(a: float, b: float) -> float:
    # b * a**(b-1), except that a constant function (b == 0) has slope 0 even at a == 0.
    return 0.0 if b == 0 else b * _pow(a, b - 1)


def _dpow_dexp(a: float, b: float, out: float) -> float:
    # a**b * log(a); PyTorch takes 0 at a == 0 when b >= 0 (0 * -inf would be nan).
    if a == 0 and b >= 0:
        return 0.0
    return out * (math.log(a) if a > 0 else (-math.inf if a == 0 else math.nan))


def _exp(x: float) -> float:
    try:
        return math.exp(x)
    except OverflowError:
        return math.inf


def weighted_sum(weights: Sequence[Value], inputs: Sequence[Value], bias: Value) -> Value:
    """``bias + sum(w * x)`` in one node instead of 2n: a neuron's pre-activation.

    The derivative with respect to each weight is its input and with respect
    to each input its weight, so the node has 2n + 1 parents and backward
    needs nothing new. Adds left to right, like the unfused expression.
    """
    if len(weights) != len(inputs):
        # zip would silently drop the extra weights or inputs.
        raise ValueError(f"got {len(inputs)} inputs for {len(weights)} weights")
    xs = [x.data for x in inputs]
    ws = [w.data for w in weights]
    total = bias.data
    for w, x in zip(ws, xs):
        total += w * x
    return Value(total, (bias, *weights, *inputs), "w·x+b", (1.0, *xs, *ws))


@contextlib.contextmanager
def cycle_collector_paused() -> Iterator[None]:
    """Pause CPython's cycle collector while building and freeing large graphs.

    A graph of Values holds no reference cycles (a node refers only to its
    parents), so reference counting frees it the moment the loss goes out of
    scope. The cycle collector, though, wakes up every few hundred
    allocations and walks every object that is still alive: while a
    training step builds its graph, that is the whole graph, again and again,
    which costs as much as the step itself on a large model.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
