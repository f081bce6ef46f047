"""Helpers shared by tests that drive the `cai` CLI in a subprocess."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

CAI = [sys.executable, "-c", "from constitutional.cli import main; main()"]


def cai(*args, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([*CAI, *map(str, args)], capture_output=True, text=True, timeout=300, **kwargs)


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
