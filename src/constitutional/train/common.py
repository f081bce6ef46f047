"""What every trainer in this package shares: the train extra's import message, the Trainer
settings, the LoRA dropout, how a policy is loaded, and the chat-row check.

Checkpoint writing lives in `checkpoint.py`; each recipe (sft, dpo, grpo, ppo, preference_model)
keeps only what is its own.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from constitutional.errors import UserError

LORA_DROPOUT = 0.05
ROLES = {"system", "user", "assistant"}
TRAINER_SCRATCH = "trainer"  # the Trainer's own output dir inside a staging dir; never published


def missing_extra(error: ImportError, what: str = "training") -> UserError:
    """The one message for a missing `train` extra; raise it `from None`."""
    hint = "pip install 'constitutional[train]'"
    return UserError(f"{what} needs {error.name}, part of the train extra: {hint}")


def require_train_extra(*modules: str) -> None:
    """Import `modules` now, so a missing extra fails before any model is loaded."""
    import importlib

    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError as e:
            raise missing_extra(e) from None


def trainer_args(
    tmp: Path,
    seed: int,
    cuda: bool,
    *,
    bf16: bool | None = None,
    activation_checkpointing: bool = False,
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
    return {
        "output_dir": str(tmp / TRAINER_SCRATCH),
        "bf16": cuda if bf16 is None else bf16,
        "use_cpu": not cuda,
        "seed": seed,
        "logging_steps": 1,
        "save_strategy": "no",
        "report_to": "none",
        "activation_checkpointing": activation_checkpointing,
    }


def load_policy(policy: str):
    """(model, tokenizer, is_adapter) for the model an RL recipe tunes, loaded on the CPU as
    LocalBackend loads it but uncached (training must not touch a model LocalBackend serves).
    A LoRA checkpoint comes back with its adapter merged: that merged model is what gets tuned."""
    from constitutional.backends.local import load_causal_lm, resolve_model

    path = resolve_model(policy)
    model, tokenizer = load_causal_lm(path, "cpu")
    return model, tokenizer, (path / "adapter_config.json").is_file()


def base_model_path(base: str) -> Path:
    """The HF directory of a base to train a fresh adapter or head on; an adapter is refused."""
    from constitutional.backends.local import resolve_model

    path = resolve_model(base)
    if (path / "adapter_config.json").is_file():
        raise UserError("the base is a LoRA adapter; train on its base model instead", base)
    return path


def logged_steps(trainer, keys: tuple[str, ...], marker: str = "loss") -> list[dict[str, Any]]:
    """The Trainer's per-step log entries (those holding `marker`), cut to `keys`."""
    return [
        {k: entry.get(k) for k in keys} for entry in trainer.state.log_history if marker in entry
    ]


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
