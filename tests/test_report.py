"""``tinylm report``: one self-contained page about any runs, read as far as they got."""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
import stat
import threading
import tracemalloc

import pytest

from browser import browser, needs_browser, network_requests, screenshot  # noqa: F401
from tinylm import report
from tinylm.cli import main

NEURAL = ["--model", "mlp", "--context", "3", "--n-embd", "4", "--n-hidden", "16", "--steps", "40",
          "--eval-every", "10", "--eval-train-batches", "5", "--batch-size", "32", "-n", "8"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, few_names):
    """An n-gram run, two neural runs that differ in their learning rate, a micrograd demo."""
    root = tmp_path_factory.mktemp("runs")
    words = few_names
    out = {"ngram": root / "ngram", "mlp-a": root / "mlp-a", "mlp-b": root / "mlp-b"}
    assert main(["train", "-i", str(words), "-o", str(out["ngram"]), "--order", "2"]) == 0
    assert main(["train", "-i", str(words), "-o", str(out["mlp-a"]), *NEURAL]) == 0
    assert main(["train", "-i", str(words), "-o", str(out["mlp-b"]), *NEURAL, "--lr", "0.05"]) == 0
    out["micrograd"] = root / "micrograd"
    assert main(["micrograd", "-o", str(out["micrograd"]), "--steps", "10"]) == 0
    return out


def write_report(tmp_path, *dirs) -> str:
    page = tmp_path / "report.html"
    assert main(["report", *map(str, dirs), "-o", str(page)]) == 0
    return page.read_text(encoding="utf-8")


def test_every_kind_of_run_is_read(runs):
    views = {name: report.read_run(path) for name, path in runs.items()}
    assert views["ngram"].kind == "ngram" and views["ngram"].grid and "bigram.png" in views["ngram"].pictures
    assert views["mlp-a"].kind == "neural" and views["mlp-a"].last("test_loss") is not None
    assert views["mlp-a"].settings["lr"] != views["mlp-b"].settings["lr"]
    assert len(views["mlp-a"].samples) == 8
    assert views["micrograd"].kind == "micrograd" and views["micrograd"].last("test_accuracy") is not None


def test_the_page_is_self_contained_and_shows_each_run(runs, tmp_path, capsys):
    html = write_report(tmp_path, *runs.values())
    assert "wrote" in capsys.readouterr().out
    # nothing to fetch: no URL of any scheme but data:
    assert not re.search(r"""(src|href)\s*=\s*['"](?!data:|#)""", html)
    assert "http://" not in html and "https://" not in html
    linear = html.split("<svg id='curves-linear'")[1].split("</svg>")[0]
    assert linear.count("class='curve val_loss'") == 4  # one val curve per run
    assert "n-gram grid search" in html and "data:image/png;base64," in html
    assert re.search(r"Samples \(\d+ of 8 new\)", html)
    # two runs' settings side by side: the learning rate differs, the batch size does not
    pair = write_report(tmp_path, runs["mlp-a"], runs["mlp-b"])
    rows = {key: kind for kind, key in re.findall(r"<tr class='(\w+)'><th>(\w+)</th>", pair)}
    assert rows["lr"] == "differs" and rows["batch_size"] == "same"


def test_a_run_still_training_shows_what_it_has(runs, tmp_path):
    running = tmp_path / "running"
    shutil.copytree(runs["mlp-a"], running)
    (running / "manifest.json").unlink()  # before its first commit
    lines = (running / "metrics.jsonl").read_text().splitlines()
    (running / "metrics.jsonl").write_text("\n".join(lines[:20]) + "\n" + lines[20][:15])
    view = report.read_run(running)
    assert view.records == 20
    assert any("incomplete" in note for note in view.notes)
    assert any("no committed checkpoint" in note for note in view.notes)
    html = write_report(tmp_path, running)
    assert "incomplete" in html and "class='curve val_loss'" in html


