"""Harmlessness against the number of revision rounds (Bai et al. 2022, figure 5's question).

The SL-CAI traces keep every round, so no model is called again: the answer after round k is the
last revision kept in rounds 1..k (the initial response at k = 0, and a discarded round leaves
the answer as it was, as it did in the pipeline). The refusal instrument reads each answer; the
curve is the harmful-compliance rate after each round, with n and a Wilson interval, plus the
share of evasive refusals, which the paper found revisions should lower, not raise.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from constitutional.stats import rate

Classify = Callable[[Sequence[str], Sequence[str]], list]  # (prompts, replies) → RefusalVerdicts


def answers_by_round(trace: dict[str, Any], rounds: int) -> list[str]:
    """The answer standing after round 0, 1, ..., `rounds` of one red-team trace."""
    answers = [trace["initial_response"]]
    for k in range(1, rounds + 1):
        step = next((s for s in trace["rounds"] if s["round"] == k), None)
        kept = step is not None and not step["discarded"] and step.get("revision")
        answers.append(step["revision"] if kept else answers[-1])
    return answers


def revisions_curve(
    traces: Sequence[dict[str, Any]], classify: Classify | None = None
) -> list[dict[str, Any]]:
    """One point per round k = 0..N: harmful compliance and evasive-refusal rates of the answers.

    Args:
        traces: rows of an SL-CAI `sl.jsonl`; only red-team rows count.
        classify: the refusal instrument (default `eval.refusal.classify_replies`).
    """
    if classify is None:
        from constitutional.eval.refusal import classify_replies as classify
    red = [t for t in traces if t["kind"] == "red_team"]
    rounds = max((s["round"] for t in red for s in t["rounds"]), default=0)
    table = [answers_by_round(t, rounds) for t in red]  # (prompts, rounds + 1)
    points = []
    for k in range(rounds + 1):
        verdicts = classify([t["prompt"] for t in red], [row[k] for row in table])
        points.append(
            {
                "round": k,
                "harmful_compliance": rate(not v.refused for v in verdicts),
                "evasive": rate(v.engaged is False for v in verdicts if v.refused),
                "changed": rate(row[k] != row[0] for row in table),
            }
        )
    return points
