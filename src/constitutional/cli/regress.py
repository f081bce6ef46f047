"""`cai constitution regress OLD NEW`: which suite cases a constitution change broke or fixed.

OLD and NEW are each a run directory from `cai run` (its newest checkpoint, rl-ckpt/ before
sl-ckpt/, and the constitution its manifest records) or a model spec, optionally with the
constitution file it was trained under. `run_regress` is the Python entry point; the typer
command only parses options, calls it and prints the table.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import typer

from constitutional.cli.models import BackendOpt, BaseUrlOpt, SlotsOpt, backend_from_options
from constitutional.errors import UserError


@dataclass
class Side:
    """One side of the comparison: what the user named, the model to load, its constitution."""

    source: str
    model: str
    constitution: dict[str, Any] | None  # {"hash", "version", "source"}; None when unknown


def resolve_side(spec: str, constitution: str | None = None, flag: str = "--constitution") -> Side:
    """A run directory (has manifest.json) or a model spec, with its constitution if known."""
    from constitutional.constitution import load_constitution

    run_dir = Path(spec)
    if not (run_dir / "manifest.json").is_file():
        if not constitution:
            return Side(spec, spec, None)
        c = load_constitution(constitution)
        return Side(spec, spec, {"hash": c.hash, "version": c.version, "source": constitution})
    if constitution:
        raise UserError(
            f"{flag}: {spec} is a run directory; its manifest already names the constitution"
        )
    return Side(
        spec, str(run_checkpoint(run_dir)), _manifest_constitution(run_dir / "manifest.json")
    )


def run_checkpoint(run_dir: Path) -> Path:
    """The run's final model: the RL-CAI policy if it got that far, else the SL-CAI model."""
    from constitutional.recipe.stages import RL_CKPT, SL_CKPT

    for name in (RL_CKPT, SL_CKPT):
        if (run_dir / name).is_dir():
            return run_dir / name
    raise UserError(f"run directory has no checkpoint ({RL_CKPT}/ or {SL_CKPT}/)", run_dir)


def _manifest_constitution(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"unreadable manifest: {e}", path) from None
    c = (data.get("recipe") or {}).get("constitution") if isinstance(data, dict) else None
    return {k: c.get(k) for k in ("hash", "version", "source")} if isinstance(c, dict) else None


def run_regress(
    old: str,
    new: str,
    out: str | Path,
    *,
    suite: str = "default",
    judge: str = "embedded",
    old_constitution: str | None = None,
    new_constitution: str | None = None,
    seed: int = 0,
    max_tokens: int = 256,
    make_backend: Callable[[str], Any] | None = None,
    say: Callable[[str], None] = lambda s: None,
) -> dict[str, Any]:
    """Run the regression suite on OLD and NEW, judged by `judge`; write and return regress.json.

    Args:
        old, new: run directories or model specs (see `resolve_side`).
        make_backend: spec → Backend (default: local, cached); each distinct spec is built once.
    """
    from constitutional.eval import regress as rg
    from constitutional.eval.harm import SampleConfig
    from constitutional.jsonl import write_json

    cases = rg.load_suite(suite)  # bad input fails here, before any model loads
    sides = {
        "old": resolve_side(old, old_constitution, "--old-constitution"),
        "new": resolve_side(new, new_constitution, "--new-constitution"),
    }
    make_backend = make_backend or (
        lambda spec: backend_from_options("local", spec, None, 8, 8, None, False)
    )
    built = {
        spec: make_backend(spec)
        for spec in dict.fromkeys([sides["old"].model, sides["new"].model, judge])
    }
    cfg = SampleConfig(temperature=0.0, max_tokens=max_tokens, seed=seed)
    scored = {}
    for name, side in sides.items():
        say(f"{name}: {len(cases.cases)} cases on {side.model}")
        scored[name] = rg.score_model(built[side.model], built[judge], cases, cfg)
    hashes = [s.constitution and s.constitution["hash"] for s in sides.values()]
    doc = {
        "artifact": rg.ARTIFACT,
        "schema_version": rg.SCHEMA_VERSION,
        "suite": {"name": cases.name, "source": str(suite), "cases": len(cases.cases)},
        "judge": {"model": judge, "question": "refusal", "threshold": 0.5},
        "sampling": asdict(cfg),
        **{k: asdict(s) for k, s in sides.items()},
        "constitution_changed": None if None in hashes else hashes[0] != hashes[1],
        **rg.compare_results(cases, scored["old"], scored["new"]),
    }
    write_json(out, doc)
    return doc


