"""Pictures of a computation graph: Graphviz DOT text, rendered to SVG by ``dot``.

Each ``Value`` becomes a box showing its name (if given), ``data`` and
``grad``; each operation becomes an ellipse between its inputs and its
result, so the picture reads left to right as the forward pass and right to
left as the backward pass. The DOT text is written here by hand; Graphviz is
needed only to turn it into an image.
"""

from __future__ import annotations

import shutil
import subprocess
from typing import Mapping

from tinylm.micrograd.engine import Value


def to_dot(root: Value, names: Mapping[Value, str] | None = None) -> str:
    """DOT text for the graph below ``root``; ``names`` labels chosen nodes."""
    names = names or {}
    lines = [
        "digraph micrograd {",
        "  rankdir=LR;",
        '  node [fontname="Helvetica", fontsize=10];',
        '  edge [color="#777777"];',
    ]
    ids: dict[Value, str] = {}
    for i, v in enumerate(root.topological_order()):  # parents come first
        ids[v] = node = f"v{i}"
        fields = [f"data {v.data:.4g}", f"grad {v.grad:.4g}"]
        if v in names:
            fields.insert(0, _escape_record(names[v]))
        color = "#f4c2c2" if v is root else "#cfe2f3" if not v.parents else "#ffffff"
        label = "{ " + " | ".join(fields) + " }"
        lines.append(f'  {node} [shape=record, style=filled, fillcolor="{color}", label="{label}"];')
        if v.parents:
            op = _escape_quoted(v.op or "?")
            lines.append(f'  {node}_op [shape=ellipse, style=filled, fillcolor="#eeeeee", label="{op}"];')
            lines.append(f"  {node}_op -> {node};")
            # A parent used twice (a + a) gets two arrows: both carry gradient.
            lines.extend(f"  {ids[p]} -> {node}_op;" for p in v.parents)
    lines.append("}")
    return "\n".join(lines) + "\n"


def render_svg(dot_text: str, timeout: float = 120.0) -> bytes | None:
    """The SVG drawn by Graphviz's ``dot``, or None if ``dot`` is not installed.

    Raises RuntimeError if ``dot`` is there but fails.
    """
    exe = shutil.which("dot")
    if exe is None:
        return None
    try:
        proc = subprocess.run(
            [exe, "-Tsvg"], input=dot_text.encode("utf-8"), capture_output=True, timeout=timeout
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        raise RuntimeError(f"Graphviz 'dot' could not run: {e}") from None
    if proc.returncode != 0:
        message = proc.stderr.decode("utf-8", "replace").strip().splitlines()
        raise RuntimeError(f"Graphviz 'dot' failed: {message[0] if message else proc.returncode}")
    return proc.stdout


def _escape_quoted(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')


def _escape_record(text: str) -> str:
    # In a record label, braces, bars and angle brackets are structure, not text.
    text = _escape_quoted(text)
    for ch in "{}|<>":
        text = text.replace(ch, "\\" + ch)
    return text
