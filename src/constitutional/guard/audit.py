"""The guard proxy's audit log: one SQLite row per request, written as the request finishes.

WAL mode lets an operator read the log (`sqlite3 guard.sqlite 'select ...'`) while the proxy
writes. Rows hold scores and decisions, never the texts themselves, so the log can be kept
longer than conversations may be.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS requests (
    request_id TEXT PRIMARY KEY,
    time REAL NOT NULL,              -- unix seconds when the request arrived
    stream INTEGER NOT NULL,
    input_score REAL,
    input_flagged INTEGER,
    input_stage TEXT,
    output_score REAL,               -- the last output check (the one that decided)
    output_flagged INTEGER,
    output_checks INTEGER NOT NULL,  -- how many times the response was checked as it grew
    decision TEXT NOT NULL,          -- allowed | refused_input | refused_output | upstream_error
                                     -- | client_closed (the client left mid-stream)
    constitution_hash TEXT,
    latency_ms REAL,
    error TEXT                       -- classifier or upstream error, one line
)
"""


@dataclass
class AuditRecord:
    """What the proxy learned about one request; filled in as the request goes."""

    request_id: str
    constitution_hash: str | None
    stream: bool = False
    time: float = field(default_factory=time.time)
    input_score: float | None = None
    input_flagged: bool | None = None
    input_stage: str | None = None
    output_score: float | None = None
    output_flagged: bool | None = None
    output_checks: int = 0
    decision: str = "allowed"
    latency_ms: float | None = None
    error: str | None = None


class AuditLog:
    """Append-only request log in one SQLite file, safe to share between threads.

    Args:
        path: the database file; created with its parent directory if missing.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._con = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._con.execute("PRAGMA journal_mode=WAL")
        self._con.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable at checkpoint
        self._con.execute(SCHEMA)
        self._lock = threading.Lock()

    def write(self, record: AuditRecord) -> None:
        """Insert one finished request."""
        row = asdict(record)
        columns = ", ".join(row)
        marks = ", ".join(f":{k}" for k in row)
        with self._lock:
            self._con.execute(f"INSERT OR REPLACE INTO requests ({columns}) VALUES ({marks})", row)

    def close(self) -> None:
        with self._lock:
            self._con.close()
