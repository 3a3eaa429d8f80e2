"""Headless Chromium for tests that read pages as a browser renders them: Debian's package (`make install` installs
it, or the first test that needs it), driven by Playwright, which reports what a page logs, how it lays out and what
it looks like."""
from __future__ import annotations

import html
import os
import re
import shutil
import subprocess
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import pytest

PACKAGE = "chromium"
WINDOW = (1280, 800)  # a laptop's screen: what "the first screen" means here
# What a page shows, measured in the page: tables wider than the page (or than their scrolling box), images that did
# not load, the results table's place, the page's own horizontal overflow.
MEASURE = """() => {
  const width = document.documentElement.clientWidth;
  const named = (table) => {
    let node = table;
    while (node && !(node.tagName === 'SECTION')) node = node.parentElement;
    const heading = node ? node.querySelector('h2') : null;
    return (heading ? heading.textContent : 'page') + ': ' + [...table.tHead.rows[0].cells].slice(0, 4)
      .map((cell) => cell.textContent.trim()).join(', ');
  };
  const wide = [...document.querySelectorAll('table')].filter((table) => {
    const box = table.getBoundingClientRect();
    const holder = table.parentElement;
    return box.right > width + 1 || holder.scrollWidth > holder.clientWidth + 1;
  }).map(named);
  const broken = [...document.images].filter((image) => !image.complete || image.naturalWidth === 0)
    .map((image) => image.alt || image.src.slice(0, 60));
  const results = document.getElementById('results');
  const firstRow = results && results.tBodies[0].rows[0];
  return {wide, broken, overflow: document.documentElement.scrollWidth - width, images: document.images.length,
          resultsBottom: firstRow ? firstRow.getBoundingClientRect().bottom : null,
          height: window.innerHeight, title: document.title};
}"""


def ensure_chromium() -> str:
    """The chromium binary, installing Debian's package when it is missing (`apt-get update` only if the install
    fails without it). Raises RuntimeError when it cannot be installed."""
    found = shutil.which(PACKAGE)
    if found:
        return found
    apt = shutil.which("apt-get")
    if apt is None:
        raise RuntimeError(f"{PACKAGE} is not installed and there is no apt-get to install it")
    sudo = [] if os.geteuid() == 0 else ["sudo", "-n"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = [*sudo, apt, "install", "-y", "-qq", PACKAGE]
    done = subprocess.run(install, capture_output=True, text=True, env=env)
    if done.returncode != 0:  # stale or missing package lists
        subprocess.run([*sudo, apt, "update", "-qq"], capture_output=True, text=True, env=env)
        done = subprocess.run(install, capture_output=True, text=True, env=env)
    found = shutil.which(PACKAGE)
    if done.returncode != 0 or not found:
        raise RuntimeError(f"`apt-get install {PACKAGE}` failed: {(done.stderr or done.stdout).strip()[-500:]}")
    return found


def visible_text(page: str) -> str:
    """A dumped DOM's text, scripts and styles left out, whitespace collapsed."""
    page = re.sub(r"<(script|style)\b.*?</\1>", " ", page, flags=re.S | re.I)
    return re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", " ", page))).strip()


@dataclass
class Rendered:
    """What a page did in the browser: its console errors and failed requests, its measurements (`MEASURE`), and
    where its first screen's screenshot is."""

    url: str
    errors: list[str]
    measured: dict
    screenshot: Path

    @property
    def problems(self) -> list[str]:
        """Everything that makes the page fail: a console error, a missing image, a table wider than the page, a
        page that scrolls sideways, or a first screen without the results table."""
        found = [f"console: {error}" for error in self.errors]
        found += [f"image not shown: {name}" for name in self.measured["broken"]]
        found += [f"table wider than the page: {name}" for name in self.measured["wide"]]
        if self.measured["overflow"] > 1:
            found.append(f"the page scrolls sideways by {self.measured['overflow']} px")
        bottom = self.measured["resultsBottom"]
        if bottom is None or bottom > self.measured["height"]:
            found.append("the first screen does not show the results table (id=results)")
        return found


@dataclass
class Browser:
    """One headless Chromium; every page opens in a context of its own (nothing one page stored shapes the next)."""

    binary: str
    playwright: object = None
    browser: object = None
    window: tuple[int, int] = WINDOW
    opened: list = field(default_factory=list)

    @contextmanager
    def page(self, url: str, javascript: bool = True) -> Iterator[tuple[object, list[str]]]:
        """The page at `url`, loaded, and the list its console errors, uncaught exceptions and failed requests go to."""
        context = self.browser.new_context(viewport={"width": self.window[0], "height": self.window[1]},
                                           java_script_enabled=javascript)
        errors: list[str] = []
        tab = context.new_page()
        tab.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
        tab.on("pageerror", lambda error: errors.append(f"uncaught: {error}"))
        tab.on("requestfailed", lambda request: errors.append(f"failed to load {request.url[:80]}"))
        try:
            tab.goto(url, wait_until="load")
            yield tab, errors
        finally:
            context.close()

    def render(self, url: str, screenshot: Path, full_page: bool = False) -> Rendered:
        """Load `url`, measure it, and keep a screenshot of its first screen (of all of it with `full_page`)."""
        with self.page(url) as (tab, errors):
            measured = tab.evaluate(MEASURE)
            screenshot.parent.mkdir(parents=True, exist_ok=True)
            tab.screenshot(path=str(screenshot), full_page=full_page)
            return Rendered(url, list(errors), measured, screenshot)

    def dom(self, url: str, ready: Callable[[str], bool], timeout_s: float = 60) -> str:
        """The page's DOM once `ready(dom)` holds (or the time is up): for pages that fetch what they show."""
        with self.page(url) as (tab, _):
            deadline = timeout_s * 1000
            waited = 0
            while waited < deadline and not ready(tab.content()):
                tab.wait_for_timeout(250)
                waited += 250
            return tab.content()


@contextmanager
def chromium_or_skip() -> Iterator[Browser]:
    """A running Browser; the test skips, in one line, where Chromium or Playwright cannot be had."""
    try:
        from playwright.sync_api import Error as PlaywrightError, sync_playwright
    except ImportError:
        pytest.skip("no browser test: Playwright is not installed (pip install -e '.[dev]')")
    try:
        binary = ensure_chromium()
    except RuntimeError as exc:
        pytest.skip(f"no browser test: {exc}")
    with sync_playwright() as playwright:
        try:
            launched = playwright.chromium.launch(executable_path=binary,
                                                  args=["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"])
        except PlaywrightError as exc:
            pytest.skip(f"no browser test: Chromium at {binary} does not start: {str(exc).splitlines()[0]}")
        try:
            yield Browser(binary, playwright, launched)
        finally:
            launched.close()
