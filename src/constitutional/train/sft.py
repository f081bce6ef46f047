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

import shutil
import time
from pathlib import Path
from typing import Any

from constitutional.atomic_dir import refuse_existing
from constitutional.errors import UserError
from constitutional.jsonl import iter_jsonl
from constitutional.train.checkpoint import (
    base_reference,
    data_record,
    save_model_dir,
    staged_checkpoint,
    write_checkpoint_record,
    write_train_log,
)
from constitutional.train.common import (
    LORA_DROPOUT,
    base_model_path,
    logged_steps,
    messages_problem,
    require_train_extra,
    trainer_args,
)

LOG_KEYS = ("step", "loss", "learning_rate", "epoch")


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
    refuse_existing(out, overwrite)
    if learning_rate is None:  # LoRA's few fresh weights want a far larger step than full FT
        learning_rate = 2e-4 if lora else 1e-5
    hparams = {
        "lora": lora,
        "lora_r": lora_r,
        "lora_alpha": lora_alpha,
        "lora_dropout": LORA_DROPOUT,
        "epochs": epochs,
        "max_steps": max_steps,
        "learning_rate": learning_rate,
        "batch_size": batch_size,
        "gradient_accumulation_steps": gradient_accumulation_steps,
        "max_length": max_length,
        "seed": seed,
        "loss": "completion_only",
        "bf16": bf16,
        "activation_checkpointing": activation_checkpointing,
    }
    # 2. The base model, exactly as LocalBackend would load it; 3. train in a staging dir.
    model, tokenizer, cuda = load_sft_base(base, seed, lora)
    return _train_and_save(
        model, tokenizer, rows, (base, data, out), overwrite, hparams, cuda, started
    )


def _train_and_save(
    model,
    tokenizer,
    rows: list,
    paths: tuple,
    overwrite: bool,
    hparams: dict,
    cuda: bool,
    started: float,
) -> dict[str, Any]:
    """Train in a staging directory, save the model with its loss curve and provenance, and
    move it to `out`. Returns train_sft's summary."""
    base, data, out = paths
    with staged_checkpoint(out, overwrite) as tmp:
        trainer = sft_trainer(model, tokenizer, rows, tmp, hparams, cuda)
        trainer.train()
        if not trainer.accelerator.is_main_process:  # `accelerate launch`: rank 0 writes `out`
            shutil.rmtree(tmp, ignore_errors=True)
            return _summary(trainer, out, started, None)
        # 4. Save: with LoRA trainer.model is a PeftModel, which writes the adapter only.
        save_model_dir(trainer.model, tokenizer, tmp, base, adapter=hparams["lora"])
        # 5. The loss curve and provenance; leaving the block moves the checkpoint into place.
        log = logged_steps(trainer, LOG_KEYS)
        summary = _summary(trainer, out, started, log[-1]["loss"] if log else None)
        write_train_log(tmp, log, loss="loss")
        write_checkpoint_record(
            tmp,
            {"stage": "sl-cai-sft", "base": base_reference(base)},
            data=data_record(data, rows=len(rows)),
            hyperparameters=hparams,
            seed=hparams["seed"],
            device="cuda" if cuda else "cpu",
            summary=summary,
        )
    return summary


def _summary(trainer, out: Path, started: float, final_loss: float | None) -> dict[str, Any]:
    return {
        "steps": trainer.state.global_step,
        "final_loss": final_loss,
        "wall_seconds": round(time.monotonic() - started, 3),
        "out": str(out),
    }


def load_sft_base(base: str, seed: int, lora: bool):
    """(model, tokenizer, cuda): the base as a causal LM in the dtype SFT trains it in, seeded."""
    require_train_extra("torch", "datasets", "peft", "transformers", "trl")  # not needed elsewhere
    import torch
    from datasets import disable_progress_bars
    from transformers import AutoModelForCausalLM, AutoTokenizer, set_seed
    from transformers.utils import logging as hf_logging

    base_path = base_model_path(base)
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
    return model, tokenizer, cuda


def sft_trainer(
    model, tokenizer, rows: list[dict[str, Any]], tmp: Path, hp: dict[str, Any], cuda: bool
):
    """TRL's SFTTrainer for `rows`, completion-only, with a fresh LoRA adapter when hp["lora"]."""
    from datasets import Dataset
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    config = SFTConfig(
        **trainer_args(
            tmp,
            hp["seed"],
            cuda,
            bf16=hp["bf16"],
            activation_checkpointing=hp["activation_checkpointing"],
        ),
        num_train_epochs=hp["epochs"],
        max_steps=hp["max_steps"],
        learning_rate=hp["learning_rate"],
        per_device_train_batch_size=hp["batch_size"],
        gradient_accumulation_steps=hp["gradient_accumulation_steps"],
        max_length=hp["max_length"],
        completion_only_loss=True,  # learn the revision, not the red-team prompt
    )
    peft_config = None
    if hp["lora"]:
        peft_config = LoraConfig(
            r=hp["lora_r"],
            lora_alpha=hp["lora_alpha"],
            lora_dropout=LORA_DROPOUT,
            target_modules="all-linear",
            task_type="CAUSAL_LM",
        )
    return SFTTrainer(
        model=model,
        args=config,
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
        peft_config=peft_config,
    )


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
