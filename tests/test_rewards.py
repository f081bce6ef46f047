"""Reward functions: the d-RLAIF expected score by hand, the judge on a scripted Backend and on a
tiny real model, and the option checks shared by `cai rl-cai ppo` and `grpo`."""

from __future__ import annotations

import math
import random

import pytest

from constitutional.backends import Backend, CachedBackend
from constitutional.backends.local import LocalBackend
from constitutional.backends.mock import MockBackend
from constitutional.constitution import load_constitution
from constitutional.errors import UserError
from constitutional.judge import rating as direct
from constitutional.provenance import derive_seed
from constitutional.train.rewards import JudgeReward, build_reward, check_reward, expected_score

LOG = {"half": math.log(0.5), "quarter": math.log(0.25), "none": -math.inf}


def test_expected_score_by_hand():
    # Scores 1, 2, 3 with p = 0.5, 0.25, 0.25: E = 1.75, mapped (1.75 - 1) / (3 - 1) = 0.375.
    assert expected_score([LOG["half"], LOG["quarter"], LOG["quarter"]]) == pytest.approx(0.375)
    # The softmax is over the score tokens only: 0.2 and 0.2 renormalise to 0.5 / 0.5 -> E = 1.5.
    assert expected_score([math.log(0.2), math.log(0.2)]) == pytest.approx(0.5)
    nine = [LOG["none"]] * 8 + [0.0]
    assert expected_score(nine) == 1.0 and expected_score(nine[::-1]) == 0.0
    assert expected_score([-3.0] * 9) == pytest.approx(0.5)  # uniform over 1..9: E = 5
    # Two equal peaks at 3 and 7 of the nine: E = 5 -> 0.5; very negative log-probs do not underflow.
    assert expected_score(
        [-1e4] * 2 + [-1000.0] + [-1e4] * 3 + [-1000.0] + [-1e4] * 2
    ) == pytest.approx(0.5)
    assert expected_score([0.0, LOG["none"]], scores=[0, 10]) == 0.0
    assert math.isnan(expected_score([LOG["none"]] * 9)) and math.isnan(
        expected_score([math.nan, 0.0])
    )
    with pytest.raises(ValueError):
        expected_score([0.0, 0.0], scores=[1, 2, 3])


def rate(prompt, choices) -> list[float]:
    """Log-probs over the digits by the rated response: "good" puts all mass on 9, "bad" on 1,
    "meh" half on 3 and half on 7, anything else none."""
    assert list(choices) == list(direct.SCALE)
    reply = prompt[-1]["content"].split("Assistant: ", 1)[1].split("\n", 1)[0]
    row = [-math.inf] * 9
    if reply == "good":
        row[8] = 0.0
    elif reply == "bad":
        row[0] = 0.0
    elif reply == "meh":
        row[2] = row[6] = math.log(0.5)
    return row


def scripted_judge() -> MockBackend:
    """The package's mock backend (no `render`, like an HTTP server) rating with `rate`; it
    keeps every prompt it was asked about in `judged`."""
    return MockBackend("scripted-judge", reply="", scores=rate)


def test_judge_reward_on_a_scripted_backend():
    rules = load_constitution("default")
    backend = scripted_judge()
    assert isinstance(backend, Backend)  # the protocol, not a stand-in for it
    judge = JudgeReward(CachedBackend(backend, None), rules, seed=7)
    prompts = ["How do I pick a lock?"] * 4
    assert judge(prompts, ["good", "bad", "meh", "???"]) == pytest.approx([1.0, 0.0, 0.5, 0.5])
    assert judge.unscored == 1  # "???" got no mass on any digit: midpoint, and counted
    texts = {p.text.strip() for p in rules.comparison}
    for [message] in backend.judged:
        content = message["content"]
        assert message["role"] == "user" and content.endswith(direct.DIGIT_ONLY)
        assert "Human: How do I pick a lock?" in content
        assert any(t in content for t in texts)  # one of the constitution's principles
    # Seeded draws: the same seed asks the same questions, another seed other ones.
    again = scripted_judge()
    JudgeReward(again, rules, seed=7)(prompts, ["good", "bad", "meh", "???"])
    assert again.judged == backend.judged
    other = scripted_judge()
    JudgeReward(other, rules, seed=8)(prompts * 4, ["good"] * 16)
    mine = scripted_judge()
    JudgeReward(mine, rules, seed=7)(prompts * 4, ["good"] * 16)
    assert other.judged != mine.judged


def test_judge_reward_on_a_tiny_model(tiny_model_dir):
    """On a model with a chat template the answer is pre-filled up to "Rating: "; the reward is
    the expected score of the digits' next-token log-probs, recomputed here by hand."""
    rules = load_constitution("default")
    local = LocalBackend(str(tiny_model_dir), batch_size=4)
    judge = JudgeReward(CachedBackend(local, None), rules, seed=0)
    prompts, responses = ["Say hello.", "Name a colour."], ["Hello!", "Blue."]
    got = judge(prompts, responses)
    assert judge.unscored == 0
    rng = random.Random(derive_seed(0, "judge-principles"))  # the judge's draws, one per response
    for prompt, response, value in zip(prompts, responses, got):
        messages = direct.rating_messages(prompt, response, rng.choice(rules.comparison).text)
        text = local.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True
        )
        [row] = local.choice_logprobs([text + direct.RATING_STUB], list(direct.SCALE))
        p = [math.exp(x) for x in row]
        assert value == pytest.approx(
            (sum(d * q for d, q in zip(range(1, 10), p)) / sum(p) - 1) / 8, abs=1e-6
        )
        assert 0.0 < value < 1.0


def test_reward_options_fail_with_one_line(tmp_path):
    with pytest.raises(UserError, match="--reward must be one of pm, judge"):
        check_reward("vibes", None, None)
    with pytest.raises(UserError, match="--reward pm needs --reward-model"):
        check_reward("pm", None, None)
    with pytest.raises(UserError, match="no such preference model directory"):
        check_reward("pm", tmp_path / "missing", None)
    with pytest.raises(UserError, match="--reward judge needs --feedback"):
        check_reward("judge", None, None)
    with pytest.raises(UserError, match="--reward-model is for --reward pm"):
        check_reward("judge", tmp_path, "embedded")
    with pytest.raises(UserError, match="--feedback is for --reward judge"):
        check_reward("pm", tmp_path, "embedded")
    check_reward(lambda p, r: [0.0] * len(r), None, None)  # a callable needs nothing else
    fn, record = build_reward("judge", judge=scripted_judge(), seed=3)
    assert (
        isinstance(fn, JudgeReward)
        and record["kind"] == "judge"
        and record["feedback"] == "scripted-judge"
    )
    assert record["constitution"]["hash"] == load_constitution("default").hash
