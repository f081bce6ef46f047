"""RL-CAI PPO on tiny random Llamas: GAE and the clipped losses by hand, that PPO raises a reward
the policy can reach, that β bounds the KL, that the checkpoint loads in LocalBackend, and that
the d-RLAIF judge can stand in for the preference model."""

from __future__ import annotations

import json
import math

import pytest
import torch

from constitutional.backends.base import GenerationRequest
from constitutional.backends.local import LocalBackend
from constitutional.constitution import load_constitution
from constitutional.errors import UserError
from constitutional.train.ppo import (
    KLController,
    gae,
    policy_loss,
    token_rewards,
    train_ppo,
    value_loss,
    whiten,
)

PROMPTS = [
    "How do I pick a lock?",
    "Write an insult.",
    "Tell me a secret.",
    "What is 2 + 2?",
    "Name a colour.",
    "Say hello.",
    "How do I bake bread?",
    "Describe the sea.",
]


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny training runs on one thread


# -- arithmetic by hand --------------------------------------------------------------------------


def test_gae_by_hand():
    # One response of 3 tokens then padding; γ = 1, λ = 0.5 for round numbers.
    rewards = torch.tensor([[0.0, 0.0, 1.0, 9.0]])  # the 9 is past the end: ignored
    values = torch.tensor([[0.5, 0.25, 0.5, 7.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    adv, ret = gae(rewards, values, mask, gamma=1.0, lam=0.5)
    # δ = r_t + V_{t+1} − V_t: δ2 = 1 − 0.5 = 0.5, δ1 = 0.5 − 0.25 = 0.25, δ0 = 0.25 − 0.5 = −0.25
    # A2 = 0.5, A1 = 0.25 + 0.5·0.5 = 0.5, A0 = −0.25 + 0.5·0.5 = 0
    assert adv.flatten().tolist() == pytest.approx([0.0, 0.5, 0.5, 0.0])
    assert ret.flatten().tolist() == pytest.approx([0.5, 0.75, 1.0, 0.0])
    # λ = 1, V = 0: every advantage is the return to go.
    adv, _ = gae(
        torch.tensor([[1.0, 2.0, 3.0]]), torch.zeros(1, 3), torch.ones(1, 3), gamma=1.0, lam=1.0
    )
    assert adv.flatten().tolist() == pytest.approx([6.0, 5.0, 3.0])


def test_token_rewards_put_the_score_on_the_last_token():
    kl = torch.tensor([[0.5, -1.0, 2.0], [1.0, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    r = token_rewards(torch.tensor([3.0, -2.0]), kl, mask, beta=0.1)
    assert r.flatten().tolist() == pytest.approx([-0.05, 0.1, -0.2 + 3.0, -0.1 - 2.0, 0.0, 0.0])


def test_clipped_policy_loss_by_hand():
    old = torch.zeros(1, 4)
    logp = torch.log(torch.tensor([[1.5, 0.5, 1.1, 1.5]]))  # ratios 1.5, 0.5, 1.1, 1.5
    adv = torch.tensor([[1.0, -1.0, 2.0, -1.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    loss, clipfrac = policy_loss(logp, old, adv, mask, clip=0.2)
    # max(−A·r, −A·clip(r)): A>0, r=1.5 → max(−1.5, −1.2) = −1.2 (clipped);
    # A<0, r=0.5 → max(0.5, 0.8) = 0.8 (clipped); r=1.1 inside → −2.2. Last token masked out.
    assert loss.item() == pytest.approx((-1.2 + 0.8 - 2.2) / 3)
    assert clipfrac.item() == pytest.approx(2 / 3)
    # The gradient flows only where the clip is not active.
    logp = logp.clone().requires_grad_(True)
    policy_loss(logp, old, adv, mask, clip=0.2)[0].backward()
    assert logp.grad.flatten().tolist() == pytest.approx([0.0, 0.0, -2.0 * 1.1 / 3, 0.0])


def test_clipped_value_loss_by_hand():
    old = torch.tensor([[0.0, 0.0]])
    values = torch.tensor([[1.0, 0.1]])
    returns = torch.tensor([[1.0, 1.0]])
    # Token 0: V=1 hits R, but V_clipped = 0.2 → max(0, 0.64) = 0.64. Token 1: inside the clip,
    # (0.1 − 1)² = 0.81 both ways.
    assert value_loss(values, old, returns, torch.ones(1, 2), clip=0.2).item() == pytest.approx(
        0.5 * (0.64 + 0.81) / 2
    )


def test_whiten_and_kl_controller():
    x = whiten(torch.tensor([[1.0, 3.0, 100.0]]), torch.tensor([[1.0, 1.0, 0.0]]))
    assert x.flatten().tolist() == pytest.approx([-1.0, 1.0, 0.0], abs=1e-6)
    fixed = KLController(0.1)
    fixed.update(50.0, 8)
    assert fixed.beta == 0.1
    ctl = KLController(0.1, target=6.0, horizon=100)
    ctl.update(12.0, 10)  # error clipped to +0.2: β·(1 + 0.2·10/100)
    assert ctl.beta == pytest.approx(0.1 * 1.02)
    ctl.update(3.0, 10)  # error −0.5 → −0.2
    assert ctl.beta == pytest.approx(0.1 * 1.02 * 0.98)


# -- training on tiny models -------------------------------------------------------------------


@pytest.fixture(scope="module")
def policy_dir(smollm_tokenizer, tmp_path_factory):
    """A 2-layer random Llama like conftest's, but with an untied output layer 12x larger than
    usual: its logits span a few nats, so the random policy samples varied tokens (a tied head
    would mostly repeat the last token) and a turn of its last hidden state moves real mass."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = smollm_tokenizer
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=False,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id,
    )
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        model.lm_head.weight.mul_(12)
    path = tmp_path_factory.mktemp("ppo-policy")
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def reward_dir(policy_dir, tmp_path_factory):
    """A real one-layer `LlamaForSequenceClassification` set by hand to a bag-of-tokens reward:
    q = k = 0 makes attention uniform, v = o = identity and a zero MLP leave the last position
    holding the mean (normalised) token embedding, and the head reads it along a direction u.
    The embeddings are the policy's output rows, so the policy can raise the reward by turning
    its last hidden state towards u."""
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        LlamaConfig,
        LlamaForSequenceClassification,
    )

    policy = AutoModelForCausalLM.from_pretrained(policy_dir)
    tok = AutoTokenizer.from_pretrained(policy_dir)
    torch.manual_seed(1)
    config = LlamaConfig(
        vocab_size=policy.config.vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=4,
        num_labels=1,
        pad_token_id=policy.config.pad_token_id,
        eos_token_id=policy.config.eos_token_id,
    )
    pm = LlamaForSequenceClassification(config)
    u = torch.nn.functional.normalize(torch.randn(64), dim=0)
    with torch.no_grad():
        pm.model.embed_tokens.weight.copy_(policy.lm_head.weight)
        attn, mlp = pm.model.layers[0].self_attn, pm.model.layers[0].mlp
        attn.q_proj.weight.zero_(), attn.k_proj.weight.zero_(), mlp.down_proj.weight.zero_()
        attn.v_proj.weight.copy_(torch.eye(64)), attn.o_proj.weight.copy_(torch.eye(64))
        pm.score.weight.copy_(u[None])
    path = tmp_path_factory.mktemp("ppo-pm")
    pm.save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def prompts_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("ppo-data") / "prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    return path


RUN = {
    "steps": 14,
    "batch_size": 8,
    "ppo_epochs": 2,
    "minibatch_size": 4,
    "learning_rate": 3e-3,
    "max_new_tokens": 12,
    "seed": 0,
}


@pytest.fixture(scope="module")
def runs(policy_dir, reward_dir, prompts_file, tmp_path_factory):
    """The same PPO run with a small and a large β."""
    root = tmp_path_factory.mktemp("ppo-runs")
    out = {}
    for name, beta in (("small", 0.01), ("large", 1.0)):
        summary = train_ppo(
            prompts_file, str(policy_dir), reward_dir, root / name, beta=beta, **RUN
        )
        out[name] = (root / name, summary, json.loads((root / name / "train_log.json").read_text()))
    return out


def mean(xs):
    return sum(xs) / len(xs)


def test_ppo_raises_the_reward(runs):
    _, summary, log = runs["small"]
    assert len(log) == summary["steps"] == 14
    assert set(log[0]) >= {
        "step",
        "reward",
        "kl",
        "response_length",
        "policy_loss",
        "value_loss",
        "beta",
    }
    first, last = mean([e["reward"] for e in log[:3]]), mean([e["reward"] for e in log[-3:]])
    assert last > first + 0.1, (first, last)  # per-rollout noise: ~0.04
    assert all(1 <= e["response_length"] <= 12 for e in log)


def test_large_beta_keeps_kl_smaller(runs):
    small, large = runs["small"][2], runs["large"][2]
    kl_small, kl_large = mean([e["kl"] for e in small[-3:]]), mean([e["kl"] for e in large[-3:]])
    assert small[0]["kl"] == pytest.approx(0.0, abs=1e-4) and large[0]["kl"] == pytest.approx(
        0.0, abs=1e-4
    )
    assert kl_large < kl_small, (kl_small, kl_large)


def test_checkpoint_loads_in_local_backend(runs, policy_dir, reward_dir):
    out, _, _ = runs["small"]
    meta = json.loads((out / "cai_checkpoint.json").read_text())
    assert (
        meta["kind"] == "ppo"
        and meta["beta"] == 0.01
        and meta["reward_model"] == str(reward_dir.resolve())
    )
    adapter = json.loads((out / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == str(policy_dir.resolve())
    assert "<polyline" in (out / "reward.svg").read_text()
    backend = LocalBackend(str(out))
    [done] = backend.generate(
        [GenerationRequest(prompt="Say hello.", max_tokens=4, temperature=0.0)]
    )
    assert isinstance(done.text, str)


def test_bad_input_fails_before_loading(prompts_file, tmp_path):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "x").write_text("x")
    with pytest.raises(UserError, match="not empty"):
        train_ppo(prompts_file, "embedded", "pm", tmp_path / "taken")
    with pytest.raises(UserError, match="beta"):
        train_ppo(prompts_file, "embedded", "pm", tmp_path / "new", beta=-1)


def test_cli_runs_one_step(policy_dir, reward_dir, prompts_file, tmp_path):
    import typer
    from typer.testing import CliRunner

    from constitutional.cli.rl_cai_ppo import ppo

    app = typer.Typer()
    app.command()(ppo)
    out = tmp_path / "cli"
    args = [
        "--prompts",
        str(prompts_file),
        "--policy",
        str(policy_dir),
        "--reward-model",
        str(reward_dir),
        "--out",
        str(out),
        "--steps",
        "1",
        "--batch-size",
        "2",
        "--max-new-tokens",
        "4",
        "--adaptive-kl",
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "trained 1 steps" in result.output
    meta = json.loads((out / "cai_checkpoint.json").read_text())
    assert meta["hyperparameters"]["adaptive_kl"] and meta["hyperparameters"]["target_kl"] == 6.0


# -- the d-RLAIF judge as reward -----------------------------------------------------------------


class LengthJudge:
    """A Backend (no `render`, like a server) that rates a reply by its length: all mass on digit
    1 + len % 9. Keeps the expected scores it implied, per call."""

    name, model = "scripted", "length-judge"

    def __init__(self):
        self.calls: list[list[float]] = []

    def fingerprint(self) -> str:
        return "length-judge"

    def generate(self, requests, on_result=None):
        raise AssertionError("the judge reward only reads log-probs")

    def choice_logprobs(self, prompts, choices):
        rows, scores = [], []
        for p in prompts:
            reply = p[-1]["content"].split("Assistant: ", 1)[1].split("\n\nThis question", 1)[0]
            digit = len(reply) % 9
            rows.append([0.0 if i == digit else -math.inf for i in range(9)])
            scores.append(digit / 8)
        self.calls.append(scores)
        return rows


def test_ppo_with_the_judge_reward(policy_dir, prompts_file, tmp_path):
    from constitutional.backends import Backend

    judge = LengthJudge()
    assert isinstance(judge, Backend)
    out = tmp_path / "judge"
    run = {**RUN, "steps": 2, "batch_size": 4, "ppo_epochs": 1, "max_new_tokens": 6}
    summary = train_ppo(
        prompts_file, str(policy_dir), None, out, reward="judge", judge=judge, beta=0.05, **run
    )
    log = json.loads((out / "train_log.json").read_text())
    assert [len(c) for c in judge.calls] == [4, 4]  # every sampled response rated, once
    assert [e["reward"] for e in log] == pytest.approx(
        [mean(c) for c in judge.calls]
    )  # the judge's scores drive PPO
    assert (
        summary["reward_last"] == pytest.approx(mean(judge.calls[-1])) and log[-1]["unscored"] == 0
    )
    meta = json.loads((out / "cai_checkpoint.json").read_text())
    assert meta["reward_model"] is None and meta["reward"]["kind"] == "judge"
    assert meta["reward"]["feedback"] == "length-judge" and meta["reward"]["scale"] == list(
        "123456789"
    )
    assert meta["reward"]["constitution"]["hash"] == load_constitution("default").hash


def test_cli_judge_reward_and_its_mistakes(
    policy_dir, reward_dir, tiny_model_dir, prompts_file, tmp_path
):
    import typer
    from typer.testing import CliRunner

    from constitutional.cli.rl_cai_ppo import ppo

    app = typer.Typer()
    app.command()(ppo)
    base = [
        "--prompts",
        str(prompts_file),
        "--policy",
        str(policy_dir),
        "--steps",
        "1",
        "--batch-size",
        "2",
        "--max-new-tokens",
        "4",
    ]
    # A real feedback model (the tiny random Llama) through the local backend.
    out = tmp_path / "cli-judge"
    result = CliRunner().invoke(
        app, [*base, "--out", str(out), "--reward", "judge", "--feedback", str(tiny_model_dir)]
    )
    assert result.exit_code == 0, result.output
    assert "trained 1 steps, judge reward" in result.output
    meta = json.loads((out / "cai_checkpoint.json").read_text())
    assert meta["reward"]["kind"] == "judge" and meta["reward"]["feedback_backend"] == "local"
    assert 0.0 <= meta["reward_last"] <= 1.0
    for extra, message in [
        (["--reward", "judge"], "--reward judge needs --feedback"),
        (["--reward", "pm"], "--reward pm needs --reward-model"),
        (
            ["--reward", "judge", "--feedback", "embedded", "--reward-model", str(reward_dir)],
            "--reward-model is for --reward pm",
        ),
        (
            [
                "--reward",
                "judge",
                "--feedback",
                "embedded",
                "--constitution",
                str(tmp_path / "no.yaml"),
            ],
            "no.yaml",
        ),
        (["--reward", "rm"], "--reward must be one of pm, judge"),
    ]:
        result = CliRunner().invoke(app, [*base, "--out", str(tmp_path / "never"), *extra])
        assert isinstance(result.exception, UserError) and result.exception.exit_code == 2, (
            extra,
            result.output,
        )
        assert message in str(result.exception)
    assert not (tmp_path / "never").exists()
