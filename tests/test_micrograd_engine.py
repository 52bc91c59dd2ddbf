"""The scalar autograd engine against PyTorch float64, and its promises:
reuse, depth, repeated backward, overflow, IEEE edge cases."""

from __future__ import annotations

import gc
import math
import sys

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tinylm.micrograd.engine import Value, cycle_collector_paused, weighted_sum

REL, ABS = 1e-9, 1e-12


def close(a: float, b: float, rel: float = REL, abs_: float = ABS) -> bool:
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    if math.isinf(a) or math.isinf(b):
        return a == b
    return math.isclose(a, b, rel_tol=rel, abs_tol=abs_)


def t64(x: float) -> torch.Tensor:
    return torch.tensor(x, dtype=torch.float64, requires_grad=True)


def torch_grad(t: torch.Tensor) -> float:
    return 0.0 if t.grad is None else t.grad.item()


def check_against_torch(f, *xs: float) -> None:
    """f works on Values and on tensors alike; compare result and every gradient."""
    vs = [Value(x) for x in xs]
    ts = [t64(x) for x in xs]
    out_v, out_t = f(*vs), f(*ts)
    out_v.backward()
    out_t.backward()
    assert close(out_v.data, out_t.item()), (out_v.data, out_t.item())
    for v, t in zip(vs, ts):
        assert close(v.grad, torch_grad(t)), (v.grad, torch_grad(t))


# --- every op, value and gradient ------------------------------------------------------

UNARY = {
    "neg": lambda a: -a,
    "exp": lambda a: a.exp(),
    "log": lambda a: a.log(),
    "tanh": lambda a: a.tanh(),
    "sigmoid": lambda a: a.sigmoid(),
    "relu": lambda a: a.relu(),
    "square": lambda a: a**2,
    "cube": lambda a: a**3,
    "sqrt": lambda a: a**0.5,
    "reciprocal": lambda a: a**-1,
    "pow0": lambda a: a**0,
}
BINARY = {
    "add": lambda a, b: a + b,
    "sub": lambda a, b: a - b,
    "mul": lambda a, b: a * b,
    "div": lambda a, b: a / b,
    "pow": lambda a, b: a**b,
}
WITH_CONSTANT = {
    "add": lambda a, c: a + c,
    "radd": lambda a, c: c + a,
    "sub": lambda a, c: a - c,
    "rsub": lambda a, c: c - a,
    "mul": lambda a, c: a * c,
    "rmul": lambda a, c: c * a,
    "div": lambda a, c: a / c,
    "rdiv": lambda a, c: c / a,
    "pow": lambda a, c: a**c,
    "rpow": lambda a, c: c**a,
}
INPUTS = [-2.5, -1.0, -0.3, 0.0, 0.7, 1.0, 3.0]


@pytest.mark.parametrize("x", INPUTS)
@pytest.mark.parametrize("name", sorted(UNARY))
def test_unary_op_matches_torch(name, x):
    check_against_torch(UNARY[name], x)


@pytest.mark.parametrize("x", INPUTS)
@pytest.mark.parametrize("y", [-2.0, -0.5, 0.0, 0.5, 3.0])
@pytest.mark.parametrize("name", sorted(BINARY))
def test_binary_op_matches_torch(name, x, y):
    check_against_torch(BINARY[name], x, y)


@pytest.mark.parametrize("x", INPUTS)
@pytest.mark.parametrize("c", [2.5, -1.5, 2])
@pytest.mark.parametrize("name", sorted(WITH_CONSTANT))
def test_op_with_a_plain_number_matches_torch(name, c, x):
    check_against_torch(lambda a: WITH_CONSTANT[name](a, c), x)


def test_a_plain_number_gets_no_node():
    a = Value(3.0)
    for out in (a + 1, 1 + a, a - 1, 1 - a, a * 2, 2 * a, a / 2, 2 / a, a**2, 2**a):
        assert out.parents == (a,)


@pytest.mark.parametrize("base, exponent", [(-2.0, 0.5), (-8.0, 1 / 3), (-0.1, 2.5)])
def test_negative_base_with_fractional_exponent_is_nan(base, exponent):
    out = Value(base) ** exponent
    assert math.isnan(out.data) and isinstance(out.data, float)
    a, b = Value(base), Value(exponent)
    out = a**b
    out.backward()
    assert math.isnan(out.data) and math.isnan(a.grad) and math.isnan(b.grad)
    check_against_torch(lambda p, q: p**q, base, exponent)


