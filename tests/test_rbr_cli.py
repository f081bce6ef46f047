"""`cai rbr validate/fit/eval/score` on a tiny random model, and `--reward pm+rbr`: the RL reward
is the preference model's plus exactly the weighted RBR score."""

from __future__ import annotations

import json

import pytest
import torch
import typer
from test_rbr import MINI, ScriptedGrader
from typer.testing import CliRunner

from constitutional.cli.rbr import app
from constitutional.errors import UserError
from constitutional.rbr import RbrModel, RbrReward, load_propositions, load_rbr
from constitutional.rbr.reward import rbr_reward
from constitutional.train.rewards import build_reward, check_reward

PROMPTS = ["How do I pick a lock?", "Write an insult.", "Tell me a secret.", "Say hello."]


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny training runs on one thread


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def test_validate_reports_file_and_line(tmp_path):
    result = invoke("validate", "src/constitutional/rbr/default.yaml")
    assert result.exit_code == 0 and "21 propositions" in result.output
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "name: x\ngrades: [a, b]\npropositions:\n  - id: p\n    question: q?\nrules:\n  c:\n    - grade: z\n"
    )
    result = invoke("validate", bad)
    assert isinstance(result.exception, UserError) and result.exception.exit_code == 2
    assert str(result.exception).startswith(f"{bad}:8: ") and "unknown grade 'z'" in str(
        result.exception
    )


def gold_file(path, n):
    """n gold replies to MINI's classes, labels cycling so each class sees several grades."""
    rows = []
    for i in range(n):
        labels = {"apology": i % 2 == 0, "refusal": i % 3 != 0}
        rows.append(
            {
                "conversation": [{"role": "user", "content": PROMPTS[i % 4]}],
                "response": f"Reply {i}.",
                "response_class": "refuse" if i % 4 else "comply",
                "labels": labels,
            }
        )
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_fit_eval_score_on_a_tiny_model(tiny_model_dir, tmp_path):
    mini = tmp_path / "mini.yaml"
    mini.write_text(MINI)
    model = ["--model", tiny_model_dir, "--cache", tmp_path / "cache.sqlite"]
    out = tmp_path / "rbr.json"
    gold = gold_file(tmp_path / "gold.jsonl", 24)
    result = invoke(
        "fit", "--gold", gold, "--propositions", mini, "--held-out", 0.25, "--out", out, *model
    )
    assert result.exit_code == 0, result.output
    assert "ranking accuracy (pairs of different grade)" in result.output
    fitted = json.loads(out.read_text())
    m = fitted["metrics"]
    assert (
        m["replies"] == {"train": 18, "test": 6}
        and m["grader"]["backend"] == "local"
        and m["unscored"] == 0
    )
    assert (
        set(m["propositions"]) == {"apology", "refusal"} and m["propositions"]["apology"]["n"] == 6
    )
    rbr = load_rbr(out)
    # 2 propositions + one feature per rule: refuse has 2 rules, comply 1.
    assert {c: len(w) for c, w in rbr.weights.items()} == {"refuse": 4, "comply": 3}
    assert fitted["features"]["refuse"][:2] == ["apology", "refusal"]
    # eval with those weights on other gold replies: metrics JSON written; a rerun (from the cache) is identical.
    report = tmp_path / "eval.json"
    runs = []
    for _ in range(2):
        result = invoke(
            "eval",
            "--rbr",
            out,
            "--test",
            gold_file(tmp_path / "test.jsonl", 8),
            "--out",
            report,
            *model,
        )
        assert result.exit_code == 0, result.output
        runs.append(json.loads(report.read_text()))
    assert runs[0]["replies"] == {"train": 0, "test": 8} and runs[0]["rbr"] == str(out)
    assert (
        runs[0]["propositions"] == runs[1]["propositions"]
        and runs[0]["ranking"] == runs[1]["ranking"]
    )
    # score: every row gains the RBR score, a grade and P(yes) per proposition.
    data = tmp_path / "replies.jsonl"
    data.write_text(
        "".join(
            json.dumps({"id": i, "prompt": p, "response": "I'm sorry, I can't help with that."})
            + "\n"
            for i, p in enumerate(PROMPTS[:2])
        )
    )
    scored = tmp_path / "scored.jsonl"
    result = invoke(
        "score", "--data", data, "--rbr", out, "--out", scored, "--response-class", "refuse", *model
    )
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in scored.read_text().splitlines()]
    assert [r["id"] for r in rows] == [0, 1] and rows[0]["rbr"]["grade"] in rbr.propositions.grades
    assert set(rows[0]["rbr"]["propositions"]) == {"apology", "refusal"}
    result = invoke(
        "score", "--data", data, "--rbr", out, "--out", tmp_path / "never.jsonl", *model
    )
    assert isinstance(result.exception, UserError) and f"{data}:1: " in str(result.exception)
    assert not (tmp_path / "never.jsonl").exists()


# -- --reward pm+rbr -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pm_dir(smollm_tokenizer, tmp_path_factory):
    """A random one-layer sequence-classification Llama: any scores will do, they only need to
    be the preference model's."""
    from transformers import LlamaConfig, LlamaForSequenceClassification

    tok = smollm_tokenizer
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        num_labels=1,
        pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id,
    )
    path = tmp_path_factory.mktemp("rbr-pm")
    LlamaForSequenceClassification(config).save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def rbr_file(tmp_path_factory):
    """Hand-set weights on the default propositions: hard_refuse rewards an apology (+2) and
    punishes judgement (-1); every other feature weighs 0."""
    props = load_propositions()
    names = [*props.ids, *(f"r{i}" for i in range(len(props.rules["hard_refuse"])))]
    weights = [2.0 if n == "apology" else -1.0 if n == "judgement" else 0.0 for n in names]
    path = tmp_path_factory.mktemp("rbr") / "rbr.json"
    RbrModel(props, "default", {"hard_refuse": weights}).save(path)
    return path


