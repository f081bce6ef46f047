"""The judge and principle audits as library entry points: read the artifacts, ask, write JSON.

`cai audit judge` / `cai audit principles` and the recipe's eval stage both call these.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from constitutional.errors import UserError
from constitutional.eval.run import local_backend

MakeBackend = Callable[[str], Any]


def run_judge_audit(
    labels: str | Path,
    out: str | Path,
    *,
    judge: str | None = None,
    mode: str = "logprob",
    fewshot: int = 0,
    human: str | Path | None = None,
    other: str | None = None,
    injection: bool = True,
    constitution: str = "default",
    limit: int | None = None,
    seed: int = 0,
    max_tokens: int = 128,
    make_backend: MakeBackend | None = None,
) -> dict[str, Any]:
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
    from constitutional.judge.human import load_human_prefs

    if mode not in ("logprob", "cot"):
        raise UserError(f"--mode must be logprob or cot, got {mode!r}")
    if (human or other) and not judge:
        raise UserError("--human and --other need --judge: the judge has to be asked afresh")
    rows, rules = load_labels(labels)[:limit], load_constitution(constitution)
    people = load_human_prefs(human)[:limit] if human else None
    if judge is None:
        seen = judged(rows)
        body = judge_audit.audit_labels(seen)
        who = {
            "model": seen[0].get("feedback_model") if seen else None,
            "mode": seen[0].get("mode") if seen else None,
        }
    else:
        make = make_backend or local_backend
        built = {spec: make(spec) for spec in dict.fromkeys(filter(None, (judge, other)))}
        body = judge_audit.audit_judge(
            built[judge],
            rows,
            rules,
            mode=mode,
            fewshot=fewshot,
            human=people,
            other=built.get(other) if other else None,
            injection=injection,
            seed=seed,
            sample=SampleConfig(max_tokens=max_tokens, seed=seed),
            cot_max_tokens=max_tokens,
        )
        who = {"model": judge, "mode": mode}
    doc = {"artifact": "judge_audit", "schema_version": 1, "judge": who, **body}
    write_json(out, doc)
    return doc


def run_principle_audit(
    out: str | Path,
    *,
    sl: str | Path | None = None,
    labels: str | Path | None = None,
    judge: str | None = None,
    constitution: str = "default",
    mode: str = "logprob",
    seed: int = 0,
    make_backend: MakeBackend | None = None,
) -> dict[str, Any]:
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
        rows = principles.judge_by_principle(
            (make_backend or local_backend)(judge),
            rows,
            load_constitution(constitution),
            mode=mode,
            seed=seed,
        )
    doc = principles.principle_audit(traces, rows)
    write_json(out, doc)
    return doc
