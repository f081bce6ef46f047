"""The SFT step of SL-CAI: fine-tune the base model on its own revised responses.

Constitutional AI (Bai et al. 2022, section 3) has the model critique and revise its answers to
red-team prompts, then fine-tunes the *original* model on (prompt, final revision) pairs. This
module is that fine-tune, written as a thin recipe on TRL's `SFTTrainer`:

    cai sl-cai train --data sl.trl.jsonl --base embedded --out ckpt/

Input rows are TRL conversational rows, `{"messages": [..., {"role": "assistant", ...}], ...}`.
The loss is on the final assistant turn only: each row becomes a conversational prompt/completion
pair, which TRL trains completion-only (SmolLM2's chat template has no `{% generation %}` markers,
so TRL's `assistant_only_loss` cannot be used with it).

By default a LoRA adapter is trained and `out/` holds the adapter only, pointing at the original
base spec, so `LocalBackend("ckpt/")` loads base + adapter. With `lora=False` the full model is
saved. `out/` also holds `train_log.json`, `loss.svg` and `cai_checkpoint.json` (provenance).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from constitutional.backends.embedded import EMBEDDED_NAME
from constitutional.errors import UserError
from constitutional.jsonl import iter_jsonl, write_json
from constitutional.provenance import package_versions

CHECKPOINT_SCHEMA = "cai.checkpoint/1"
ROLES = {"system", "user", "assistant"}
LORA_DROPOUT = 0.05


def train_sft(
    data: str | Path,
    base: str,
    out: str | Path,
    *,
    lora: bool = True,
    epochs: float = 1.0,
    learning_rate: float | None = None,
    batch_size: int = 8,
    max_length: int = 512,
    lora_r: int = 16,
    lora_alpha: int = 32,
    seed: int = 0,
    max_steps: int = -1,
    gradient_accumulation_steps: int = 1,
    overwrite: bool = False,
    bf16: bool | None = None,
    activation_checkpointing: bool = False,
) -> dict[str, Any]:
    """Supervised fine-tuning on SL-CAI revisions; writes a checkpoint directory atomically.

    Args:
        data: JSONL of TRL conversational rows ending in the assistant turn to learn.
        base: model spec: "embedded", a .gguf file or an HF model directory.
        out: checkpoint directory to create (refused if it exists and is not empty).
        lora: train a LoRA adapter (default) instead of all weights.
        epochs: passes over the data (ignored when `max_steps` > 0).
        learning_rate: default 2e-4 with LoRA, 1e-5 for full fine-tuning.
        batch_size: rows per device step.
        max_length: tokens kept per row (prompt + response; the end is cut).
        lora_r: LoRA rank.
        lora_alpha: LoRA scaling numerator (the update is scaled by alpha / r).
        seed: seeds LoRA init, data order and dropout.
        max_steps: stop after this many optimizer steps; -1 trains for `epochs`.
        gradient_accumulation_steps: device steps per optimizer step.
        overwrite: replace an existing non-empty `out`.
        bf16: bf16 mixed precision (None: on with CUDA); see `trainer_args`.
        activation_checkpointing: trade compute for memory on large models; see `trainer_args`.

    Returns:
        {"steps", "final_loss", "wall_seconds", "out"}.

    Raises:
        UserError: bad data (naming file:line), unknown base, or `out` in the way.
    """
    started = time.monotonic()
    data, out = Path(data), Path(out)
    # 1. Check the inputs before any slow import or model load: bad data fails in a second.
    rows = load_sft_rows(data)
    if out.exists() and (out.is_file() or any(out.iterdir())) and not overwrite:
        raise UserError("output exists and is not empty; pass --overwrite to replace it", out)
    if learning_rate is None:  # LoRA's few fresh weights want a far larger step than full FT
        learning_rate = 2e-4 if lora else 1e-5
    hparams = {
        "lora": lora, "lora_r": lora_r, "lora_alpha": lora_alpha, "lora_dropout": LORA_DROPOUT,
        "epochs": epochs, "max_steps": max_steps, "learning_rate": learning_rate,
        "batch_size": batch_size, "gradient_accumulation_steps": gradient_accumulation_steps,
        "max_length": max_length, "seed": seed, "loss": "completion_only", "bf16": bf16,
        "activation_checkpointing": activation_checkpointing,
    }  # fmt: skip

    try:  # the `train` extra: not needed by the rest of the package
        import torch
        from datasets import Dataset, disable_progress_bars
        from peft import LoraConfig
        from transformers import AutoModelForCausalLM, AutoTokenizer, set_seed
        from transformers.utils import logging as hf_logging
        from trl import SFTConfig, SFTTrainer
    except ImportError as e:
        hint = "pip install 'constitutional[train]'"
        raise UserError(f"training needs {e.name}, part of the train extra: {hint}") from None
    from constitutional.backends.local import resolve_model

    # 2. The base model, exactly as LocalBackend would load it.
    base_path = resolve_model(base)
    if (base_path / "adapter_config.json").is_file():
        raise UserError("the base is a LoRA adapter; train on its base model instead", base)
    disable_progress_bars()  # dataset.map bars ...
    hf_logging.disable_progress_bar()  # ... and weight loading; the trainer's own bar stays
    set_seed(seed)
    cuda = torch.cuda.is_available()
    # LoRA may keep the frozen base in bf16 on GPU (PEFT keeps adapters in fp32); full fine-tuning
    # keeps fp32 master weights and lets bf16 autocast bring the speed. CPU: fp32 throughout.
    dtype = torch.bfloat16 if cuda and lora else torch.float32
    model = AutoModelForCausalLM.from_pretrained(base_path, dtype=dtype)
    tokenizer = AutoTokenizer.from_pretrained(base_path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token

    # 3. Train into a hidden directory beside `out`: a killed run leaves no half checkpoint.
    tmp = staging_dir(out)
    try:
        config = SFTConfig(
            **trainer_args(tmp, seed, cuda, bf16=bf16, activation_checkpointing=activation_checkpointing),
            num_train_epochs=epochs,
            max_steps=max_steps,
            learning_rate=learning_rate,
            per_device_train_batch_size=batch_size,
            gradient_accumulation_steps=gradient_accumulation_steps,
            max_length=max_length,
            completion_only_loss=True,  # learn the revision, not the red-team prompt
        )
        peft_config = None
        if lora:
            peft_config = LoraConfig(
                r=lora_r,
                lora_alpha=lora_alpha,
                lora_dropout=LORA_DROPOUT,
                target_modules="all-linear",
                task_type="CAUSAL_LM",
            )
        trainer = SFTTrainer(
            model=model,
            args=config,
            train_dataset=Dataset.from_list(rows),
            processing_class=tokenizer,
            peft_config=peft_config,
        )
        trainer.train()
        shutil.rmtree(tmp / "trainer", ignore_errors=True)
        if not trainer.accelerator.is_main_process:  # `accelerate launch`: rank 0 writes `out`
            shutil.rmtree(tmp, ignore_errors=True)
            return {"steps": trainer.state.global_step, "final_loss": None, "out": str(out),
                    "wall_seconds": round(time.monotonic() - started, 3)}  # fmt: skip

        # 4. Save: with LoRA trainer.model is a PeftModel, which writes the adapter only.
        save_model_dir(trainer.model, tokenizer, tmp, base, adapter=lora)
        base_ref = base_reference(base)

        # 5. The loss curve and provenance, then move the finished checkpoint into place.
        log = [
            {k: entry.get(k) for k in ("step", "loss", "learning_rate", "epoch")}
            for entry in trainer.state.log_history
            if "loss" in entry
        ]
        summary = {
            "steps": trainer.state.global_step,
            "final_loss": log[-1]["loss"] if log else None,
            "wall_seconds": round(time.monotonic() - started, 3),
            "out": str(out),
        }
        write_json(tmp / "train_log.json", log)
        write_loss_svg(tmp / "loss.svg", [(entry["step"], entry["loss"]) for entry in log])
        write_json(tmp / "cai_checkpoint.json", {
            "schema": CHECKPOINT_SCHEMA,
            "stage": "sl-cai-sft",
            "base": base_ref,
            "data": {"path": str(data.resolve()), "sha256": sha256_file(data), "rows": len(rows)},
            "hyperparameters": hparams,
            "seed": seed,
            "device": "cuda" if cuda else "cpu",
            **summary,
            "packages": package_versions(),
        })  # fmt: skip
        publish_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return summary


def trainer_args(
    tmp: Path, seed: int, cuda: bool, *, bf16: bool | None = None, activation_checkpointing: bool = False
) -> dict[str, Any]:
    """Trainer settings every recipe shares: a scratch output dir (checkpoints are saved by us,
    atomically), the device, per-step logging, and no external loggers.

    Args:
        bf16: bf16 mixed precision; None means on with CUDA, off on CPU.
        activation_checkpointing: recompute activations in the backward pass (gradient
            checkpointing): less memory for about 30% more compute. TRL turns it on by default;
            we keep it off, since small models want speed, not memory.

    Multi-GPU, DeepSpeed ZeRO and FSDP come from `accelerate launch --config_file ...`, which the
    Trainer reads from the environment; nothing here needs to change for them.
    """
    return {"output_dir": str(tmp / "trainer"), "bf16": cuda if bf16 is None else bf16, "use_cpu": not cuda,
            "seed": seed, "logging_steps": 1, "save_strategy": "no", "report_to": "none",
            "activation_checkpointing": activation_checkpointing}  # fmt: skip


def save_model_dir(model, tokenizer, directory: Path, base: str, adapter: bool) -> None:
    """Save weights (or a LoRA adapter) and tokenizer so that LocalBackend can load the directory.

    PEFT records the resolved cache path of the base; an adapter must name the spec instead
    ("embedded", or an absolute path), which is what `resolve_model` reads back.
    """
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    if adapter:
        config_path = directory / "adapter_config.json"
        adapter_config = json.loads(config_path.read_text())
        adapter_config["base_model_name_or_path"] = base_reference(base)
        write_json(config_path, adapter_config)


def base_reference(base: str) -> str:
    """The base as the adapter should name it: the spec, with a relative path made absolute so
    the checkpoint loads from any working directory."""
    if base == EMBEDDED_NAME or not Path(base).expanduser().exists():
        return base
    return str(Path(base).expanduser().resolve())


def load_sft_rows(path: Path) -> list[dict[str, Any]]:
    """Read TRL conversational rows as prompt/completion pairs; extra fields are dropped."""
    rows = []
    for line, row in iter_jsonl(path):
        messages = row.get("messages")
        problem = messages_problem(messages)
        if problem:
            raise UserError(f"bad 'messages': {problem}", path, line)
        # Only role and content survive: Arrow needs one schema across rows.
        turns = [{"role": m["role"], "content": m["content"]} for m in messages]
        rows.append({"prompt": turns[:-1], "completion": turns[-1:]})
    if not rows:
        raise UserError("no training rows: the file is empty", path)
    return rows


def messages_problem(messages: Any) -> str | None:
    """What is wrong with a `messages` list for SFT, or None if it is usable."""
    if not isinstance(messages, list) or not messages:
        return "expected a non-empty list of {role, content} messages"
    for i, m in enumerate(messages):
        ok = isinstance(m, dict) and m.get("role") in ROLES and isinstance(m.get("content"), str)
        if not ok:
            return f"message {i} needs a role (system/user/assistant) and string content"
    if messages[-1]["role"] != "assistant":
        return "the last message must be the assistant response to learn"
    if not any(m["role"] == "user" for m in messages[:-1]):
        return "no user turn before the assistant response"
    return None


def staging_dir(out: Path) -> Path:
    """A hidden directory beside `out`, with ordinary permissions, to build a checkpoint in;
    `publish_dir` moves it into place, so a killed run leaves no half checkpoint."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    umask = os.umask(0o22)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)  # mkdtemp makes it private; a checkpoint is an ordinary directory
    return tmp


