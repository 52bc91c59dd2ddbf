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

A run directory is read as data that may be anything, since a run may be
copied, edited or still writing:

* every file goes through one reader (``_open``), which checks that it is a
  regular file before opening it: a FIFO or a device in place of config.json
  would otherwise hang the report forever, or never end;
* metrics.jsonl is streamed, a line at a time, each curve thinned as it is
  read (``Thinned``): memory is the points drawn, however long the run;
* a value that cannot be drawn (a step of 1e308 beside 0, a loss of -1e308)
  is drawn where it can be or left out, never a traceback or a ``nan`` in
  the SVG; a setting nested deeper than ``MAX_DEPTH`` is shown cut there;
* text from the run (names, settings, samples) is shown with its control
  characters escaped (``printable``): a model name holding a terminal
  escape must not drive the terminal the report's lines are printed on.
"""

from __future__ import annotations

import base64
import html
import json
import math
import os
import re
import stat
import unicodedata
from array import array
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator, Sequence

from tinylm.errors import TinylmError
from tinylm.io import JsonlError, parse_jsonl
from tinylm.runs import CONFIG, MANIFEST, METRICS

GENERATOR = "tinylm report"  # the page's <meta name="generator">: a file tinylm may overwrite
COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2")
PICTURES = ("bigram.png", "loss.png", "regions.png")
GRID, SAMPLES, TRAIN = "grid.jsonl", "samples.txt", "train.txt"
MAX_SAMPLES = 40
MAX_POINTS = 2000  # per curve: more than a plot's width shows, and the page stays small
CURVES = ("val_loss", "train_loss", "loss")  # the keys drawn over the steps
# the keys whose last number is kept (``RunView.last``): the results table's, and the curves'
RESULTS = ("step", *CURVES, "test_loss", "test_perplexity", "test_accuracy", "val_bpc", "test_bpc")
MAX_LINE = 1 << 20  # a record tinylm writes is a few hundred bytes; a longer line is read cut
MAX_FILE = 64 << 20  # config.json, manifest.json: the vocabulary of a large alphabet is ~1 MB
MAX_PICTURE = 16 << 20
MAX_GRID = 1000  # grid records shown: a search of tinylm's has tens
MAX_DEPTH = 8  # levels of a setting shown: tinylm's have two at most
MAX_JSON_DEPTH = 100  # levels of a file parsed: deeper ones are cut before parsing (see _json)
MAX_LABEL = 80  # characters of a grid label
TOO_DEEP = "(nested too deep)"


class ReportError(TinylmError):
    """A directory that cannot be reported on: what is wrong with it, in one line."""


class _TooLarge(ReportError):
    """A run file larger than any a run writes."""


class Thinned:
    """Points of a curve as they arrive, at most ``cap`` of them (and the last) kept.

    Every ``stride``-th point is kept; when the kept ones pass ``cap`` every
    other one goes and the stride doubles, so memory is bounded by ``cap``
    whatever the number of points, and the kept ones stay evenly spaced.
    Kept as two arrays of doubles: 16 bytes a point, not a tuple of floats' 104.
    """

    def __init__(self, cap: int = MAX_POINTS) -> None:
        self.cap = cap
        self.xs, self.ys = array("d"), array("d")
        self.stride = 1
        self.seen = 0
        self.last: tuple[float, float] | None = None

    def add(self, point: tuple[float, float]) -> None:
        if self.seen % self.stride == 0:
            self.xs.append(point[0])
            self.ys.append(point[1])
            if len(self.xs) > self.cap:
                del self.xs[1::2]  # xs[j] is point j * stride: keep those of 2 * stride
                del self.ys[1::2]
                self.stride *= 2
        self.seen += 1
        self.last = point

    def points(self) -> list[tuple[float, float]]:
        """The kept points and, always, the last."""
        if self.last is None:
            return []
        tail = [] if (self.seen - 1) % self.stride == 0 else [self.last]
        return list(zip(self.xs, self.ys)) + tail


@dataclass
class RunView:
    """What one run directory holds, read leniently: whatever is there."""

    path: Path
    kind: str
    model: str
    settings: dict[str, Any]
    records: int = 0  # the metrics records read
    curves: dict[str, Thinned] = field(default_factory=lambda: {k: Thinned() for k in CURVES})
    results: dict[str, float] = field(default_factory=dict)  # the last number of each RESULTS key
    samples: list[tuple[str, bool]] = field(default_factory=list)  # (item, copied)
    # the n-gram grid search: (order, method, smoothing) as labels, and the val loss
    grid: list[tuple[str, str, str, float]] = field(default_factory=list)
    pictures: dict[str, bytes] = field(default_factory=dict)
    committed_step: int | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.path.name or str(self.path)

    def last(self, key: str) -> float | None:
        """The last number recorded under ``key``, one of ``RESULTS`` (a hand-edited record
        may hold anything: what is not a finite number is passed over)."""
        if key not in RESULTS:
            raise KeyError(f"{key!r} is not a key the report keeps; it keeps {', '.join(RESULTS)}")
        return self.results.get(key)

    def curve(self, key: str) -> list[tuple[float, float]]:
        """(step, value) of the records with both, thinned to what a plot can show."""
        return self.curves[key].points()

    def add(self, record: dict) -> None:
        """Take in one metrics record (kept: only the curves' points and the last values)."""
        self.records += 1
        found = {}
        for key in _KEPT.intersection(record):  # the few keys a record has, not all kept ones
            value = _num(record[key])
            if value is not None:
                found[key] = value
        self.results.update(found)
        step = found.get("step")
        if step is None or step < 0:
            return
        for key in CURVES:
            if key in found:
                self.curves[key].add((step, found[key]))


_KEPT = frozenset(RESULTS)


def _num(x: Any) -> float | None:
    """``x`` as a finite float, or None (a bool, a string, a number beyond float's range)."""
    if type(x) is float:  # nearly every value of a metrics file: a million of them
        return x if math.isfinite(x) else None
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return None
    try:
        f = float(x)
    except OverflowError:
        return None
    return f if math.isfinite(f) else None


# --- reading the files of a run --------------------------------------------------------------

_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
          (stat.S_ISSOCK, "a socket"))


