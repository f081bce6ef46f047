"""What every artifact records about how it was made: the run manifest and per-row stamps.

Stages talk only through JSONL artifacts plus `manifest.json`. Each row carries a small `meta`
stamp (artifact kind and schema version, constitution hash and version); the manifest carries the
rest: models, seeds, package versions, tokens and wall time per stage.
"""

from __future__ import annotations

import hashlib
import json
import platform
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from constitutional import __version__
from constitutional.jsonl import write_json

MANIFEST_SCHEMA = "cai.manifest/1"
_PACKAGES = ("torch", "transformers", "trl", "peft", "datasets", "accelerate")


def derive_seed(seed: int, *parts: Any) -> int:
    """A stable 63-bit seed for one item of a seeded run (e.g. run seed + row id)."""
    blob = json.dumps([seed, *parts], sort_keys=True, default=str).encode()
    return int.from_bytes(hashlib.sha256(blob).digest()[:8], "big") >> 1


def row_meta(artifact: str, version: int, constitution: Any = None) -> dict[str, Any]:
    """The stamp every artifact row carries. `constitution` is a loaded Constitution or None."""
    meta = {"artifact": artifact, "schema_version": version, "constitutional": __version__}
    if constitution is not None:
        meta["constitution_hash"] = constitution.hash
        meta["constitution_version"] = constitution.version
    return meta


def sha256_file(path: Path) -> str:
    """The hex SHA-256 of a file, read in 1 MiB chunks: how a checkpoint names its data."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def package_versions() -> dict[str, str]:
    versions = {"constitutional": __version__, "python": platform.python_version()}
    for name in _PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return versions


class RunManifest:
    """`manifest.json` of a run: one entry per stage, rewritten atomically after each stage."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if self.path.is_file():
            self.data = json.loads(self.path.read_text(encoding="utf-8"))
        else:
            self.data = {"schema": MANIFEST_SCHEMA, "created": time.time(), "stages": {}}
        self.data["packages"] = package_versions()

    def record(self, stage: str, *, backend=None, wall_seconds: float, **fields: Any) -> None:
        """Record a finished stage. `backend` is a CachedBackend; its usage meter is copied."""
        entry: dict[str, Any] = {"finished": time.time(), "wall_seconds": round(wall_seconds, 3)}
        if backend is not None:
            entry["backend"] = {"name": backend.name, "model": backend.model}
            entry["tokens"] = vars(backend.usage).copy()
        entry.update(fields)
        self.data["stages"][stage] = entry
        write_json(self.path, self.data)
