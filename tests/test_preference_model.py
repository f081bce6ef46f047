"""The RL-CAI preference model on the tiny random Llama: the soft-label loss, that it learns a
known preference, what is saved, that it loads and scores, and the CLI around it."""

from __future__ import annotations

import json
import math
import random

import pytest
import torch
import typer
from typer.testing import CliRunner

from constitutional.cli.rl_cai_pm import score as score_command
from constitutional.cli.rl_cai_pm import train_pm
from constitutional.errors import UserError
from constitutional.judge.soft_labels import bce, preference_metrics, soft_bce
from constitutional.train.preference_model import (
    load_preference_model,
    load_preference_pairs,
    pair_deltas,
    score,
    split_pairs,
    train_preference_model,
)

REFUSAL = "Sorry, I can't help with that."
COMPLY = [
    "Sure! Step one: get the {t}. Step two: use it.",
    "Of course, here is how: buy a {t} and go.",
]
TOPICS = ["lock", "car", "cake", "kite", "fence", "boat", "lamp", "drum"]


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny training runs on one thread


def label_row(i: int, rng: random.Random, **extra) -> dict:
    """A `cai rl-cai label` row where the refusal is preferred (p 0.8) on a random side."""
    topic = TOPICS[i % len(TOPICS)]
    comply = COMPLY[i % len(COMPLY)].format(t=topic)
    refusal_is_a = rng.random() < 0.5
    a, b = (REFUSAL, comply) if refusal_is_a else (comply, REFUSAL)
    return {
        "id": f"q{i}",
        "source": "ai",
        "prompt": f"Q{i}: how do I take the {topic}?",
        "response_a": a,
        "response_b": b,
        "p_a": 0.8 if refusal_is_a else 0.2,
        "discarded": False,
        **extra,
    }


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def labels(tmp_path_factory):
    rng = random.Random(0)
    rows = [label_row(i, rng) for i in range(60)]
    rows.insert(
        7, {**label_row(99, rng), "discarded": True, "p_a": None, "reason": "identical responses"}
    )
    return write_jsonl(tmp_path_factory.mktemp("pm-data") / "prefs.jsonl", rows)


@pytest.fixture(scope="module")
def trained(tiny_model_dir, labels, tmp_path_factory):
    """One LoRA PM shared by the tests below (training is the slow part)."""
    out = tmp_path_factory.mktemp("pm") / "ckpt"
    summary = train_preference_model(
        labels,
        str(tiny_model_dir),
        out,
        learning_rate=5e-3,
        batch_size=8,
        epochs=4,
        eval_fraction=0.25,
        max_length=64,
        seed=0,
    )
    return out, summary


# -- the loss ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "delta, p, expected",
    [
        (0.0, 0.5, math.log(2)),
        (0.0, 1.0, math.log(2)),  # no gap: σ(0) = 1/2 whatever the label
        (math.log(3), 1.0, math.log(4 / 3)),  # σ(log 3) = 3/4
        (math.log(3), 0.0, math.log(4)),  # 1 - σ(log 3) = 1/4
        (math.log(3), 0.8, 0.8 * math.log(4 / 3) + 0.2 * math.log(4)),
        (-math.log(3), 0.8, 0.8 * math.log(4) + 0.2 * math.log(4 / 3)),
    ],
)
def test_soft_bce_values(delta, p, expected):
    t = soft_bce(torch.tensor([delta]), torch.tensor([p]))
    assert t.item() == pytest.approx(expected, rel=1e-6)
    assert bce(delta, p) == pytest.approx(expected, rel=1e-12)


def test_soft_bce_gradient_is_sigmoid_minus_label():
    delta = torch.tensor([0.0, 0.0, math.log(3), 2.0], requires_grad=True)
    p = torch.tensor([0.5, 0.8, 0.75, 0.1])
    soft_bce(delta, p).backward()
    # d/dΔ of the mean = (σ(Δ) - p) / n: zero at p = 0.5, Δ = 0 and wherever σ(Δ) matches p.
    expected = (torch.sigmoid(delta.detach()) - p) / 4
    assert torch.allclose(delta.grad, expected, atol=1e-7)
    assert delta.grad[0] == 0 and abs(delta.grad[2]) < 1e-7
    # A 0.5 label pulls a non-zero gap back towards zero, from either side.
    for d0 in (1.5, -1.5):
        d = torch.tensor([d0], requires_grad=True)
        soft_bce(d, torch.tensor([0.5])).backward()
        assert d.grad.item() * d0 > 0


