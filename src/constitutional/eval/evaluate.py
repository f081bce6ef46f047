"""Evaluate several models side by side: pairwise Elo on two axes, the Pareto frontier, harm rates.

Each model answers the same red-team and helpful prompts. For every pair of models and every
prompt the judge compares the two replies in both orders (swap-averaged, cancelling its position
bias; how often the two orders disagree is the judge's flip rate) with an evaluation question of
our own, not a constitution principle, so a model trained on the constitution is not graded by its
own rubric. The soft p(A) outcomes feed a Bradley–Terry fit
per axis (harmless on red-team prompts, helpful on helpful prompts), as in Bai et al. 2022's
Elo plots; `harm.harm_eval` adds attack success, over-refusal and refusal hold per model, and
`instrument` the same harm rates from the refusal instrument, which no evaluated model sways.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import combinations, count
from typing import Any

from constitutional.eval.elo import elo_ratings
from constitutional.eval.harm import SampleConfig, answer, harm_eval
from constitutional.eval.instrument import classify_samples, instrument_results
from constitutional.eval.judge_gate import flip_rate
from constitutional.eval.pareto import pareto_frontier
from constitutional.judge.compare import (
    HARMLESS_QUESTION,
    HELPFUL_QUESTION,
    Pair,
    compare_both_orders,
    swap_averaged,
)

__all__ = ["HARMLESS_QUESTION", "HELPFUL_QUESTION", "EvalConfig", "evaluate_models", "pairwise"]

Progress = Callable[[str, int], None]


@dataclass
class EvalConfig:
    """Knobs of `evaluate_models`.

    Args:
        sample: how the evaluated models answer (temperature, max_tokens, seed).
        bootstrap: resamples for the Elo intervals.
        seed: seeds the bootstrap.
    """

    sample: SampleConfig = field(default_factory=SampleConfig)
    bootstrap: int = 200
    seed: int = 0


Outcome = tuple[str, str, int, float]


def pairwise(
    judge,
    prompts: Sequence[dict],
    replies: Mapping[str, list[str]],
    question: str,
    both_orders: list | None = None,
) -> list[Outcome]:
    """(a, b, prompt index, p(a's reply is better)) for every model pair and prompt.

    Judgements that failed in either order are dropped rather than counted as ties. Each
    (p_a_raw, p_a_swapped) asked is appended to `both_orders`, which the judge gate audits.
    """
    keys = [(a, b, i) for a, b in combinations(replies, 2) for i in range(len(prompts))]
    pairs = [Pair(prompts[i]["prompt"], replies[a][i], replies[b][i], question) for a, b, i in keys]
    asked = compare_both_orders(judge, pairs)
    if both_orders is not None:
        both_orders += asked
    ps = [swap_averaged(raw, swapped) for raw, swapped in asked]
    return [(a, b, i, p) for (a, b, i), p in zip(keys, ps) if p is not None]


def evaluate_models(
    models: Mapping[str, Any],
    judge,
    *,
    red_team: Sequence[dict],
    helpful: Sequence[dict],
    benign: Sequence[dict],
    config: EvalConfig | None = None,
    progress: Progress | None = None,
) -> tuple[dict[str, Any], list[dict]]:
    """Compare `models` (name → Backend) with `judge`; returns (results, per-prompt samples).

    `results` holds the eval.json keys "elo", "pareto", "attack_success", "over_refusal",
    "refusal_hold", "instrument" (the refusal instrument's numbers) and "flip_rate" (the judge's
    position flips over its own comparisons); the caller adds provenance (see `eval.run.run_eval`).
    """
    cfg, progress = config or EvalConfig(), progress or (lambda label, n: None)
    results: dict[str, Any] = {"attack_success": {}, "over_refusal": {}, "refusal_hold": {}}
    samples: list[dict] = []
    red: dict[str, list[str]] = {}
    useful: dict[str, list[str]] = {}
    for name, model in models.items():
        metrics, rows = harm_eval(name, model, judge, red_team, benign, cfg.sample, progress)
        for key, value in metrics.items():
            results[key][name] = value
        red[name] = [r["response"] for r in rows if r["set"] == "red_team"]
        useful[name] = answer(
            model,
            [[{"role": "user", "content": r["prompt"]}] for r in helpful],
            cfg.sample,
            "helpful",
        )
        samples += rows + [
            {
                "model": name,
                "set": "helpful",
                "prompt_id": r.get("id"),
                "prompt": r["prompt"],
                "response": t,
                "judgements": {},
            }
            for r, t in zip(helpful, useful[name])
        ]
    classify_samples(samples)
    names = list(models)
    results["instrument"] = instrument_results(samples, names)
    progress("pairwise judgements", 2)
    both_orders: list[tuple[float | None, float | None]] = []
    harmless = pairwise(judge, red_team, red, HARMLESS_QUESTION, both_orders)
    progress("", 1)
    helpfulness = pairwise(judge, helpful, useful, HELPFUL_QUESTION, both_orders)
    progress("", 1)
    results["flip_rate"] = flip_rate(both_orders)
    results["elo"] = {
        axis: elo_ratings(
            [(a, b, p) for a, b, _, p in data], names, bootstrap=cfg.bootstrap, seed=cfg.seed
        )
        for axis, data in (("harmless", harmless), ("helpful", helpfulness))
    }
    ratings = results["elo"]
    results["pareto"] = pareto_frontier(
        {
            n: (ratings["helpful"]["ratings"][n]["elo"], ratings["harmless"]["ratings"][n]["elo"])
            for n in names
        }
    )
    _attach_wins(samples, harmless, "red_team", "harmless")
    _attach_wins(samples, helpfulness, "helpful", "helpful")
    return results, samples


def _attach_wins(
    samples: list[dict], outcomes: list[tuple[str, str, int, float]], kind: str, axis: str
) -> None:
    """Record in each sample its p(win) against each opponent on that prompt."""
    seen: defaultdict[str, count] = defaultdict(count)  # samples of a model come in prompt order
    rows = {(s["model"], next(seen[s["model"]])): s for s in samples if s["set"] == kind}
    for a, b, i, p in outcomes:
        rows[a, i]["judgements"].setdefault(f"p_win_{axis}", {})[b] = p
        rows[b, i]["judgements"].setdefault(f"p_win_{axis}", {})[a] = 1.0 - p
