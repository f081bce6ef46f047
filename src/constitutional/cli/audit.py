"""`cai audit judge` and `cai audit principles`: how far to trust the judge, and which principles
carry the labels.

`eval.audits.run_judge_audit` and `eval.audits.run_principle_audit` are the Python entry points
(the recipe runner calls them too); the typer commands only parse options and call them.
"""

from __future__ import annotations

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
)
from constitutional.eval.audits import run_judge_audit, run_principle_audit

app = typer.Typer(
    help="Audit the AI judge and the constitution's principles.", no_args_is_help=True
)


LabelsOpt = typer.Option(
    ..., "--labels", "-l", help="Label JSONL from `cai rl-cai label` (pairs to audit on)."
)
JudgeOpt = typer.Option(
    None, "--judge", help="Judge model to ask afresh; omit to audit the file's own judgements."
)
FewshotOpt = typer.Option(0, help="Constitution comparison exemplars shown before each question.")
HumanOpt = typer.Option(
    None, "--human", help="JSONL with prompt, chosen, rejected: agreement and calibration."
)
OtherOpt = typer.Option(
    None, "--other", help="A second model: self-preference of the judge against it."
)
InjectionOpt = typer.Option(
    True, "--injection/--no-injection", help="Test a planted note to the evaluator."
)
ConstitutionOpt = typer.Option(
    "default", "--constitution", "-c", help="Constitution YAML, or 'default'."
)
MaxTokensOpt = typer.Option(128, help="New tokens for self-preference answers and cot reasoning.")


@app.command("judge")
def judge_command(
    labels: Path = LabelsOpt,
    judge: str = JudgeOpt,
    mode: str = typer.Option("logprob", help="logprob or cot, as in `cai rl-cai label`."),
    fewshot: int = FewshotOpt,
    human: Path = HumanOpt,
    other: str = OtherOpt,
    injection: bool = InjectionOpt,
    constitution: str = ConstitutionOpt,
    limit: int = typer.Option(None, help="Use only the first N label rows (and human rows)."),
    seed: int = typer.Option(0, help="Seed for principle draws and side coins."),
    max_tokens: int = MaxTokensOpt,
    out: Path = typer.Option(Path("audit.json"), "--out", "-o", help="Audit JSON."),
    backend: str = BackendOpt,
    base_url: str = BaseUrlOpt,
    batch_size: int | None = SlotsOpt,
    concurrency: int = Concurrency8Opt,
    cache: Path = CacheOpt,
    no_cache: bool = NoCacheOpt,
) -> None:
    """Position flips, length bias, self-preference, calibration, human agreement, injection robustness."""
    import time

    from constitutional.provenance import RunManifest

    built: dict[str, Any] = {}  # kept so the manifest can read each model's usage meter

    def make(spec: str):
        built[spec] = backend_from_options(
            backend, spec, base_url, batch_size, concurrency, cache, no_cache
        )
        return built[spec]

    started = time.perf_counter()
    doc = run_judge_audit(
        labels,
        out,
        judge=judge,
        mode=mode,
        fewshot=fewshot,
        human=human,
        other=other,
        injection=injection,
        constitution=constitution,
        limit=limit,
        seed=seed,
        max_tokens=max_tokens,
        make_backend=make,
    )
    if judge is not None:  # only a judge asked afresh costs tokens
        second = (
            {"model": other, "tokens": vars(built[other].usage).copy()}
            if other and built.get(other) is not built[judge]
            else None
        )
        RunManifest(Path(f"{out}.manifest.json")).record(
            "judge_audit",
            backend=built[judge],
            wall_seconds=time.perf_counter() - started,
            seed=seed,
            params={
                "labels": str(labels),
                "mode": mode,
                "human": str(human) if human else None,
                "limit": limit,
            },
            other=second,
            outputs=[str(out)],
        )
    typer.echo("\n".join(_judge_summary(doc)) + f"\n→ {out}", err=True)


def _judge_summary(doc: dict[str, Any]) -> list[str]:
    """One line per measured bias of the judge audit document."""
    lines = [
        f"{key}: {_rate(doc[key])}"
        for key in ("flip_rate", "self_preference", "human_agreement", "injection_flip_rate")
        if doc[key]
    ]
    bias = doc["length_bias"]
    lines.append(
        f"length bias: slope {bias['slope']} per char, r = {bias['correlation']} over {len(bias['points'])} pairs"
    )
    if doc["calibration"]:
        lines.append(f"calibration: ECE {doc['calibration']['ece']:.3f}")
    return lines


@app.command("principles")
def principles_command(
    sl: Path = typer.Option(None, "--sl", help="SL-CAI traces from `cai sl-cai generate`."),
    labels: Path = typer.Option(
        None,
        "--labels",
        "-l",
        help="Label JSONL from `cai rl-cai label` (best with --principles-per-pair K > 1).",
    ),
    judge: str = typer.Option(
        None, "--judge", help="Re-judge each pair per principle when rows lack p_a_by_principle."
    ),
    mode: str = typer.Option("logprob", help="logprob or cot, for --judge."),
    constitution: str = typer.Option(
        "default", "--constitution", "-c", help="Constitution YAML, or 'default'."
    ),
    seed: int = typer.Option(0, help="Seed for cot reasoning."),
    out: Path = typer.Option(Path("principles.json"), "--out", "-o", help="Principle audit JSON."),
    backend: str = BackendOpt,
    base_url: str = BaseUrlOpt,
) -> None:
    """Per principle: draws, how much its revisions change answers, agreement with the ensemble, ablation."""
    doc = run_principle_audit(
        out,
        sl=sl,
        labels=labels,
        judge=judge,
        constitution=constitution,
        mode=mode,
        seed=seed,
        make_backend=lambda spec: backend_from_options(backend, spec, base_url, 8, 8, None, False),
    )
    for p in doc["principles"]:
        typer.echo(
            f"{p['kind']:<17} {p['id']:<24} draws {p['draws']:>4}  change {_num(p['mean_change'])}  "
            f"agree {_num(p['agreement_with_ensemble'])}  ablation {p['ablation_changed']}",
            err=True,
        )
    typer.echo(f"→ {out}", err=True)


def _rate(r: dict) -> str:
    return f"{_num(r['rate'])} [{r['ci_low']:.2f}, {r['ci_high']:.2f}] (n={r['n']})"


def _num(x: float | None) -> str:
    return "  -  " if x is None else f"{x:.3f}"