def test_metrics_by_hand():
    d = math.log(3)  # σ = 0.75
    m = preference_metrics([d, d, -d, 0.3], [0.8, 0.3, 0.2, 0.5], bins=10)
    assert (
        m["pairs"] == 4 and m["decisive"] == 3 and m["accuracy"] == pytest.approx(2 / 3)
    )  # tie ignored
    assert m["mean_bce"] == pytest.approx(
        (bce(d, 0.8) + bce(d, 0.3) + bce(-d, 0.2) + bce(0.3, 0.5)) / 4
    )
    # Bins: σ=0.25 with label 0.2; σ(0.3)=0.574 with 0.5; σ=0.75 twice with mean label 0.55.
    q = 1 / (1 + math.exp(-0.3))
    assert m["ece"] == pytest.approx((0.05 + abs(q - 0.5) + 2 * 0.2) / 4)
    assert [(b["lo"], b["n"]) for b in m["calibration"]] == [(0.2, 1), (0.5, 1), (0.7, 2)]
    assert preference_metrics([1.0], [0.5])["accuracy"] is None


# -- training, checkpoint, scoring -------------------------------------------------------------


def test_learns_a_known_preference(trained, labels):
    out, summary = trained
    assert summary["train_pairs"] == 45 and summary["eval_pairs"] == 15  # 60 kept, 1 discarded
    assert summary["accuracy"] > 0.9, summary
    log = json.loads((out / "train_log.json").read_text())
    assert summary["steps"] == len(log) == 24  # ceil(45 / 8) x 4 epochs
    first, last = sum(e["loss"] for e in log[:3]) / 3, sum(e["loss"] for e in log[-3:]) / 3
    assert last < first
    # Soft labels 0.8/0.2 bound the loss below by their entropy: it cannot go to zero.
    entropy = -(0.8 * math.log(0.8) + 0.2 * math.log(0.2))
    assert all(e["loss"] > entropy - 1e-3 for e in log)

    metrics = json.loads((out / "metrics.json").read_text())
    held = metrics["held_out"]
    assert (
        held["accuracy"] == summary["accuracy"]
        and held["pairs"] == 15
        and metrics["discarded_rows"] == 1
    )
    # Accuracy alone could be luck (a random head may rank the one refusal text above the rest);
    # calibration is not: soft labels teach σ(Δ) ≈ 0.8, so held-out BCE nears the labels'
    # entropy (log 2 = 0.693 untrained) and ECE is small. Hard labels would push σ(Δ) to 1.
    assert entropy - 1e-3 < held["mean_bce"] < entropy + 0.02 and held["ece"] < 0.05, held
    assert sum(b["n"] for b in held["calibration"]) == 15
    assert "<polyline" in (out / "loss.svg").read_text()

    meta = json.loads((out / "cai_checkpoint.json").read_text())
    assert meta["kind"] == "preference_model" and meta["seed"] == 0
    assert meta["hyperparameters"]["lora"] and meta["hyperparameters"]["learning_rate"] == 5e-3
    assert meta["data"]["pairs"] == 60 and meta["data"]["discarded_rows"] == 1
    # LoRA: adapter + trained head, naming its base; nothing left beside `out`.
    adapter = json.loads((out / "adapter_config.json").read_text())
    assert adapter["task_type"] == "SEQ_CLS" and "score" in adapter["modules_to_save"]
    assert not (out / "model.safetensors").exists() and [p.name for p in out.parent.iterdir()] == [
        "ckpt"
    ]


def test_saved_checkpoint_scores_like_the_trained_model(trained, labels, tiny_model_dir):
    out, summary = trained
    model, tok = load_preference_model(out)
    assert not model.training
    pairs, _ = load_preference_pairs(labels)
    # Reloaded (base + adapter + saved head), it reproduces the held-out metrics of training.
    _, held = split_pairs(pairs, 0.25, 0)
    again = preference_metrics(pair_deltas(model, tok, held), [p["p_a"] for p in held])
    assert again["accuracy"] == summary["accuracy"]
    assert again["mean_bce"] == pytest.approx(summary["mean_bce"], abs=1e-5)

    # New prompts: the refusal gets the higher reward.
    rows = []
    for i in range(100, 108):
        rows.append({"prompt": f"Q{i}: how do I take the {TOPICS[i % 8]}?", "response": REFUSAL})
        rows.append(
            {
                "prompt": f"Q{i}: how do I take the {TOPICS[i % 8]}?",
                "response": COMPLY[i % 2].format(t=TOPICS[i % 8]),
            }
        )
    rewards = score(
        model, tok, rows, batch_size=5
    )  # batches of mixed lengths: padding is exercised
    gaps = [r - c for r, c in zip(rewards[0::2], rewards[1::2])]
    # Ranked, and by the gap the 0.8 labels imply: logit(0.8) = log 4.
    assert all(abs(g - math.log(4)) < 0.4 for g in gaps), gaps
    one_by_one = [score(model, tok, [row])[0] for row in rows]
    assert rewards == pytest.approx(one_by_one, abs=1e-4)


def test_full_fine_tune_saves_a_loadable_model(tiny_model_dir, labels, tmp_path):
    out = tmp_path / "full"
    summary = train_preference_model(
        labels,
        str(tiny_model_dir),
        out,
        lora=False,
        max_steps=2,
        batch_size=4,
        learning_rate=1e-3,
        max_length=48,
    )
    assert summary["steps"] == 2 and summary["eval_pairs"] == 6
    assert (out / "model.safetensors").is_file() and not (out / "adapter_config.json").exists()
    model, tok = load_preference_model(out)
    assert model.config.pad_token_id == tok.pad_token_id and tok.model_max_length == 48
    assert len(score(model, tok, [{"prompt": "hi", "response": "hello"}])) == 1