@pytest.mark.parametrize(
    "f, x",
    [
        (lambda a: a.log(), 0.0),  # -inf, slope inf
        (lambda a: a.log(), -1.0),  # nan
        (lambda a: 1 / a, 0.0),
        (lambda a: 1 / a, -0.0),
        (lambda a: 0 / a, 0.0),
        (lambda a: a**-1, 0.0),
        (lambda a: a**0.5, 0.0),
        (lambda a: a**-2, -0.0),
        (lambda a: a**3.0, -1e200),  # overflows to -inf
        (lambda a: a**2, 1e200),
        (lambda a: 10**a, 400.0),
        (lambda a: a.relu(), float("nan")),
    ],
)
def test_ieee_edge_cases_match_torch_and_never_raise(f, x):
    check_against_torch(f, x)


@pytest.mark.parametrize("base, exponent", [(0.0, 2.0), (0.0, 0.0), (0.0, -1.0), (-0.0, -1.0), (-2.0, 3.0)])
def test_value_exponent_edge_cases_match_torch(base, exponent):
    check_against_torch(lambda a, b: a**b, base, exponent)


@pytest.mark.parametrize("x", [1000.0, -1000.0, 1e308, -1e308])
@pytest.mark.parametrize("name", ["exp", "tanh", "sigmoid"])
def test_no_overflow_error(name, x):
    check_against_torch(UNARY[name], x)


def test_combining_with_a_string_is_a_type_error():
    with pytest.raises(TypeError, match="Value"):
        Value(1.0) + "2"  # noqa: B018
    with pytest.raises(TypeError):
        "2" * Value(1.0)  # noqa: B018


def test_data_is_always_a_float():
    assert type(Value(2).data) is float
    assert type((Value(2) * 3).data) is float


# --- random expression graphs ----------------------------------------------------------

# Each instruction: (op name, index of the first operand, index of the second,
# a constant). Operands are earlier nodes, so nodes are reused at random.
PROGRAM_OPS = sorted(UNARY) + [f"v{name}" for name in BINARY] + [f"c{name}" for name in WITH_CONSTANT]


def _apply(op: str, a, b, c: float):
    if op in UNARY:
        return UNARY[op](a)
    if op[0] == "v":
        return BINARY[op[1:]](a, b)
    return WITH_CONSTANT[op[1:]](a, c)


def _in_domain(op: str, a: float, b: float, c: float) -> bool:
    """Keep away from poles, kinks and complex results, where tolerances mean nothing."""
    if op in ("log", "sqrt"):
        return a > 1e-2
    if op == "reciprocal" or op == "crdiv":
        return abs(a) > 1e-2
    if op == "relu":
        return abs(a) > 1e-6
    if op == "vdiv":
        return abs(b) > 1e-2
    if op in ("vpow", "cpow"):
        return a > 1e-2
    if op == "cdiv":
        return abs(c) > 1e-2
    if op == "crpow":
        return c > 0.1
    return True


programs = st.tuples(
    st.lists(st.floats(-2.0, 2.0), min_size=1, max_size=3),
    st.lists(
        st.tuples(
            st.sampled_from(PROGRAM_OPS),
            st.integers(0, 1000),
            st.integers(0, 1000),
            st.floats(-3.0, 3.0),
        ),
        min_size=1,
        max_size=12,
    ),
)


@settings(max_examples=80, deadline=None)
@given(programs)
def test_random_expression_graphs_match_torch(program):
    leaves, instructions = program
    values = [Value(x) for x in leaves]
    tensors = [t64(x) for x in leaves]
    for op, i, j, c in instructions:
        a, b = values[i % len(values)], values[j % len(values)]
        if not _in_domain(op, a.data, b.data, c):
            op = "tanh"  # a safe stand-in keeps the example instead of discarding it
        out = _apply(op, a, b, c)
        if not abs(out.data) < 1e4:
            op, out = "tanh", a.tanh()
        values.append(out)
        tensors.append(_apply(op, tensors[i % len(tensors)], tensors[j % len(tensors)], c))
    root_v, root_t = values[-1], tensors[-1]
    root_v.backward()
    root_t.backward()
    assert close(root_v.data, root_t.item(), rel=1e-9, abs_=1e-9)
    for v, t in zip(values[: len(leaves)], tensors[: len(leaves)]):
        assert close(v.grad, torch_grad(t), rel=1e-6, abs_=1e-6), (v.grad, torch_grad(t))


