"""Which principles do the work? Per-principle attribution from SL-CAI traces and RL-CAI labels.

- critique/revision principles (SL-CAI traces): how often each was drawn, and how much its
  revisions changed the response: 1 - difflib's similarity ratio between the response before
  and after the round (0 = untouched, 1 = nothing in common).
- comparison principles (RL-CAI labels): how often each was drawn; for pairs judged by an
  ensemble of K > 1 principles, how often its own verdict sides with the ensemble mean, and
  the ablation: how many ensemble labels change side when it is left out of the mean.

Per-principle verdicts come from a row's `p_a_by_principle` {id: p(A)}; label files without it
can be re-judged one principle at a time with `judge_by_principle`.
"""

from __future__ import annotations

import difflib
from collections import Counter, defaultdict
from collections.abc import Sequence
from statistics import fmean
from typing import Any

from constitutional.errors import UserError
from constitutional.judge.compare import Pair, compare, compare_both_orders, swap_averaged
from constitutional.judge.labels import side


def change(before: str, after: str) -> float:
    """1 - SequenceMatcher ratio: change("abcd", "abcd") = 0.0, change("abcd", "abxy") = 0.5."""
    return 1.0 - difflib.SequenceMatcher(None, before, after, autojunk=False).ratio()


def revision_attribution(traces: Sequence[dict]) -> list[dict[str, Any]]:
    """Draws and mean change per critique/revision principle, replaying each trace in order.

    A round's change is measured against the response it revised (the previous kept revision);
    discarded rounds count as draws but changed nothing.
    """
    draws, changes = Counter(), defaultdict(list)
    for trace in traces:
        current = trace.get("initial_response") or ""
        for step in trace["rounds"]:
            draws[step["principle_id"]] += 1
            if not step.get("discarded") and step.get("revision"):
                changes[step["principle_id"]].append(change(current, step["revision"]))
                current = step["revision"]
    return [
        {
            "id": pid,
            "kind": "critique_revision",
            "draws": n,
            "mean_change": fmean(changes[pid]) if changes[pid] else None,
            "agreement_with_ensemble": None,
            "ablation_changed": None,
        }
        for pid, n in sorted(draws.items())
    ]


def ablation_changed(p_by_principle: dict[str, float], left_out: str) -> bool:
    """Does the ensemble label change side when `left_out` is dropped from the mean?

    {"x": 0.9, "y": 0.3, "z": 0.4}: the mean is 0.533 (A); without x it is 0.35 (B): changed.
    """
    rest = [p for pid, p in p_by_principle.items() if pid != left_out]
    return side(fmean(rest)) != side(fmean(p_by_principle.values()))


def comparison_attribution(rows: Sequence[dict]) -> list[dict[str, Any]]:
    """Draws, agreement with the ensemble and ablation counts per comparison principle.

    Agreement: over ensemble pairs (K > 1) with a decisive mean, the share where the principle's
    own p(A) is on the mean's side. Both are None for principles never in a K > 1 ensemble.
    """
    draws, agree, changed = Counter(), defaultdict(list), Counter()
    for row in rows:
        if row.get("source", "ai") != "ai":
            continue
        draws.update(row.get("principle_ids") or [])
        ps = row.get("p_a_by_principle") or {}
        if len(ps) < 2 or row.get("discarded"):
            continue
        mean = side(fmean(ps.values()))
        for pid, p in ps.items():
            if mean != 0:
                agree[pid].append(side(p) == mean)
            changed[pid] += ablation_changed(ps, pid)
    ensembled = set(agree) | set(changed)
    return [
        {
            "id": pid,
            "kind": "comparison",
            "draws": n,
            "mean_change": None,
            "agreement_with_ensemble": fmean(agree[pid]) if agree[pid] else None,
            "ablation_changed": changed[pid] if pid in ensembled else None,
        }
        for pid, n in sorted(draws.items())
    ]


def judge_by_principle(
    judge, rows: Sequence[dict], constitution, *, mode: str = "logprob", seed: int = 0
) -> list[dict]:
    """Rows with `p_a_by_principle` filled by asking `judge` once per listed principle.

    Rows labelled with --swap-average are asked in both orders and averaged, as labelling did.
    """
    jobs = [
        (k, pid)
        for k, r in enumerate(rows)
        if not r.get("discarded") and r.get("source", "ai") == "ai"
        for pid in r.get("principle_ids") or []
    ]
    known = {p.id for p in constitution.comparison}
    for k, pid in jobs:
        if pid not in known:
            raise UserError(
                f"label row {rows[k].get('id', k)!r} names principle {pid!r}, which the constitution lacks"
            )
    pairs = [
        Pair(
            rows[k]["prompt"],
            rows[k]["response_a"],
            rows[k]["response_b"],
            constitution.comparison_principle(pid).text,
        )
        for k, pid in jobs
    ]
    swap = any(r.get("p_a_swapped") is not None for r in rows)
    ps = (
        [swap_averaged(*x) for x in compare_both_orders(judge, pairs, mode=mode, seed=seed)]
        if swap
        else compare(judge, pairs, mode=mode, seed=seed)
    )
    out = [{**r, "p_a_by_principle": {}} if r.get("principle_ids") else dict(r) for r in rows]
    for (k, pid), p in zip(jobs, ps):
        if p is not None:
            out[k]["p_a_by_principle"][pid] = p
    return out


def principle_audit(traces: Sequence[dict] = (), rows: Sequence[dict] = ()) -> dict[str, Any]:
    """The principles.json document from SL-CAI traces and/or RL-CAI label rows."""
    return {
        "artifact": "principle_audit",
        "schema_version": 1,
        "principles": revision_attribution(traces) + comparison_attribution(rows),
    }