def _open(path: Path) -> BinaryIO | None:
    """The run file ``path`` open for reading, or None if there is none.

    ``ReportError`` for anything but a regular file, found before it is
    opened: opening a FIFO waits for a writer that may never come, and a
    device (/dev/zero) never ends. Opened without waiting, and checked
    again, in case one was put in its place in between.
    """
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return None
    except OSError as e:
        raise ReportError(f"{str(path)!r} cannot be read: {e.strerror or e}") from None
    _check_regular(path, mode)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0))
    except FileNotFoundError:
        return None
    except OSError as e:
        raise ReportError(f"{str(path)!r} cannot be read: {e.strerror or e}") from None
    f = os.fdopen(fd, "rb")
    try:
        _check_regular(path, os.fstat(fd).st_mode)
    except BaseException:
        f.close()
        raise
    return f


def _check_regular(path: Path, mode: int) -> None:
    if not stat.S_ISREG(mode):
        what = next((name for test, name in _KINDS if test(mode)), "not a regular file")
        raise ReportError(f"{str(path)!r} is {what}, not a regular file: a run's files are "
                          "files; the run is damaged")


def _read_file(path: Path, limit: int = MAX_FILE) -> bytes | None:
    """The bytes of the run file ``path`` (None if there is none); ``ReportError`` if it is
    over ``limit``."""
    f = _open(path)
    if f is None:
        return None
    pieces, size = [], 0
    with f:
        expected = os.fstat(f.fileno()).st_size  # f.read(n) takes n bytes at once, then shrinks
        while piece := f.read(min(max(expected - size, 0) + 1, 1 << 20)):
            size += len(piece)
            if size > limit:
                raise _TooLarge(f"{str(path)!r} is over {limit >> 20} MiB: not a file a run "
                                "writes; the run is damaged")
            pieces.append(piece)
    return b"".join(pieces)


