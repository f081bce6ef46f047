"""`cai export` writes a model that behaves as its source does; `--backend vllm` fails cleanly
where vLLM cannot run."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import typer
from helpers import cai
from typer.testing import CliRunner

from constitutional.backends import GenerationRequest
from constitutional.backends.local import LocalBackend
from constitutional.cli.export import register
from constitutional.errors import UserError

PROMPTS = ["The capital of France is", "Once upon a time", "def add(a, b):"]


def export(*args: str):
    app = typer.Typer()
    register(app)
    app.command("noop", hidden=True)(lambda: None)  # two commands keep `export` a subcommand
    return CliRunner().invoke(app, ["export", *map(str, args)])


def behaviour(model: Path) -> tuple[list[str], list[list[float]]]:
    """Greedy continuations and next-token log-probs: what a stage would see of the model."""
    backend = LocalBackend(str(model), batch_size=4)
    texts = [
        c.text
        for c in backend.generate([GenerationRequest(prompt=p, max_tokens=8) for p in PROMPTS])
    ]
    return texts, backend.choice_logprobs(PROMPTS, [" A", " B", " the"])


@pytest.fixture(scope="module")
def lora_checkpoint(tiny_model_dir, tmp_path_factory) -> Path:
    """A LoRA adapter with random (non-zero) weights over the tiny model, saved as sl-cai train does."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(1)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    config = LoraConfig(
        r=4,
        lora_alpha=8,
        target_modules="all-linear",
        init_lora_weights=False,
        task_type="CAUSAL_LM",
    )
    path = tmp_path_factory.mktemp("lora")
    get_peft_model(base, config).save_pretrained(path)
    adapter = json.loads((path / "adapter_config.json").read_text())
    (path / "adapter_config.json").write_text(
        json.dumps({**adapter, "base_model_name_or_path": str(tiny_model_dir)})
    )
    return path


def test_float32_export_behaves_like_its_source(tiny_model_dir, tmp_path):
    out = tmp_path / "plain"
    result = export(tiny_model_dir, "--out", out, "--dtype", "float32")
    assert result.exit_code == 0, result.output
    assert (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file()
    record = json.loads((out / "cai_export.json").read_text())
    assert record["source"] == str(tiny_model_dir) and record["dtype"] == "float32"
    assert behaviour(out) == behaviour(tiny_model_dir)


def test_lora_checkpoint_is_merged_into_its_base(lora_checkpoint, tiny_model_dir, tmp_path):
    out = tmp_path / "merged"
    assert export(lora_checkpoint, "--out", out, "--dtype", "float32").exit_code == 0
    assert not (out / "adapter_config.json").exists()  # a whole model now, loadable by anything
    merged, adapter = behaviour(out), behaviour(lora_checkpoint)
    assert merged[0] == adapter[0]
    # Merging at load and merging before saving round the same sums in different orders.
    assert [x for row in merged[1] for x in row] == pytest.approx(
        [x for row in adapter[1] for x in row], abs=1e-5
    )
    assert merged[1] != behaviour(tiny_model_dir)[1]  # the adapter really is in the weights


def test_bfloat16_export_is_written_as_bfloat16(tiny_model_dir, tmp_path):
    from safetensors import safe_open

    out = tmp_path / "bf16"
    assert export(tiny_model_dir, "--out", out).exit_code == 0
    config = json.loads((out / "config.json").read_text())
    assert config.get("dtype", config.get("torch_dtype")) == "bfloat16"
    assert "quantization_config" not in config
    with safe_open(out / "model.safetensors", "pt") as f:
        assert {str(f.get_tensor(k).dtype) for k in f.keys()} == {"torch.bfloat16"}  # noqa: SIM118


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--dtype", "int8"], "--dtype must be one of bfloat16, float16, float32"),
        (["--out-exists"], "output exists and is not empty"),
    ],
)
def test_bad_export_requests_are_user_errors(args, message, tiny_model_dir, tmp_path):
    out = tmp_path / "out"
    if args == ["--out-exists"]:
        out.mkdir()
        (out / "keep.txt").write_text("mine")
        args = []
    result = export(tiny_model_dir, "--out", out, *args)
    assert isinstance(result.exception, UserError) and message in str(result.exception)
    if out.exists():
        assert [p.name for p in out.iterdir()] == [
            "keep.txt"
        ]  # nothing touched, nothing half-written


def test_missing_model_is_a_user_error(tmp_path):
    result = export(tmp_path / "nope", "--out", tmp_path / "out")
    assert isinstance(result.exception, UserError) and "no such model" in str(result.exception)
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed here")
def test_vllm_backend_without_vllm_exits_2(tiny_model_dir, tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "hi"}\n')
    out = tmp_path / "o.jsonl"
    result = cai(
        "generate",
        "--backend",
        "vllm",
        "--model",
        tiny_model_dir,
        "--prompts",
        prompts,
        "--out",
        out,
        "--no-cache",
    )
    assert result.returncode == 2
    assert result.stderr.startswith("cai: error: the vllm backend needs vLLM and a CUDA GPU")
    assert not out.exists()