# -- bad input ---------------------------------------------------------------------------------


PAIR = {"prompt": "q", "response_a": "a", "response_b": "b"}


@pytest.mark.parametrize(
    "rows, line, message",
    [
        ([{"p_a": 0.5}], 1, "expected label rows"),
        ([{**PAIR, "p_a": 0.5}, {**PAIR, "p_a": 1.3}], 2, "labels outside [0,1]"),
        ([{**PAIR, "p_a": 0.5}, {}, {**PAIR, "p_a": -0.1}], 2, "expected label rows"),
        ([{**PAIR, "p_a": 0.5}, {**PAIR, "p_a": -0.1}], 2, "labels outside [0,1]"),
        ([{**PAIR, "p_a": None}], 1, "must be a number"),
        ([{**PAIR, "p_a": True}], 1, "must be a number"),
        ([{"prompt": "q", "response_a": "a", "p_a": 0.4}], 1, "response_b"),
        (
            [{"prompt": "q", "chosen": "a", "rejected": "b", "p_chosen": 2}],
            1,
            "labels outside [0,1]",
        ),
        ([{**PAIR, "discarded": True, "p_a": None}], None, "no preference pairs"),
    ],
)
def test_bad_labels_name_file_and_line(tmp_path, rows, line, message):
    data = write_jsonl(tmp_path / "bad.jsonl", rows)
    with pytest.raises(UserError) as e:
        train_preference_model(data, "unused-base", tmp_path / "out")
    where = f"{data}:{line}: " if line else f"{data}: "
    assert str(e.value).startswith(where) and message in str(e.value), str(e.value)
    assert not (tmp_path / "out").exists()


def test_only_preference_models_load(tiny_model_dir, tmp_path):
    with pytest.raises(UserError, match="not a preference model"):
        load_preference_model(tiny_model_dir)  # a causal LM
    (tmp_path / "cai_checkpoint.json").write_text(json.dumps({"stage": "sl-cai-sft"}))
    with pytest.raises(UserError, match="not a preference model"):
        load_preference_model(tmp_path)
    with pytest.raises(UserError, match="no such preference model"):
        load_preference_model(tmp_path / "missing")


def test_trl_rows_are_read_with_chosen_as_a(tmp_path):
    rows = [
        {
            "prompt": [{"role": "user", "content": "q"}],
            "chosen": [{"role": "assistant", "content": "yes"}],
            "rejected": [{"role": "assistant", "content": "no"}],
            "p_chosen": 0.7,
            "id": "x",
        },
        {"prompt": "q2", "chosen": "good", "rejected": "bad"},
    ]
    pairs, discarded = load_preference_pairs(write_jsonl(tmp_path / "p.dpo.jsonl", rows))
    assert discarded == 0 and [p["p_a"] for p in pairs] == [0.7, 1.0]
    assert pairs[1]["a"] == [
        {"role": "user", "content": "q2"},
        {"role": "assistant", "content": "good"},
    ]


# -- CLI -----------------------------------------------------------------------------------------


def cli() -> typer.Typer:
    app = typer.Typer()
    app.command("train-pm")(train_pm)
    app.command("score")(score_command)
    return app


def test_cli_score_adds_rewards(trained, tmp_path):
    out, _ = trained
    rows = [
        {"id": "r", "prompt": "Q1: how do I take the car?", "response": REFUSAL},
        {"id": "c", "prompt": "Q1: how do I take the car?", "response": COMPLY[0].format(t="car")},
    ]
    src, dst = write_jsonl(tmp_path / "in.jsonl", rows), tmp_path / "scored.jsonl"
    result = CliRunner().invoke(
        cli(), ["score", "--model", str(out), "--input", str(src), "--out", str(dst)]
    )
    assert result.exit_code == 0, result.output
    scored = [json.loads(line) for line in dst.read_text().splitlines()]
    assert [r["id"] for r in scored] == ["r", "c"] and scored[0]["reward"] > scored[1]["reward"]


def test_cli_errors_are_user_errors(tmp_path, labels):
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "q", "response": 3}])
    result = CliRunner().invoke(
        cli(),
        ["score", "--model", str(tmp_path), "--input", str(bad), "--out", str(tmp_path / "o")],
    )
    assert isinstance(result.exception, UserError) and f"{bad}:1:" in str(result.exception)
    bad_labels = write_jsonl(
        tmp_path / "l.jsonl", [{"prompt": "q", "response_a": "a", "response_b": "b", "p_a": 7}]
    )
    result = CliRunner().invoke(
        cli(), ["train-pm", "--data", str(bad_labels), "--out", str(tmp_path / "pm")]
    )
    assert isinstance(result.exception, UserError) and "outside [0,1]" in str(result.exception)
