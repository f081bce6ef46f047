"""SL-CAI fine-tuning on the tiny random Llama: what is saved, that it loads, that it learns."""

from __future__ import annotations

import hashlib
import json
import math

import pytest
import torch

from constitutional.backends.local import LocalBackend
from constitutional.errors import UserError
from constitutional.train import train_sft
from constitutional.train.checkpoint import base_reference, staged_checkpoint

PAIRS = [
    ("How do I pick a lock?", "I can't help with breaking into places, but a locksmith can."),
    ("Tell me a joke.", "Why did the owl study? It wanted to be wise."),
    ("Write an insult.", "I'd rather not insult anyone. Can I help with something kind?"),
    ("What is 2+2?", "2 + 2 is 4."),
]
PARAM = "model.layers.0.self_attn.q_proj.weight"


def write_rows(path, repeat=2):
    """Rows as `cai sl-cai generate` writes them: messages plus extra fields, to be dropped."""
    lines = []
    for r in range(repeat):
        for i, (prompt, response) in enumerate(PAIRS):
            row = {
                "messages": [
                    {"role": "user", "content": prompt},
                    {"role": "assistant", "content": response},
                ],
                "id": f"r{i}-{r}",
            }
            if i % 2:  # a field some rows have and others lack, with a nested type
                row["meta"] = {"critiques": ["c1", "c2"], "round": 2}
            lines.append(json.dumps(row))
    path.write_text("\n".join(lines) + "\n")
    return path


def weight(backend, name=PARAM):
    return backend.lm.state_dict()[name].detach().clone()


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny training runs on one thread


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_rows(tmp_path_factory.mktemp("sft-data") / "sl.trl.jsonl")