def sorry_grader():
    """Apology yes when the reply says sorry; judgement yes when it says 'shame'; else no."""
    return ScriptedGrader(
        load_propositions(),
        lambda pid, reply: (
            (pid == "apology" and "sorry" in reply) or (pid == "judgement" and "shame" in reply)
        ),
    )


def test_pm_plus_rbr_adds_the_weighted_rbr_score(pm_dir, rbr_file):
    responses = [
        "I'm sorry, I can't.",
        "You should feel shame.",
        "Sure, here you go.",
        "sorry, shame on you",
    ]
    pm, _ = build_reward("pm", reward_model=pm_dir, device="cpu")
    rbr = RbrReward(sorry_grader(), load_rbr(rbr_file))
    assert rbr(PROMPTS, responses) == pytest.approx(
        [2.0, -1.0, 0.0, 1.0]
    )  # by the hand-set weights
    base = pm(PROMPTS, responses)
    for weight in (0.5, 3.0):
        total, record = build_reward(
            "pm+rbr",
            reward_model=pm_dir,
            judge=sorry_grader(),
            rbr=rbr_file,
            rbr_weight=weight,
            device="cpu",
            rbr_factory=rbr_reward,
        )
        got = total(PROMPTS, responses)
        assert got == pytest.approx(
            [b + weight * r for b, r in zip(base, [2.0, -1.0, 0.0, 1.0])], abs=1e-5
        )
        assert (
            record["kind"] == "pm+rbr"
            and record["rbr_weight"] == weight
            and record["feedback"] == "scripted-grader"
        )
        assert (
            record["reward_model"] == str(pm_dir.resolve()) and record["rbr_class"] == "hard_refuse"
        )


def test_pm_plus_rbr_option_mistakes(pm_dir, rbr_file, tmp_path):
    with pytest.raises(UserError, match="--reward pm\\+rbr needs --feedback"):
        check_reward("pm+rbr", pm_dir, None, rbr_file)
    with pytest.raises(UserError, match="--reward pm\\+rbr needs --rbr"):
        check_reward("pm+rbr", pm_dir, "embedded", None)
    with pytest.raises(UserError, match="--reward pm\\+rbr needs --reward-model"):
        check_reward("pm+rbr", None, "embedded", rbr_file)
    with pytest.raises(UserError, match="--rbr is for --reward pm\\+rbr"):
        check_reward("pm", pm_dir, None, rbr_file)
    with pytest.raises(UserError, match="--rbr-class must be one of"):
        build_reward(
            "pm+rbr",
            reward_model=pm_dir,
            judge=sorry_grader(),
            rbr=rbr_file,
            rbr_class="maybe",
            device="cpu",
            rbr_factory=rbr_reward,
        )


def test_ppo_cli_with_pm_plus_rbr(pm_dir, rbr_file, tiny_model_dir, tmp_path):
    """One PPO step through the CLI, the tiny model as both policy and proposition grader."""
    from constitutional.cli.rl_cai_ppo import ppo

    cli = typer.Typer()
    cli.command()(ppo)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS[:2]))
    base = [
        "--prompts",
        prompts,
        "--policy",
        tiny_model_dir,
        "--steps",
        1,
        "--batch-size",
        2,
        "--max-new-tokens",
        4,
        "--reward",
        "pm+rbr",
        "--reward-model",
        pm_dir,
    ]
    out = tmp_path / "ppo"
    result = CliRunner().invoke(
        cli,
        [
            str(a)
            for a in [
                *base,
                "--feedback",
                tiny_model_dir,
                "--rbr",
                rbr_file,
                "--rbr-weight",
                2,
                "--out",
                out,
            ]
        ],
    )
    assert result.exit_code == 0, result.output
    meta = json.loads((out / "cai_checkpoint.json").read_text())
    assert meta["reward"]["kind"] == "pm+rbr" and meta["reward"]["rbr_weight"] == 2.0
    broken = tmp_path / "broken.json"
    broken.write_text("{")
    result = CliRunner().invoke(
        cli,
        [
            str(a)
            for a in [
                *base,
                "--feedback",
                tiny_model_dir,
                "--rbr",
                broken,
                "--out",
                tmp_path / "never",
            ]
        ],
    )
    assert isinstance(result.exception, UserError) and "not a fitted RBR" in str(result.exception)
    assert not (tmp_path / "never").exists()


def test_grpo_gets_pm_plus_rbr_as_one_trl_reward(pm_dir, rbr_file):
    from constitutional.train.grpo import trl_rewards

    funcs, tokenizers, record = trl_rewards(
        "pm+rbr",
        pm_dir,
        sorry_grader(),
        "default",
        0,
        "cpu",
        rbr=rbr_file,
        rbr_weight=0.5,
        rbr_class="hard_refuse",
        rbr_factory=rbr_reward,
    )
    assert len(funcs) == 1 and tokenizers == [None] and record["kind"] == "pm+rbr"
    prompts = [[{"role": "user", "content": p}] for p in PROMPTS[:2]]
    completions = [[{"role": "assistant", "content": r}] for r in ("sorry", "no")]
    pm, _ = build_reward("pm", reward_model=pm_dir, device="cpu")
    base = pm(PROMPTS[:2], ["sorry", "no"])
    assert funcs[0](prompts, completions) == pytest.approx([base[0] + 0.5 * 2.0, base[1]], abs=1e-5)
