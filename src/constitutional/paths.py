"""Where constitutional keeps state between runs: the response cache and converted models."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """`$CAI_CACHE_DIR`, else `~/.cache/constitutional` (created on demand)."""
    root = os.environ.get("CAI_CACHE_DIR") or Path.home() / ".cache" / "constitutional"
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def default_response_cache() -> Path:
    return cache_dir() / "responses.sqlite"
