"""Run a recipe: each stage in order, skipped when its inputs are unchanged.

A stage's inputs key hashes its recipe section together with the key of the stage before it
(and the run-wide settings), so changing any upstream stage reruns everything after it. The key
and the stage's results go into `manifest.json` after the stage's outputs are written, so a run
killed mid-stage reruns that stage (generation resumes from the run's response cache).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from constitutional.provenance import RunManifest
from constitutional.recipe.schema import Recipe
from constitutional.recipe.stages import STAGES, RunContext

Say = Callable[[str], None]


def stage_key(previous: str, name: str, section: Any) -> str:
    blob = json.dumps([previous, name, section.model_dump(mode="json")], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def run_recipe(
    recipe: Recipe,
    run_dir: str | Path,
    *,
    progress: Callable[[str, int], None] | None = None,
    say: Say = print,
    force: tuple[str, ...] = (),
) -> dict[str, Any]:
    """Run every stage the recipe names into `run_dir`; return the manifest data.

    Args:
        recipe: a validated recipe (see `load_recipe`).
        run_dir: where artifacts and `manifest.json` go (created if missing); `cai run` renders
            `report.html` from them afterwards (the report sits above the recipe layer).
        progress: (label, total) / ("", n) callback for progress bars inside stages.
        say: where one-line stage announcements go.
        force: stage names to rerun even if unchanged (their successors rerun too).
    """
    from constitutional.constitution import load_constitution
    from constitutional.recipe.disjoint import check_disjoint
    from constitutional.splits import split_record

    split = check_disjoint(
        recipe
    )  # before any work: a recipe that would test on training prompts fails
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    constitution = load_constitution(recipe.constitution)
    manifest = RunManifest(run_dir / "manifest.json")
    manifest.data["recipe"] = {
        "name": recipe.name,
        "seed": recipe.seed,
        "model": recipe.model,
        "constitution": {
            "source": recipe.constitution,
            "hash": constitution.hash,
            "version": constitution.version,
        },
        "settings": recipe.model_dump(mode="json"),
        "split": {**split, "red_team_split": split_record()},
    }
    ctx = RunContext(recipe, run_dir, constitution, progress or (lambda label, n: None))
    key = stage_key(
        constitution.hash,
        "run",
        recipe.model_copy(update={"name": "", "description": "", "stages": None}),
    )
    todo = [
        (name, getattr(recipe.stages, name))
        for name in STAGES
        if getattr(recipe.stages, name) is not None
    ]
    rerun = False
    for i, (name, section) in enumerate(todo, 1):
        run, outputs = STAGES[name]
        key = stage_key(key, name, section)
        done = manifest.data["stages"].get(name, {})
        rerun = (
            rerun
            or name in force
            or done.get("inputs_key") != key
            or not all((run_dir / o).exists() for o in outputs)
        )
        if not rerun:
            say(f"[{i}/{len(todo)}] {name}: unchanged, skipped")
            continue
        say(f"[{i}/{len(todo)}] {name} ...")
        start = time.perf_counter()
        ctx.begin_stage()
        fields = run(ctx, section)
        manifest.record(
            name,
            wall_seconds=time.perf_counter() - start,
            inputs_key=key,
            outputs=list(outputs),
            **fields,
        )
        say(f"[{i}/{len(todo)}] {name}: done in {time.perf_counter() - start:.0f} s")
    return manifest.data
