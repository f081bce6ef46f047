"""Find and read what a run directory holds; anything absent is None, never an error.

A run directory collects the artifacts of one experiment: `manifest.json` (and the
`OUT.manifest.json` files each CLI command writes beside its output), `eval.json`, `audit.json`,
`principles.json`, `sl.jsonl`, `self_play.json`, and checkpoint directories with a
`train_log.json`. A file that is present but unreadable is a `UserError` naming it: a report that
silently dropped a section would hide exactly the problem its reader is looking for.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from constitutional.errors import UserError
from constitutional.jsonl import read_json, read_jsonl


@dataclass
class Checkpoint:
    """One trained model directory: its per-step log and provenance (`cai_checkpoint.json`)."""

    name: str
    log: list[dict[str, Any]]
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class RunArtifacts:
    """Everything the report can show; None (or empty) where the stage did not run."""

    run_dir: Path
    manifest: dict[str, Any] | None = None
    manifest_files: list[str] = field(default_factory=list)
    eval: dict[str, Any] | None = None
    audit: dict[str, Any] | None = None
    principles: dict[str, Any] | None = None
    traces: list[dict[str, Any]] | None = None
    self_play: dict[str, Any] | None = None
    revisions: dict[str, Any] | None = None
    checkpoints: list[Checkpoint] = field(default_factory=list)


def load_run(run_dir: Path) -> RunArtifacts:
    """Read every known artifact of `run_dir`. Raises UserError if the directory is missing."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError("not a run directory", run_dir)
    run = RunArtifacts(run_dir=run_dir)
    run.manifest, run.manifest_files = load_manifests(run_dir)
    run.eval = read_json(run_dir / "eval.json", "eval_results")
    run.audit = read_json(run_dir / "audit.json", "judge_audit")
    run.principles = read_json(run_dir / "principles.json", "principle_audit")
    run.self_play = read_json(run_dir / "self_play.json", "self_play")
    run.revisions = read_json(run_dir / "revisions.json", "revisions_curve")
    if (run_dir / "sl.jsonl").is_file():
        run.traces = read_jsonl(run_dir / "sl.jsonl")
    run.checkpoints = load_checkpoints(run_dir)
    return run


def load_manifests(run_dir: Path) -> tuple[dict[str, Any] | None, list[str]]:
    """`manifest.json` merged with every `*.manifest.json` beside it (one per CLI command).

    Stages keep their names; a name recorded by two files is told apart by its file's name.
    """
    paths = [run_dir / "manifest.json"] if (run_dir / "manifest.json").is_file() else []
    paths += sorted(run_dir.glob("*.manifest.json"))
    if not paths:
        return None, []
    merged: dict[str, Any] = {"stages": {}, "packages": {}}
    for path in paths:
        data = read_json(path) or {}
        merged.setdefault("schema", data.get("schema"))
        merged["packages"] = merged["packages"] or data.get("packages", {})
        for stage, entry in (data.get("stages") or {}).items():
            name = stage if stage not in merged["stages"] else f"{stage} ({path.name})"
            merged["stages"][name] = entry
    return merged, [p.name for p in paths]


def load_checkpoints(run_dir: Path) -> list[Checkpoint]:
    """Subdirectories (one level down) holding a `train_log.json`, in name order."""
    found = []
    for log_path in sorted(run_dir.glob("*/train_log.json")):
        try:
            log = json.loads(log_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise UserError(f"not valid JSON: {e}", log_path) from None
        if not isinstance(log, list):
            raise UserError("expected a JSON list of per-step entries", log_path)
        info = read_json(log_path.parent / "cai_checkpoint.json") or {}
        found.append(Checkpoint(name=log_path.parent.name, log=log, info=info))
    return found
