"""Helpers shared by tests that drive the `cai` CLI in a subprocess."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

CAI = [sys.executable, "-c", "from constitutional.cli import main; main()"]


def cai(*args, timeout: float = 600, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*CAI, *map(str, args)], capture_output=True, text=True, timeout=timeout, **kwargs
    )


def write_prompts(path: Path, n: int) -> Path:
    with path.open("w") as f:
        for i in range(n):
            f.write(
                json.dumps({"id": f"p{i}", "prompt": f"Question {i}: tell me about topic {i}."})
                + "\n"
            )
    return path


def cached_rows(db: Path) -> int:
    try:
        with sqlite3.connect(db, timeout=1) as con:
            return con.execute("SELECT COUNT(*) FROM responses").fetchone()[0]
    except sqlite3.Error:  # not created yet
        return 0


def run_and_kill(args, cache: Path, at_least: int, timeout: float = 600) -> int:
    """Start `cai ARGS`, SIGKILL it once `cache` holds `at_least` results; return how many it held."""
    proc = subprocess.Popen(
        [*CAI, *map(str, args)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + timeout
    while cached_rows(cache) < at_least and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    assert proc.poll() is None, "the run finished before it could be killed halfway"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    return cached_rows(cache)


CHROMIUM = "/usr/bin/chromium"


@contextlib.contextmanager
def headless_chromium():
    """Debian's Chromium driven by PyPI playwright (no browser download). Skips when it is
    missing locally; fails on CI, where `.ci/run` installs it."""
    import pytest

    if not Path(CHROMIUM).is_file():
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} is missing; .ci/run installs the Debian chromium package")
        pytest.skip(f"needs Debian chromium at {CHROMIUM} (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
        )
        try:
            yield browser
        finally:
            browser.close()