def _lines(path: Path) -> Iterator[bytes]:
    """The lines of the run file ``path``, one at a time (none if there is no file); a line
    over ``MAX_LINE`` bytes is cut there, so memory is one line's at most."""
    f = _open(path)
    if f is None:
        return
    with f:
        while line := f.readline(MAX_LINE):
            if len(line) == MAX_LINE and not line.endswith(b"\n"):
                while (rest := f.readline(MAX_LINE)) and not rest.endswith(b"\n"):
                    pass  # the rest of the line, read and dropped
            yield line


def _read_jsonl(path: Path, take: Callable[[dict], None]) -> bool:
    """Give each record (a JSON object) of a JSON-lines file to ``take``, as it is read;
    whether a last line was cut short (a run still writing, or killed). A line that is not
    JSON with records after it is damage: ``ReportError``."""
    def objects(value: Any) -> None:
        if isinstance(value, dict):
            take(value)

    try:
        return parse_jsonl(_lines(path), objects, lenient=True, loads=_json)
    except JsonlError as e:
        raise ReportError(f"{str(path)!r} line {e.line} is not JSON: the run is damaged") from None


def read_run(path: str | Path) -> RunView:
    """The run in ``path`` as far as it got; ``ReportError`` if it is not a readable run."""
    path = Path(path)
    if not path.is_dir():
        raise ReportError(f"{str(path)!r} is not a directory (give the -o DIR of a run)")
    config_file = path / CONFIG
    raw = _read_file(config_file)
    if raw is None:
        raise ReportError(f"{str(path)!r} holds no config.json: it is not a tinylm run directory")
    try:
        config = _json(raw.decode("utf-8"))
    except ValueError as e:  # UnicodeDecodeError is one
        raise ReportError(f"{str(config_file)!r} cannot be read as JSON "
                          f"({str(e)[:120] or type(e).__name__}): the run is damaged") from None
    del raw
    if not isinstance(config, dict):
        raise ReportError(f"{str(config_file)!r} is not a JSON object: the run is damaged")
    kind = config.get("kind") or ("micrograd" if config.get("model") == "micrograd" else "?")
    view = RunView(path, _label(kind, 40), _label(config.get("model", "?"), 80),
                   _flat_settings(config))
    if _read_jsonl(path / METRICS, view.add):
        view.notes.append("the last line of metrics.jsonl is incomplete (a run still writing "
                          "or killed): left out")
    view.grid = _read_grid(path / GRID, view.notes)
    view.samples = _read_samples(path)
    _read_pictures(path, view)
    view.committed_step = _committed_step(path / MANIFEST)
    if view.committed_step is None and kind in ("neural", "ngram"):
        view.notes.append("no committed checkpoint yet (manifest.json missing or unreadable)")
    if not view.records:
        view.notes.append("no metrics recorded yet")
    return view


def _committed_step(path: Path) -> int | None:
    raw = _read_file(path)
    if raw is None:
        return None
    try:
        step = _num(_json(raw.decode("utf-8"))["state"]["step"])
    except (ValueError, KeyError, TypeError):
        return None
    return int(step) if step is not None and step >= 0 and step == int(step) else None


def _json(text: str) -> Any:
    """The value of JSON ``text``, lists and objects nested deeper than ``MAX_JSON_DEPTH``
    replaced by ``TOO_DEEP``; ``ValueError`` if it is not JSON.

    Python's parser recurses once a level, so whether 988 levels parse depends on how deep
    the caller's stack already is; here the same text always gives the same value.
    """
    try:
        return json.loads(text)
    except RecursionError:
        pass
    try:
        return json.loads(_cut_deep(text, MAX_JSON_DEPTH))
    except RecursionError:  # brackets that never close: nothing was cut
        raise ValueError(f"nested more than {MAX_JSON_DEPTH} levels deep, and not closed") from None


