"""Reward functions for the RL step of RL-CAI: one signature, two sources of AI feedback.

A `RewardFunction` maps (prompts, responses), both lists of strings, to one float per response.

- `preference_model_reward`: the preference model from `cai rl-cai train-pm` scores each
  conversation (Bai et al. 2022, section 4: RL against a PM trained on AI labels).
- `JudgeReward`: no PM at all; the feedback model itself rates each sampled response online
  against a comparison principle drawn at random, and the reward is the expected rating under its
  distribution over the digits 1-9, mapped to [0, 1] ("direct RLAIF", Lee et al. 2023,
  https://arxiv.org/abs/2309.00267, section 2.3). It reaches the model through the `Backend`
  protocol only, so the judge can be the embedded model, any local checkpoint or a server.

- `pm+rbr`: the preference model plus a weighted rule-based reward (`cai rbr fit`; Mu et al. 2024,
  https://arxiv.org/abs/2411.01111): the feedback model grades propositions about each response.

`build_reward` turns the CLI's `--reward pm|judge|pm+rbr` into one of these and a record of it
for `cai_checkpoint.json`; PPO and GRPO share it.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from constitutional.backends.base import Backend
from constitutional.errors import UserError
from constitutional.judge import rating as direct
from constitutional.judge.layout import renderer
from constitutional.provenance import derive_seed

RewardFunction = Callable[[list[str], list[str]], list[float]]
# Builds the rule-based reward of `pm+rbr` from (grader backend, weights file, response class).
# The RBR lives in `rbr`, a stage above the trainers, so the caller hands this in
# (`constitutional.rbr.reward.rbr_reward`); raises UserError for a class the weights lack.
RbrFactory = Callable[[Backend, Path, str], RewardFunction]
REWARDS = ("pm", "judge", "pm+rbr")
# The keyword arguments of `build_reward` that train_ppo and train_grpo take under the same names.
REWARD_ARGUMENTS = (
    "reward_model",
    "judge",
    "constitution",
    "seed",
    "rbr",
    "rbr_weight",
    "rbr_class",
    "rbr_factory",
)


def reward_arguments(args: dict[str, Any]) -> dict[str, Any]:
    """The `build_reward` keywords among a trainer's arguments (its `locals()` on entry)."""
    return {name: args[name] for name in REWARD_ARGUMENTS}


def expected_score(logprobs: Sequence[float], scores: Sequence[float] | None = None) -> float:
    """Expected score under the softmax of the score tokens' log-probs, mapped to [0, 1].

    The softmax is over the score tokens only (mass on other tokens is ignored, as in the
    two-way softmax of comparison labels). With scores s_1..s_n (default 1..n):
    E = Σ p_i·s_i and the result is (E - min s) / (max s - min s).

    Example: log-probs (log 0.5, log 0.25, log 0.25) for scores 1, 2, 3 give
    E = 0.5 + 0.5 + 0.75 = 1.75, i.e. (1.75 - 1) / 2 = 0.375.
    Returns NaN when undefined: a NaN log-prob, or no mass on any score token (all -inf).
    """
    scores = list(scores) if scores is not None else list(range(1, len(logprobs) + 1))
    if len(scores) != len(logprobs) or len(scores) < 2:
        raise ValueError("one score per log-prob, and at least two of them")
    if any(math.isnan(lp) for lp in logprobs) or all(lp == -math.inf for lp in logprobs):
        return math.nan
    top = max(logprobs)
    weights = [
        math.exp(lp - top) for lp in logprobs
    ]  # shifted: no underflow for very negative log-probs
    mean = sum(w * s for w, s in zip(weights, scores)) / sum(weights)
    lo, hi = min(scores), max(scores)
    return (mean - lo) / (hi - lo)


class JudgeReward:
    """d-RLAIF: the feedback model rates each response; reward = expected rating in [0, 1].

    Args:
        backend: the feedback model, any `Backend` (its `choice_logprobs` is the only call made).
        constitution: principles are drawn from its `comparison` list, one per response.
        seed: seeds the principle draws; the sequence of calls fixes which response gets which.

    A judgement with no usable log-probs scores the midpoint 0.5 (no signal either way) and is
    counted in `unscored`, which training logs report.
    """

    __name__ = "judge"  # TRL names reward functions by __name__ in its logs

    def __init__(self, backend: Backend, constitution, seed: int = 0):
        self.backend, self.constitution = backend, constitution
        self.render = renderer(backend)
        self.rng = random.Random(derive_seed(seed, "judge-principles"))
        self.unscored = 0

    def __call__(self, prompts: list[str], responses: list[str]) -> list[float]:
        principles = [self.rng.choice(self.constitution.comparison) for _ in responses]
        asks = [
            direct.rating_prompt(self.render, direct.rating_messages(p, r, c.text))
            for p, r, c in zip(prompts, responses, principles)
        ]
        rows = self.backend.choice_logprobs(asks, list(direct.SCALE)) if asks else []
        out = []
        for row in rows:
            score = expected_score(row)
            if math.isnan(score):
                self.unscored += 1
                score = 0.5
            out.append(score)
        return out


