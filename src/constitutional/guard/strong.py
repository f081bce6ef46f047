"""The strong stage: a small causal LM with a one-output classification head, LoRA-tuned.

The model is loaded as in the preference model (`train/preference_model.py`: the base with a
fresh `score` head read at the last non-pad token), then trained with `transformers.Trainer` on
binary cross-entropy against the 0/1 label. Texts are plain strings (the views of
`guard/views.py`), cut from the *left* to `max_length` tokens so that the newest part of a
streamed response is always kept. Saved with `save_model_dir` (adapter + head by default).
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from constitutional.errors import UserError
from constitutional.train.checkpoint import save_model_dir
from constitutional.train.common import LORA_DROPOUT, trainer_args
from constitutional.train.preference_model import load_preference_model, load_scorer


def train_strong(
    texts: Sequence[str],
    labels: Sequence[int],
    base: str,
    out: Path,
    *,
    lora: bool = True,
    epochs: float = 1.0,
    learning_rate: float | None = None,
    batch_size: int = 8,
    max_length: int = 256,
    lora_r: int = 16,
    lora_alpha: int = 32,
    seed: int = 0,
    max_steps: int = -1,
) -> StrongClassifier:
    """Fine-tune `base` with a classification head on (text, label); saves into `out`.

    Args:
        texts / labels: one view's training texts and their 0/1 labels.
        base: model spec: "embedded", a .gguf file or an HF model directory.
        out: directory to save the model into (created; the caller publishes it atomically).
        lora: LoRA adapter + head (default) or all weights.
        learning_rate: default 2e-4 with LoRA, 1e-5 for full fine-tuning.
        max_length: tokens kept per text (the start is cut).
        max_steps: stop after this many optimizer steps; -1 trains for `epochs`.

    Returns:
        The trained classifier, in eval mode.
    """
    try:
        import peft  # noqa: F401  (checked here so a missing extra fails before any work)
        import torch
        from transformers import TrainingArguments, set_seed
    except ImportError as e:
        hint = "pip install 'constitutional[train]'"
        raise UserError(
            f"the strong stage needs {e.name}, part of the train extra: {hint}"
        ) from None
    from constitutional.backends.local import resolve_model

    base_path = resolve_model(base)
    if (base_path / "adapter_config.json").is_file():
        raise UserError("the base is a LoRA adapter; train on its base model instead", base)
    set_seed(seed)
    cuda = torch.cuda.is_available()
    dtype = torch.bfloat16 if cuda and lora else torch.float32
    model, tokenizer = load_scorer(base_path, base_path, dtype, fresh_head=True)
    tokenizer.model_max_length, tokenizer.truncation_side = max_length, "left"
    if lora:
        model = _with_lora(model, lora_r, lora_alpha)
    features = [
        {"input_ids": ids, "label": float(y)} for ids, y in zip(_ids(tokenizer, texts), labels)
    ]
    out.mkdir(parents=True, exist_ok=True)
    args = TrainingArguments(
        **trainer_args(out, seed, cuda),
        num_train_epochs=epochs,
        max_steps=max_steps,
        learning_rate=learning_rate or (2e-4 if lora else 1e-5),
        per_device_train_batch_size=batch_size,
        remove_unused_columns=False,
        label_names=["label"],
        disable_tqdm=True,
    )
    trainer = _bce_trainer_class()(
        model=model, args=args, train_dataset=features, data_collator=LabelCollator(tokenizer)
    )
    trainer.train()
    shutil.rmtree(out / "trainer", ignore_errors=True)
    save_model_dir(trainer.model, tokenizer, out, base, adapter=lora)
    clf = StrongClassifier(trainer.model.eval(), tokenizer)
    clf.log = [e for e in trainer.state.log_history if "loss" in e]
    return clf


def _with_lora(model, lora_r: int, lora_alpha: int):
    """MODEL wrapped in a LoRA adapter on every linear layer; the new score head trains in full."""
    from peft import LoraConfig, get_peft_model

    return get_peft_model(
        model,
        LoraConfig(
            r=lora_r,
            lora_alpha=lora_alpha,
            lora_dropout=LORA_DROPOUT,
            target_modules="all-linear",
            task_type="SEQ_CLS",
            modules_to_save=["score"],
        ),
    )


class StrongClassifier:
    """Scores texts with a trained sequence-classification LM: sigmoid(head logit) = P(harmful)."""

    def __init__(self, model, tokenizer, batch_size: int = 16):
        self.model, self.tokenizer, self.batch_size = model, tokenizer, batch_size
        self.log: list[dict[str, Any]] = []

    @classmethod
    def load(cls, path: Path, device: str | None = None) -> StrongClassifier:
        model, tokenizer = load_preference_model(path, device)  # LoRA merged, eval mode
        tokenizer.truncation_side = "left"
        return cls(model, tokenizer)

    def scores(self, texts: Sequence[str]) -> list[float]:
        import torch

        device = next(self.model.parameters()).device
        collate = LabelCollator(self.tokenizer)
        out: list[float] = []
        with torch.inference_mode():
            for start in range(0, len(texts), self.batch_size):
                ids = _ids(self.tokenizer, texts[start : start + self.batch_size])
                batch = {k: v.to(device) for k, v in collate.pad(ids).items()}
                logits = self.model(**batch, use_cache=False).logits[:, 0].float()
                out.extend(torch.sigmoid(logits).tolist())
        return out


def _ids(tokenizer, texts: Sequence[str]) -> list[list[int]]:
    # An empty text (a stream before its first token) still needs one token for the head to read.
    texts = [t if t else " " for t in texts]
    return tokenizer(list(texts), add_special_tokens=False, truncation=True)["input_ids"]


class LabelCollator:
    """Right-padded input ids (the head reads the last non-pad token) and float labels."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def pad(self, ids: list[list[int]]) -> dict[str, Any]:
        self.tokenizer.padding_side = "right"
        return dict(self.tokenizer.pad({"input_ids": ids}, return_tensors="pt"))

    def __call__(self, features: list[dict]) -> dict[str, Any]:
        import torch

        batch = self.pad([f["input_ids"] for f in features])
        batch["label"] = torch.tensor([f["label"] for f in features], dtype=torch.float32)
        return batch


def _bce_trainer_class():
    """A `transformers.Trainer` with binary cross-entropy on the head's one logit."""
    import torch
    from transformers import Trainer

    class BCETrainer(Trainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            out = model(
                input_ids=inputs["input_ids"],
                attention_mask=inputs["attention_mask"],
                use_cache=False,
            )
            logits = out.logits[:, 0].float()
            loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, inputs["label"])
            return (loss, {"logits": logits}) if return_outputs else loss

    return BCETrainer
