"""The run section: what ran, on which model, how long it took and what it cost, from the manifest."""

from __future__ import annotations

from typing import Any

from constitutional.report.html import Markup, esc, not_run, section, table
from constitutional.report.load import RunArtifacts

ANCHOR, TITLE = "run", "Run"
TOKEN_KEYS = (
    "calls",
    "cache_hits",
    "prompt_tokens",
    "completion_tokens",
    "cached_prompt_tokens",
    "cached_completion_tokens",
)


def duration(seconds: float | None) -> str:
    """Wall time as a person reads it: 0.4 s, 82 s, 12 min 5 s, 3 h 2 min."""
    if seconds is None:
        return "—"
    if seconds < 10:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours} h {minutes} min"
    return f"{minutes} min {secs} s" if minutes else f"{secs} s"


def render(run: RunArtifacts) -> tuple[str, str, str]:
    if run.manifest is None:
        return ANCHOR, TITLE, not_run(ANCHOR, TITLE, "no manifest.json in the run directory.")
    stages: dict[str, dict[str, Any]] = run.manifest["stages"]
    body = [
        (
            f'<p class="note">From {esc(", ".join(run.manifest_files))} · '
            f"schema {esc(run.manifest.get('schema') or '?')}</p>"
        )
    ]
    body.append(
        "<h3>Stages</h3>" + _stage_table(stages)
        if stages
        else '<p class="not-run">The manifest records no stage yet.</p>'
    )
    body.append("<h3>Constitution</h3>" + _constitutions(run, stages))
    if run.manifest.get("packages"):
        packages = sorted(run.manifest["packages"].items())
        body.append("<h3>Package versions</h3>" + table(["package", "version"], packages))
    return ANCHOR, TITLE, section(ANCHOR, TITLE, "".join(body))


def _stage_table(stages: dict[str, dict[str, Any]]) -> str:
    rows, totals = [], dict.fromkeys(TOKEN_KEYS, 0)
    wall = 0.0
    for name, entry in stages.items():
        backend, tokens = entry.get("backend") or {}, entry.get("tokens") or {}
        for k in TOKEN_KEYS:
            totals[k] += tokens.get(k) or 0
        wall += entry.get("wall_seconds") or 0
        rows.append(
            [
                name,
                backend.get("name"),
                backend.get("model"),
                duration(entry.get("wall_seconds")),
                *(tokens.get(k) for k in TOKEN_KEYS),
                entry.get("seed"),
            ]
        )
    if len(rows) > 1:
        rows.append(
            [Markup("<strong>total</strong>"), "", "", duration(wall), *totals.values(), ""]
        )
    headers = [
        "stage",
        "backend",
        "model",
        "wall time",
        "calls",
        "cache hits",
        "prompt tokens",
        "completion tokens",
        "prompt tokens from cache",
        "completion tokens from cache",
        "seed",
    ]
    return table(headers, rows, numeric=[False] * 3 + [True] * 8)


def _constitutions(run: RunArtifacts, stages: dict[str, dict[str, Any]]) -> str:
    """Every constitution the artifacts name; more than one means the stages disagree."""
    seen: dict[tuple[str, str], list[str]] = {}
    for name, entry in stages.items():
        c = entry.get("constitution") or {}
        if c.get("hash"):
            seen.setdefault((c["hash"], c.get("version") or "?"), []).append(name)
    c = (run.eval or {}).get("constitution") or {}
    if c.get("hash"):
        seen.setdefault((c["hash"], c.get("version") or "?"), []).append("eval.json")
    if not seen:
        return '<p class="not-run">No stage records a constitution.</p>'
    rows = [
        [Markup(f"<code>{esc(h)}</code>"), v, ", ".join(names)] for (h, v), names in seen.items()
    ]
    warn = ""
    if len(seen) > 1:
        warn = (
            '<p class="warn">Warning: these artifacts were made under different constitutions.</p>'
        )
    return warn + table(["sha256", "version", "recorded by"], rows)