def preference_model_reward(model, tokenizer) -> RewardFunction:
    """The preference model's score of each [user prompt, assistant response] conversation."""
    from constitutional.train.preference_model import rewards

    def pm(prompts: list[str], responses: list[str]) -> list[float]:
        convs = [
            [{"role": "user", "content": p}, {"role": "assistant", "content": r}]
            for p, r in zip(prompts, responses)
        ]
        return rewards(model, tokenizer, convs)

    return pm


def check_reward(
    reward: str | RewardFunction,
    reward_model: str | Path | None,
    judge: object | None,
    rbr: str | Path | None = None,
) -> None:
    """Raise UserError for a reward choice no run could honour; loads nothing."""
    if callable(reward):
        return
    if reward not in REWARDS:
        raise UserError(f"--reward must be one of {', '.join(REWARDS)}, got {reward!r}")
    if reward == "pm+rbr":
        _check_pm(reward_model, reward)
        if judge is None:
            raise UserError(
                "--reward pm+rbr needs --feedback MODEL (the model that grades the RBR propositions)"
            )
        if rbr is None:
            raise UserError("--reward pm+rbr needs --rbr FILE (weights from `cai rbr fit`)")
        return
    if rbr is not None:
        raise UserError("--rbr is for --reward pm+rbr")
    if reward == "pm":
        _check_pm(reward_model, reward)
        if judge is not None:
            raise UserError(
                "--feedback is for --reward judge; --reward pm scores with --reward-model"
            )
    else:
        if judge is None:
            raise UserError(
                "--reward judge needs --feedback MODEL (the model that rates each response)"
            )
        if reward_model is not None:
            raise UserError(
                "--reward-model is for --reward pm; --reward judge scores with --feedback"
            )


def _check_pm(reward_model: str | Path | None, reward: str) -> None:
    if reward_model is None:
        raise UserError(
            f"--reward {reward} needs --reward-model DIR (a preference model from `cai rl-cai train-pm`)"
        )
    if not Path(reward_model).expanduser().is_dir():
        raise UserError("no such preference model directory", reward_model)


def build_reward(
    reward: str | RewardFunction,
    *,
    reward_model: str | Path | None = None,
    judge: Backend | None = None,
    constitution: str = "default",
    seed: int = 0,
    device: str | None = None,
    rbr: str | Path | None = None,
    rbr_weight: float = 1.0,
    rbr_class: str = "hard_refuse",
    rbr_factory: RbrFactory | None = None,
) -> tuple[RewardFunction, dict[str, Any]]:
    """The reward function for `--reward pm|judge|pm+rbr` (or a callable, used as is) and its record.

    Args:
        reward: "pm", "judge", "pm+rbr", or a RewardFunction.
        reward_model: the preference model directory (pm, pm+rbr).
        judge: the feedback model as a Backend (judge; the proposition grader for pm+rbr).
        constitution: YAML path or "default" (judge: where principles come from).
        seed: judge principle draws.
        device: where the preference model goes (default: cuda if available).
        rbr / rbr_weight / rbr_class: pm+rbr: weights from `cai rbr fit`, the factor on the RBR
            score (total = PM + rbr_weight · RBR), and the response class every prompt is given.
        rbr_factory: pm+rbr: builds the RBR reward (see `RbrFactory`).
    """
    check_reward(reward, reward_model, judge, rbr)
    if callable(reward):
        return reward, {
            "kind": "custom",
            "function": getattr(reward, "__name__", type(reward).__name__),
        }
    if reward in ("pm", "pm+rbr"):
        from constitutional.train.preference_model import load_preference_model

        model, tokenizer = load_preference_model(reward_model, device)
        path = str(Path(reward_model).expanduser().resolve())
        pm, record = preference_model_reward(model, tokenizer), {"kind": "pm", "reward_model": path}
        if reward == "pm":
            return pm, record
        if rbr_factory is None:
            raise ValueError(
                "reward pm+rbr needs rbr_factory, e.g. constitutional.rbr.reward.rbr_reward"
            )
        rbr_reward = rbr_factory(judge, Path(rbr), rbr_class)
        record.update(
            kind="pm+rbr",
            rbr=str(Path(rbr).resolve()),
            rbr_weight=rbr_weight,
            rbr_class=rbr_class,
            feedback=judge.model,
            feedback_backend=judge.name,
        )
        return combined(pm, rbr_reward, rbr_weight), record
    from constitutional.constitution import load_constitution

    rules = load_constitution(constitution)
    record = {
        "kind": "judge",
        "feedback": judge.model,
        "feedback_backend": judge.name,
        "scale": list(direct.SCALE),
        "constitution": {"source": str(constitution), "hash": rules.hash, "version": rules.version},
        "seed": seed,
    }
    return JudgeReward(judge, rules, seed), record


def combined(first: RewardFunction, second: RewardFunction, weight: float) -> RewardFunction:
    """A RewardFunction returning first + weight · second (e.g. PM + weighted RBR)."""
    import numpy as np

    def total(prompts: list[str], responses: list[str]) -> list[float]:
        total = np.add(first(prompts, responses), np.multiply(weight, second(prompts, responses)))
        return [float(x) for x in total]

    total.__name__ = f"{getattr(first, '__name__', 'reward')}+rbr"
    return total
