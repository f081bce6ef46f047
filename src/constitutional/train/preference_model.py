"""The preference model of RL-CAI: a reward r(prompt, response) trained on soft AI labels.

Constitutional AI (Bai et al. 2022, section 4) trains a preference model on the feedback
model's comparisons and uses its score as the RL reward. This module is that step:

    cai rl-cai train-pm --data prefs.jsonl --base embedded --out pm/
    cai rl-cai score --model pm/ --input rows.jsonl --out scored.jsonl

The model is the base causal LM with a one-output sequence-classification head (`score`), read
at the last token of the chat-templated [user prompt, assistant response]. Training is
Bradley–Terry against the soft label p(A): loss = BCE(σ(r_A - r_B), p_A), see `soft_labels`.
TRL's RewardTrainer only takes hard labels, so this is a `transformers.Trainer` whose
`compute_loss` scores both sides in one forward pass.

By default a LoRA adapter (plus the trained `score` head, PEFT's `modules_to_save`) is saved,
pointing at the base spec; with `lora=False` the full model. `out/` also holds `metrics.json`
(held-out accuracy, BCE, calibration), `train_log.json`, `loss.svg` and `cai_checkpoint.json`.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from constitutional.atomic_dir import refuse_existing
from constitutional.errors import UserError
from constitutional.jsonl import iter_jsonl, write_json
from constitutional.judge.soft_labels import preference_metrics, soft_bce
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

KIND = "preference_model"
LOG_KEYS = ("step", "loss", "learning_rate", "epoch")
Messages = list[dict[str, str]]


def train_preference_model(
    data: str | Path,
    base: str,
    out: str | Path,
    *,
    lora: bool = True,
    epochs: float = 1.0,
    learning_rate: float | None = None,
    batch_size: int = 8,
    max_length: int = 512,
    eval_fraction: float = 0.1,
    lora_r: int = 16,
    lora_alpha: int = 32,
    seed: int = 0,
    max_steps: int = -1,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Train a Bradley–Terry preference model on soft labels; writes a checkpoint dir atomically.

    Args:
        data: `cai rl-cai label` output (prompt, response_a, response_b, p_a; discarded rows are
            skipped) or TRL preference rows (prompt, chosen, rejected, optional p_chosen).
        base: model spec: "embedded", a .gguf file or an HF model directory.
        out: checkpoint directory to create (refused if it exists and is not empty).
        lora: train a LoRA adapter plus the score head (default) instead of all weights.
        epochs: passes over the training pairs (ignored when `max_steps` > 0).
        learning_rate: default 2e-4 with LoRA, 1e-5 for full fine-tuning.
        batch_size: pairs per step (each step scores 2 x batch_size sequences).
        max_length: tokens kept per side (the end is cut); scoring the checkpoint uses the same.
        eval_fraction: share of pairs held out (seeded) for the metrics; 0 holds none out.
        lora_r / lora_alpha: LoRA rank and scaling numerator.
        seed: seeds the split, the head and LoRA init, and the data order.
        max_steps: stop after this many optimizer steps; -1 trains for `epochs`.
        overwrite: replace an existing non-empty `out`.

    Returns:
        {"steps", "final_loss", "wall_seconds", "out", "train_pairs", "eval_pairs", "accuracy",
        "mean_bce", "ece"}; the last three are held-out (None without held-out pairs).

    Raises:
        UserError: bad data (naming file:line), unknown base, or `out` in the way.
    """
    started, data, out = time.monotonic(), Path(data), Path(out)
    # 1. bad data fails in a second, before any import
    pairs, discarded = load_preference_pairs(data)
    if not 0 <= eval_fraction < 1:
        raise UserError(f"eval_fraction must be in [0, 1), got {eval_fraction}")
    refuse_existing(out, overwrite)
    learning_rate = learning_rate if learning_rate is not None else 2e-4 if lora else 1e-5
    train_pairs, eval_pairs = split_pairs(pairs, eval_fraction, seed)
    hparams = {
        "lora": lora,
        "lora_r": lora_r,
        "lora_alpha": lora_alpha,
        "lora_dropout": LORA_DROPOUT,
        "epochs": epochs,
        "max_steps": max_steps,
        "learning_rate": learning_rate,
        "batch_size": batch_size,
        "max_length": max_length,
        "eval_fraction": eval_fraction,
        "seed": seed,
        "loss": "bradley_terry_soft_bce",
    }
    # 2. The base with a fresh one-output head on top; 3. train in a staging dir.
    model, tokenizer, cuda = load_pm_base(base, hparams)
    split = (train_pairs, eval_pairs, len(pairs), discarded)
    return _train_and_save(
        model, tokenizer, split, (base, data, out), overwrite, hparams, cuda, started
    )


