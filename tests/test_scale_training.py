"""The training switches for large models reach TRL's trainer: `--gradient-checkpointing`, `--bf16`."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from constitutional.cli.sl_cai import app as sl_cai_app

ROW = {
    "messages": [
        {"role": "user", "content": "Say hi."},
        {"role": "assistant", "content": "Hi there!"},
    ]
}


@pytest.fixture
def checkpointing_calls(monkeypatch) -> list[dict]:
    """Every call the Trainer makes to turn activation checkpointing on, passed through."""
    from transformers import PreTrainedModel

    calls: list[dict] = []
    original = PreTrainedModel.activation_checkpointing_enable

    def spy(self, *args, **kwargs):
        calls.append(kwargs)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(PreTrainedModel, "activation_checkpointing_enable", spy)
    return calls


@pytest.mark.parametrize("flags", [[], ["--gradient-checkpointing", "--no-bf16"]])
def test_sl_cai_train_switches(flags, checkpointing_calls, tiny_model_dir, tmp_path):
    data = tmp_path / "sft.jsonl"
    data.write_text(json.dumps(ROW) + "\n")
    out = tmp_path / "ckpt"
    args = [
        "train",
        "--data",
        data,
        "--base",
        tiny_model_dir,
        "--out",
        out,
        "--max-steps",
        "1",
        "--batch-size",
        "1",
        *flags,
    ]
    result = CliRunner().invoke(sl_cai_app, list(map(str, args)), catch_exceptions=False)
    assert result.exit_code == 0, result.output

    hparams = json.loads((out / "cai_checkpoint.json").read_text())["hyperparameters"]
    on = "--gradient-checkpointing" in flags
    assert hparams["activation_checkpointing"] is on
    assert hparams["bf16"] is (False if on else None)  # None: the device decides (CPU here: off)
    assert bool(checkpointing_calls) is on
