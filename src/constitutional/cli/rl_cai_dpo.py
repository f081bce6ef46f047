"""`cai rl-cai dpo`: DPO on AI-feedback preferences, the RL step of RL-CAI (registered by cli.rl_cai)."""

from __future__ import annotations

from pathlib import Path

import typer


def dpo(
    data: Path = typer.Option(
        ...,
        "--data",
        "-d",
        help="Preference JSONL: OUT.dpo.jsonl from `rl-cai label` (or its label file).",
    ),
    policy: str = typer.Option(
        "embedded",
        "--policy",
        help="Model to train, usually the SL-CAI checkpoint ('embedded', .gguf, HF or LoRA dir).",
    ),
    reference: str = typer.Option(
        None, "--reference", help="Frozen reference model (default: --policy, the SL-CAI model)."
    ),
    out: Path = typer.Option(
        ..., "--out", "-o", help="Checkpoint directory (loads with --model OUT)."
    ),
    beta: float = typer.Option(
        0.1, help="KL strength β: larger keeps the policy nearer the reference."
    ),
    lora: bool = typer.Option(
        True, "--lora/--full", help="Fresh LoRA adapter (default) or full fine-tuning."
    ),
    epochs: float = typer.Option(1.0, help="Passes over the data."),
    lr: float = typer.Option(None, "--lr", help="Learning rate (default 5e-5 LoRA, 5e-6 full)."),
    batch_size: int = typer.Option(4, help="Preference pairs per optimiser step."),
    max_steps: int = typer.Option(-1, help="Stop after this many steps (-1: epochs decide)."),
    seed: int = typer.Option(0, help="Training seed."),
    overwrite: bool = typer.Option(False, help="Replace an existing checkpoint directory."),
    bf16: bool = typer.Option(
        None, "--bf16/--no-bf16", help="bf16 mixed precision (default: on with a GPU, off on CPU)."
    ),
    gradient_checkpointing: bool = typer.Option(
        False,
        "--gradient-checkpointing",
        help="Recompute activations in backward: less memory, ~30% slower.",
    ),
) -> None:
    """Train the policy with soft-label DPO (TRL DPOTrainer) against the SL-CAI reference."""
    from constitutional.train.dpo import train_dpo

    s = train_dpo(
        data,
        policy,
        out,
        reference=reference,
        beta=beta,
        lora=lora,
        epochs=epochs,
        learning_rate=lr,
        batch_size=batch_size,
        max_steps=max_steps,
        seed=seed,
        overwrite=overwrite,
        bf16=bf16,
        activation_checkpointing=gradient_checkpointing,
    )
    loss, margin = (
        "n/a" if v is None else f"{v:.4f}" for v in (s["final_loss"], s["reward_margin"])
    )
    typer.echo(
        f"trained {s['steps']} steps, final loss {loss}, reward margin {margin} → {out}", err=True
    )
