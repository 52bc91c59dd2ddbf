"""The scalar-autograd demo: train a tiny MLP on a 2D dataset and draw what it learned.

The reference recipe (the defaults of ``DemoConfig``): one ``RNG(42)``
draws the yin-yang data (100 points) and then the weights of
``MLP(2, [8, 3])``; AdamW (lr 0.1, betas (0.9, 0.95), eps 1e-8, weight
decay 1e-4) takes 100 full-batch steps on the mean cross-entropy of the 80
training points, and the validation loss is measured before steps 1, 11,
21, ... ``run_demo`` writes into the out-dir:

  config.json    the DemoConfig, with "model": "micrograd"
  metrics.jsonl  {"step", "train_loss"} per step, {"step", "val_loss"} every
                 ``eval_every`` steps, and {"step", "test_accuracy"} at the end
  regions.png    the decision regions over the data (needs matplotlib)
  graph.dot      the computational graph of one forward/backward pass for one
                 test point, every node with its data and grad
  graph.svg      that graph drawn by Graphviz's ``dot``, if it is installed
"""

from __future__ import annotations

import dataclasses
import io
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from tinylm.errors import ConfigError
from tinylm.io import (
    atomic_write_bytes,
    atomic_write_text,
    check_out_dir,
    make_out_dir,
    write_json,
    write_jsonl,
)
from tinylm.micrograd.datasets import DATASETS, NUM_CLASSES, Point, Splits
from tinylm.micrograd.engine import Value, cycle_collector_paused
from tinylm.micrograd.graph import render_svg, to_dot
from tinylm.micrograd.nn import MLP, AdamW, Linear, cross_entropy
from tinylm.rng import RNG

Record = dict


@dataclass(frozen=True)
class DemoConfig:
    dataset: str = "yinyang"
    points: int = 100
    hidden: tuple[int, ...] = (8,)
    steps: int = 100
    lr: float = 0.1
    seed: int = 42
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    weight_decay: float = 1e-4
    eval_every: int = 10

    def validate(self) -> None:
        """Raise ConfigError, naming the option, for anything that cannot run."""
        if self.dataset not in DATASETS:
            raise ConfigError(f"unknown dataset {self.dataset!r} (choose from {', '.join(DATASETS)})")
        if not _is_int(self.points) or self.points < 10:
            # fewer than 10 points would leave the val or test split empty
            raise ConfigError(f"points must be a whole number >= 10, got {self.points!r}")
        if not self.hidden or not all(_is_int(h) and h >= 1 for h in self.hidden):
            raise ConfigError(f"hidden sizes must be one or more positive whole numbers, got {self.hidden!r}")
        if not _is_int(self.steps) or self.steps < 1:
            raise ConfigError(f"steps must be a positive whole number, got {self.steps!r}")
        if not _is_int(self.eval_every) or self.eval_every < 1:
            raise ConfigError(f"eval_every must be a positive whole number, got {self.eval_every!r}")
        if not _is_int(self.seed) or not 0 < self.seed < 2**64:
            raise ConfigError(f"seed must be a whole number in [1, 2**64), got {self.seed!r}")
        if not (isinstance(self.lr, (int, float)) and 0 < self.lr < math.inf):
            raise ConfigError(f"lr must be a positive finite number, got {self.lr!r}")
        if not all(0 <= b < 1 for b in self.betas) or len(self.betas) != 2:
            raise ConfigError(f"betas must be two numbers in [0, 1), got {self.betas!r}")
        if not (0 <= self.eps < math.inf and 0 <= self.weight_decay < math.inf):
            raise ConfigError("eps and weight_decay must be finite and >= 0")

    @property
    def layer_sizes(self) -> list[int]:
        """The ``nouts`` of the MLP: the hidden sizes, then one logit per class."""
        return [*self.hidden, NUM_CLASSES[self.dataset]]


@dataclass
class Trained:
    """What ``train`` returns: the model, its data and its numbers."""

    config: DemoConfig
    model: MLP
    data: Splits
    records: list[Record]
    test_accuracy: float

    def losses(self, key: str) -> list[tuple[int, float]]:
        """(step, value) for "train_loss" or "val_loss", in step order."""
        return [(r["step"], r[key]) for r in self.records if key in r]


@dataclass
class DemoResult:
    """What ``run_demo`` returns: the training outcome and the files it wrote."""

    trained: Trained
    out_dir: Path
    files: list[Path]
    regions_png: Path | None  # None if matplotlib is not installed
    graph_dot: Path
    graph_svg: Path | None  # None if Graphviz is missing or failed
    graph_error: str | None  # why graph.svg is missing, if it is


def mean_loss(model: MLP, split: Sequence[Point]) -> Value:
    """The mean cross-entropy over ``split``: summed in order from 0, times 1/len."""
    total: Value | float = 0.0
    for x, label in split:
        total = total + cross_entropy(model(x), label)
    return total * (1.0 / len(split))  # type: ignore[return-value]


def predict(model: MLP, x: Sequence[float]) -> int:
    """The class with the largest logit (the first one on a tie)."""
    logits = [v.data for v in model(x)]
    return logits.index(max(logits))


def accuracy(model: MLP, split: Sequence[Point]) -> float:
    return sum(predict(model, x) == label for x, label in split) / len(split)


