"""Human preference rows (HH-style `prompt`, `chosen`, `rejected`): mixed into AI labels by
labelling and used as the reference answers of the judge audit."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from constitutional.errors import UserError
from constitutional.jsonl import iter_jsonl


def load_human_prefs(path: str | Path) -> list[dict[str, Any]]:
    """HH-style rows with non-empty string `prompt`, `chosen`, `rejected`; errors name file:line."""
    rows = []  # checked up front, before any model is loaded
    for line, row in iter_jsonl(path):
        for key in ("prompt", "chosen", "rejected"):
            if not (isinstance(row.get(key), str) and row[key].strip()):
                raise UserError(
                    f"human preference row needs a non-empty string `{key}`", path, line
                )
        rows.append({**row, "id": str(row.get("id", f"human-{line}"))})
    if not rows:
        raise UserError("no human preferences: the file is empty", path)
    return rows
