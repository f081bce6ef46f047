"""`cai run RECIPE`: the whole pipeline from one YAML recipe, resumable, with an HTML report."""

from __future__ import annotations

from pathlib import Path

import typer


def run(
    recipe: str = typer.Argument(
        ..., help="Recipe YAML, or a bundled recipe: tiny (embedded model, CPU) or full (GPU)."
    ),
    out: Path = typer.Option(
        None,
        "--out",
        "-o",
        help="Run directory (default runs/NAME); a rerun skips unchanged stages.",
    ),
    force: list[str] = typer.Option(
        [],
        "--force",
        help="Rerun this stage (and the ones after it) even if unchanged; repeatable.",
    ),
    check: bool = typer.Option(
        False, "--check", help="Validate the recipe and list its stages, run nothing."
    ),
) -> None:
    """Run constitution → SL-CAI → SFT → labels → preference model → DPO/PPO → eval → report."""
    from rich.console import Console

    from constitutional.cli.models import stage_progress
    from constitutional.errors import UserError
    from constitutional.recipe import load_recipe
    from constitutional.recipe.runner import run_recipe
    from constitutional.recipe.stages import STAGES

    plan = load_recipe(recipe)
    names = [name for name, section in plan.stages if section is not None]
    unknown = sorted(set(force) - set(STAGES))
    if unknown:
        raise UserError(f"--force: unknown stage {unknown[0]!r}; stages are {', '.join(STAGES)}")
    run_dir = out or Path("runs") / plan.name
    console = Console(stderr=True)
    if check:
        console.print(
            f"{recipe}: ok — recipe {plan.name!r}, stages: {' → '.join(names)}; run directory {run_dir}"
        )
        return
    with stage_progress() as progress:
        data = run_recipe(plan, run_dir, progress=progress, say=console.print, force=tuple(force))
    seconds = sum(s.get("wall_seconds", 0) for s in data["stages"].values())
    from constitutional.report import render_report

    console.print(f"report → {render_report(run_dir)}")
    console.print(
        f"run {plan.name!r} done ({seconds:.0f} s of stage time) → {run_dir}/manifest.json"
    )
    _print_eval(run_dir, console)


def _print_eval(run_dir: Path, console) -> None:
    """The eval's harm numbers (judge beside instrument) and the judge warning, if it ran."""
    from constitutional.eval.did_it_work import did_it_work
    from constitutional.eval.run import judge_line, judge_warning, summary_lines
    from constitutional.report.load import read_json

    doc = read_json(run_dir / "eval.json", "eval_results")
    if doc is None:
        return
    for line in summary_lines(doc):
        console.print(line, markup=False, highlight=False, soft_wrap=True)
    console.print(
        judge_line(doc),
        markup=False,
        highlight=False,
        soft_wrap=True,
        style="bold red" if judge_warning(doc) else None,
    )
    if "base" in (doc.get("models") or {}) and len(doc["models"]) > 1:
        verdict = did_it_work(doc)
        console.print(
            f"Did it work? {verdict['final']} against {verdict['base']}, on held-out prompts (refusal instrument):"
        )
        for c in verdict["checks"]:
            mark = {True: "met", False: "NOT met", None: "no data"}[c["passed"]]
            console.print(
                f"  {mark}: {c['name']} ({c['detail']})",
                markup=False,
                highlight=False,
                soft_wrap=True,
            )
