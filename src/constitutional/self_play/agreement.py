"""A second opinion on AI-feedback labels: does a fixed reference judge agree with the self-judge?

In self-play the model that is being trained also labels its own samples, so it can drift toward
whatever it now likes rather than what the constitution asks for (reward hacking of the
self-judge; Yuan et al. 2024, "Self-Rewarding Language Models", https://arxiv.org/abs/2401.10020,
train their judge and policy as one model and watch for exactly this). A frozen reference judge is
asked the same questions about the same pairs, laid out as labelling lays them out (same drawn
principles, few-shot exemplars and swap averaging), and agreement is the share of pairs where both
judges prefer the same response.
"""

from __future__ import annotations

from collections.abc import Sequence
from statistics import fmean
from typing import Any

from constitutional.judge import layout
from constitutional.judge.compare import Pair, compare, compare_both_orders, swap_averaged
from constitutional.judge.labels import side
from constitutional.stats import rate


def reference_labels(
    judge, rows: Sequence[dict], constitution, *, fewshot: int, swap_average: bool
) -> list[float | None]:
    """The reference judge's p(A) for each label row from `label_pairs` (logprob mode).

    Each row is judged under the principles it was labelled with and the per-principle p(A) are
    averaged, as labelling does. None for a discarded row, or where any judgement gave no signal
    (labelling discards such a row too).
    """
    shots = layout.fewshot_messages(constitution, fewshot, cot=False)
    jobs = [
        (k, pid) for k, r in enumerate(rows) if not r["discarded"] for pid in r["principle_ids"]
    ]
    pairs = [
        Pair(
            rows[k]["prompt"],
            rows[k]["response_a"],
            rows[k]["response_b"],
            constitution.comparison_principle(pid).text,
        )
        for k, pid in jobs
    ]
    if swap_average:
        ps = [swap_averaged(*both) for both in compare_both_orders(judge, pairs, fewshot=shots)]
    else:
        ps = compare(judge, pairs, fewshot=shots)
    by_row: dict[int, list[float | None]] = {}
    for (k, _), p in zip(jobs, ps):
        by_row.setdefault(k, []).append(p)
    return [
        None if k not in by_row or None in by_row[k] else fmean(by_row[k]) for k in range(len(rows))
    ]


def agreement(
    self_ps: Sequence[float | None], reference_ps: Sequence[float | None]
) -> dict[str, Any]:
    """How well two judges' p(A) over the same pairs agree.

    Pairs where either judge has no label are left out. Agreement counts a pair when both prefer
    the same side of 0.5 (an exact tie prefers nothing, so it never agrees). Returns the rate
    record of `constitutional.stats.rate` ({"rate", "ci_low", "ci_high", "n"}) plus `mean_abs_diff`, the
    mean |p_self - p_reference|, which moves before whole labels change side.

    Example: self (0.9, 0.2, 0.6), reference (0.7, 0.4, 0.3): the first two agree, rate 2/3;
    mean |diff| = (0.2 + 0.2 + 0.3) / 3 ≈ 0.233.
    """
    both = [
        (s, r)
        for s, r in zip(self_ps, reference_ps, strict=True)
        if s is not None and r is not None
    ]
    out = rate(side(s) == side(r) != 0 for s, r in both)
    out["mean_abs_diff"] = fmean(abs(s - r) for s, r in both) if both else None
    return out
