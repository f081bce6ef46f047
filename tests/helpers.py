"""Helpers shared by tests that drive the `cai` CLI in a subprocess."""

from __future__ import annotations

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
    return subprocess.run([*CAI, *map(str, args)], capture_output=True, text=True, timeout=timeout, **kwargs)


def write_prompts(path: Path, n: int) -> Path:
    with path.open("w") as f:
        for i in range(n):
            f.write(json.dumps({"id": f"p{i}", "prompt": f"Question {i}: tell me about topic {i}."}) + "\n")
    return path


def cached_rows(db: Path) -> int:
    try:
        with sqlite3.connect(db, timeout=1) as con:
            return con.execute("SELECT COUNT(*) FROM responses").fetchone()[0]
    except sqlite3.Error:  # not created yet
        return 0


def run_and_kill(args, cache: Path, at_least: int, timeout: float = 600) -> int:
    """Start `cai ARGS`, SIGKILL it once `cache` holds `at_least` results; return how many it held."""
    proc = subprocess.Popen([*CAI, *map(str, args)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + timeout
    while cached_rows(cache) < at_least and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    assert proc.poll() is None, "the run finished before it could be killed halfway"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    return cached_rows(cache)
