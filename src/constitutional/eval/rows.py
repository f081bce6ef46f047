"""Reading the artifacts the audits work on: RL-CAI label rows and SL-CAI traces, checked up front.

A bad row fails before any model loads, as `UserError` naming the file and line.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from constitutional.errors import UserError
from constitutional.jsonl import iter_jsonl

PROBABILITIES = ("p_a_raw", "p_a_swapped", "p_a")


def load_labels(path: str | Path) -> list[dict[str, Any]]:
    """Label rows (`cai rl-cai label` output, or any rows with prompt, response_a, response_b).

    Discarded rows are kept (audits skip them); probabilities, where present, must be in [0, 1],
    and so must every value of an optional `p_a_by_principle` {principle id: p(A)} map.
    """
    rows = []
    for line, row in iter_jsonl(path):
        if not row.get("discarded"):
            for key in ("prompt", "response_a", "response_b"):
                if not isinstance(row.get(key), str):
                    raise UserError(f"label row needs a string `{key}`", path, line)
        for key, value in [
            *((k, row.get(k)) for k in PROBABILITIES),
            *(row.get("p_a_by_principle") or {}).items(),
        ]:
            if value is not None and not _probability(value):
                raise UserError(
                    f"`{key}` must be a probability in [0, 1], got {value!r}", path, line
                )
        rows.append(row)
    if not rows:
        raise UserError("no label rows: the file is empty", path)
    return rows


def load_traces(path: str | Path) -> list[dict[str, Any]]:
    """SL-CAI trace rows (`cai sl-cai generate` output): each needs a list `rounds`."""
    rows = []
    for line, row in iter_jsonl(path):
        if not isinstance(row.get("rounds"), list) or not isinstance(
            row.get("initial_response", ""), str
        ):
            raise UserError(
                "SL-CAI trace row needs a list `rounds` and a string `initial_response`", path, line
            )
        for step in row["rounds"]:
            if not (isinstance(step, dict) and isinstance(step.get("principle_id"), str)):
                raise UserError("every round needs a string `principle_id`", path, line)
        rows.append(row)
    if not rows:
        raise UserError("no SL-CAI traces: the file is empty", path)
    return rows


def judged(rows: list[dict]) -> list[dict]:
    """Rows the AI judge actually labelled: not discarded, not human, with a raw p(A)."""
    return [
        r
        for r in rows
        if not r.get("discarded") and r.get("source", "ai") == "ai" and r.get("p_a_raw") is not None
    ]


def _probability(value: Any) -> bool:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and not math.isnan(value)
        and 0 <= value <= 1
    )