_JSON_TOKENS = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}]')


def _cut_deep(text: str, depth: int) -> str:
    """JSON ``text`` with each list or object nested deeper than ``depth`` written as the
    string ``TOO_DEEP`` (brackets inside strings are text, not nesting)."""
    out, level, start, kept = [], 0, -1, 0
    for m in _JSON_TOKENS.finditer(text):
        token = m.group()
        if token[0] == '"':
            continue
        if token in "[{":
            level += 1
            if level == depth + 1:
                start = m.start()
        else:
            if level == depth + 1 and start >= 0:
                out += [text[kept:start], json.dumps(TOO_DEEP)]
                kept, start = m.end(), -1
            level -= 1
    out.append(text[kept:])
    return "".join(out)


def _flat_settings(config: dict) -> dict[str, Any]:
    """The run's settings as one level of names: model, training and n-gram ones together,
    each cut at ``MAX_DEPTH`` levels (a value nested 988 deep is shown to its eighth)."""
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
    if isinstance(config.get("tokenizer"), dict):  # a BPE run: the tokenizer it learned
        out.update({k: v for k, v in config["tokenizer"].items() if k != "file"})
        for key in ("model_config", "ngram"):  # the vocabulary it has (a short text: fewer)
            if isinstance(config.get(key), dict) and "vocab_size" in config[key]:
                out["vocab_size"] = config[key]["vocab_size"]
    return {k: _bounded(v) for k, v in out.items()}


def _bounded(value: Any, depth: int = MAX_DEPTH) -> Any:
    """``value`` with what is nested deeper than ``depth`` lists or objects replaced by
    ``TOO_DEEP``: shown, compared and written as JSON without a recursion to the bottom."""
    if isinstance(value, (list, dict)) and depth == 0:
        return TOO_DEEP
    if isinstance(value, list):
        return [_bounded(v, depth - 1) for v in value]
    if isinstance(value, dict):
        return {k: _bounded(v, depth - 1) for k, v in value.items()}
    return value


def _label(value: Any, limit: int = MAX_LABEL) -> str:
    """A value as a short line of text: bounded in depth and length, controls escaped."""
    text = printable(_show(_bounded(value)))
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _read_grid(path: Path, notes: list[str]) -> list[tuple[str, str, str, float]]:
    """The n-gram grid search's cells: (order, method, smoothing) as labels, and val loss."""
    cells: list[tuple[str, str, str, float]] = []
    more = [0]

    def take(r: dict) -> None:
        loss = _num(r.get("val_loss"))
        if loss is None:
            return
        if len(cells) == MAX_GRID:
            more[0] += 1
            return
        cells.append((_label(r.get("order")), _label(r.get("method")), _label(r.get("smoothing")),
                      loss))

    _read_jsonl(path, take)
    if more[0]:
        notes.append(f"{GRID} holds {MAX_GRID + more[0]:,} records: the first {MAX_GRID:,} shown")
    return cells


def _read_samples(path: Path) -> list[tuple[str, bool]]:
    """The first samples, each with whether it is a line of the training split (that file
    streamed: a text run's may be the size of its corpus)."""
    items = []
    for line in _lines(path / SAMPLES):
        if len(items) == MAX_SAMPLES:
            break
        items.append(line.decode("utf-8", errors="replace").removesuffix("\n"))
    if not items:
        return []
    wanted, known = set(items), set()
    for line in _lines(path / TRAIN):
        item = line.decode("utf-8", errors="replace").removesuffix("\n")
        if item in wanted:
            known.add(item)
    return [(item, item in known) for item in items]


