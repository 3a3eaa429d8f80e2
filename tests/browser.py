"""A headless Chromium for tests that read pages as a browser renders them: Debian's package, installed on first use."""
from __future__ import annotations

import html
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

PACKAGE = "chromium"


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


@dataclass(frozen=True)
class Chromium:
    """Loads every page in a profile of its own, so nothing a page stored (local storage) shapes the next one."""

    binary: str
    profiles: Path
    window: tuple[int, int] = (1600, 1000)
    budget_ms: int = 15_000  # virtual time for the page's scripts and requests; it passes faster when idle

    def _run(self, url: str, output: str, budget_ms: int) -> subprocess.CompletedProcess:
        self.profiles.mkdir(parents=True, exist_ok=True)
        profile = tempfile.mkdtemp(dir=self.profiles)
        command = [self.binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                   "--no-first-run", f"--user-data-dir={profile}", "--window-size={},{}".format(*self.window),
                   f"--virtual-time-budget={budget_ms}", output, url]
        return subprocess.run(command, capture_output=True, text=True, timeout=120)

    def dom(self, url: str, ready: Callable[[str], bool]) -> str:
        """The page's DOM once rendered; loaded once more with a larger budget when `ready(dom)` does not hold."""
        for budget_ms in (self.budget_ms, 3 * self.budget_ms):
            page = self._run(url, "--dump-dom", budget_ms).stdout
            if ready(page):
                break
        return page

    def screenshot(self, url: str, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.unlink(missing_ok=True)
        done = self._run(url, f"--screenshot={path}", self.budget_ms)
        if not path.exists():
            raise RuntimeError(f"chromium wrote no screenshot of {url}: {done.stderr[-500:]}")
        return path