def train(config: DemoConfig, on_record: Callable[[Record], None] | None = None) -> Trained:
    """Run the recipe in memory; ``on_record`` sees each metrics record as it is made."""
    config.validate()
    records: list[Record] = []

    def emit(record: Record) -> None:
        records.append(record)
        if on_record is not None:
            on_record(record)

    rng = RNG(config.seed)  # first the data, then the weights, from the same stream
    data = DATASETS[config.dataset](config.points, rng)
    model = MLP(2, config.layer_sizes, rng=rng)
    optimizer = AdamW(
        model.parameters(), lr=config.lr, betas=config.betas, eps=config.eps,
        weight_decay=config.weight_decay,
    )
    with cycle_collector_paused():
        for step in range(config.steps):
            if step % config.eval_every == 0:
                emit({"step": step + 1, "val_loss": mean_loss(model, data.val).data})
            loss = mean_loss(model, data.train)
            model.zero_grad()
            loss.backward()
            optimizer.step()
            emit({"step": step + 1, "train_loss": loss.data})
            del loss  # free this step's graph before the next one is built
        test_accuracy = accuracy(model, data.test)
    emit({"step": config.steps, "test_accuracy": test_accuracy})
    return Trained(config, model, data, records, test_accuracy)


def run_demo(
    config: DemoConfig,
    out_dir: str | os.PathLike,
    on_record: Callable[[Record], None] | None = None,
) -> DemoResult:
    """Validate, train, then write the run's files into ``out_dir``.

    Nothing is created before the config and the out-dir have been checked
    and training has finished.
    """
    config.validate()
    out = check_out_dir(out_dir)
    trained = train(config, on_record)

    make_out_dir(out)
    write_json(out / "config.json", {"model": "micrograd", **dataclasses.asdict(config)})
    write_jsonl(out / "metrics.jsonl", trained.records)
    files = [out / "config.json", out / "metrics.jsonl"]

    regions_png: Path | None = out / "regions.png"
    png = regions_picture(trained)
    if png is None:
        regions_png = None
    else:
        atomic_write_bytes(regions_png, png)
        files.append(regions_png)

    dot_text = point_graph_dot(trained.model, trained.data.test[0])
    graph_dot = out / "graph.dot"
    atomic_write_text(graph_dot, dot_text)
    files.append(graph_dot)
    graph_svg: Path | None = None
    graph_error = None
    try:
        svg = render_svg(dot_text)
    except RuntimeError as e:
        svg, graph_error = None, str(e)
    if svg is None:
        graph_error = graph_error or "Graphviz 'dot' is not installed"
    else:
        graph_svg = out / "graph.svg"
        atomic_write_bytes(graph_svg, svg)
        files.append(graph_svg)
    return DemoResult(trained, out, files, regions_png, graph_dot, graph_svg, graph_error)


def point_graph_dot(model: MLP, point: Point) -> str:
    """DOT text of one forward and backward pass of ``model`` on one labelled point.

    The model's gradients are cleared first, so each weight shows the
    gradient of this point's loss alone.
    """
    (x, y), label = point
    inputs = [Value(x), Value(y)]
    loss = cross_entropy(model(inputs), label)
    model.zero_grad()
    loss.backward()
    names = {inputs[0]: "x", inputs[1]: "y", loss: f"loss (class {label})"}
    linears = [layer for layer in model.layers if isinstance(layer, Linear)]
    for i, layer in enumerate(linears):  # L<layer>N<neuron>: neuron j is row j of the weights
        for j, (row, bias) in enumerate(zip(layer.weight, layer.bias)):
            for k, w in enumerate(row):
                names[w] = f"L{i}N{j}.w{k}"
            names[bias] = f"L{i}N{j}.b"
    return to_dot(loss, names)


def regions_picture(trained: Trained, resolution: int = 80) -> bytes | None:
    """PNG of the class the model picks at each place, with the data on top.

    Returns None if matplotlib is not installed.
    """
    try:
        from matplotlib.figure import Figure  # a Figure alone draws with Agg: no display
        from matplotlib.colors import ListedColormap
    except ImportError:
        return None

    points = [p for split in trained.data for p in split]
    xs = [p[0][0] for p in points]
    ys = [p[0][1] for p in points]
    pad = 0.25
    x0, x1 = min(xs) - pad, max(xs) + pad
    y0, y1 = min(ys) - pad, max(ys) + pad
    grid_x = [x0 + (x1 - x0) * i / (resolution - 1) for i in range(resolution)]
    grid_y = [y0 + (y1 - y0) * j / (resolution - 1) for j in range(resolution)]
    classes = [[predict(trained.model, (gx, gy)) for gx in grid_x] for gy in grid_y]

    n_classes = NUM_CLASSES[trained.config.dataset]
    colors = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728"][:n_classes]
    fig = Figure(figsize=(5.5, 5), dpi=100)
    ax = fig.subplots()
    ax.contourf(grid_x, grid_y, classes, levels=[c - 0.5 for c in range(n_classes + 1)],
                cmap=ListedColormap(colors), alpha=0.25)
    for name, split, marker in (("train", trained.data.train, "o"), ("test", trained.data.test, "x")):
        ax.scatter([p[0][0] for p in split], [p[0][1] for p in split],
                   c=[colors[p[1]] for p in split], marker=marker, s=22, label=name)
    c = trained.config
    ax.set_title(f"{c.dataset}: MLP(2, {c.layer_sizes}), {c.steps} steps, "
                 f"test accuracy {trained.test_accuracy:.0%}", fontsize=10)
    ax.set_xlim(x0, x1)
    ax.set_ylim(y0, y1)
    ax.set_aspect("equal")
    ax.legend(loc="lower right", fontsize=8)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    return buf.getvalue()


def _is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)
