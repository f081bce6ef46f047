"""No training stage may see an evaluation prompt: a result on training prompts is not evidence.

Checked on normalised text (case and punctuation ignored) before a recipe runs: every prompt
set a training stage reads (SL-CAI's red-team and helpful prompts, the label and PPO prompts)
against every set the eval stage reads. The bundled `red_team_train` / `red_team_eval` split
is also disjoint by near-duplicate (see `constitutional.splits`); this check catches a recipe
that names overlapping sets by hand.
"""

from __future__ import annotations

from typing import Any

from constitutional.errors import UserError
from constitutional.recipe.schema import Recipe


def training_sets(recipe: Recipe) -> dict[str, str]:
    """'stage.key' → prompt set spec, for every set a training stage reads."""
    s, sets = recipe.stages, {}
    if s.sl_cai:
        sets["sl_cai.prompts"] = s.sl_cai.prompts
        if s.sl_cai.helpful_ratio > 0:
            sets["sl_cai.helpful_prompts"] = s.sl_cai.helpful_prompts
    if s.label and s.label.source == "judge":  # revision pairs reuse SL-CAI's prompts
        sets["label.prompts"] = s.label.prompts
    if s.policy and s.policy.prompts:
        sets["policy.prompts"] = s.policy.prompts
    return sets


def eval_sets(recipe: Recipe) -> dict[str, str]:
    e = recipe.stages.eval
    return (
        {}
        if e is None
        else {f"eval.{k}": getattr(e, k) for k in ("red_team", "helpful", "over_refusal")}
    )


def check_disjoint(recipe: Recipe) -> dict[str, Any]:
    """Raise UserError naming both sets if a training set shares a prompt with an eval set;
    else return what was checked, for the manifest."""
    from constitutional.generate import load_prompts
    from constitutional.splits import normalise

    def texts(spec: str) -> set[str]:
        return {normalise(r["prompt"]) for r in load_prompts(spec, chat_allowed=False)}

    train, held = training_sets(recipe), eval_sets(recipe)
    loaded = {spec: texts(spec) for spec in {*train.values(), *held.values()}}
    for tk, tspec in train.items():
        for ek, espec in held.items():
            shared = loaded[tspec] & loaded[espec]
            if shared:
                example = min(shared)
                raise UserError(
                    f"{tk} ({tspec}) and {ek} ({espec}) share {len(shared)} prompt(s), e.g. {example!r}: "
                    "evaluate on prompts no training stage sees (e.g. builtin:red_team_eval)"
                )
    return {"training_sets": train, "eval_sets": held, "disjoint": True}
