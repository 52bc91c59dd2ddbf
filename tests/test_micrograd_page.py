"""The interactive micrograd page: one self-contained file whose losses are the Python run's.

The browser tests open the page in a real headless Chromium (see
``browser.py``) and compare the loss after every step with metrics.jsonl.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import re
from pathlib import Path

import pytest

from browser import browser, needs_browser, network_requests, screenshot  # noqa: F401
from tinylm.cli import main
from tinylm.errors import ConfigError
from tinylm.micrograd.demo import DemoConfig, train
from tinylm.micrograd.page import PAGE_NAME, write_page

TOLERANCE = 1e-9
N_PARAMETERS = 2 * 8 + 8 + 8 * 3 + 3  # MLP(2, [8, 3]): weights and biases of both layers


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    """``tinylm micrograd --html`` with the reference recipe, run once for the tests below."""
    out = tmp_path_factory.mktemp("runs") / "micrograd"
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = main(["micrograd", "--html", "-o", str(out)])
    return code, out, stdout.getvalue(), stderr.getvalue()


def train_losses(out: Path) -> list[float]:
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [r["train_loss"] for r in records if "train_loss" in r]


def embedded_config(html: str) -> dict:
    found = re.search(r'<script type="application/json" id="config">(.*?)</script>', html, re.S)
    assert found, "the page carries no config"
    return json.loads(found.group(1))


# --- without a browser --------------------------------------------------------------


def test_cli_writes_the_page_and_says_where(cli_run):
    code, out, stdout, stderr = cli_run
    assert code == 0 and stderr == ""
    page = out / PAGE_NAME
    assert page.stat().st_size > 0
    assert str(page) in stdout
    assert (out / "metrics.jsonl").exists()  # the usual run happened too


def test_page_is_one_file_that_fetches_nothing(cli_run):
    html = (cli_run[1] / PAGE_NAME).read_text(encoding="utf-8")
    # no file beside it and nothing from the network: every script and style is inline
    assert not re.search(r"<script[^>]*\ssrc\s*=", html, re.I)
    assert not re.search(r"<link\b", html, re.I)
    assert not re.search(r"\b(?:src|href)\s*=\s*[\"']?\s*(?:https?:)?//", html, re.I)
    assert not re.search(r"url\(\s*[\"']?\s*(?:https?:)?//", html, re.I)
    assert "@import" not in html
    assert "<style>" in html and "function trainStep" in html


def test_page_carries_the_config(tmp_path):
    config = DemoConfig(dataset="moons", points=40, hidden=(4, 3), steps=7, lr=0.05, seed=2**63 + 5)
    page = write_page(tmp_path / "new" / "dir", config)
    assert page == tmp_path / "new" / "dir" / PAGE_NAME
    html = page.read_text(encoding="utf-8")
    assert embedded_config(html) == json.loads(json.dumps(dataclasses.asdict(config)))
    assert str(2**63 + 5) in html  # the seed's digits as they are, beyond a double's 2**53


def test_page_refuses_a_config_that_cannot_run(tmp_path):
    with pytest.raises(ConfigError):
        write_page(tmp_path / "out", DemoConfig(steps=0))
    assert not (tmp_path / "out").exists()


# --- in a real headless Chromium --------------------------------------------------


def _page_losses(driver) -> list[tuple[int, float]]:
    """The trace as the page shows it: one "step loss" line per step."""
    text = driver.find_element("id", "trace").get_attribute("textContent")
    return [(int(step), float(loss)) for step, loss in (line.split() for line in text.splitlines())]


def _wait_for_steps(driver, n: int, timeout: float = 60) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, timeout, poll_frequency=0.1).until(
        lambda d: d.execute_script("return window.tinylmLosses.length") >= n)


def _assert_matches(page: list[tuple[int, float]], python: list[float]) -> None:
    assert [step for step, _ in page] == list(range(1, len(python) + 1))
    worst = max(abs(a - b) for (_, a), b in zip(page, python))
    assert worst <= TOLERANCE, f"the page's losses differ from the Python run's by {worst:g}"


@needs_browser
def test_page_trains_like_the_python_run(browser, cli_run, tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains

    out = cli_run[1]
    python = train_losses(out)
    assert len(python) == 100
    browser.get((out / PAGE_NAME).resolve().as_uri())
    assert browser.find_element("id", "status").text.startswith("step 0 / 100")
    rows = browser.find_elements("css selector", "#params tbody tr")
    assert len(rows) == N_PARAMETERS
    assert browser.find_element("css selector", "#graph svg")

    # play to the end: every step's loss equals metrics.jsonl's
    browser.find_element("id", "play").click()
    _wait_for_steps(browser, 100)
    _assert_matches(_page_losses(browser), python)
    shown = [loss for _, loss in _page_losses(browser)]
    assert browser.execute_script("return window.tinylmLosses") == shown
    status = browser.find_element("id", "status").text
    assert status.startswith("step 100 / 100, loss ")
    assert abs(float(status.split("loss ")[1].split(";")[0]) - python[-1]) <= TOLERANCE
    params = browser.find_elements("css selector", "#params tbody tr")
    assert len(params) == N_PARAMETERS
    assert all(len(r.find_elements("tag name", "td")) == 5 for r in params)  # name, value, grad, m, v
    shot = screenshot(_tall(browser), tmp_path / "micrograd-page.png")
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # reset starts the same run again
    browser.find_element("id", "reset").click()
    assert _page_losses(browser) == []
    browser.find_element("id", "step").click()
    _assert_matches(_page_losses(browser), python[:1])
    assert browser.find_element("id", "status").text.startswith("step 1 / 100")

    # a click on an empty place of the surface traces that place instead of test point 0
    traced = browser.find_element("id", "traced").text
    graph = browser.find_element("id", "graph").get_attribute("innerHTML")
    assert "test point 0" in traced
    surface = browser.find_element("id", "surface")
    ActionChains(browser).move_to_element_with_offset(surface, -170, 170).click().perform()
    assert browser.find_element("id", "traced").text != traced
    assert "new point" in browser.find_element("id", "traced").text
    assert browser.find_element("id", "graph").get_attribute("innerHTML") != graph

    assert network_requests(browser) == []


@needs_browser
def test_page_draws_every_dataset_as_python_does(browser, tmp_path):
    # simple, circles and moons draw with uniform and Box-Muller normals; yinyang is above.
    # One seed is beyond 2**53, where a JSON number would lose its last digits.
    cases = (("simple", (4,), 7), ("circles", (5, 3), 2**63 + 5), ("moons", (6,), 7))
    for dataset, hidden, seed in cases:
        config = DemoConfig(dataset=dataset, points=30, hidden=hidden, steps=6, seed=seed)
        python = [loss for _, loss in train(config).losses("train_loss")]
        page = write_page(tmp_path / dataset, config)
        browser.get(page.resolve().as_uri())
        for _ in range(config.steps):
            browser.find_element("id", "step").click()
        _wait_for_steps(browser, config.steps)
        _assert_matches(_page_losses(browser), python)
    assert network_requests(browser) == []


def _tall(driver):
    """The browser made tall enough to show the whole graph in one screenshot."""
    driver.set_window_size(1280, 1100)
    return driver
