"""The interactive micrograd page: the demo's training, recomputed in the browser.

``write_page`` writes ``micrograd.html``, one self-contained file (its
script and style inline, nothing fetched, so it opens from disk). The page
carries the ``DemoConfig`` as JSON; its script (``resources/micrograd_page.js``)
ports the RNG, the dataset, the ``Value`` engine, the MLP, the loss and
AdamW, so the loss after every step equals the Python run's ``metrics.jsonl``
to about 1e-9 (``tests/test_micrograd_page.py`` checks it in Chromium).
On the page: play, pause, step and reset; the decision surface with the
data, where a click picks the point to trace; the computational graph of
that point, every node with its data and grad; every parameter with its
value, grad and AdamW moments; and the loss of every step.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from importlib import resources
from pathlib import Path

from tinylm.io import atomic_write_text, make_out_dir
from tinylm.micrograd.demo import DemoConfig

PAGE_NAME = "micrograd.html"

_TEMPLATE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>tinylm micrograd: {title}</title>
<style>
{css}
</style>
</head>
<body>
<h1>tinylm micrograd</h1>
<p class="about">{title}. Everything is computed here in your browser, with the same
random numbers, engine and AdamW as <code>tinylm micrograd</code>. Click the surface
to trace a point.</p>
<div class="top">
  <div>
    <div class="controls">
      <button id="play">play</button><button id="pause">pause</button><button
      id="step">step</button><button id="reset">reset</button>
    </div>
    <div id="status"></div>
    <canvas id="surface" width="360" height="360"></canvas>
  </div>
  <div class="params">
    <table id="params">
      <thead><tr><th>parameter</th><th>value</th><th>grad</th><th>m</th><th>v</th></tr></thead>
      <tbody></tbody>
    </table>
  </div>
  <div class="side">
    <div id="traced"></div>
    <h2>train loss</h2>
    <canvas id="losscurve" width="380" height="110"></canvas>
    <pre id="trace"></pre>
  </div>
</div>
<div id="graph"></div>
<script type="application/json" id="config">{config}</script>
<script>
{js}
</script>
</body>
</html>
"""


def config_json(config: DemoConfig) -> str:
    """The config as the page carries it: ``dataclasses.asdict``, as in config.json."""
    # "<" escaped, so no value could close the <script> that holds it
    return json.dumps(dataclasses.asdict(config), sort_keys=True).replace("<", "\\u003c")


def page_html(config: DemoConfig) -> str:
    """The whole page for ``config``, as one string."""
    config.validate()
    js = _resource("micrograd_page.js")
    if "</script" in js.lower():
        raise ValueError("micrograd_page.js must not contain '</script' (it is inlined)")
    title = (f"{config.dataset} ({config.points} points), MLP(2, {config.layer_sizes}), "
             f"{config.steps} steps, lr {config.lr:g}, seed {config.seed}")
    values = {"title": title, "config": config_json(config),
              "css": _resource("micrograd_page.css"), "js": js}
    # one pass over the template, so nothing inserted is read as a placeholder
    return re.sub(r"\{(title|config|css|js)\}", lambda m: values[m.group(1)], _TEMPLATE)


def write_page(out_dir: str | os.PathLike, config: DemoConfig) -> Path:
    """Write ``micrograd.html`` for ``config`` into ``out_dir`` (atomically); return its path."""
    html = page_html(config)
    path = make_out_dir(out_dir) / PAGE_NAME
    atomic_write_text(path, html)
    return path


def _resource(name: str) -> str:
    return resources.files("tinylm").joinpath("resources", name).read_text(encoding="utf-8")
