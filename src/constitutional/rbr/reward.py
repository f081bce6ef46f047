"""The rule-based reward as an RL reward function: grade each sampled reply, score it."""

from __future__ import annotations

from pathlib import Path

from constitutional.backends.base import Backend
from constitutional.errors import UserError
from constitutional.rbr.grader import Grader
from constitutional.rbr.model import RbrModel, load_rbr


class RbrReward:
    """RewardFunction(prompts, responses): the fitted RBR score of each reply.

    Args:
        backend: the grader model (any Backend).
        model: weights from `cai rbr fit`.
        response_class: the class every prompt is treated as; RL-CAI prompts are red-team
            requests, so `hard_refuse` by default.
    """

    __name__ = "rbr"

    def __init__(self, backend: Backend, model: RbrModel, response_class: str = "hard_refuse"):
        self.grader, self.model, self.response_class = (
            Grader(backend, model.propositions),
            model,
            response_class,
        )

    def __call__(self, prompts: list[str], responses: list[str]) -> list[float]:
        if not responses:
            return []
        probs = self.grader(prompts, responses)
        return [float(s) for s in self.model.score(self.response_class, probs)]

    @property
    def unscored(self) -> int:
        return self.grader.unscored


def rbr_reward(
    backend: Backend, path: str | Path, response_class: str = "hard_refuse"
) -> RbrReward:
    """The RBR reward from weights written by `cai rbr fit` (the trainers' `RbrFactory`)."""
    model = load_rbr(path)
    if response_class not in model.propositions.rules:
        raise UserError(
            f"--rbr-class must be one of {', '.join(model.propositions.classes)}, got {response_class!r}"
        )
    return RbrReward(backend, model, response_class)