def _train_and_save(
    model,
    tokenizer,
    split: tuple,
    paths: tuple,
    overwrite: bool,
    hparams: dict,
    cuda: bool,
    started: float,
) -> dict[str, Any]:
    """Train in a staging directory, measure the held-out pairs, save the model with its loss
    curve, metrics and provenance, and move it to `out`. Returns train_preference_model's summary."""
    train_pairs, eval_pairs, n_pairs, discarded = split
    base, data, out = paths
    batch_size, lora, seed = hparams["batch_size"], hparams["lora"], hparams["seed"]
    with staged_checkpoint(out, overwrite) as tmp:
        trainer = pm_trainer(model, tokenizer, train_pairs, tmp, hparams, cuda)
        trainer.train()
        # 4. Held-out metrics with the trained model, then save (adapter + head, or all weights).
        model = trainer.model
        deltas = pair_deltas(model, tokenizer, eval_pairs, batch_size=2 * batch_size)
        held_out = preference_metrics(deltas, [p["p_a"] for p in eval_pairs])
        save_model_dir(model, tokenizer, tmp, base, adapter=lora)
        # 5. Loss curve, metrics and provenance; leaving the block moves the checkpoint into place.
        log = logged_steps(trainer, LOG_KEYS)
        summary = pm_summary(
            trainer.state.global_step,
            log,
            started,
            out,
            (len(train_pairs), len(eval_pairs)),
            held_out,
        )
        write_train_log(tmp, log, loss="loss")
        write_json(
            tmp / "metrics.json",
            {
                "held_out": held_out,
                "train": {
                    "pairs": len(train_pairs),
                    "steps": summary["steps"],
                    "final_loss": summary["final_loss"],
                },
                "discarded_rows": discarded,
            },
        )
        write_checkpoint_record(
            tmp,
            {"kind": KIND, "stage": "rl-cai-pm", "base": base_reference(base)},
            data=data_record(data, pairs=n_pairs, discarded_rows=discarded),
            hyperparameters=hparams,
            seed=seed,
            device="cuda" if cuda else "cpu",
            summary=summary,
        )
    return summary


def pm_summary(
    steps: int,
    log: list[dict],
    started: float,
    out: Path,
    sizes: tuple[int, int],
    held_out: dict[str, Any],
) -> dict[str, Any]:
    """What `train_preference_model` returns; `sizes` is (train pairs, held-out pairs)."""
    return {
        "steps": steps,
        "final_loss": log[-1]["loss"] if log else None,
        "wall_seconds": round(time.monotonic() - started, 3),
        "out": str(out),
        "train_pairs": sizes[0],
        "eval_pairs": sizes[1],
        **{k: held_out[k] for k in ("accuracy", "mean_bce", "ece")},
    }


def load_pm_base(base: str, hp: dict[str, Any]):
    """(model, tokenizer, cuda): the base with a fresh `score` head, LoRA-wrapped when hp["lora"]
    (the head then trained and saved in full, PEFT's `modules_to_save`)."""
    require_train_extra("torch", "peft", "transformers")
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import set_seed

    base_path = base_model_path(base)
    set_seed(hp["seed"])
    cuda = torch.cuda.is_available()
    dtype = torch.bfloat16 if cuda and hp["lora"] else torch.float32  # as in sft.py
    model, tokenizer = load_scorer(base_path, base_path, dtype, fresh_head=True)
    tokenizer.model_max_length = hp[
        "max_length"
    ]  # saved with the checkpoint: scoring cuts the same
    if hp["lora"]:
        # "all-linear" leaves the SEQ_CLS head alone; modules_to_save trains and saves it in full.
        model = get_peft_model(
            model,
            LoraConfig(
                r=hp["lora_r"],
                lora_alpha=hp["lora_alpha"],
                lora_dropout=LORA_DROPOUT,
                target_modules="all-linear",
                task_type="SEQ_CLS",
                modules_to_save=["score"],
            ),
        )
    return model, tokenizer, cuda


def pm_trainer(
    model, tokenizer, train_pairs: list[dict], tmp: Path, hp: dict[str, Any], cuda: bool
):
    """The soft-label Bradley–Terry Trainer over the training pairs."""
    from transformers import TrainingArguments

    features = [
        {"a": encode(tokenizer, p["a"]), "b": encode(tokenizer, p["b"]), "p_a": p["p_a"]}
        for p in train_pairs
    ]
    args = TrainingArguments(
        **trainer_args(tmp, hp["seed"], cuda),
        num_train_epochs=hp["epochs"],
        max_steps=hp["max_steps"],
        learning_rate=hp["learning_rate"],
        per_device_train_batch_size=hp["batch_size"],
        remove_unused_columns=False,  # the collator needs a, b and p_a
        label_names=["p_a"],
    )
    return soft_label_trainer_class()(
        model=model, args=args, train_dataset=features, data_collator=PairCollator(tokenizer)
    )


