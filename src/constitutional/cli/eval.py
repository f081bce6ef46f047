"""`cai eval`: compare models on harmlessness and helpfulness with a judge model.

The command only parses options into an `eval.run.EvalRunConfig` (whose defaults are the
options' defaults) and calls `eval.run.run_eval`, the entry point the recipe runner uses too.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import typer

from constitutional.cli.models import (
    BackendOpt,
    BaseUrlOpt,
    CacheOpt,
    Concurrency8Opt,
    NoCacheOpt,
    SlotsOpt,
    backend_from_options,
    stage_progress,
)
from constitutional.errors import UserError
from constitutional.eval.run import EvalRunConfig, judge_line, model_usage, run_eval, summary_lines

D = EvalRunConfig()  # the defaults, declared once


def parse_models(text: str) -> dict[str, str]:
    """ "base=embedded,sl=ckpt/" → {"base": "embedded", "sl": "ckpt/"}; UserError on bad input."""
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


ModelsOpt = typer.Option(
    ...,
    "--models",
    help="Models to compare: NAME=MODEL[,NAME=MODEL...] (MODEL: 'embedded', .gguf, HF dir, checkpoint; "
    "MODEL+constitution: that model with the constitution as its system prompt).",
)
JudgeOpt = typer.Option(
    ..., "--judge", help="Judge model: answers the harm/refusal questions and compares replies."
)
RedTeamOpt = typer.Option(
    D.red_team,
    "--red-team",
    help="Red-team prompts: JSONL or builtin:advbench|harmbench|strongreject.",
)
HelpfulOpt = typer.Option(
    D.helpful, "--helpful", help="Helpful prompts: JSONL or builtin:mt_bench|self_instruct."
)
OverRefusalOpt = typer.Option(
    D.over_refusal,
    "--over-refusal",
    help="Benign prompts that sound sensitive (default: the bundled set).",
)
OutOpt = typer.Option(
    Path("eval.json"),
    "--out",
    "-o",
    help="Results JSON; per-prompt rows go to OUT.samples.jsonl.",
)
ConstitutionOpt = typer.Option(
    D.constitution,
    "--constitution",
    "-c",
    help="Constitution the models were trained under (recorded).",
)
TemperatureOpt = typer.Option(
    D.temperature, help="Sampling temperature of the evaluated models; 0 = greedy."
)
JudgePairsOpt = typer.Option(
    D.judge_pairs,
    min=0,
    help="Human-labelled gold pairs the judge is checked on (0: unchecked, so unreliable).",
)
MaxFlipRateOpt = typer.Option(
    D.max_flip_rate, min=0, max=1, help="The judge is unreliable above this position flip rate."
)
MinHumanAgreementOpt = typer.Option(
    D.min_human_agreement,
    min=0,
    max=1,
    help="...or when the lower 95% bound of its agreement with people is at or below this.",
)


def eval_command(
    models: str = ModelsOpt,
    judge: str = JudgeOpt,
    red_team: str = RedTeamOpt,
    helpful: str = HelpfulOpt,
    over_refusal: str = OverRefusalOpt,
    limit: int = typer.Option(D.limit, help="Use only the first N prompts of each set."),
    seed: int = typer.Option(D.seed, help="Sampling and bootstrap seed."),
    out: Path = OutOpt,
    constitution: str = ConstitutionOpt,
    temperature: float = TemperatureOpt,
    max_tokens: int = typer.Option(D.max_tokens, help="New tokens per reply."),
    bootstrap: int = typer.Option(D.bootstrap, help="Bootstrap resamples for the Elo intervals."),
    judge_pairs: int = JudgePairsOpt,
    max_flip_rate: float = MaxFlipRateOpt,
    min_human_agreement: float = MinHumanAgreementOpt,
    backend: str = BackendOpt,
    base_url: str = BaseUrlOpt,
    batch_size: int | None = SlotsOpt,
    concurrency: int = Concurrency8Opt,
    cache: Path = CacheOpt,
    no_cache: bool = NoCacheOpt,
) -> None:
    """Elo (harmless, helpful), Pareto frontier, attack success, over-refusal, refusal hold; the refusal
    instrument's numbers beside the judge's; and whether the judge passed its own audit."""
    from constitutional.provenance import RunManifest

    config = EvalRunConfig(
        models=parse_models(models),
        judge=judge,
        red_team=red_team,
        helpful=helpful,
        over_refusal=over_refusal,
        limit=limit,
        seed=seed,
        constitution=constitution,
        temperature=temperature,
        max_tokens=max_tokens,
        bootstrap=bootstrap,
        judge_pairs=judge_pairs,
        max_flip_rate=max_flip_rate,
        min_human_agreement=min_human_agreement,
    )
    config.sets()  # fail on bad input before loading any model
    built: dict[str, Any] = {}

    def make(spec: str):
        built[spec] = backend_from_options(
            backend, spec, base_url, batch_size, concurrency, cache, no_cache
        )
        return built[spec]

    start = time.perf_counter()
    with stage_progress() as progress:
        doc = run_eval(config, out, make_backend=make, progress=progress)
    RunManifest(Path(f"{out}.manifest.json")).record(
        "eval",
        backend=built[judge],
        wall_seconds=time.perf_counter() - start,
        seed=seed,
        constitution=doc["constitution"],
        outputs=[str(out), doc["samples"]],
        evaluated=model_usage(config.models, built.__getitem__, built[judge]),
        params={
            "red_team": red_team,
            "helpful": helpful,
            "over_refusal": over_refusal,
            "limit": limit,
            "temperature": temperature,
            "max_tokens": max_tokens,
            "bootstrap": bootstrap,
            "judge_pairs": judge_pairs,
            "max_flip_rate": max_flip_rate,
            "min_human_agreement": min_human_agreement,
        },
    )
    for line in summary_lines(doc):
        typer.echo(line, err=True)
    typer.echo(judge_line(doc), err=True)
    typer.echo(f"Pareto frontier: {', '.join(doc['pareto'])} → {out}", err=True)


def register(app: typer.Typer) -> None:
    """Add `cai eval` to the root app."""
    app.command("eval")(eval_command)