@pytest.mark.parametrize("damage, message", [
    (lambda d: (d / "config.json").write_text("{not json"), "cannot be read as JSON"),
    (lambda d: (d / "config.json").unlink(), "holds no config.json"),
    (lambda d: (d / "metrics.jsonl").write_text('{"step": 1}\nnot json\n{"step": 2}\n'),
     "line 2 is not JSON"),
])
def test_a_damaged_run_is_one_line_and_no_page(runs, tmp_path, capsys, damage, message):
    broken = tmp_path / "broken"
    shutil.copytree(runs["mlp-a"], broken)
    damage(broken)
    page = tmp_path / "report.html"
    assert main(["report", str(broken), "-o", str(page)]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and err.startswith("tinylm: error:")
    assert not page.exists()


def test_an_existing_file_is_replaced_only_if_it_is_a_report(runs, tmp_path, capsys):
    mine = tmp_path / "notes.html"
    mine.write_text("<html>my own notes</html>")
    assert main(["report", str(runs["ngram"]), "-o", str(mine)]) == 2
    assert "is not a tinylm report" in capsys.readouterr().err
    assert mine.read_text() == "<html>my own notes</html>"
    page = tmp_path / "report.html"
    assert main(["report", str(runs["ngram"]), "-o", str(page)]) == 0
    assert main(["report", str(runs["mlp-a"]), "-o", str(page)]) == 0  # an earlier report
    assert "mlp-a" in page.read_text()
    assert main(["report", str(tmp_path / "missing"), "-o", str(page)]) == 2
    assert "is not a directory" in capsys.readouterr().err


@needs_browser
def test_the_report_in_a_browser_shows_one_curve_per_run_and_switches_to_log_steps(
        runs, tmp_path, browser):  # noqa: F811
    from selenium.webdriver.common.by import By

    write_report(tmp_path, runs["ngram"], runs["mlp-a"], runs["mlp-b"])
    browser.get((tmp_path / "report.html").as_uri())
    linear = browser.find_element(By.ID, "curves-linear")
    assert linear.is_displayed()
    curves = linear.find_elements(By.CSS_SELECTOR, ".curve.val_loss")
    assert sorted(c.get_attribute("data-run") for c in curves) == ["mlp-a", "mlp-b", "ngram"]
    rows = browser.find_elements(By.CSS_SELECTOR, "table.results tr[data-run]")
    assert len(rows) == 3 and all(re.match(r"\d\.\d{4}", r.find_elements(By.TAG_NAME, "td")[1].text)
                                  for r in rows)
    assert browser.find_element(By.XPATH, "//table[@class='settings']//tr[th='lr']") \
                  .get_attribute("class") == "differs"
    browser.find_element(By.ID, "logx").click()
    assert not linear.is_displayed() and browser.find_element(By.ID, "curves-log").is_displayed()
    assert network_requests(browser) == []
    browser.find_element(By.ID, "logx").click()
    shot = screenshot(browser, tmp_path / "report.png")
    assert shot.stat().st_size > 10_000


HOSTILE = [
    # values a hand-edited run could hold: they are shown as text or left out, never run
    '{"step": "<script>document.title=1</script>", "val_loss": 1.5}',
    '{"step": 3, "val_loss": 1' + "0" * 400 + '}',
    '{"step": -5, "val_loss": 2.0}',
    '{"step": 4, "test_loss": 1' + "0" * 400 + '}',
    '[1, 2]',
    '{"step": 6, "val_loss": NaN}',
    '{"step": 7, "val_loss": true}',
]


def test_hostile_records_are_escaped_or_left_out_and_never_a_traceback(runs, tmp_path):
    odd = tmp_path / "odd"
    shutil.copytree(runs["ngram"], odd)
    (odd / "metrics.jsonl").write_text("\n".join(HOSTILE) + "\n")
    (odd / "grid.jsonl").write_text("\n".join([
        '{"order": "<script>x()</script>", "method": "additive", "smoothing": 0.1, "val_loss": 2}',
        '{"order": [1], "method": "additive", "smoothing": "a", "val_loss": 3}',
        '{"order": 2, "method": null, "smoothing": 0.1, "val_loss": NaN}']) + "\n")
    (odd / "manifest.json").write_text('{"state": {"step": 1e999}}')
    html = write_report(tmp_path, odd)
    assert "<script>document" not in html and "<script>x()" not in html
    assert "&lt;script&gt;x()&lt;/script&gt;" in html  # the grid's label, shown as text
    view = report.read_run(odd)
    assert view.curve("val_loss") == []  # not one of them is a plottable point
    assert view.last("step") == 7 and view.last("test_loss") is None
    (odd / "config.json").write_text("[" * 100_000)
    with pytest.raises(report.ReportError, match="cannot be read as JSON"):
        report.read_run(odd)


def test_a_long_run_makes_a_page_of_bounded_size(runs, tmp_path):
    long = tmp_path / "long"
    shutil.copytree(runs["mlp-a"], long)
    records = [f'{{"step": {i}, "loss": 2.5, "lr": 0.01}}' for i in range(200_000)]
    records += [f'{{"step": {i}, "train_loss": 2.4, "val_loss": 2.5}}' for i in range(0, 200_000, 2)]
    (long / "metrics.jsonl").write_text("\n".join(records) + "\n")
    view = report.read_run(long)
    curve = view.curve("val_loss")
    assert len(curve) <= report.MAX_POINTS + 1 and curve[-1][0] == 199_998  # the last kept
    assert len(write_report(tmp_path, long)) < 2_000_000


# --- run files that are not what they seem -----------------------------------------------------

def report_within(seconds: float, argv: list[str], fifos=()) -> int:
    """``main(argv)`` in a thread; a report that hangs on a FIFO fails here instead of forever
    (a writer opens each FIFO, so that the reader stuck in its open() goes on)."""
    result: list[int] = []
    worker = threading.Thread(target=lambda: result.append(main(argv)), daemon=True)
    worker.start()
    worker.join(seconds)
    if worker.is_alive():
        for fifo in fifos:
            with contextlib.suppress(OSError):
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        worker.join(seconds)
        pytest.fail(f"tinylm {' '.join(argv)} hung")
    return result[0]


@pytest.mark.parametrize("name", ["config.json", "manifest.json", "metrics.jsonl", "samples.txt",
                                  "train.txt", "loss.png"])
@pytest.mark.parametrize("kind", ["fifo", "device"])
def test_a_fifo_or_a_device_in_place_of_a_run_file_is_refused_in_one_line(
        runs, tmp_path, capsys, name, kind):
    odd = tmp_path / "odd"
    shutil.copytree(runs["mlp-a"], odd)
    (odd / name).unlink()
    if kind == "fifo":
        os.mkfifo(odd / name)  # opened, it would wait for a writer forever
    else:
        (odd / name).symlink_to("/dev/null")
    page = tmp_path / "report.html"
    assert report_within(5, ["report", str(odd), "-o", str(page)], [odd / name]) == 2
    err = capsys.readouterr().err.strip()
    what = "a FIFO (named pipe)" if kind == "fifo" else "a character device"
    assert err.startswith("tinylm: error:") and len(err.splitlines()) == 1
    assert f"{name}' is {what}, not a regular file" in err
    assert not page.exists()


def test_a_fifo_given_as_the_page_to_write_is_refused_not_opened(runs, tmp_path, capsys):
    fifo = tmp_path / "report.html"
    os.mkfifo(fifo)
    assert report_within(5, ["report", str(runs["ngram"]), "-o", str(fifo)], [fifo]) == 2
    assert "is not a tinylm report" in capsys.readouterr().err
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)