def load_preference_model(path: str | Path, device: str | None = None):
    """Load a checkpoint written by `train_preference_model`; returns (model, tokenizer) in eval
    mode. A LoRA checkpoint is applied to its base and merged."""
    import torch

    path = Path(path).expanduser()
    if not path.is_dir():
        raise UserError("no such preference model directory", path)
    meta = path / "cai_checkpoint.json"
    kind = json.loads(meta.read_text()).get("kind") if meta.is_file() else None
    if meta.is_file() and kind != KIND:
        raise UserError(
            f"not a preference model (checkpoint kind {kind!r}); train one with `cai rl-cai train-pm`",
            path,
        )
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    adapter = path / "adapter_config.json"
    if adapter.is_file():
        from peft import PeftModel

        from constitutional.backends.local import resolve_model

        config = json.loads(adapter.read_text())
        if config.get("task_type") != "SEQ_CLS":
            raise UserError("a LoRA adapter for text generation, not a preference model", path)
        base_path = resolve_model(config["base_model_name_or_path"])
        tokenizer_dir = path if (path / "tokenizer_config.json").is_file() else base_path
        # The base's head is fresh here; the adapter's saved `score` replaces it on load.
        model, tokenizer = load_scorer(base_path, tokenizer_dir, dtype, fresh_head=True)
        model = PeftModel.from_pretrained(model, path).merge_and_unload()
    else:
        config = (
            json.loads((path / "config.json").read_text())
            if (path / "config.json").is_file()
            else {}
        )
        heads = [
            a for a in config.get("architectures") or [] if a.endswith("ForSequenceClassification")
        ]
        if not heads or config.get("num_labels", len(config.get("id2label") or {0: 0})) != 1:
            raise UserError(
                "not a preference model: expected a one-output sequence-classification model", path
            )
        model, tokenizer = load_scorer(path, path, dtype, fresh_head=False)
    return model.to(device).eval(), tokenizer


def score(model, tokenizer, rows: Sequence[dict], *, batch_size: int = 16) -> list[float]:
    """Rewards for rows with `prompt` and `response` (strings, or message lists as in TRL rows).

    Each row is chat-templated, cut to the tokenizer's `model_max_length` (the training
    `max_length` for checkpoints from `train_preference_model`) and scored in batches.
    """
    convs = []
    for i, row in enumerate(rows):
        conv, problem = conversation(row.get("prompt"), row.get("response"))
        if problem:
            raise UserError(f"row {i}: {problem}")
        convs.append(conv)
    return rewards(model, tokenizer, convs, batch_size=batch_size)


def rewards(model, tokenizer, convs: Sequence[Messages], *, batch_size: int = 16) -> list[float]:
    """The head's output for each conversation, batched with right padding.

    transformers' sequence-classification models read the logit at the rightmost token that is
    not the pad token, whichever side the padding is on. Here pad = eos = <|im_end|>, which also
    closes every chat turn; SmolLM2's template ends a conversation with "<|im_end|>\\n", so the
    read position is that final newline, which attends to the whole conversation. Right padding
    keeps position ids the same as unbatched (left padding would shift them).
    """
    import torch

    device = next(model.parameters()).device
    collate = PairCollator(tokenizer)
    was_training = model.training
    model.eval()
    out: list[float] = []
    try:
        with torch.inference_mode():
            for start in range(0, len(convs), batch_size):
                ids = [encode(tokenizer, c) for c in convs[start : start + batch_size]]
                batch = {k: v.to(device) for k, v in collate.pad(ids).items()}
                out.extend(model(**batch, use_cache=False).logits[:, 0].float().tolist())
    finally:
        model.train(was_training)
    return out


def pair_deltas(model, tokenizer, pairs: Sequence[dict], *, batch_size: int = 16) -> list[float]:
    """r(A) - r(B) for each pair."""
    r = rewards(
        model, tokenizer, [c for p in pairs for c in (p["a"], p["b"])], batch_size=batch_size
    )
    return [a - b for a, b in zip(r[0::2], r[1::2])]


def encode(tokenizer, conv: Messages) -> list[int]:
    """Token ids of one conversation: chat template, cut at the tokenizer's model_max_length."""
    text = tokenizer.apply_chat_template(conv, tokenize=False)
    return tokenizer(text, add_special_tokens=False, truncation=True)["input_ids"]


