"""The RL step of RL-CAI, done as DPO: train the SL-CAI model on AI-feedback preferences.

Bai et al. 2022 (section 4) train a preference model on the AI labels and run PPO against it.
Direct Preference Optimization (Rafailov et al. 2023) optimises the same KL-regularised objective
straight from the pairs, with the SL-CAI model as the frozen reference:

    cai rl-cai dpo --data labels.dpo.jsonl --policy sl-ckpt/ --out dpo-ckpt/

Soft labels. The feedback model's p(chosen) is a probability, not a certainty. TRL's DPOTrainer
takes one global `label_smoothing` and drops extra columns, so a small subclass keeps the
`p_chosen` column through collation and trains on the soft-label ("conservative") DPO loss

    loss = -(p * log σ(β·h) + (1 - p) * log σ(-β·h)),   h = (π_c - ref_c) - (π_r - ref_r)

the cross-entropy between the label and the Bradley-Terry model the policy implies. It is cDPO
(Mitchell 2023, "A note on DPO with noisy preferences") with a per-pair label smoothing of
1 - p(chosen). At p = 1 it is TRL's sigmoid DPO loss; for p < 1 its minimum sits at a finite
margin, β·h = logit(p), so an uncertain pair is not pushed apart forever, and at p = 0.5 its
gradient vanishes at h = 0 (a tie teaches nothing). The log-probs are TRL's: sums over the
assistant tokens, computed with TRL's fused LM head.

The reference is the policy spec itself unless `reference` names another model. Its log-probs are
computed once, before training (TRL's `precompute_ref_log_probs`): full fine-tuning then holds no
second model, and with LoRA the reference is the policy with the fresh adapter disabled.

Saving. With LoRA on a plain model, `out/` holds the adapter, naming the policy spec as its base
(as `cai sl-cai train` does). When the policy is itself a LoRA checkpoint, or with `lora=False`,
`out/` holds the full model (SL adapter and DPO adapter merged in), since LocalBackend loads one
adapter level only. `out/` also holds `train_log.json` (loss, reward margins and accuracies per
step), `loss.svg` and `cai_checkpoint.json`.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from constitutional.atomic_dir import refuse_existing
from constitutional.errors import UserError
from constitutional.jsonl import iter_jsonl
from constitutional.judge.labels import to_dpo_rows
from constitutional.train.checkpoint import (
    base_reference,
    data_record,
    save_policy,
    staged_checkpoint,
    write_checkpoint_record,
    write_train_log,
)
from constitutional.train.common import (
    LORA_DROPOUT,
    load_policy,
    logged_steps,
    messages_problem,
    require_train_extra,
    trainer_args,
)

LOG_KEYS = (
    "step",
    "loss",
    "rewards/margins",
    "rewards/accuracies",
    "rewards/chosen",
    "rewards/rejected",
    "grad_norm",
    "learning_rate",
    "epoch",
)


def train_dpo(
    data: str | Path,
    policy: str,
    out: str | Path,
    *,
    reference: str | None = None,
    beta: float = 0.1,
    lora: bool = True,
    epochs: float = 1.0,
    learning_rate: float | None = None,
    batch_size: int = 4,
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
    """Soft-label DPO on preference pairs; writes a checkpoint directory atomically.

    Args:
        data: JSONL of TRL preference rows (`prompt`, `chosen`, `rejected`, optional `p_chosen`,
            default 1.0), as `cai rl-cai label` writes to OUT.dpo.jsonl; or that command's label
            file itself (`response_a`, `response_b`, `p_a`), converted the same way.
        policy: the model to train, usually the SL-CAI checkpoint: "embedded", a .gguf file, an
            HF model directory or a LoRA adapter directory.
        out: checkpoint directory to create (refused if it exists and is not empty).
        reference: the frozen reference model; default: `policy` as given (the SL-CAI model).
        beta: KL strength β; larger keeps the policy closer to the reference.
        lora: train a fresh LoRA adapter (default) instead of all weights.
        epochs: passes over the data (ignored when `max_steps` > 0).
        learning_rate: default 5e-5 with LoRA, 5e-6 for full fine-tuning (TRL's DPO default is
            1e-6 for full; small models and few pairs want a little more).
        batch_size: pairs per device step.
        max_length: tokens kept per prompt + response (the end is cut).
        lora_r / lora_alpha: LoRA rank and scaling numerator.
        seed: seeds LoRA init and data order.
        max_steps: stop after this many optimizer steps; -1 trains for `epochs`.
        gradient_accumulation_steps: device steps per optimizer step.
        overwrite: replace an existing non-empty `out`.
        bf16 / activation_checkpointing: mixed precision and memory switches (`trainer_args`).

    Returns:
        {"steps", "final_loss", "reward_margin", "reward_accuracy", "wall_seconds", "out"}:
        the last two reward numbers are from the last logged step.

    Raises:
        UserError: bad data (naming file:line), unknown model, or `out` in the way.
    """
    started = time.monotonic()
    data, out = Path(data), Path(out)
    rows = load_dpo_rows(data)  # bad data fails before any slow import or model load
    refuse_existing(out, overwrite)
    if not beta > 0:
        raise UserError(f"--beta must be > 0, got {beta}")
    if learning_rate is None:
        learning_rate = 5e-5 if lora else 5e-6
    reference = reference or policy
    hparams = {
        "beta": beta,
        "loss": "soft_sigmoid (cDPO, per-pair smoothing 1 - p_chosen)",
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
    }
    models, cuda = load_dpo_models(policy, reference, seed, lora)
    switches = {"bf16": bf16, "activation_checkpointing": activation_checkpointing}
    paths = (data, out, policy, reference)
    return _train_and_save(models, rows, paths, overwrite, hparams, cuda, switches, started)


def _train_and_save(
    models: dict,
    rows: list,
    paths: tuple,
    overwrite: bool,
    hparams: dict,
    cuda: bool,
    switches: dict,
    started: float,
) -> dict[str, Any]:
    """Train in a staging directory, save the policy with its loss curve and provenance, and
    move it to `out`. Returns train_dpo's summary."""
    data, out, policy, reference = paths
    lora = hparams["lora"]
    with staged_checkpoint(out, overwrite) as tmp:
        trainer = dpo_trainer(models, rows, tmp, hparams, cuda, switches)
        trainer.train()
        saved_adapter = save_policy(
            trainer.model,
            models["tokenizer"],
            tmp,
            policy,
            lora=lora,
            policy_is_adapter=models["policy_is_adapter"],
        )
        log = logged_steps(trainer, LOG_KEYS)
        summary = dpo_summary(trainer, log, started, out)
        write_train_log(tmp, log, loss="loss")
        write_dpo_record(
            tmp, data, rows, (policy, reference, saved_adapter), hparams, cuda, summary
        )
    return summary