# --- values that cannot be drawn ---------------------------------------------------------------

def svg_numbers(html: str) -> list[str]:
    """Every coordinate the page's plots place something at."""
    plots = "".join(re.findall(r"<svg.*?</svg>", html, re.S))
    values = re.findall(r"\b(?:x|y|cx|cy)='([^']*)'", plots)
    for points in re.findall(r"points='([^']*)'", plots):
        values += re.split(r"[ ,]", points)
    return values


@pytest.mark.parametrize("records", [
    ['{"step": 0, "val_loss": 2.0}', '{"step": 1.7976931348623157e308, "val_loss": 2.1}'],
    ['{"step": 0, "val_loss": 1e308}', '{"step": 1, "val_loss": -1e308}',
     '{"step": 2, "val_loss": 2.0}', '{"step": 3, "val_loss": 1.7976931348623157e308}'],
    ['{"step": 1e308, "val_loss": 1e308}', '{"step": 1.7976931348623157e308, "val_loss": -1e308}'],
    ['{"step": 5, "val_loss": 1e308}', '{"step": 5, "val_loss": 1e308}'],  # no span at all
    ['{"step": 0, "val_loss": 5e-324}', '{"step": 1, "val_loss": 0}'],
])
def test_extreme_values_are_drawn_in_the_frame_never_as_nan_and_never_a_traceback(
        runs, tmp_path, records):
    odd = tmp_path / "odd"
    shutil.copytree(runs["ngram"], odd)
    (odd / "metrics.jsonl").write_text("\n".join(records) + "\n")
    grid = [f'{{"order": {i}, "method": "additive", "smoothing": 0.1, "val_loss": {r}}}'
            for i, r in enumerate(["1e308", "-1e308", "2.5", "1.7976931348623157e308"])]
    (odd / "grid.jsonl").write_text("\n".join(grid) + "\n")
    html = write_report(tmp_path, odd)
    numbers = svg_numbers(html)
    assert numbers and all(math.isfinite(float(v)) for v in numbers)
    for plot in ("curves-linear", "curves-log"):  # every point inside the plot, on both axes
        svg = html.split(f"<svg id='{plot}'")[1].split("</svg>")[0]
        points = re.findall(r"points='([^']*)'", svg)[0].split()
        assert len(points) == len(records)
        for xy in points:
            x, y = map(float, xy.split(","))
            assert 60 <= x <= 740 and 15 <= y <= 320
    assert "nan" not in html.lower().split("<svg")[1] and "hsl(nan" not in html


