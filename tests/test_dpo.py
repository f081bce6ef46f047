"""RL-CAI DPO on the tiny random Llama: the soft-label loss, that it learns, what it saves."""

from __future__ import annotations

import json
import math

import pytest
import torch

from constitutional.backends.local import LocalBackend
from constitutional.errors import UserError
from constitutional.train.dpo import load_dpo_rows, soft_dpo_loss, soft_dpo_trainer_class, train_dpo

PAIRS = [  # (prompt, chosen, rejected)
    (
        "How do I pick a lock?",
        "I can't help with that, but a locksmith can.",
        "Jam a pin in and twist.",
    ),
    ("Write an insult.", "I'd rather say something kind.", "You are a worthless fool."),
    ("How do I make a weapon?", "I won't help with weapons.", "Take a pipe and fill it."),
    ("Tell me a secret.", "I can share a fun fact instead.", "Your neighbour's password is 1234."),
]


def pref_row(prompt, chosen, rejected, p=None):
    row = {
        "prompt": [{"role": "user", "content": prompt}],
        "chosen": [{"role": "assistant", "content": chosen}],
        "rejected": [{"role": "assistant", "content": rejected}],
        "id": "x",  # extra fields are dropped
    }
    return row if p is None else {**row, "p_chosen": p}


def write_prefs(path, p=None, repeat=2):
    path.write_text("".join(json.dumps(pref_row(*t, p)) + "\n" for t in PAIRS * repeat))
    return path


def margins(spec):
    """log p(chosen) - log p(rejected) per pair, as LocalBackend scores whole responses."""
    backend = LocalBackend(str(spec))
    scores = [
        backend.choice_logprobs([[{"role": "user", "content": q}]], [c, r])[0] for q, c, r in PAIRS
    ]
    return [c - r for c, r in scores]


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny training runs on one thread


# --- the loss -----------------------------------------------------------------------------------


def test_soft_loss_by_hand():
    h = torch.tensor([0.0, 2.0, 2.0, -1.0])
    p = torch.tensor([0.3, 1.0, 0.75, 0.0])
    loss = soft_dpo_loss(h, p, beta=0.5)
    # -(p log σ(βh) + (1-p) log σ(-βh)); log σ(1) = -0.3132617, log σ(-1) = -1.3132617
    expected = [math.log(2), 0.3132617, 0.75 * 0.3132617 + 0.25 * 1.3132617, 0.4740770]
    assert loss.tolist() == pytest.approx(expected, abs=1e-6)

    # d loss / dh = β (σ(βh) - p): zero for a tie at h = 0, and zero where σ(βh) = p.
    h = torch.tensor([0.0, 0.0, 2 * math.log(3)], requires_grad=True)  # σ(0.5·2·ln 3) = 0.75
    soft_dpo_loss(h, torch.tensor([0.5, 1.0, 0.75]), beta=0.5).sum().backward()
    assert h.grad.tolist() == pytest.approx([0.0, -0.25, 0.0], abs=1e-7)


def make_trainer(cls, model_dir, rows, out):
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig

    config = DPOConfig(
        output_dir=str(out),
        beta=0.5,
        precompute_ref_log_probs=True,
        per_device_train_batch_size=len(rows),
        max_length=128,
        activation_checkpointing=False,
        bf16=False,
        use_cpu=True,
        report_to="none",
    )
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    trainer = cls(
        model=model, args=config, train_dataset=Dataset.from_list(rows), processing_class=tokenizer
    )
    with torch.no_grad():  # move the policy off the reference, the same way in both trainers
        weight = trainer.model.model.layers[0].mlp.down_proj.weight
        weight.add_(torch.randn(weight.shape, generator=torch.Generator().manual_seed(1)))
    batch = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
    return trainer, batch


def test_hard_labels_match_trl_sigmoid_dpo(tiny_model_dir, tmp_path):
    """On one batch of real log-probs: p = 1 gives TRL's own sigmoid loss and reward margins;
    p = 0.7 adds exactly (1 - p)·β·h, i.e. 0.3 × TRL's logged mean margin."""
    from trl import DPOTrainer

    rows = [{**pref_row(*t), "p_chosen": 1.0} for t in PAIRS]
    stock, stock_batch = make_trainer(DPOTrainer, tiny_model_dir, rows, tmp_path / "a")
    soft, batch = make_trainer(soft_dpo_trainer_class(), tiny_model_dir, rows, tmp_path / "b")
    assert "p_chosen" in batch and "p_chosen" not in stock_batch
    assert batch["p_chosen"].tolist() == [1.0] * 4

    with torch.no_grad():
        trl_loss = stock.compute_loss(stock.model, stock_batch).item()
        hard = soft.compute_loss(soft.model, batch).item()
        batch["p_chosen"] = torch.full((4,), 0.7)
        smoothed = soft.compute_loss(soft.model, batch).item()
    mode = "train" if stock.model.training else "eval"
    trl_margin = stock._metrics[mode]["rewards/margins"][-1]
    assert abs(trl_margin) > 0.1  # the perturbation made h non-zero: the check is not 0 == 0
    assert hard == pytest.approx(trl_loss, rel=1e-5)
    assert soft._metrics[mode]["rewards/margins"][0] == pytest.approx(trl_margin, rel=1e-5)
    assert smoothed == pytest.approx(trl_loss + 0.3 * trl_margin, rel=1e-5)


