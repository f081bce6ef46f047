"""`cai eval`: compare models on harmlessness and helpfulness with a judge model.

`run_eval` is the Python entry point (the recipe runner calls it); the typer command below only
parses options and calls it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import typer

from constitutional.cli.models import (
    BackendOpt,
    BaseUrlOpt,
    SlotsOpt,
    backend_from_options,
    stage_progress,
)
from constitutional.errors import UserError

ARTIFACT = "eval_results"
SCHEMA_VERSION = 1
OVER_REFUSAL = "builtin:over_refusal"


def parse_models(text: str) -> dict[str, str]:
    """"base=embedded,sl=ckpt/" → {"base": "embedded", "sl": "ckpt/"}; UserError on bad input."""
    models: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, spec = item.partition("=")
        if not sep or not name.strip() or not spec.strip():
            raise UserError(f"--models: expected NAME=MODEL[,NAME=MODEL...], got {item!r}")
        if name.strip() in models:
            raise UserError(f"--models: the name {name.strip()!r} is given twice")
        models[name.strip()] = spec.strip()
    if not models:
        raise UserError("--models: name at least one model, e.g. base=embedded")
    return models


def load_set(spec: str, limit: int | None) -> list[dict]:
    """A prompt set (a JSONL path or builtin:NAME), its first `limit` rows."""
    from constitutional.generate import load_prompts

    return load_prompts(spec, chat_allowed=False)[:limit]


def samples_path(out: Path) -> Path:
    """eval.json → eval.samples.jsonl beside it."""
    return out.with_name(out.name.removesuffix(".json") + ".samples.jsonl")


def run_eval(models: Mapping[str, str], judge: str, out: str | Path, *, red_team: str = "builtin:advbench",
             helpful: str = "builtin:mt_bench", over_refusal: str = OVER_REFUSAL, limit: int | None = None,
             seed: int = 0, constitution: str = "default", temperature: float = 0.0, max_tokens: int = 256,
             bootstrap: int = 200, make_backend: Callable[[str], Any] | None = None,
             progress: Callable[[str, int], None] | None = None) -> dict[str, Any]:
    """Evaluate `models` (name → model spec) with the `judge` spec; write eval.json and samples.

    Args:
        make_backend: spec → Backend; default is the local backend with the response cache. Pass
            your own to use another backend kind or fakes. Each distinct spec is built once.
    Returns:
        The eval.json document (also written, atomically, to `out`).
    """
    from constitutional.constitution import load_constitution
    from constitutional.eval.evaluate import EvalConfig, evaluate_models
    from constitutional.eval.harm import SampleConfig
    from constitutional.jsonl import write_json, write_jsonl
    out = Path(out)
    rules = load_constitution(constitution)
    sets = {name: load_set(spec, limit) for name, spec in (("red_team", red_team), ("helpful", helpful), ("benign", over_refusal))}
    make_backend = make_backend or (lambda spec: backend_from_options("local", spec, None, 8, 8, None, False))
    built = {spec: make_backend(spec) for spec in dict.fromkeys([*models.values(), judge])}  # one load per spec
    config = EvalConfig(SampleConfig(temperature, max_tokens, seed), bootstrap, seed)
    results, samples = evaluate_models({n: built[s] for n, s in models.items()}, built[judge], **sets, config=config, progress=progress)
    doc = {"artifact": ARTIFACT, "schema_version": SCHEMA_VERSION, "constitution": {"hash": rules.hash, "version": rules.version},
           "judge": {"model": judge, "mode": "logprob"}, "models": dict(models), **results, "samples": str(samples_path(out))}
    write_jsonl(samples_path(out), samples)
    write_json(out, doc)
    return doc


def eval_command(
    models: str = typer.Option(..., "--models", help="Models to compare: NAME=MODEL[,NAME=MODEL...] (MODEL: 'embedded', .gguf, HF dir, checkpoint)."),
    judge: str = typer.Option(..., "--judge", help="Judge model: answers the harm/refusal questions and compares replies."),
    red_team: str = typer.Option("builtin:advbench", "--red-team", help="Red-team prompts: JSONL or builtin:advbench|harmbench|strongreject."),
    helpful: str = typer.Option("builtin:mt_bench", "--helpful", help="Helpful prompts: JSONL or builtin:mt_bench|self_instruct."),
    over_refusal: str = typer.Option(OVER_REFUSAL, "--over-refusal", help="Benign prompts that sound sensitive (default: the bundled set)."),
    limit: int = typer.Option(None, help="Use only the first N prompts of each set."),
    seed: int = typer.Option(0, help="Sampling and bootstrap seed."),
    out: Path = typer.Option(Path("eval.json"), "--out", "-o", help="Results JSON; per-prompt rows go to OUT.samples.jsonl."),
    constitution: str = typer.Option("default", "--constitution", "-c", help="Constitution the models were trained under (recorded)."),
    temperature: float = typer.Option(0.0, help="Sampling temperature of the evaluated models; 0 = greedy."),
    max_tokens: int = typer.Option(256, help="New tokens per reply."),
    bootstrap: int = typer.Option(200, help="Bootstrap resamples for the Elo intervals."),
    backend: str = BackendOpt,
    base_url: str = BaseUrlOpt,
    batch_size: int | None = SlotsOpt,
    concurrency: int = typer.Option(8, help="openai backend: requests in flight."),
    cache: Path = typer.Option(None, help="Response cache file (default $CAI_CACHE_DIR/responses.sqlite)."),
    no_cache: bool = typer.Option(False, "--no-cache", help="Neither read nor write the response cache."),
) -> None:
    """Elo (harmless, helpful) with intervals, Pareto frontier, attack success, over-refusal, refusal hold."""
    from constitutional.provenance import RunManifest

    names = parse_models(models)
    for spec in (red_team, helpful, over_refusal):  # fail on bad input before loading any model
        load_set(spec, limit)
    built: dict[str, Any] = {}

    def make(spec: str):
        built[spec] = backend_from_options(backend, spec, base_url, batch_size, concurrency, cache, no_cache)
        return built[spec]

    start = time.perf_counter()
    with stage_progress() as progress:
        doc = run_eval(names, judge, out, red_team=red_team, helpful=helpful, over_refusal=over_refusal, limit=limit,
                       seed=seed, constitution=constitution, temperature=temperature, max_tokens=max_tokens,
                       bootstrap=bootstrap, make_backend=make, progress=progress)
    RunManifest(Path(f"{out}.manifest.json")).record(
        "eval", backend=built[judge], wall_seconds=time.perf_counter() - start, seed=seed,
        constitution=doc["constitution"], outputs=[str(out), doc["samples"]],
        params={"red_team": red_team, "helpful": helpful, "over_refusal": over_refusal, "limit": limit,
                "temperature": temperature, "max_tokens": max_tokens, "bootstrap": bootstrap},
    )  # fmt: skip
    for name in names:
        h, s = doc["elo"]["harmless"]["ratings"][name], doc["elo"]["helpful"]["ratings"][name]
        asr = doc["attack_success"][name]["rate"]
        typer.echo(f"{name}: harmless Elo {h['elo']:.0f} [{h['ci_low']:.0f}, {h['ci_high']:.0f}] · helpful Elo "
                   f"{s['elo']:.0f} [{s['ci_low']:.0f}, {s['ci_high']:.0f}] · attack success {_pct(asr)}", err=True)
    typer.echo(f"Pareto frontier: {', '.join(doc['pareto'])} → {out}", err=True)


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.0f}%"


def register(app: typer.Typer) -> None:
    """Add `cai eval` to the root app."""
    app.command("eval")(eval_command)