# --- settings nested too deep, names that drive terminals --------------------------------------

def nest(depth: int) -> str:
    return "[" * depth + "1" + "]" * depth


@pytest.mark.parametrize("depth", [988, 100_000])
def test_a_setting_nested_too_deep_is_shown_cut_whatever_the_callers_stack(
        runs, tmp_path, depth):
    odd = tmp_path / "odd"
    shutil.copytree(runs["mlp-a"], odd)
    config = json.loads((odd / "config.json").read_text())
    config["train_config"]["lr"] = "@"
    (odd / "config.json").write_text(json.dumps(config).replace('"@"', nest(depth)))

    def deeper(frames: int, f):  # the reader called from a deep stack: the same view
        return f() if frames == 0 else deeper(frames - 1, f)

    views = [report.read_run(odd), deeper(200, lambda: report.read_run(odd))]
    for view in views:
        lr = view.settings["lr"]
        for _ in range(report.MAX_DEPTH):
            (lr,) = lr
        assert lr == report.TOO_DEEP
    assert deeper(300, lambda: report.render(views)).count("(nested too deep)") == 2
    assert "(nested too deep)" in write_report(tmp_path, odd)


def test_control_characters_in_names_are_escaped_in_the_lines_and_the_page(
        runs, tmp_path, capsys):
    odd = tmp_path / "run\x1b[31m"
    shutil.copytree(runs["mlp-a"], odd)
    config = json.loads((odd / "config.json").read_text())
    config["model"] = "mlp\x1b]0;owned\x07\x1b[2J\u202e\x9b"  # retitle, clear, reverse, CSI
    config["train_config"]["note\x1b[1m"] = "a\rb"
    (odd / "config.json").write_text(json.dumps(config))
    with open(odd / "samples.txt", "a") as f:
        f.write("evil\x1b[8m\n")
    html = write_report(tmp_path, odd)
    out = capsys.readouterr().out
    for text in (out, html):
        assert not any(ch in text for ch in "\x1b\x07\x9b\u202e\r")
    assert "run\\x1b[31m: mlp\\x1b]0;owned\\x07\\x1b[2J\\u202e\\x9b (neural)" in out
    assert "mlp\\x1b]0;owned\\x07" in html and "evil\\x1b[8m" in html
    assert "note\\x1b[1m" in html and "a\\x0db" in html


# --- a long run in bounded memory --------------------------------------------------------------

def test_thinning_as_points_arrive_keeps_them_evenly_spaced_first_and_last_kept():
    for n in (1, 7, 8, 9, 100, 1000, 12_345):
        thinned = report.Thinned(cap=8)
        for i in range(n):
            thinned.add((float(i), 2.0))
        xs = [x for x, _ in thinned.points()]
        assert xs[0] == 0 and xs[-1] == n - 1 and len(xs) <= 9
        body = xs[:-1] if (n - 1) % thinned.stride else xs
        assert len({b - a for a, b in zip(body, body[1:])}) <= 1  # one stride
        assert n <= 8 or len(body) > 4  # never thinned below half the cap


def test_a_long_metrics_file_is_read_in_memory_bounded_by_the_points_drawn(runs, tmp_path):
    long = tmp_path / "long"
    shutil.copytree(runs["mlp-a"], long)
    n = 20_000
    with open(long / "metrics.jsonl", "w") as f:
        for i in range(n):
            f.write(f'{{"step": {i}, "loss": {2 + i / n:.6f}, "lr": 0.01, "grad_norm": 0.5}}\n')
            if i % 4 == 0:
                f.write(f'{{"step": {i}, "train_loss": 2.4, "val_loss": {3 - i / n:.6f}}}\n')
    size = (long / "metrics.jsonl").stat().st_size
    tracemalloc.start()
    try:
        view = report.read_run(long)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # a whole-file read holds at least the file (1.5 MB); the points drawn are 3 curves of at
    # most 2,000 (16 bytes each), beside the run's picture and settings (60 KB)
    assert size > 1_500_000 and peak < 400_000
    assert view.records == n + n // 4
    curve = view.curve("loss")
    assert report.MAX_POINTS // 2 <= len(curve) <= report.MAX_POINTS + 1
    assert curve[0] == (0, 2.0) and curve[-1] == (n - 1, round(2 + (n - 1) / n, 6))
    assert view.last("val_loss") == round(3 - (n - 4) / n, 6) and view.last("step") == n - 1