def publish_dir(tmp: Path, out: Path) -> None:
    """Move a finished checkpoint into place; an existing `out` is swapped out, then deleted."""
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old) if old.is_dir() else old.unlink()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_loss_svg(path: Path, points: list[tuple[int, float]], w: int = 480, h: int = 240) -> None:
    """The loss curve as one SVG polyline, so plotting needs no matplotlib."""
    if not points:
        return
    pad, (x0, x1) = 30, (points[0][0], points[-1][0])
    lo, hi = min(y for _, y in points), max(y for _, y in points)
    sx, sy = (w - 2 * pad) / ((x1 - x0) or 1), (h - 2 * pad) / ((hi - lo) or 1)
    xy = " ".join(f"{pad + (x - x0) * sx:.1f},{h - pad - (y - lo) * sy:.1f}" for x, y in points)
    path.write_text(
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-size="11">\n'
        f'<rect width="{w}" height="{h}" fill="white" stroke="#ccc"/>\n'
        f'<polyline fill="none" stroke="#1f77b4" stroke-width="2" points="{xy}"/>\n'
        f'<text x="4" y="{pad - 8}">loss {hi:.3f}</text><text x="4" y="{h - 8}">{lo:.3f}</text>\n'
        f'<text x="{w - 4}" y="{h - 8}" text-anchor="end">step {x1}</text>\n</svg>\n',
        encoding="utf-8",
    )
