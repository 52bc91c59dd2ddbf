"""One self-contained HTML page about any runs: curves, settings side by side, losses, samples.

``tinylm report RUN_DIR [RUN_DIR ...] -o report.html`` reads what each run
directory holds, whatever kind of run it is (n-gram, neural, the micrograd
demo) and however far it got (a run still training shows the records it has
so far; a last line cut short by a kill is left out), and writes one HTML
file with everything inline: the curves as SVG drawn here, the pictures the
runs made (bigram.png, loss.png, diagnostics) as data: URLs, a few lines of
JavaScript for the log-scale switch. It needs no network and no other file,
so it opens from disk and can be mailed.

What is shown, run by run where the run has it: train and val loss over the
steps, every run's curve overlaid; the settings in one table, the rows that
differ between runs highlighted; the final val and test loss and
perplexity; the samples, each marked new or copied from the training split;
the n-gram grid search as a heat map and the bigram picture; the
diagnostics pictures. A directory that is not a run, or whose settings do
not parse, is refused with a ``ReportError`` naming it.
"""

from __future__ import annotations

import base64
import html
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from tinylm.errors import TinylmError

GENERATOR = "tinylm report"  # the page's <meta name="generator">: a file tinylm may overwrite
COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2")
PICTURES = ("bigram.png", "loss.png", "regions.png")
MAX_SAMPLES = 40
MAX_POINTS = 2000  # per curve: more than a plot's width shows, and the page stays small


class ReportError(TinylmError):
    """A directory that cannot be reported on: what is wrong with it, in one line."""


