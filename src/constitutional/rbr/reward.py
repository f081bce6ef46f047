"""The rule-based reward as an RL reward function: grade each sampled reply, score it."""

from __future__ import annotations

import numpy as np

from constitutional.backends.base import Backend
from constitutional.rbr.grader import Grader
from constitutional.rbr.model import RbrModel


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
        self.grader, self.model, self.response_class = Grader(backend, model.propositions), model, response_class

    def __call__(self, prompts: list[str], responses: list[str]) -> list[float]:
        if not responses:
            return []
        probs = self.grader(prompts, responses)
        return [float(s) for s in self.model.score(self.response_class, probs)]

    @property
    def unscored(self) -> int:
        return self.grader.unscored


def combined(first, second, weight: float):
    """A RewardFunction returning first + weight · second (e.g. PM + weighted RBR)."""

    def total(prompts: list[str], responses: list[str]) -> list[float]:
        total = np.add(first(prompts, responses), np.multiply(weight, second(prompts, responses)))
        return [float(x) for x in total]

    total.__name__ = f"{getattr(first, '__name__', 'reward')}+rbr"
    return total
