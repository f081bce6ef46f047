"""The arithmetic that turns a feedback model's log-probs into soft preference labels.

Pure functions, no model: Bai et al. 2022, section 4.1 normalise the log-probs of the two
options into p(A), optionally clamp chain-of-thought probabilities into a band (they are
overconfident), and this module adds the swap average that cancels the judge's position bias.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any


def two_way_softmax(logp_a: float, logp_b: float) -> float:
    """p(A) after normalising over the two options only.

    p(A) = exp(la) / (exp(la) + exp(lb)) = 1 / (1 + exp(lb - la)). Computed from the difference,
    so very negative log-probs do not underflow. Returns NaN when it is undefined: either input
    is NaN, or both are -inf (the model put no mass on either letter); see `judgement_problem`.

    Example: two_way_softmax(log 0.3, log 0.1) = 0.3 / 0.4 = 0.75.
    """
    if math.isnan(logp_a) or math.isnan(logp_b) or logp_a == logp_b == -math.inf:
        return math.nan
    if logp_a == logp_b:  # also covers both +inf
        return 0.5
    diff = logp_b - logp_a
    if diff > 0:  # 1 / (1 + e^d) = e^-d / (1 + e^-d), stable for large d
        e = math.exp(-diff)
        return e / (1.0 + e)
    return 1.0 / (1.0 + math.exp(diff))


def pair_problem(response_a: str, response_b: str) -> str | None:
    """Why a pair cannot be compared, or None: a label between equal texts teaches nothing."""
    if not response_a.strip() or not response_b.strip():
        return "empty response"
    if response_a.strip() == response_b.strip():
        return "identical responses"
    return None


def judgement_problem(logp_a: float, logp_b: float) -> str | None:
    """Why a pair of log-probs gives no usable label, or None when it does."""
    if math.isnan(logp_a) or math.isnan(logp_b):
        return "NaN log-prob from the feedback model"
    if logp_a == logp_b == -math.inf:
        return "both log-probs are -inf: no mass on either letter"
    return None


def clamp(p: float, lo: float, hi: float) -> float:
    """min(max(p, lo), hi): keep an overconfident probability inside [lo, hi].

    The paper clamps chain-of-thought probabilities to [0.4, 0.6]; clamp(0.9, 0.4, 0.6) = 0.6.
    """
    return min(max(p, lo), hi)


def unswap(p_swapped_a: float) -> float:
    """Express a judgement made with the responses swapped as p(original A).

    In the swapped prompt the original response B is shown as (A), so p_swapped(A) is the
    probability for original B and p(original A) = 1 - p_swapped(A).
    """
    return 1.0 - p_swapped_a


def swap_average(p_a_raw: float, p_a_swapped: float) -> float:
    """De-biased p(A) = (p_a_raw + p_a_swapped) / 2.

    Both arguments are p(original A): `p_a_swapped` is already `unswap`-ed, i.e.
    1 - p_swapped(A). A judge that always prefers the first slot by d gives p_a_raw = p + d and
    p_a_swapped = p - d; the average is p. Example: swap_average(0.8, 0.4) = 0.6.
    """
    return (p_a_raw + p_a_swapped) / 2.0


def flip(p1: float, p2: float) -> bool:
    """True when two judgements of the same pair prefer opposite sides of 0.5.

    (p1 - 0.5) * (p2 - 0.5) < 0: a tie (exactly 0.5) is not a flip, it has no side.
    flip(0.7, 0.4) is True; flip(0.7, 0.6) and flip(0.5, 0.9) are False.
    """
    return (p1 - 0.5) * (p2 - 0.5) < 0


def side(p: float) -> int:
    """+1 for A, -1 for B, 0 for an exact tie."""
    return (p > 0.5) - (p < 0.5)


def to_dpo_rows(rows: Sequence[dict]) -> list[dict[str, Any]]:
    """TRL conversational preference rows; ties (p_a = 0.5) and discards carry no preference."""
    out = []
    for r in (r for r in rows if not r["discarded"] and r["p_a"] != 0.5):
        won, lost = (
            (r["response_a"], r["response_b"])
            if r["p_a"] > 0.5
            else (r["response_b"], r["response_a"])
        )
        out.append(
            {
                "prompt": [{"role": "user", "content": r["prompt"]}],
                "chosen": [{"role": "assistant", "content": won}],
                "rejected": [{"role": "assistant", "content": lost}],
                "p_chosen": float(max(r["p_a"], 1 - r["p_a"])),
                "id": r["id"],
                "source": r["source"],
            }
        )
    return out


def hard_label(
    row_id: str,
    source: str,
    prompt: str,
    better: str,
    worse: str,
    better_on_a: bool,
    seed: int,
    meta: dict,
    **fields: Any,
) -> dict[str, Any]:
    """A label-file row that prefers `better` with certainty (p_a 1.0 or 0.0), on side A when
    `better_on_a`; `fields` fill in what the source knows (principles, mode, policy model)."""
    a, b = (better, worse) if better_on_a else (worse, better)
    p = 1.0 if better_on_a else 0.0
    row: dict[str, Any] = {
        "id": row_id,
        "source": source,
        "prompt": prompt,
        "response_a": a,
        "response_b": b,
        "principle_ids": [],
        "cot": None,
        "mode": None,
        "policy_model": None,
        "feedback_model": None,
        "seed": seed,
        "reason": None,
        "discarded": False,
        "p_a_raw": p,
        "p_a_swapped": None,
        "p_a": p,
        "flip": None,
        "meta": meta,
    }
    row.update(fields)
    return row