def print_table(doc: dict[str, Any]) -> None:
    """Per-case old/new verdicts and the failed checks, then the counts, on stderr."""
    from rich.console import Console
    from rich.markup import escape as e
    from rich.table import Table

    style = {"regression": "bold red", "fix": "green", "same": "dim"}
    table = Table(
        "case",
        "old",
        "new",
        "change",
        "failed (old → new)",
        title=f"regressions: {e(doc['suite']['name'])}",
    )
    for row in doc["cases"]:
        old, new, change = row["old"], row["new"], row["change"]
        failed = f"{e(', '.join(old['failed']) or '-')} → {e(', '.join(new['failed']) or '-')}"
        table.add_row(
            e(row["id"]), _verdict(old), _verdict(new), f"[{style[change]}]{change}[/]", failed
        )
    console = Console(stderr=True)
    console.print(table)
    n = doc["counts"]
    console.print(
        f"{n['regression']} regressions, {n['fix']} fixes, {n['same']} same · passed {n['old_passed']}/{n['cases']}"
        f" → {n['new_passed']}/{n['cases']} · constitution {_short(doc['old'])} → {_short(doc['new'])}"
    )


def _verdict(result: dict) -> str:
    return "pass" if result["passed"] else "[red]FAIL[/]"


def _short(side: dict) -> str:
    c = side["constitution"]
    return "unknown" if not c or not c.get("hash") else f"{c['hash'][:12]} (v{c.get('version')})"


def regress(
    old: str = typer.Argument(
        ..., help="Before: a `cai run` directory, or a model ('embedded', .gguf, HF/LoRA dir)."
    ),
    new: str = typer.Argument(..., help="After: a `cai run` directory, or a model."),
    suite: str = typer.Option(
        "default", "--suite", "-s", help="Regression suite YAML ('default': the packaged example)."
    ),
    judge: str = typer.Option(
        "embedded", "--judge", help="Judge model: decides whether each reply is a refusal."
    ),
    out: Path = typer.Option(
        Path("regress.json"), "--out", "-o", help="Results JSON (written atomically)."
    ),
    fail_on_regression: bool = typer.Option(
        False, "--fail-on-regression", help="Exit 1 if any case regressed."
    ),
    old_constitution: str = typer.Option(
        None,
        "--old-constitution",
        help="Constitution OLD was trained under (model spec only; recorded).",
    ),
    new_constitution: str = typer.Option(
        None,
        "--new-constitution",
        help="Constitution NEW was trained under (model spec only; recorded).",
    ),
    seed: int = typer.Option(0, help="Seed of the greedy replies (part of each cache key)."),
    max_tokens: int = typer.Option(256, help="New tokens per reply."),
    backend: str = BackendOpt,
    base_url: str = BaseUrlOpt,
    batch_size: int | None = SlotsOpt,
    concurrency: int = typer.Option(8, help="openai backend: requests in flight."),
    cache: Path = typer.Option(
        None, help="Response cache file (default $CAI_CACHE_DIR/responses.sqlite)."
    ),
    no_cache: bool = typer.Option(
        False, "--no-cache", help="Neither read nor write the response cache."
    ),
) -> None:
    """Run a regression suite on OLD and NEW; list cases that broke (pass → fail) or were fixed."""
    from constitutional.provenance import RunManifest

    built: dict[str, Any] = {}

    def make(spec: str):
        built[spec] = backend_from_options(
            backend, spec, base_url, batch_size, concurrency, cache, no_cache
        )
        return built[spec]

    start = time.perf_counter()
    doc = run_regress(
        old,
        new,
        out,
        suite=suite,
        judge=judge,
        old_constitution=old_constitution,
        new_constitution=new_constitution,
        seed=seed,
        max_tokens=max_tokens,
        make_backend=make,
        say=lambda s: typer.echo(s, err=True),
    )
    RunManifest(Path(f"{out}.manifest.json")).record(
        "regress",
        backend=built[judge],
        wall_seconds=time.perf_counter() - start,
        seed=seed,
        constitution={"old": doc["old"]["constitution"], "new": doc["new"]["constitution"]},
        outputs=[str(out)],
        params={"old": old, "new": new, "suite": suite, "judge": judge, "max_tokens": max_tokens},
    )
    print_table(doc)
    typer.echo(f"→ {out}", err=True)
    if fail_on_regression and doc["counts"]["regression"]:
        raise typer.Exit(1)
