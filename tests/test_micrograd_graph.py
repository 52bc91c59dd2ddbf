"""DOT text of a computation graph, and a real SVG from Graphviz when it is installed."""

from __future__ import annotations

import re
import shutil

import pytest

from tinylm.micrograd.engine import Value
from tinylm.micrograd.graph import render_svg, to_dot


def _small_graph():
    a, b = Value(2.0), Value(-3.0)
    c = a * b
    loss = (c + a).tanh()
    loss.backward()
    return a, b, c, loss


def test_dot_has_a_box_per_value_and_an_ellipse_per_op():
    a, b, c, loss = _small_graph()
    dot = to_dot(loss, {a: "a", b: "b", loss: "loss"})
    assert dot.startswith("digraph micrograd {") and dot.rstrip().endswith("}")
    boxes = re.findall(r"shape=record", dot)
    ops = re.findall(r'shape=ellipse.*label="([^"]*)"', dot)
    assert len(boxes) == 5  # a, b, a*b, +, tanh
    assert sorted(ops) == ["*", "+", "tanh"]
    assert "{ a | data 2 | grad" in dot
    assert f"grad {a.grad:.4g}" in dot and f"data {loss.data:.4g}" in dot


def test_reuse_draws_two_arrows():
    a = Value(3.0)
    b = a + a
    dot = to_dot(b)
    assert dot.count("v0 -> v1_op;") == 2


def test_names_are_escaped():
    a = Value(1.0)
    dot = to_dot(a * 2, {a: 'w{0}|"x"<y>\\'})
    assert r'w\{0\}\|\"x\"\<y\>\\' in dot


def test_deep_graph_without_recursion():
    x = Value(1.0)
    y = x
    for _ in range(20_000):
        y = y * 1.0
    assert to_dot(y).count("->") == 2 * 20_000


def test_render_svg_with_graphviz():
    _, _, _, loss = _small_graph()
    svg = render_svg(to_dot(loss))
    if shutil.which("dot") is None:
        assert svg is None
        pytest.skip("Graphviz 'dot' is not installed: only the DOT text was checked")
    assert svg is not None and b"<svg" in svg and b"tanh" in svg


def test_render_svg_without_graphviz(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    assert render_svg("digraph { a -> b }") is None


@pytest.mark.skipif(shutil.which("dot") is None, reason="needs Graphviz 'dot'")
def test_render_svg_reports_a_dot_failure():
    with pytest.raises(RuntimeError, match="Graphviz"):
        render_svg("this is not dot {")