class PairCollator:
    """Batches of pairs as one padded batch: the A sides, then the B sides, plus the labels."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def pad(self, ids: list[list[int]]) -> dict[str, Any]:
        self.tokenizer.padding_side = "right"
        return dict(self.tokenizer.pad({"input_ids": ids}, return_tensors="pt"))

    def __call__(self, features: list[dict]) -> dict[str, Any]:
        import torch

        batch = self.pad([f["a"] for f in features] + [f["b"] for f in features])
        batch["p_a"] = torch.tensor([f["p_a"] for f in features], dtype=torch.float32)
        return batch


def soft_label_trainer_class():
    """A `transformers.Trainer` with the Bradley–Terry soft-label loss (built lazily: the
    import of transformers is slow and optional)."""
    from transformers import Trainer

    class SoftLabelRewardTrainer(Trainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            r = model(
                input_ids=inputs["input_ids"],
                attention_mask=inputs["attention_mask"],
                use_cache=False,
            )
            rewards = r.logits[:, 0]
            n = inputs["p_a"].shape[0]
            delta = rewards[:n] - rewards[n:]  # the collator stacks A sides, then B sides
            loss = soft_bce(delta, inputs["p_a"])
            return (loss, {"delta": delta}) if return_outputs else loss

    return SoftLabelRewardTrainer


def load_scorer(model_dir: Path, tokenizer_dir: Path, dtype, *, fresh_head: bool):
    """A one-output sequence-classification model and its tokenizer, pad token set on both."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    verbosity = hf_logging.get_verbosity()
    if fresh_head:  # "score.weight newly initialized" is the point, not a problem worth a warning
        hf_logging.set_verbosity_error()
    try:
        model = AutoModelForSequenceClassification.from_pretrained(
            model_dir, num_labels=1, dtype=dtype
        )
    finally:
        hf_logging.set_verbosity(verbosity)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    tokenizer.padding_side = "right"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.config.pad_token_id = tokenizer.pad_token_id  # the head reads the last non-pad token
    return model, tokenizer


def conversation(prompt: Any, response: Any) -> tuple[Messages, str | None]:
    """[user prompt, assistant response] as messages, and what is wrong with them (or None).

    Either side may be a string or, as in TRL conversational rows, a list of messages.
    """
    if not isinstance(prompt, (str, list)) or not isinstance(response, (str, list)):
        return [], "prompt and response must be strings or lists of messages"
    if isinstance(response, str) and not response.strip():
        return [], "empty response"
    turns = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
    reply = [{"role": "assistant", "content": response}] if isinstance(response, str) else response
    messages = [*turns, *reply]
    problem = messages_problem(messages)
    if problem:
        return [], problem
    return [{"role": m["role"], "content": m["content"]} for m in messages], None


def load_preference_pairs(path: Path) -> tuple[list[dict[str, Any]], int]:
    """Pairs {"a", "b", "p_a"} from label rows or TRL preference rows, and the discards skipped.

    Label rows (from `cai rl-cai label`): prompt, response_a, response_b, p_a; rows with
    `discarded: true` are skipped. TRL rows: prompt, chosen, rejected and optional p_chosen
    (default 1.0), read as A = chosen.
    """
    pairs, discarded = [], 0
    for line, row in iter_jsonl(path):
        if "response_a" in row or "response_b" in row:
            if row.get("discarded"):
                discarded += 1
                continue
            sides, label, p = ("response_a", "response_b"), "p_a", row.get("p_a")
        elif "chosen" in row or "rejected" in row:
            sides, label, p = ("chosen", "rejected"), "p_chosen", row.get("p_chosen", 1.0)
        else:
            raise UserError(
                "expected label rows (prompt, response_a, response_b, p_a) or TRL rows "
                "(prompt, chosen, rejected)",
                path,
                line,
            )
        if isinstance(p, bool) or not isinstance(p, (int, float)) or math.isnan(p):
            raise UserError(f"`{label}` must be a number in [0,1], got {json.dumps(p)}", path, line)
        if not 0 <= p <= 1:
            raise UserError(f"labels outside [0,1]: `{label}` is {p}", path, line)
        convs = []
        for side in sides:
            conv, problem = conversation(row.get("prompt"), row.get(side))
            if problem:
                raise UserError(f"bad `prompt`/`{side}`: {problem}", path, line)
            convs.append(conv)
        pairs.append({"a": convs[0], "b": convs[1], "p_a": float(p)})
    if not pairs:
        raise UserError("no preference pairs: the file is empty or every row is discarded", path)
    return pairs, discarded


def split_pairs(
    pairs: list[dict], eval_fraction: float, seed: int
) -> tuple[list[dict], list[dict]]:
    """A seeded (train, held-out) split; at least one pair each side when there are two or more."""
    n_eval = round(len(pairs) * eval_fraction) if eval_fraction > 0 else 0
    if eval_fraction > 0 and len(pairs) >= 2:
        n_eval = min(max(n_eval, 1), len(pairs) - 1)
    order = list(range(len(pairs)))
    random.Random(seed).shuffle(order)
    held = set(order[:n_eval])
    return [p for i, p in enumerate(pairs) if i not in held], [
        p for i, p in enumerate(pairs) if i in held
    ]
