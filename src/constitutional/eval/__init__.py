"""Evaluation and audits (issue #6).

- `evaluate_models`: pairwise Elo (harmless, helpful) with bootstrap intervals, the Pareto
  frontier, attack success, over-refusal and refusal hold, for several models and one judge.
- `audit_judge` / `audit_labels`: position flips, length bias, self-preference, calibration,
  human agreement and prompt-injection robustness of a judge.
- `principle_audit`: per-principle draws, revision change, ensemble agreement and ablation.

The spec-level entry points that also write the JSON artifacts are `cli.eval.run_eval`,
`cli.audit.run_judge_audit` and `cli.audit.run_principle_audit`.
"""

from constitutional.eval.elo import elo_ratings, fit_strengths
from constitutional.eval.evaluate import EvalConfig, evaluate_models
from constitutional.eval.harm import SampleConfig, harm_eval
from constitutional.eval.judge_audit import (
    audit_judge,
    audit_labels,
    calibration,
    flip_rate,
    injection_flip_rate,
    length_bias,
)
from constitutional.eval.pareto import pareto_frontier
from constitutional.eval.principles import judge_by_principle, principle_audit
from constitutional.eval.stats import rate, wilson

__all__ = [
    "EvalConfig",
    "SampleConfig",
    "audit_judge",
    "audit_labels",
    "calibration",
    "elo_ratings",
    "evaluate_models",
    "fit_strengths",
    "flip_rate",
    "harm_eval",
    "injection_flip_rate",
    "judge_by_principle",
    "length_bias",
    "pareto_frontier",
    "principle_audit",
    "rate",
    "wilson",
]