def dpo_summary(trainer, log: list[dict[str, Any]], started: float, out: Path) -> dict[str, Any]:
    """What `train_dpo` returns; the reward numbers are the last logged step's."""
    last = log[-1] if log else {}
    return {
        "steps": trainer.state.global_step,
        "final_loss": last.get("loss"),
        "reward_margin": last.get("rewards/margins"),
        "reward_accuracy": last.get("rewards/accuracies"),
        "wall_seconds": round(time.monotonic() - started, 3),
        "out": str(out),
    }


def write_dpo_record(
    tmp: Path,
    data: Path,
    rows: list[dict],
    models: tuple[str, str, bool],
    hparams: dict[str, Any],
    cuda: bool,
    summary: dict[str, Any],
) -> None:
    """`cai_checkpoint.json` of a DPO run; `models` is (policy, reference, saved_adapter)."""
    policy, reference, saved_adapter = models
    fields = {
        "stage": "rl-cai-dpo",
        "kind": "dpo",
        "policy": base_reference(policy),
        "reference": base_reference(reference),
        "base": base_reference(policy) if saved_adapter else None,
        "beta": hparams["beta"],
    }
    soft = sum(r["p_chosen"] < 1 for r in rows)
    write_checkpoint_record(
        tmp,
        fields,
        data=data_record(data, rows=len(rows), soft_rows=soft),
        hyperparameters=hparams,
        seed=hparams["seed"],
        device="cuda" if cuda else "cpu",
        summary=summary,
    )


def load_dpo_models(
    policy: str, reference: str, seed: int, lora: bool
) -> tuple[dict[str, Any], bool]:
    """({"model", "ref_model", "tokenizer", "policy_is_adapter"}, cuda). The reference is None
    when it is the policy itself: TRL then uses the policy before training (adapter disabled)."""
    require_train_extra("torch", "datasets", "peft", "transformers", "trl")
    import torch
    from datasets import disable_progress_bars
    from transformers import set_seed
    from transformers.utils import logging as hf_logging

    disable_progress_bars()
    hf_logging.disable_progress_bar()
    set_seed(seed)
    cuda = torch.cuda.is_available()
    dtype = torch.bfloat16 if cuda and lora else torch.float32  # as in sft.py
    model, tokenizer, policy_is_adapter = load_policy(policy)
    model = model.to(dtype).requires_grad_(
        not lora
    )  # PEFT leaves a merged adapter's weights frozen
    ref_model = None
    if base_reference(reference) != base_reference(policy):
        ref_model, ref_tokenizer, _ = load_policy(reference)
        ref_model = ref_model.to(dtype)
        if ref_tokenizer.get_vocab() != tokenizer.get_vocab():
            raise UserError("the reference model's tokenizer differs from the policy's", reference)
    models = {
        "model": model,
        "ref_model": ref_model,
        "tokenizer": tokenizer,
        "policy_is_adapter": policy_is_adapter,
    }
    return models, cuda