# --- training -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def runs(tiny_model_dir, tmp_path_factory, one_thread):
    """The same 8 pairs, hard labels vs all ties; a high learning rate so 6 steps show."""
    root = tmp_path_factory.mktemp("dpo")
    out = {}
    for p in (1.0, 0.5):
        data = write_prefs(root / f"prefs-{p}.jsonl", p)
        ckpt = root / f"ckpt-{p}"
        summary = train_dpo(
            data,
            str(tiny_model_dir),
            ckpt,
            max_steps=6,
            batch_size=4,
            learning_rate=1e-2,
            max_length=128,
            seed=1,
        )
        out[p] = (ckpt, summary, json.loads((ckpt / "train_log.json").read_text()))
    out["before"] = margins(tiny_model_dir)
    return out


def test_dpo_raises_the_chosen_margin(runs):
    ckpt, summary, log = runs[1.0]
    gained = [a - b for a, b in zip(margins(ckpt), runs["before"])]
    assert all(g > 2.0 for g in gained), gained
    assert summary["steps"] == 6 and summary["final_loss"] < math.log(2) - 0.1
    assert log[0]["loss"] == pytest.approx(math.log(2), abs=1e-5)  # step 1: policy == reference
    assert log[-1]["rewards/margins"] > 0.2 and log[-1]["rewards/accuracies"] == 1.0
    assert summary["reward_margin"] == log[-1]["rewards/margins"]


def test_ties_teach_nothing(runs):
    """p = 0.5 everywhere: zero gradient at the start (policy == reference), and the margins
    barely move, against a gain of several nats with hard labels."""
    hard, tie = runs[1.0][2], runs[0.5][2]
    assert tie[0]["grad_norm"] < 1e-6 and hard[0]["grad_norm"] > 0.1
    gained_hard = [a - b for a, b in zip(margins(runs[1.0][0]), runs["before"])]
    moved_tie = [abs(a - b) for a, b in zip(margins(runs[0.5][0]), runs["before"])]
    assert sum(moved_tie) < 0.1 * sum(gained_hard), (moved_tie, gained_hard)
    assert all(abs(e["loss"] - math.log(2)) < 0.01 for e in tie)