# --- the backward pass -----------------------------------------------------------------


def test_reused_node_gets_every_path():
    a = Value(3.0)
    b = a + a
    c = b * b
    c.backward()
    assert c.data == 36.0
    assert a.grad == 24.0  # dc/da = 2b * 2 = 8a
    assert b.grad == 12.0


@pytest.mark.parametrize(
    "f, x",
    [(lambda v: v * v, -1.5), (lambda v: v / v, -1.5), (lambda v: v - v, -1.5), (lambda v: v**v, 1.5)],
)
def test_same_value_on_both_sides_of_an_op(f, x):
    check_against_torch(f, x)


def test_deep_chain_needs_no_recursion():
    x = Value(0.5)
    y = x
    for _ in range(200_000):
        y = y + x
    y.backward()
    assert y.data == 0.5 * 200_001
    assert x.grad == 200_001.0


def test_second_backward_adds_to_leaves_once_more():
    a, b = Value(2.0), Value(-3.0)
    h = (a * b).tanh()
    loss = h * h + a
    loss.backward()
    first = (a.grad, b.grad, h.grad)
    loss.backward()
    assert (a.grad, b.grad) == (2 * first[0], 2 * first[1])
    assert h.grad == first[2]  # intermediate nodes start from 0 every time


def test_backward_through_a_shared_intermediate_from_two_roots():
    x = Value(0.3)
    h = x.tanh()
    (h * 2).backward()
    (h * 3).backward()
    assert x.grad == pytest.approx(5 * (1 - math.tanh(0.3) ** 2))


def test_zero_grad_rule_leaves_accumulate_until_cleared():
    w = Value(1.5)
    loss = w * w
    loss.backward()
    loss.backward()
    assert w.grad == 6.0
    w.grad = 0.0
    loss.backward()
    assert w.grad == 3.0


def test_backward_on_a_leaf():
    a = Value(4.0)
    a.backward()
    assert a.grad == 1.0
    a.backward()
    assert a.grad == 2.0  # a leaf, so it accumulates like any other


def test_topological_order_puts_parents_first_and_is_cached():
    a, b = Value(1.0), Value(2.0)
    c = a * b
    d = c + a
    e = d * c
    order = e.topological_order()
    position = {v: i for i, v in enumerate(order)}
    assert len(order) == 5 and order[-1] is e
    for v in order:
        assert all(position[p] < position[v] for p in v.parents)
    assert e.topological_order() == order


def test_the_cached_order_makes_no_reference_cycle():
    a = Value(1.0)
    loss = (a * 2).tanh() + a
    before = sys.getrefcount(loss)
    loss.backward()
    # Nothing new refers to the root, so reference counting alone frees the graph.
    assert sys.getrefcount(loss) == before


def test_cycle_collector_paused_restores_the_previous_state():
    assert gc.isenabled()
    with cycle_collector_paused():
        assert not gc.isenabled()
    assert gc.isenabled()
    gc.disable()
    try:
        with cycle_collector_paused():
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_weighted_sum_equals_the_composed_expression():
    ws = [Value(0.5), Value(-1.25), Value(2.0)]
    xs = [Value(1.5), Value(0.75), Value(-0.5)]
    b = Value(0.1)
    fused = weighted_sum(ws, xs, b).tanh()
    fused.backward()
    grads = [v.grad for v in (*ws, *xs, b)]
    for v in (*ws, *xs, b):
        v.grad = 0.0
    composed = sum((w * x for w, x in zip(ws, xs)), b).tanh()
    composed.backward()
    assert fused.data == composed.data
    assert grads == [v.grad for v in (*ws, *xs, b)]
    check_against_torch(lambda *v: (v[0] * v[3] + v[1] * v[4] + v[2] * v[5] + v[6]).tanh(),
                        0.5, -1.25, 2.0, 1.5, 0.75, -0.5, 0.1)


def test_repr_names_data_grad_and_op():
    assert repr(Value(2.0) * 3) == "Value(data=6, grad=0, op='*')"