def dpo_trainer(
    models: dict[str, Any],
    rows: list[dict],
    tmp: Path,
    hp: dict[str, Any],
    cuda: bool,
    switches: dict[str, Any],
):
    """SoftDPOTrainer on `rows`, reference log-probs already computed (the reference is dropped)."""
    from datasets import Dataset
    from peft import LoraConfig
    from trl import DPOConfig

    config = DPOConfig(
        **trainer_args(tmp, hp["seed"], cuda, **switches),
        beta=hp["beta"],
        loss_type=["sigmoid"],  # the p = 1 case; SoftDPOTrainer replaces the loss itself
        precompute_ref_log_probs=True,
        num_train_epochs=hp["epochs"],
        max_steps=hp["max_steps"],
        learning_rate=hp["learning_rate"],
        per_device_train_batch_size=hp["batch_size"],
        gradient_accumulation_steps=hp["gradient_accumulation_steps"],
        max_length=hp["max_length"],
        remove_unused_columns=True,  # SoftDPOTrainer lists p_chosen among the columns kept
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
    trainer = soft_dpo_trainer_class()(
        model=models["model"],
        ref_model=models.pop("ref_model"),
        args=config,
        train_dataset=Dataset.from_list(rows),
        processing_class=models["tokenizer"],
        peft_config=peft_config,
    )
    trainer.ref_model = None  # its log-probs are in the dataset now
    return trainer


def soft_dpo_loss(h, p_chosen, beta: float):
    """Per-pair soft-label DPO loss, -(p·log σ(β·h) + (1-p)·log σ(-β·h)); see the module doc."""
    import torch.nn.functional as F

    p = p_chosen.to(h.dtype)
    return -(p * F.logsigmoid(beta * h) + (1 - p) * F.logsigmoid(-beta * h))


_TRAINER_CLASS = None


def soft_dpo_trainer_class():
    """`SoftDPOTrainer`: TRL's DPOTrainer with `p_chosen` kept per pair and the soft loss.

    Built on first use so that importing this module does not import trl.
    """
    global _TRAINER_CLASS
    if _TRAINER_CLASS is not None:
        return _TRAINER_CLASS
    import torch
    from trl import DPOTrainer
    from trl.trainer.dpo_trainer import DataCollatorForPreference

    class SoftPreferenceCollator(DataCollatorForPreference):
        """TRL's preference collator, plus a `p_chosen` tensor (1.0 where a row has none)."""

        def torch_call(self, examples):
            batch = super().torch_call(examples)
            batch["p_chosen"] = torch.tensor([float(e.get("p_chosen", 1.0)) for e in examples])
            return batch

    class SoftDPOTrainer(DPOTrainer):
        """DPO with per-pair soft labels. Needs `precompute_ref_log_probs=True`: the reference
        log-probs come with each batch. TRL's loss_type, ld_alpha, f-divergence and WPO options
        are not used."""

        def __init__(self, *args, **kwargs):
            tokenizer = kwargs["processing_class"]
            config = kwargs["args"]
            if not config.precompute_ref_log_probs:
                raise ValueError("SoftDPOTrainer needs precompute_ref_log_probs=True")
            if tokenizer.pad_token is None:
                tokenizer.pad_token = tokenizer.eos_token
            kwargs.setdefault(
                "data_collator",
                SoftPreferenceCollator(
                    pad_token_id=tokenizer.pad_token_id,
                    max_length=config.max_length,
                    truncation_mode=config.truncation_mode,
                    pad_to_multiple_of=config.pad_to_multiple_of,
                ),
            )
            super().__init__(*args, **kwargs)

        def compute_ref_log_probs(self, model, inputs):
            inputs = {k: v for k, v in inputs.items() if k != "p_chosen"}  # not a model input
            return super().compute_ref_log_probs(model, inputs)

        def _set_signature_columns_if_needed(self):
            super()._set_signature_columns_if_needed()
            if "p_chosen" not in self._signature_columns:
                self._signature_columns = [*self._signature_columns, "p_chosen"]

        def _compute_loss(self, model, inputs, return_outputs):
            if return_outputs:
                raise NotImplementedError("SoftDPOTrainer returns the loss only")
            mode = "train" if self.model.training else "eval"
            mask = inputs["completion_mask"]
            labels = inputs["input_ids"].masked_fill(mask == 0, -100)
            outputs = model(
                input_ids=inputs["input_ids"],
                attention_mask=inputs["attention_mask"],
                labels=labels,
                use_cache=False,
                fused_lm_head=True,
            )
            # As in TRL: log-prob of each sequence's completion tokens (others are 0).
            logps = outputs.log_probs[:, -(mask.size(1) - 1) :].sum(dim=1)
            chosen_logps, rejected_logps = logps.chunk(2, dim=0)
            chosen_logratios = chosen_logps - inputs["ref_chosen_logps"].to(logps.dtype)
            rejected_logratios = rejected_logps - inputs["ref_rejected_logps"].to(logps.dtype)
            h = chosen_logratios - rejected_logratios
            loss = soft_dpo_loss(h, inputs["p_chosen"], self.beta).mean()

            logratios = (chosen_logratios.detach(), rejected_logratios.detach())
            _log_reward_metrics(self, mode, logratios, (chosen_logps, rejected_logps))
            return loss

    _TRAINER_CLASS = SoftDPOTrainer
    return SoftDPOTrainer


def _log_reward_metrics(trainer, mode: str, logratios: tuple, logps: tuple) -> None:
    """Record a batch's implicit rewards and log-probs under TRL's metric names, so logs read
    the same as stock DPO runs."""
    chosen_rewards, rejected_rewards = (trainer.beta * r for r in logratios)
    chosen_logps, rejected_logps = logps
    gather, m = trainer.accelerator.gather_for_metrics, trainer._metrics[mode]
    m["rewards/chosen"].append(gather(chosen_rewards).mean().item())
    m["rewards/rejected"].append(gather(rejected_rewards).mean().item())
    m["rewards/margins"].append(gather(chosen_rewards - rejected_rewards).mean().item())
    accuracy = (chosen_rewards > rejected_rewards).float()
    m["rewards/accuracies"].append(gather(accuracy).mean().item())
    m["logps/chosen"].append(gather(chosen_logps.detach()).mean().item())
    m["logps/rejected"].append(gather(rejected_logps.detach()).mean().item())


def load_dpo_rows(path: Path) -> list[dict[str, Any]]:
    """Read preference rows as conversational prompt/chosen/rejected + p_chosen.

    Strings are wrapped as one user / assistant message. Rows of a `cai rl-cai label` file are
    converted with `to_dpo_rows`: discarded rows and ties (p_a = 0.5) carry no preference and are
    skipped. Only role and content survive: Arrow needs one schema across rows.
    """
    rows = []
    for line, row in iter_jsonl(path):
        if "response_a" in row:  # a label row from `cai rl-cai label`
            row = label_row(row, path, line)
            if row is None:
                continue
            converted = to_dpo_rows([row])
            if not converted:
                continue
            row = converted[0]
        p = row.get("p_chosen", 1.0)
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p <= 1:
            raise UserError(f"p_chosen must be a number in [0, 1], got {p!r}", path, line)
        prompt = as_messages(row.get("prompt"), "user")
        pair = {}
        for key in ("chosen", "rejected"):
            turns = as_messages(row.get(key), "assistant")
            problem = messages_problem(prompt + turns) if prompt and turns else "missing or empty"
            if problem:
                raise UserError(f"bad prompt + '{key}': {problem}", path, line)
            pair[key] = turns
        rows.append({"prompt": prompt, **pair, "p_chosen": float(p)})
    if not rows:
        raise UserError("no preference rows: the file is empty (or every pair was a tie)", path)
    return rows


def label_row(row: dict, path: Path, line: int) -> dict | None:
    """Check a `cai rl-cai label` row; None for a discarded one."""
    if row.get("discarded"):
        return None
    p = row.get("p_a")
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p <= 1:
        raise UserError(f"p_a must be a number in [0, 1], got {p!r}", path, line)
    for key in ("prompt", "response_a", "response_b"):
        if not isinstance(row.get(key), str):
            raise UserError(f"label row needs a string `{key}`", path, line)
    return {
        "id": str(row.get("id", line)),
        "source": row.get("source", "ai"),
        "discarded": False,
        **{k: row[k] for k in ("prompt", "response_a", "response_b", "p_a")},
    }


def as_messages(value: Any, role: str) -> list[dict[str, Any]] | None:
    """A string becomes one `role` message; a list of messages keeps role and content only."""
    if isinstance(value, str):
        return [{"role": role, "content": value}]
    if isinstance(value, list) and all(isinstance(m, dict) for m in value):
        return [{"role": m.get("role"), "content": m.get("content")} for m in value]
    return None