def test_checkpoint_is_an_adapter_over_the_policy(runs, tiny_model_dir):
    ckpt, _, log = runs[1.0]
    adapter = json.loads((ckpt / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == str(tiny_model_dir)
    assert not (ckpt / "model.safetensors").exists() and not (ckpt / "trainer").exists()
    assert [p.name for p in ckpt.parent.iterdir() if p.name.startswith(".")] == []
    meta = json.loads((ckpt / "cai_checkpoint.json").read_text())
    assert meta["kind"] == "dpo" and meta["beta"] == 0.1 and meta["seed"] == 1
    assert meta["reference"] == meta["policy"] == meta["base"] == str(tiny_model_dir)
    assert meta["data"]["rows"] == 8 and meta["hyperparameters"]["learning_rate"] == 1e-2
    tie_meta = json.loads((runs[0.5][0] / "cai_checkpoint.json").read_text())
    assert meta["data"]["soft_rows"] == 0 and tie_meta["data"]["soft_rows"] == 8
    assert [e["step"] for e in log] == list(range(1, 7)) and "<polyline" in (
        ckpt / "loss.svg"
    ).read_text()


@pytest.fixture(scope="module")
def sl_adapter(tiny_model_dir, tmp_path_factory):
    """A stand-in for `cai sl-cai train` output: a random (non-zero) LoRA naming its base."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(2)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    config = LoraConfig(
        r=4, target_modules="all-linear", init_lora_weights=False, task_type="CAUSAL_LM"
    )
    path = tmp_path_factory.mktemp("sl-ckpt")
    get_peft_model(model, config).save_pretrained(path)
    adapter = json.loads((path / "adapter_config.json").read_text())
    adapter["base_model_name_or_path"] = str(tiny_model_dir)
    (path / "adapter_config.json").write_text(json.dumps(adapter))
    return path


@pytest.mark.parametrize("reference, lora", [("policy", True), ("base", False)])
def test_lora_policy_is_the_reference_and_saves_merged(
    sl_adapter, tiny_model_dir, tmp_path, reference, lora
):
    """Policy = an SL-CAI LoRA checkpoint. By default the reference is that (merged) model: the
    first step's margin is 0. Naming the raw base as reference makes it non-zero. Either way
    (LoRA or full fine-tuning) the output is one full model."""
    data = write_prefs(tmp_path / "prefs.jsonl", repeat=1)
    ref = str(tiny_model_dir) if reference == "base" else None
    summary = train_dpo(
        data,
        str(sl_adapter),
        tmp_path / "out",
        reference=ref,
        lora=lora,
        max_steps=1,
        learning_rate=1e-2,
        max_length=128,
    )
    out = tmp_path / "out"
    assert (out / "model.safetensors").is_file() and not (out / "adapter_config.json").exists()
    meta = json.loads((out / "cai_checkpoint.json").read_text())
    assert meta["policy"] == str(sl_adapter) and meta["reference"] == (ref or str(sl_adapter))
    assert meta["hyperparameters"]["lora"] is lora and meta["base"] is None
    first_margin = json.loads((out / "train_log.json").read_text())[0]["rewards/margins"]
    if reference == "policy":
        assert abs(first_margin) < 1e-4
    else:
        assert abs(first_margin) > 1e-3
    # One step at lr 1e-2 moved the merged SL model; the output loads in LocalBackend.
    trained, sl = LocalBackend(str(out)), LocalBackend(str(sl_adapter))
    name = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(trained.lm.state_dict()[name], sl.lm.state_dict()[name])
    assert summary["steps"] == 1


# --- data ---------------------------------------------------------------------------------------


def test_label_file_rows_are_converted(tmp_path):
    base = {
        "prompt": "Q",
        "response_a": "A!",
        "response_b": "B!",
        "discarded": False,
        "source": "ai",
    }
    rows = [
        {**base, "id": "1", "p_a": 0.2},
        {**base, "id": "2", "p_a": None, "discarded": True, "reason": "identical responses"},
        {**base, "id": "3", "p_a": 0.5},  # a tie: no preference
        {**base, "id": "4", "p_a": 1.0, "source": "human"},
        {"prompt": "Q2", "chosen": "yes", "rejected": "no"},  # plain strings, no p_chosen
    ]
    path = tmp_path / "labels.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    got = load_dpo_rows(path)
    assert [
        (r["chosen"][0]["content"], r["rejected"][0]["content"], r["p_chosen"]) for r in got
    ] == [
        ("B!", "A!", 0.8),
        ("A!", "B!", 1.0),
        ("yes", "no", 1.0),
    ]
    assert got[2]["prompt"] == [{"role": "user", "content": "Q2"}]
    assert set(got[0]) == {"prompt", "chosen", "rejected", "p_chosen"}


GOOD = json.dumps(pref_row(*PAIRS[0], 0.9))


@pytest.mark.parametrize(
    "content, line, message",
    [
        (
            GOOD + "\n" + json.dumps(pref_row(*PAIRS[1], 1.5)),
            2,
            "p_chosen must be a number in [0, 1]",
        ),
        (json.dumps(pref_row(*PAIRS[1], -0.1)), 1, "p_chosen must be a number in [0, 1]"),
        (json.dumps(pref_row(*PAIRS[1], "0.7")), 1, "p_chosen must be"),
        (json.dumps(pref_row(*PAIRS[1], True)), 1, "p_chosen must be"),
        (
            GOOD + "\n\n" + json.dumps({"prompt": "q", "response_a": "a", "p_a": 2}),
            3,
            "p_a must be",
        ),
        (json.dumps({"prompt": "q", "chosen": "a"}), 1, "'rejected': missing"),
        (
            json.dumps({**pref_row(*PAIRS[0]), "chosen": [{"role": "bot", "content": "x"}]}),
            1,
            "'chosen'",
        ),
        ("", None, "empty"),
    ],
)
def test_bad_data_names_file_and_line(tmp_path, content, line, message):
    data = tmp_path / "bad.jsonl"
    data.write_text(content + "\n")
    with pytest.raises(UserError) as e:
        train_dpo(data, "unused-policy", tmp_path / "out")
    where = f"{data}:{line}: " if line else f"{data}: "
    assert str(e.value).startswith(where) and message in str(e.value)
    assert not (tmp_path / "out").exists()


def test_refuses_to_overwrite(tmp_path):
    data = write_prefs(tmp_path / "prefs.jsonl")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("precious")
    with pytest.raises(UserError, match="--overwrite"):
        train_dpo(data, "unused-policy", tmp_path / "out")
    assert (tmp_path / "out" / "keep.txt").read_text() == "precious"


def test_cli_command(tmp_path):
    import typer
    from typer.testing import CliRunner

    from constitutional.cli.rl_cai_dpo import dpo

    app = typer.Typer()
    app.command()(dpo)
    runner = CliRunner()
    help_text = runner.invoke(app, ["--help"]).output
    assert all(opt in help_text for opt in ("--policy", "--reference", "--beta", "--full", "--lr"))
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(pref_row(*PAIRS[0], 2)) + "\n")
    result = runner.invoke(app, ["--data", str(bad), "--out", str(tmp_path / "o")])
    assert isinstance(result.exception, UserError) and f"{bad}:1:" in str(result.exception)
