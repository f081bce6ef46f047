"""`cai audit judge` and `cai audit principles`: how far to trust the judge, and which principles
carry the labels.

`run_judge_audit` and `run_principle_audit` are the Python entry points; the typer commands
only parse options and call them.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer

from constitutional.cli.models import BackendOpt, BaseUrlOpt, SlotsOpt, backend_from_options
from constitutional.errors import UserError

app = typer.Typer(help="Audit the AI judge and the constitution's principles.", no_args_is_help=True)
MakeBackend = Callable[[str], Any]


def _local(spec: str):
    return backend_from_options("local", spec, None, 8, 8, None, False)


def run_judge_audit(labels: str | Path, out: str | Path, *, judge: str | None = None, mode: str = "logprob",
                    fewshot: int = 0, human: str | Path | None = None, other: str | None = None,
                    injection: bool = True, constitution: str = "default", limit: int | None = None, seed: int = 0,
                    max_tokens: int = 128, make_backend: MakeBackend | None = None) -> dict[str, Any]:
    """Audit a judge on the pairs of a label file; write audit.json (atomically) and return it.

    Without `judge`, only what the file already records is audited (flip rate, length bias) and
    the judge is the file's feedback model. With it, the judge is asked afresh, which also gives
    injection robustness, and, given `human` (prompt/chosen/rejected JSONL) or `other` (a
    second model spec), human agreement with calibration, and self-preference. `max_tokens`
    bounds the answers written for self-preference and the reasoning in cot mode.
    """
    from constitutional.constitution import load_constitution
    from constitutional.eval import judge_audit
    from constitutional.eval.harm import SampleConfig
    from constitutional.eval.rows import judged, load_labels
    from constitutional.jsonl import write_json
    from constitutional.rl_cai import load_human_prefs

    if mode not in ("logprob", "cot"):
        raise UserError(f"--mode must be logprob or cot, got {mode!r}")
    if (human or other) and not judge:
        raise UserError("--human and --other need --judge: the judge has to be asked afresh")
    rows, rules = load_labels(labels)[:limit], load_constitution(constitution)
    people = load_human_prefs(human)[:limit] if human else None
    if judge is None:
        seen = judged(rows)
        body = judge_audit.audit_labels(seen)
        who = {"model": seen[0].get("feedback_model") if seen else None, "mode": seen[0].get("mode") if seen else None}
    else:
        make = make_backend or _local
        built = {spec: make(spec) for spec in dict.fromkeys(filter(None, (judge, other)))}
        body = judge_audit.audit_judge(built[judge], rows, rules, mode=mode, fewshot=fewshot, human=people,
                                       other=built.get(other) if other else None, injection=injection, seed=seed,
                                       sample=SampleConfig(max_tokens=max_tokens, seed=seed), cot_max_tokens=max_tokens)
        who = {"model": judge, "mode": mode}
    doc = {"artifact": "judge_audit", "schema_version": 1, "judge": who, **body}
    write_json(out, doc)
    return doc


def run_principle_audit(out: str | Path, *, sl: str | Path | None = None, labels: str | Path | None = None,
                        judge: str | None = None, constitution: str = "default", mode: str = "logprob",
                        seed: int = 0, make_backend: MakeBackend | None = None) -> dict[str, Any]:
    """Per-principle attribution from SL-CAI traces and/or label rows; write principles.json.

    Label rows without per-principle verdicts (`p_a_by_principle`) are re-judged one principle
    at a time by `judge` when given; otherwise agreement and ablation stay None.
    """
    from constitutional.constitution import load_constitution
    from constitutional.eval import principles
    from constitutional.eval.rows import load_labels, load_traces
    from constitutional.jsonl import write_json

    if sl is None and labels is None:
        raise UserError("give --sl (SL-CAI traces) and/or --labels (RL-CAI label rows)")
    traces = load_traces(sl) if sl else []
    rows = load_labels(labels) if labels else []
    if judge and any(r.get("p_a_by_principle") is None for r in rows):
        rows = principles.judge_by_principle((make_backend or _local)(judge), rows, load_constitution(constitution), mode=mode, seed=seed)
    doc = principles.principle_audit(traces, rows)
    write_json(out, doc)
    return doc


@app.command("judge")
def judge_command(
    labels: Path = typer.Option(..., "--labels", "-l", help="Label JSONL from `cai rl-cai label` (pairs to audit on)."),
    judge: str = typer.Option(None, "--judge", help="Judge model to ask afresh; omit to audit the file's own judgements."),
    mode: str = typer.Option("logprob", help="logprob or cot, as in `cai rl-cai label`."),
    fewshot: int = typer.Option(0, help="Constitution comparison exemplars shown before each question."),
    human: Path = typer.Option(None, "--human", help="JSONL with prompt, chosen, rejected: agreement and calibration."),
    other: str = typer.Option(None, "--other", help="A second model: self-preference of the judge against it."),
    injection: bool = typer.Option(True, "--injection/--no-injection", help="Test a planted note to the evaluator."),
    constitution: str = typer.Option("default", "--constitution", "-c", help="Constitution YAML, or 'default'."),
    limit: int = typer.Option(None, help="Use only the first N label rows (and human rows)."),
    seed: int = typer.Option(0, help="Seed for principle draws and side coins."),
    max_tokens: int = typer.Option(128, help="New tokens for self-preference answers and cot reasoning."),
    out: Path = typer.Option(Path("audit.json"), "--out", "-o", help="Audit JSON."),
    backend: str = BackendOpt,
    base_url: str = BaseUrlOpt,
    batch_size: int | None = SlotsOpt,
    concurrency: int = typer.Option(8, help="openai backend: requests in flight."),
    cache: Path = typer.Option(None, help="Response cache file (default $CAI_CACHE_DIR/responses.sqlite)."),
    no_cache: bool = typer.Option(False, "--no-cache", help="Neither read nor write the response cache."),
) -> None:
    """Position flips, length bias, self-preference, calibration, human agreement, injection robustness."""
    import time

    from constitutional.provenance import RunManifest

    built: dict[str, Any] = {}  # kept so the manifest can read each model's usage meter

    def make(spec: str):
        built[spec] = backend_from_options(backend, spec, base_url, batch_size, concurrency, cache, no_cache)
        return built[spec]

    started = time.perf_counter()
    doc = run_judge_audit(labels, out, judge=judge, mode=mode, fewshot=fewshot, human=human, other=other,
                          injection=injection, constitution=constitution, limit=limit, seed=seed,
                          max_tokens=max_tokens, make_backend=make)
    if judge is not None:  # only a judge asked afresh costs tokens
        second = {"model": other, "tokens": vars(built[other].usage).copy()} if other and built.get(other) is not built[judge] else None
        RunManifest(Path(f"{out}.manifest.json")).record(
            "judge_audit", backend=built[judge], wall_seconds=time.perf_counter() - started, seed=seed,
            params={"labels": str(labels), "mode": mode, "human": str(human) if human else None, "limit": limit},
            other=second, outputs=[str(out)],
        )  # fmt: skip
    lines = [f"{key}: {_rate(doc[key])}" for key in ("flip_rate", "self_preference", "human_agreement", "injection_flip_rate") if doc[key]]
    bias = doc["length_bias"]
    lines.append(f"length bias: slope {bias['slope']} per char, r = {bias['correlation']} over {len(bias['points'])} pairs")
    if doc["calibration"]:
        lines.append(f"calibration: ECE {doc['calibration']['ece']:.3f}")
    typer.echo("\n".join(lines) + f"\n→ {out}", err=True)


@app.command("principles")
def principles_command(
    sl: Path = typer.Option(None, "--sl", help="SL-CAI traces from `cai sl-cai generate`."),
    labels: Path = typer.Option(None, "--labels", "-l", help="Label JSONL from `cai rl-cai label` (best with --principles-per-pair K > 1)."),
    judge: str = typer.Option(None, "--judge", help="Re-judge each pair per principle when rows lack p_a_by_principle."),
    mode: str = typer.Option("logprob", help="logprob or cot, for --judge."),
    constitution: str = typer.Option("default", "--constitution", "-c", help="Constitution YAML, or 'default'."),
    seed: int = typer.Option(0, help="Seed for cot reasoning."),
    out: Path = typer.Option(Path("principles.json"), "--out", "-o", help="Principle audit JSON."),
    backend: str = BackendOpt,
    base_url: str = BaseUrlOpt,
) -> None:
    """Per principle: draws, how much its revisions change answers, agreement with the ensemble, ablation."""
    doc = run_principle_audit(out, sl=sl, labels=labels, judge=judge, constitution=constitution, mode=mode, seed=seed,
                              make_backend=lambda spec: backend_from_options(backend, spec, base_url, 8, 8, None, False))
    for p in doc["principles"]:
        typer.echo(f"{p['kind']:<17} {p['id']:<24} draws {p['draws']:>4}  change {_num(p['mean_change'])}  "
                   f"agree {_num(p['agreement_with_ensemble'])}  ablation {p['ablation_changed']}", err=True)
    typer.echo(f"→ {out}", err=True)


def _rate(r: dict) -> str:
    return f"{_num(r['rate'])} [{r['ci_low']:.2f}, {r['ci_high']:.2f}] (n={r['n']})"


def _num(x: float | None) -> str:
    return "  -  " if x is None else f"{x:.3f}"