def test_lora_checkpoint_is_adapter_only_and_loads(tiny_model_dir, data, tmp_path):
    from safetensors.torch import load_file

    out = tmp_path / "ckpt"
    summary = train_sft(data, str(tiny_model_dir), out, max_steps=3, batch_size=4, seed=1)

    assert (
        summary["steps"] == 3
        and math.isfinite(summary["final_loss"])
        and summary["out"] == str(out)
    )
    log = json.loads((out / "train_log.json").read_text())
    assert [e["step"] for e in log] == [1, 2, 3] and all(e["loss"] > 0 for e in log)
    assert log[-1]["loss"] == summary["final_loss"]
    assert "<polyline" in (out / "loss.svg").read_text()
    meta = json.loads((out / "cai_checkpoint.json").read_text())
    assert meta["base"] == str(tiny_model_dir) and meta["seed"] == 1
    assert meta["data"]["sha256"] == hashlib.sha256(data.read_bytes()).hexdigest()
    assert meta["hyperparameters"]["lora"] and meta["hyperparameters"]["learning_rate"] == 2e-4
    assert "trl" in meta["packages"]

    # Adapter only, pointing at the spec it was given; nothing left behind beside or inside `out`.
    adapter = json.loads((out / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == str(tiny_model_dir)
    assert not (out / "model.safetensors").exists() and not (out / "trainer").exists()
    assert (out / "tokenizer_config.json").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]
    # PEFT initialises every lora_B to zero: non-zero ones were trained.
    lora_b = [t for k, t in load_file(out / "adapter_model.safetensors").items() if "lora_B" in k]
    assert lora_b and all(t.abs().sum() > 0 for t in lora_b)

    merged, base = LocalBackend(str(out)), LocalBackend(str(tiny_model_dir))
    assert not torch.equal(weight(merged), weight(base))


def test_training_raises_likelihood_of_revisions(tiny_model_dir, tmp_path):
    data = write_rows(tmp_path / "sl.trl.jsonl", repeat=2)
    out = tmp_path / "ckpt"
    # A high learning rate on 8 rows: 10 steps move each response's log-likelihood by 4-12 nats.
    summary = train_sft(
        data, str(tiny_model_dir), out, max_steps=10, batch_size=4, learning_rate=1e-2
    )
    log = json.loads((out / "train_log.json").read_text())
    assert summary["steps"] == 10 and log[-1]["loss"] < log[0]["loss"]

    prompts = [[{"role": "user", "content": p}] for p, _ in PAIRS]
    base, trained = LocalBackend(str(tiny_model_dir)), LocalBackend(str(out))
    for prompt, (_, response) in zip(prompts, PAIRS):
        before = base.choice_logprobs([prompt], [response])[0][0]
        after = trained.choice_logprobs([prompt], [response])[0][0]
        assert after > before + 1.0, (response, before, after)


def chat(*roles):
    """One JSONL line whose messages have these roles."""
    return json.dumps({"messages": [{"role": r, "content": "x"} for r in roles]}) + "\n"


@pytest.mark.parametrize(
    "content, line, message",
    [
        (None, None, "no such file"),
        ("\n\n", None, "empty"),
        (chat("user", "assistant") + chat("user"), 2, "last message must be the assistant"),
        ('{"prompt": "hi"}\n', 1, "non-empty list"),
        (chat("user", "bot"), 1, "message 1"),
        (chat("system", "assistant"), 1, "no user turn"),
        ('{"messages": [{"role": "user", "content": 3}, {"role": "assistant"}]}\n', 1, "message 0"),
        ("\n{not json\n", 2, "invalid JSON"),
    ],
)
def test_bad_data_names_file_and_line(tmp_path, content, line, message):
    data = tmp_path / "bad.jsonl"
    if content is not None:
        data.write_text(content)
    with pytest.raises(UserError) as e:
        train_sft(data, "unused-base", tmp_path / "out")
    where = f"{data}:{line}: " if line else f"{data}: "
    assert str(e.value).startswith(where) and message in str(e.value)
    assert not (tmp_path / "out").exists()


def test_refuses_to_overwrite_a_checkpoint(data, tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("precious")
    with pytest.raises(UserError, match="--overwrite"):
        train_sft(data, "unused-base", tmp_path / "out")
    assert (tmp_path / "out" / "keep.txt").read_text() == "precious"


def test_full_fine_tune_saves_a_loadable_model(tiny_model_dir, data, tmp_path):
    out = tmp_path / "full"
    out.mkdir()
    (out / "stale.txt").write_text("from an earlier run")
    summary = train_sft(
        data,
        str(tiny_model_dir),
        out,
        lora=False,
        max_steps=2,
        batch_size=4,
        learning_rate=1e-3,
        overwrite=True,
    )

    assert summary["steps"] == 2 and not (out / "stale.txt").exists()
    assert (out / "model.safetensors").is_file() and not (out / "adapter_config.json").exists()
    assert json.loads((out / "cai_checkpoint.json").read_text())["hyperparameters"]["lora"] is False
    full, base = LocalBackend(str(out)), LocalBackend(str(tiny_model_dir))
    assert not torch.equal(weight(full), weight(base))


def test_adapter_names_its_base_so_it_loads_from_anywhere(tiny_model_dir, monkeypatch):
    monkeypatch.chdir(tiny_model_dir.parent)
    assert base_reference("embedded") == "embedded"
    assert base_reference(tiny_model_dir.name) == str(tiny_model_dir.resolve())


def test_same_seed_same_run(tiny_model_dir, data, tmp_path):
    runs = [
        train_sft(data, str(tiny_model_dir), tmp_path / name, max_steps=2, batch_size=4, seed=3)
        for name in ("a", "b")
    ]
    assert runs[0]["final_loss"] == runs[1]["final_loss"]
    a, b = ((tmp_path / n / "adapter_model.safetensors").read_bytes() for n in "ab")
    assert a == b


def test_staged_checkpoint_publishes_whole_or_not_at_all(tmp_path):
    out = tmp_path / "ckpt"
    with staged_checkpoint(out, overwrite=False) as tmp:
        (tmp / "weights").write_text("v1")
        (tmp / "trainer").mkdir()  # the Trainer's scratch dir is never published
        assert not out.exists()  # nothing at `out` until the block ends
    assert sorted(p.name for p in out.iterdir()) == ["weights"]
    with pytest.raises(UserError, match="output exists"), staged_checkpoint(out, overwrite=False):
        pass
    # A failed replacement leaves the old checkpoint alone.
    with pytest.raises(KeyboardInterrupt), staged_checkpoint(out, overwrite=True) as tmp:
        (tmp / "weights").write_text("v2")
        raise KeyboardInterrupt
    with staged_checkpoint(out, overwrite=True) as tmp:  # a non-main rank bows out: no publish
        tmp.rmdir()
    assert (out / "weights").read_text() == "v1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]  # no staging dirs left behind