@dataclass
class RunView:
    """What one run directory holds, read leniently: whatever is there."""

    path: Path
    kind: str
    model: str
    settings: dict[str, Any]
    metrics: list[dict] = field(default_factory=list)
    samples: list[tuple[str, bool]] = field(default_factory=list)  # (item, copied)
    grid: list[dict] = field(default_factory=list)
    pictures: dict[str, bytes] = field(default_factory=dict)
    committed_step: int | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.path.name or str(self.path)

    def last(self, key: str) -> float | None:
        """The last number recorded under ``key`` (a hand-edited record may hold anything)."""
        for record in reversed(self.metrics):
            if _num(record.get(key)) is not None:
                return _num(record[key])
        return None

    def curve(self, key: str) -> list[tuple[float, float]]:
        """(step, value) of every record with both, thinned to what a plot can show."""
        points = [(_num(r.get("step")), _num(r.get(key))) for r in self.metrics]
        points = [(x, y) for x, y in points if x is not None and y is not None and x >= 0]
        if len(points) > MAX_POINTS:  # every k-th, and always the last
            stride = -(-len(points) // MAX_POINTS)
            points = points[::stride] + ([points[-1]] if (len(points) - 1) % stride else [])
        return points


def _num(x: Any) -> float | None:
    """``x`` as a finite float, or None (a bool, a string, a number beyond float's range)."""
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return None
    try:
        f = float(x)
    except OverflowError:
        return None
    return f if math.isfinite(f) else None


def read_run(path: str | Path) -> RunView:
    """The run in ``path`` as far as it got; ``ReportError`` if it is not a readable run."""
    path = Path(path)
    if not path.is_dir():
        raise ReportError(f"{str(path)!r} is not a directory (give the -o DIR of a run)")
    config_file = path / "config.json"
    if not config_file.exists():
        raise ReportError(f"{str(path)!r} holds no config.json: it is not a tinylm run directory")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:
        raise ReportError(f"{str(config_file)!r} cannot be read as JSON "
                          f"({str(e)[:120] or type(e).__name__}): the run is damaged") from None
    if not isinstance(config, dict):
        raise ReportError(f"{str(config_file)!r} is not a JSON object: the run is damaged")
    kind = config.get("kind") or ("micrograd" if config.get("model") == "micrograd" else "?")
    model = str(config.get("model", "?"))
    view = RunView(path, kind, model, _flat_settings(config))
    view.metrics, cut = _read_jsonl(path / "metrics.jsonl")
    if cut:
        view.notes.append("the last line of metrics.jsonl is incomplete (a run still writing "
                          "or killed): left out")
    view.grid, _ = _read_jsonl(path / "grid.jsonl")
    view.samples = _read_samples(path)
    for name in PICTURES:
        if (path / name).is_file():
            view.pictures[name] = (path / name).read_bytes()
    diagnostics = path / "diagnostics"
    if diagnostics.is_dir():
        for picture in sorted(diagnostics.glob("*.png")):
            view.pictures[f"diagnostics/{picture.name}"] = picture.read_bytes()
    try:
        manifest = json.loads((path / "manifest.json").read_text(encoding="utf-8"))
        view.committed_step = int(manifest["state"]["step"]) if "state" in manifest else None
    except (OSError, ValueError, KeyError, TypeError, OverflowError, RecursionError):
        if kind in ("neural", "ngram"):
            view.notes.append("no committed checkpoint yet (manifest.json missing or unreadable)")
    if not view.metrics:
        view.notes.append("no metrics recorded yet")
    return view


def _flat_settings(config: dict) -> dict[str, Any]:
    """The run's settings as one level of names: model, training and n-gram ones together."""
    out: dict[str, Any] = {"kind": config.get("kind", "micrograd"), "model": config.get("model")}
    for key in ("model_config", "train_config", "ngram"):
        if isinstance(config.get(key), dict):
            out.update({k: v for k, v in config[key].items() if k != "vocab_size"})
    if config.get("model") == "micrograd":
        out.update({k: v for k, v in config.items() if k != "model"})
    for key in ("loader", "input"):
        if key in config:
            out[key] = config[key]
    if isinstance(config.get("vocab"), list):
        out["vocab_size"] = len(config["vocab"])
    return out


def _read_jsonl(path: Path) -> tuple[list[dict], bool]:
    """The records of a JSON-lines file, and whether a last line was cut short."""
    if not path.is_file():
        return [], False
    records, cut = [], False
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except (ValueError, RecursionError):
            if i == len(lines) - 1:
                cut = True
                continue
            raise ReportError(f"{str(path)!r} line {i + 1} is not JSON: the run is damaged") from None
        if isinstance(record, dict):
            records.append(record)
    return records, cut


def _read_samples(path: Path) -> list[tuple[str, bool]]:
    samples_file = path / "samples.txt"
    if not samples_file.is_file():
        return []
    items = samples_file.read_text(encoding="utf-8", errors="replace").splitlines()[:MAX_SAMPLES]
    known: set[str] = set()
    train = path / "train.txt"
    if train.is_file():
        known = set(train.read_text(encoding="utf-8", errors="replace").splitlines())
    return [(item, item in known) for item in items]


# --- the page --------------------------------------------------------------------------------

def render(views: Sequence[RunView]) -> str:
    """The HTML page about ``views``."""
    if not views:
        raise ReportError("give at least one run directory")
    parts = [f"<h1>tinylm report: {len(views)} run{'s' if len(views) != 1 else ''}</h1>",
             _run_list(views), _curves(views), _settings_table(views), _results_table(views)]
    parts += [_run_details(view, COLORS[i % len(COLORS)]) for i, view in enumerate(views)]
    return _page("\n".join(parts))


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _show(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    return repr(value) if isinstance(value, str) and (not value or value != value.strip()
                                                       or "\n" in value) else str(value)


def _run_list(views: Sequence[RunView]) -> str:
    rows = []
    for i, v in enumerate(views):
        state = (f"committed at step {v.committed_step}" if v.committed_step is not None
                 else "nothing committed")
        notes = "".join(f"<div class='note'>{_esc(n)}</div>" for n in v.notes)
        rows.append(f"<li><span class='swatch' style='background:{COLORS[i % len(COLORS)]}'></span>"
                    f"<b>{_esc(v.name)}</b>: {_esc(v.model)} ({_esc(v.kind)}), {_esc(state)}, "
                    f"{len(v.metrics)} records <code>{_esc(v.path)}</code>{notes}</li>")
    return "<ul class='runs'>" + "".join(rows) + "</ul>"


def _curves(views: Sequence[RunView]) -> str:
    series = []
    for i, v in enumerate(views):
        color = COLORS[i % len(COLORS)]
        for key, dash in (("val_loss", ""), ("train_loss", "5,4"), ("loss", "1,3")):
            points = v.curve(key)
            if points:
                series.append((v.name, key, color, dash, points))
    if not series:
        return "<section><h2>Loss curves</h2><p>No losses recorded yet.</p></section>"
    return ("<section><h2>Loss curves</h2>"
            "<label><input type='checkbox' id='logx'> log-scaled step axis</label>"
            + _plot(series, log_x=False, ident="curves-linear")
            + _plot(series, log_x=True, ident="curves-log", hidden=True)
            + "<p class='legend'>solid: val loss; dashed: train loss at each evaluation; "
              "dotted: the batch loss of each update</p></section>")


def _plot(series, log_x: bool, ident: str, hidden: bool = False) -> str:
    W, H, L, R, T, B = 760, 360, 60, 20, 15, 40
    xs = [x for *_, pts in series for x, _ in pts]
    ys = [y for *_, pts in series for _, y in pts]
    fx = (lambda x: math.log10(x + 1)) if log_x else float
    x0, x1 = fx(min(xs)), fx(max(xs))
    y0, y1 = min(ys), max(ys)
    if x1 == x0:
        x1 = x0 + 1
    if y1 == y0:
        y1 = y0 + 1
    pad = 0.05 * (y1 - y0)
    y0, y1 = y0 - pad, y1 + pad

    def px(x: float) -> float:
        return L + (fx(x) - x0) / (x1 - x0) * (W - L - R)

    def py(y: float) -> float:
        return T + (y1 - y) / (y1 - y0) * (H - T - B)

    out = [f"<svg id='{ident}' class='plot' viewBox='0 0 {W} {H}' width='{W}' height='{H}'"
           + (" style='display:none'" if hidden else "") + ">",
           f"<rect x='{L}' y='{T}' width='{W - L - R}' height='{H - T - B}' class='frame'/>"]
    for k in range(5):
        y = y0 + (y1 - y0) * k / 4
        out.append(f"<text x='{L - 6}' y='{py(y) + 4:.1f}' class='tick' text-anchor='end'>{y:.3f}</text>")
    for k in range(5):
        x = (10 ** (x0 + (x1 - x0) * k / 4) - 1) if log_x else (x0 + (x1 - x0) * k / 4)
        out.append(f"<text x='{px(x):.1f}' y='{H - B + 16}' class='tick' text-anchor='middle'>"
                   f"{x:.0f}</text>")
    out.append(f"<text x='{(W + L) / 2}' y='{H - 6}' class='axis' text-anchor='middle'>step"
               f"{' (log scale)' if log_x else ''}</text>")
    for name, key, color, dash, pts in series:
        label = f"data-run='{_esc(name)}' data-key='{key}'"
        title = f"<title>{_esc(name)} {key}</title>"
        if len(pts) == 1:  # an n-gram run is evaluated once: a point, not a line
            (x, y), = pts
            out.append(f"<circle class='curve {key}' {label} cx='{px(x):.1f}' cy='{py(y):.1f}' "
                       f"r='4' fill='{color}'>{title}</circle>")
            continue
        coords = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in pts)
        width, opacity = {"val_loss": (1.8, 1), "train_loss": (1.2, 1)}.get(key, (0.8, 0.35))
        out.append(f"<polyline class='curve {key}' {label} fill='none' stroke='{color}' "
                   f"stroke-width='{width}' stroke-opacity='{opacity}'"
                   + (f" stroke-dasharray='{dash}'" if dash else "")
                   + f" points='{coords}'>{title}</polyline>")
    out.append("</svg>")
    return "".join(out)


_ABSENT = "\x00absent"  # a setting a run does not have (an n-gram run has no learning rate)


def _settings_table(views: Sequence[RunView]) -> str:
    keys: list[str] = []
    for v in views:
        keys += [k for k in v.settings if k not in keys]
    head = "".join(f"<th>{_esc(v.name)}</th>" for v in views)
    rows = []
    for key in keys:
        values = [v.settings.get(key, _ABSENT) for v in views]
        differs = len({json.dumps(x, sort_keys=True) for x in values}) > 1
        cells = "".join("<td class='absent'>-</td>" if x == _ABSENT else f"<td>{_esc(_show(x))}</td>"
                        for x in values)
        rows.append(f"<tr class='{'differs' if differs else 'same'}'><th>{_esc(key)}</th>{cells}</tr>")
    note = " (rows that differ are highlighted)" if len(views) > 1 else ""
    return (f"<section><h2>Settings{note}</h2><table class='settings'><tr><th></th>{head}</tr>"
            + "".join(rows) + "</table></section>")


def _results_table(views: Sequence[RunView]) -> str:
    rows = []
    for v in views:
        val, test = v.last("val_loss"), v.last("test_loss")
        perplexity = v.last("test_perplexity")
        if perplexity is None and test is not None and test < 700:
            perplexity = math.exp(test)
        cells = [_fmt(val), _fmt(test), _fmt(perplexity, 3), _fmt(v.last("test_accuracy"), 3),
                 _fmt(v.last("step"), 0)]
        rows.append(f"<tr data-run='{_esc(v.name)}'><th>{_esc(v.name)}</th>"
                    + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    return ("<section><h2>Results</h2><table class='results'><tr><th>run</th><th>last val loss</th>"
            "<th>test loss</th><th>test perplexity</th><th>test accuracy</th><th>last step</th></tr>"
            + "".join(rows) + "</table></section>")


def _fmt(value: Any, digits: int = 4) -> str:
    return "-" if _num(value) is None else f"{_num(value):.{digits}f}"


def _run_details(view: RunView, color: str) -> str:
    parts = [f"<section class='run'><h2><span class='swatch' style='background:{color}'></span>"
             f"{_esc(view.name)}</h2>"]
    if view.samples:
        new = sum(1 for _, copied in view.samples if not copied)
        items = "".join(f"<li class='{'copy' if copied else 'new'}'>{_esc(item) or '(empty)'}"
                        f" <span class='mark'>{'copy of a training item' if copied else 'new'}</span></li>"
                        for item, copied in view.samples)
        parts.append(f"<h3>Samples ({new} of {len(view.samples)} new)</h3><ul class='samples'>{items}</ul>")
    if view.grid:
        parts.append("<h3>n-gram grid search (val loss)</h3>" + _grid(view.grid))
    for name, data in view.pictures.items():
        b64 = base64.b64encode(data).decode("ascii")
        parts.append(f"<figure><img alt='{_esc(name)}' src='data:image/png;base64,{b64}'>"
                     f"<figcaption>{_esc(name)}</figcaption></figure>")
    parts.append("</section>")
    return "".join(parts)


def _grid(grid: list[dict]) -> str:
    # the labels as the text they show, so that odd values (edited by hand) sort and compare
    cells = [(_show(r.get("order")), _show(r.get("method")), _show(r.get("smoothing")),
              _num(r.get("val_loss"))) for r in grid]
    cells = [c for c in cells if c[3] is not None]
    if not cells:
        return "<p>no grid records</p>"
    columns = sorted({(m, s) for _, m, s, _ in cells}, key=lambda c: (c[0], _sort_key(c[1])))
    orders = sorted({o for o, *_ in cells}, key=_sort_key)
    losses = [v for *_, v in cells]
    lo, hi = min(losses), max(losses)
    best = min(cells, key=lambda c: c[3])
    head = "".join(f"<th>{_esc(m)} {_esc(s)}</th>" for m, s in columns)
    rows = []
    for order in orders:
        row = [f"<th>order {_esc(order)}</th>"]
        for m, s in columns:
            match = [v for o, m2, s2, v in cells if o == order and m2 == m and s2 == s]
            if not match:
                row.append("<td></td>")
                continue
            v = match[0]
            t = 0.0 if hi == lo else (v - lo) / (hi - lo)
            shade = f"hsl({int(120 * (1 - t))}, 70%, {88 - 30 * (1 - t):.0f}%)"
            mark = " best" if (order, m, s, v) == best else ""
            row.append(f"<td class='cell{mark}' style='background:{shade}'>{v:.4f}</td>")
        rows.append("<tr>" + "".join(row) + "</tr>")
    return f"<table class='grid'><tr><th></th>{head}</tr>" + "".join(rows) + "</table>"


def _sort_key(text: str) -> tuple:
    """Numbers in numeric order, before any other text."""
    try:
        return (0, float(text), "")
    except ValueError:
        return (1, 0.0, text)


_STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 24px; color: #222; max-width: 1100px; }
h1 { font-size: 22px; } h2 { font-size: 18px; margin-top: 28px; } h3 { font-size: 15px; }
table { border-collapse: collapse; margin: 8px 0; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: left; font-variant-numeric: tabular-nums; }
tr.differs td, tr.differs th { background: #fff3bf; }
.swatch { display: inline-block; width: 12px; height: 12px; margin-right: 6px; border-radius: 2px; }
.note { color: #a33; font-size: 12px; }
.plot .frame { fill: #fafafa; stroke: #999; } .plot .tick { font-size: 11px; fill: #555; }
.plot .axis { font-size: 12px; fill: #333; }
ul.samples { columns: 3; list-style: none; padding: 0; } ul.samples li.copy { color: #888; }
.mark { font-size: 11px; color: #888; } li.new .mark { color: #2a7; }
td.best { outline: 2px solid #222; } figure img { max-width: 100%; border: 1px solid #ddd; }
code { font-size: 12px; color: #555; } td.absent { color: #aaa; }
"""

_SCRIPT = """
document.getElementById('logx')?.addEventListener('change', function (e) {
  document.getElementById('curves-linear').style.display = e.target.checked ? 'none' : '';
  document.getElementById('curves-log').style.display = e.target.checked ? '' : 'none';
});
"""


def _page(body: str) -> str:
    return ("<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
            f"<meta name='generator' content='{GENERATOR}'><title>tinylm report</title>"
            f"<style>{_STYLE}</style></head><body>{body}<script>{_SCRIPT}</script></body></html>\n")


def is_report(path: Path) -> bool:
    """Whether ``path`` is a page this module wrote (the only existing file -o may replace)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            head = f.read(400)
    except OSError:
        return False
    return f"<meta name='generator' content='{GENERATOR}'>" in head