def _read_pictures(path: Path, view: RunView) -> None:
    names = list(PICTURES)
    if (path / "diagnostics").is_dir():
        names += [f"diagnostics/{p.name}" for p in sorted((path / "diagnostics").glob("*.png"))]
    for name in names:
        try:
            data = _read_file(path / name, MAX_PICTURE)
        except _TooLarge:
            view.notes.append(f"{name} is over {MAX_PICTURE >> 20} MiB: left out")
            continue
        if data is not None:
            view.pictures[name] = data


def printable(text: str) -> str:
    """``text`` with its control characters written as escapes (``\\x1b``, ``\\u202e``): shown
    on a terminal or a page, a name cannot move the cursor, recolour, retitle the window or
    reverse what follows. Tabs stay (an item may hold them)."""
    if text.isprintable():
        return text
    return "".join(_escape(ch) for ch in text)


_BIDI = frozenset(map(chr, [*range(0x202A, 0x202F), *range(0x2066, 0x206A), 0x200E, 0x200F]))


def _escape(ch: str) -> str:
    if ch == "\t" or (unicodedata.category(ch) not in ("Cc", "Zl", "Zp") and ch not in _BIDI):
        return ch
    return f"\\x{ord(ch):02x}" if ord(ch) < 0x100 else f"\\u{ord(ch):04x}"


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
    return html.escape(printable(str(value)), quote=True)


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
                    f"{v.records:,} records <code>{_esc(v.path)}</code>{notes}</li>")
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


class _Axis:
    """Finite values mapped onto [0, 1], their lowest at 0 and highest at 1, for any finite
    values: the span is taken in halves (1e308 - -1e308 is inf; 0.5e308 - -0.5e308 is not)."""

    def __init__(self, values: Sequence[float], flat: float) -> None:
        self.lo, self.hi = min(values), max(values)
        self.flat = flat  # where values that are all the same go

    def frac(self, v: float) -> float:
        span = self.hi / 2 - self.lo / 2
        return self.flat if span == 0 else (v / 2 - self.lo / 2) / span

    def at(self, f: float) -> float:
        """The value at fraction ``f`` of the way from the lowest to the highest."""
        v = self.lo * (1 - f) + self.hi * f
        return v if math.isfinite(v) else (self.lo if f < 0.5 else self.hi)


def _plot(series, log_x: bool, ident: str, hidden: bool = False) -> str:
    W, H, L, R, T, B = 760, 360, 60, 20, 15, 40
    PAD = 0.05  # of the losses' range, above and below
    fx = (lambda x: math.log10(x + 1)) if log_x else float
    xaxis = _Axis([fx(x) for *_, pts in series for x, _ in pts], flat=0.0)
    yaxis = _Axis([y for *_, pts in series for _, y in pts], flat=0.5)

    def px(x: float) -> float:
        return L + xaxis.frac(fx(x)) * (W - L - R)

    def py(y: float) -> float:
        return T + (1 + PAD - yaxis.frac(y)) / (1 + 2 * PAD) * (H - T - B)

    out = [f"<svg id='{ident}' class='plot' viewBox='0 0 {W} {H}' width='{W}' height='{H}'"
           + (" style='display:none'" if hidden else "") + ">",
           f"<rect x='{L}' y='{T}' width='{W - L - R}' height='{H - T - B}' class='frame'/>"]
    for k in range(5):  # the lowest loss, the highest, and three between
        y = yaxis.at(k / 4)
        out.append(f"<text x='{L - 6}' y='{py(y) + 4:.1f}' class='tick' text-anchor='end'>"
                   f"{_number(y, 4)}</text>")
    for k in range(5):
        f = xaxis.at(k / 4)
        label = _power_of_ten(f) if log_x else _number(f, 0)
        out.append(f"<text x='{L + k / 4 * (W - L - R):.1f}' y='{H - B + 16}' class='tick' "
                   f"text-anchor='middle'>{label}</text>")
    out.append(f"<text x='{(W + L) / 2}' y='{H - 6}' class='axis' text-anchor='middle'>step"
               f"{' (log scale)' if log_x else ''}</text>")
    for name, key, color, dash, pts in series:
        # a point whose place is not a number is left out (it cannot be with finite values,
        # but an SVG with a nan in it draws nothing of the curve)
        xy = [(cx, cy) for cx, cy in ((px(x), py(y)) for x, y in pts)
              if math.isfinite(cx) and math.isfinite(cy)]
        if not xy:
            continue
        label = f"data-run='{_esc(name)}' data-key='{key}'"
        title = f"<title>{_esc(name)} {key}</title>"
        if len(xy) == 1:  # an n-gram run is evaluated once: a point, not a line
            (cx, cy), = xy
            out.append(f"<circle class='curve {key}' {label} cx='{cx:.1f}' cy='{cy:.1f}' "
                       f"r='4' fill='{color}'>{title}</circle>")
            continue
        coords = " ".join(f"{cx:.1f},{cy:.1f}" for cx, cy in xy)
        width, opacity = {"val_loss": (1.8, 1), "train_loss": (1.2, 1)}.get(key, (0.8, 0.35))
        out.append(f"<polyline class='curve {key}' {label} fill='none' stroke='{color}' "
                   f"stroke-width='{width}' stroke-opacity='{opacity}'"
                   + (f" stroke-dasharray='{dash}'" if dash else "")
                   + f" points='{coords}'>{title}</polyline>")
    out.append("</svg>")
    return "".join(out)


