"""Evaluation and audits (issue #6).

- `evaluate_models`: pairwise Elo (harmless, helpful) with bootstrap intervals, the Pareto
  frontier, attack success, over-refusal and refusal hold, for several models and one judge.
- `audit_judge` / `audit_labels`: position flips, length bias, self-preference, calibration,
  human agreement and prompt-injection robustness of a judge.
- `principle_audit`: per-principle draws, revision change, ensemble agreement and ablation.

- `instrument` / `judge_gate`: harm numbers from the refusal instrument beside the judge's, and
  whether the judge passed its own audit.

The entry points that also write the JSON artifacts are `eval.run.run_eval` (settings in
`eval.run.EvalRunConfig`), `eval.audits.run_judge_audit` and `eval.audits.run_principle_audit`.
Names below are imported on first use, so that `import constitutional.eval.run` (which the CLI
does at start-up for its defaults) does not load the model code.
"""

from importlib import import_module
from typing import Any

_HOMES = {
    "elo": ("elo_ratings", "fit_strengths"),
    "evaluate": ("EvalConfig", "evaluate_models"),
    "harm": ("SampleConfig", "harm_eval"),
    "judge_audit": (
        "audit_judge",
        "audit_labels",
        "calibration",
        "flip_rate",
        "injection_flip_rate",
        "length_bias",
    ),
    "pareto": ("pareto_frontier",),
    "principles": ("judge_by_principle", "principle_audit"),
    "stats": ("rate", "wilson"),
}
_WHERE = {name: module for module, names in _HOMES.items() for name in names}
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


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'constitutional.eval' has no attribute {name!r}")
    return getattr(import_module(f"constitutional.eval.{_WHERE[name]}"), name)
