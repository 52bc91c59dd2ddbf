"""A real headless Chromium for the page tests, or a skip that says what is missing.

The tests of tinylm's HTML pages open them in Debian's ``chromium`` through
``chromium-driver`` and selenium (``.ci/run`` installs all three). A machine
without them skips those tests with the reason; nothing else depends on
them. Every page test saves a screenshot under its temporary directory.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

DOCS_IMG = Path(__file__).resolve().parents[1] / "docs" / "img"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")


def _missing() -> str | None:
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install selenium)"
    if CHROMIUM is None or DRIVER is None:
        return "Chromium or chromium-driver is not installed (apt-get install chromium chromium-driver)"
    return None


needs_browser = pytest.mark.skipif(_missing() is not None, reason=_missing() or "")


@pytest.fixture
def browser(tmp_path):
    """A headless Chromium with no network beyond 127.0.0.1; closed after the test."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                 "--window-size=1280,1000", f"--user-data-dir={tmp_path / 'chromium-profile'}",
                 # a page that fetched from the network would fail loudly, not quietly work
                 "--proxy-server=http://0.0.0.0:1", "--proxy-bypass-list=127.0.0.1;localhost"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def screenshot(driver, path: Path) -> Path:
    """Save what the browser shows as a PNG at ``path``; with TINYLM_SCREENSHOTS=1 also as
    docs/img/<name>, the README's picture of the page (taken by the test, never by hand)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(path))
    if os.environ.get("TINYLM_SCREENSHOTS") == "1":
        shutil.copy(path, DOCS_IMG / path.name)
    return path


def network_requests(driver) -> list[str]:
    """The URLs the page asked for beyond itself (file:, data: and 127.0.0.1 are local)."""
    entries = driver.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name)")
    return [u for u in entries if not u.startswith(("file:", "data:", "blob:",
                                                    "http://127.0.0.1", "http://localhost"))]