def _number(x: float, digits: int) -> str:
    """``x`` with ``digits`` decimals, or in 4 significant digits where that would be long
    (a loss of 1e308 is not 309 digits wide)."""
    return f"{x:.{digits}f}" if abs(x) < 1e9 else f"{x:.4g}"


def _power_of_ten(e: float) -> str:
    """The step 10 ** e - 1 of a log-scaled axis, written without computing 10 ** 309."""
    if e < 9:
        return _number(10 ** e - 1, 0)
    whole = math.floor(e)
    return f"{10 ** (e - whole):.3g}e+{whole}"


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
                 _fmt(v.last("step"), 0), _fmt(v.last("val_bpc")), _fmt(v.last("test_bpc"))]
        rows.append(f"<tr data-run='{_esc(v.name)}'><th>{_esc(v.name)}</th>"
                    + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    return ("<section><h2>Results</h2><table class='results'><tr><th>run</th><th>last val loss</th>"
            "<th>test loss</th><th>test perplexity</th><th>test accuracy</th><th>last step</th>"
            "<th>last val bits/char</th><th>test bits/char</th></tr>"
            + "".join(rows) + "</table><p class='legend'>Losses are in nats per token (a "
            "character, or a BPE token); bits per character are over the same text whatever "
            "the tokenizer, so runs of both compare.</p></section>")


def _fmt(value: Any, digits: int = 4) -> str:
    x = _num(value)
    return "-" if x is None else _number(x, digits)


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


def _grid(cells: list[tuple[str, str, str, float]]) -> str:
    # the labels as the text they show, so that odd values (edited by hand) sort and compare
    if not cells:
        return "<p>no grid records</p>"
    columns = sorted({(m, s) for _, m, s, _ in cells}, key=lambda c: (c[0], _sort_key(c[1])))
    orders = sorted({o for o, *_ in cells}, key=_sort_key)
    axis = _Axis([v for *_, v in cells], flat=0.0)
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
            t = axis.frac(v)
            shade = f"hsl({round(120 * (1 - t))}, 70%, {88 - 30 * (1 - t):.0f}%)"
            mark = " best" if (order, m, s, v) == best else ""
            row.append(f"<td class='cell{mark}' style='background:{shade}'>{_number(v, 4)}</td>")
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
    """Whether ``path`` is a page this module wrote (the only existing file -o may replace);
    a FIFO or a device is not one, and is not opened to find out."""
    try:
        f = _open(path)
    except ReportError:
        return False
    if f is None:
        return False
    with f:
        head = f.read(400).decode("utf-8", errors="replace")
    return f"<meta name='generator' content='{GENERATOR}'>" in head
