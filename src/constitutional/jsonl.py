"""Reading and writing the JSONL artifacts stages exchange.

Reads fail with `UserError` naming the file and line. Writes are atomic (temp file + rename), so
a killed run never leaves a half-written artifact behind.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from constitutional.errors import UserError


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """All rows of a JSONL file; blank lines are skipped. Every row must be a JSON object."""
    return [row for _, row in iter_jsonl(path)]


def iter_jsonl(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (1-based line number, row) so callers can name the line of a bad field."""
    path = Path(path)
    if not path.is_file():
        raise UserError("no such file", path)
    with path.open("rb") as f:
        for number, raw in enumerate(f, start=1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise UserError("not valid UTF-8", path, number) from None
            if not text.strip():
                continue
            try:
                row = json.loads(text)
            except json.JSONDecodeError as e:
                raise UserError(f"invalid JSON: {e.msg} (column {e.colno})", path, number) from None
            if not isinstance(row, dict):
                raise UserError("each line must be a JSON object", path, number)
            yield number, row


def read_json(path: Path, artifact: str | None = None) -> dict[str, Any] | None:
    """A JSON object, or None if the file is absent. `artifact` must match the file's own tag."""
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"not valid JSON: {e}", path) from None
    if not isinstance(data, dict):
        raise UserError("expected a JSON object", path)
    if artifact and data.get("artifact", artifact) != artifact:
        raise UserError(f"expected artifact {artifact!r}, found {data.get('artifact')!r}", path)
    return data


_UMASK = os.umask(0o022)
os.umask(_UMASK)  # read once: os.umask can only be read by setting it


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temp path beside `path`; on success rename it over `path`, on failure delete it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; artifacts get the usual permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_jsonl(path: str | Path, rows: Iterable[dict[str, Any]]) -> None:
    """Write rows atomically, one compact JSON object per line."""
    with atomic_path(path) as tmp, tmp.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def write_json(path: str | Path, obj: Any) -> None:
    """Write one JSON document atomically (manifests, reports' data)."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
