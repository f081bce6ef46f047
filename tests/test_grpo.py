"""RL-CAI GRPO (TRL GRPOTrainer) on tiny random Llamas: a reward the policy can reach rises, the
checkpoint loads in LocalBackend, the preference model and the judge both serve as the reward,
and bad options fail before any model loads."""

from __future__ import annotations

import json

import pytest
import torch

# The policy, preference model and prompts of the PPO tests (see there why they look as they do).
from test_ppo import LengthJudge, policy_dir, prompts_file, reward_dir  # noqa: F401

from constitutional.backends.base import GenerationRequest
from constitutional.backends.local import LocalBackend
from constitutional.errors import UserError
from constitutional.train.grpo import train_grpo

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny training runs on one thread

RUN = {
    "steps": 16,
    "prompts_per_step": 2,
    "num_generations": 4,
    "max_new_tokens": 8,
    "learning_rate": 5e-3,
    "seed": 0,
}


class TokenScore:
    """A bag-of-tokens reward: the mean over a response's tokens of u·(the token's output row).
    The policy reaches it by turning its last hidden state towards u; a random policy scores ~0."""

    __name__ = "token_score"

    def __init__(self, model_dir):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        head = AutoModelForCausalLM.from_pretrained(
            model_dir
        ).lm_head.weight.detach()  # (vocab, hidden)
        u = torch.nn.functional.normalize(
            torch.randn(head.shape[1], generator=torch.Generator().manual_seed(1)), dim=0
        )
        self.per_token = head @ u  # (vocab,)
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)

    def __call__(self, prompts: list[str], responses: list[str]) -> list[float]:
        ids = [
            self.tokenizer(r, add_special_tokens=False)["input_ids"]
            or [self.tokenizer.eos_token_id]
            for r in responses
        ]
        return [self.per_token[i].mean().item() for i in ids]


def mean(xs):
    return sum(xs) / len(xs)


@pytest.fixture(scope="module")
def trained(policy_dir, prompts_file, tmp_path_factory):  # noqa: F811
    out = tmp_path_factory.mktemp("grpo") / "token"
    reward = TokenScore(policy_dir)
    summary = train_grpo(prompts_file, str(policy_dir), out, reward=reward, beta=0.01, **RUN)
    return out, summary, json.loads((out / "train_log.json").read_text()), reward


def test_grpo_raises_a_reachable_reward(trained):
    _, summary, log, _ = trained
    assert summary["steps"] == len(log) == RUN["steps"]
    assert set(log[0]) >= {"step", "reward", "reward_std", "kl", "loss", "completions/mean_length"}
    first, last = mean([e["reward"] for e in log[:3]]), mean([e["reward"] for e in log[-3:]])
    assert last > first + 0.1, (first, last)  # seeds 0 and 1 rise by ~0.2; per-step noise ~0.03
    assert (
        log[0]["kl"] == pytest.approx(0.0, abs=1e-4) and log[-1]["kl"] > 0
    )  # the adapter starts at zero


def test_trained_policy_scores_higher_than_the_reference(trained, policy_dir):  # noqa: F811
    """Outside the trainer: greedy replies of the checkpoint vs its reference, same reward."""
    out, _, _, reward = trained
    requests = [
        GenerationRequest(prompt=p, max_tokens=8, temperature=0.0)
        for p in ("Say hello.", "Describe the sea.", "Name a colour.")
    ]
    before = [c.text for c in LocalBackend(str(policy_dir)).generate(requests)]
    after = [c.text for c in LocalBackend(str(out)).generate(requests)]
    assert mean(reward([""] * 3, after)) > mean(reward([""] * 3, before))
    meta = json.loads((out / "cai_checkpoint.json").read_text())
    assert meta["stage"] == "rl-cai-grpo" and meta["reward"] == {
        "kind": "custom",
        "function": "token_score",
    }
    assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == str(
        policy_dir.resolve()
    )
    assert (
        meta["hyperparameters"]["num_generations"] == 4
        and "<polyline" in (out / "reward.svg").read_text()
    )


def test_grpo_with_the_preference_model_and_the_judge(
    policy_dir,  # noqa: F811  (pytest fixtures imported from test_ppo)
    reward_dir,  # noqa: F811
    prompts_file,  # noqa: F811
    tmp_path,
):
    short = {**RUN, "steps": 2}
    pm = train_grpo(
        prompts_file, str(policy_dir), tmp_path / "pm", reward_model=reward_dir, **short
    )
    meta = json.loads((tmp_path / "pm" / "cai_checkpoint.json").read_text())
    assert pm["steps"] == 2 and meta["reward"] == {
        "kind": "pm",
        "reward_model": str(reward_dir.resolve()),
    }
    judge = LengthJudge()
    train_grpo(
        prompts_file, str(policy_dir), tmp_path / "judge", reward="judge", judge=judge, **short
    )
    log = json.loads((tmp_path / "judge" / "train_log.json").read_text())
    assert [len(c) for c in judge.calls] == [
        8,
        8,
    ]  # 2 prompts x 4 generations per step, each rated once
    assert [e["reward"] for e in log] == pytest.approx([mean(c) for c in judge.calls])
    meta = json.loads((tmp_path / "judge" / "cai_checkpoint.json").read_text())
    assert meta["reward"]["kind"] == "judge" and meta["reward"]["unscored"] == 0


def test_cli_and_its_mistakes(policy_dir, reward_dir, prompts_file, tmp_path):  # noqa: F811
    import typer
    from typer.testing import CliRunner

    from constitutional.cli.rl_cai_grpo import grpo

    app = typer.Typer()
    app.command()(grpo)
    base = [
        "--prompts",
        str(prompts_file),
        "--policy",
        str(policy_dir),
        "--steps",
        "1",
        "--prompts-per-step",
        "1",
        "--num-generations",
        "2",
        "--max-new-tokens",
        "4",
    ]
    result = CliRunner().invoke(
        app, [*base, "--out", str(tmp_path / "cli"), "--reward-model", str(reward_dir)]
    )
    assert result.exit_code == 0, result.output
    assert "trained 1 steps, pm reward" in result.output
    for extra, message in [
        (["--reward", "judge"], "--reward judge needs --feedback"),
        ([], "--reward pm needs --reward-model"),
        (["--reward-model", str(reward_dir), "--num-generations", "1"], "--num-generations >= 2"),
    ]:
        result = CliRunner().invoke(app, [*base, "--out", str(tmp_path / "never"), *extra])
        assert isinstance(result.exception, UserError) and result.exception.exit_code == 2, (
            extra,
            result.output,
        )
        assert message in str(result.exception)
    assert not (tmp_path / "never").exists()
