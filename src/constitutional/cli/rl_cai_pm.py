"""`cai rl-cai train-pm` and `cai rl-cai score`: the preference model of RL-CAI.

Plain command functions; the `rl-cai` group registers them (`app.command("train-pm")(train_pm)`).
"""

from __future__ import annotations

from pathlib import Path

import typer


def train_pm(
    data: Path = typer.Option(
        ...,
        "--data",
        "-d",
        help="Label JSONL from `cai rl-cai label` (or TRL rows: prompt, chosen, rejected[, p_chosen]).",
    ),
    base: str = typer.Option(
        "embedded", "--base", help="Base model: 'embedded', a .gguf file or an HF dir."
    ),
    out: Path = typer.Option(
        ..., "--out", "-o", help="Checkpoint directory (score with `cai rl-cai score --model OUT`)."
    ),
    lora: bool = typer.Option(
        True, "--lora/--full", help="LoRA adapter + score head (default) or full fine-tuning."
    ),
    epochs: float = typer.Option(1.0, help="Passes over the training pairs."),
    lr: float = typer.Option(None, "--lr", help="Learning rate (default 2e-4 LoRA, 1e-5 full)."),
    batch_size: int = typer.Option(8, help="Pairs per optimiser step."),
    max_length: int = typer.Option(
        512, help="Tokens kept per (prompt, response); scoring cuts the same."
    ),
    eval_fraction: float = typer.Option(
        0.1, help="Share of pairs held out for accuracy and calibration."
    ),
    max_steps: int = typer.Option(-1, help="Stop after this many steps (-1: epochs decide)."),
    seed: int = typer.Option(0, help="Seed of the held-out split, head init and data order."),
    overwrite: bool = typer.Option(False, help="Replace an existing checkpoint directory."),
) -> None:
    """Train a Bradley–Terry preference model on soft AI-feedback labels."""
    from constitutional.train.preference_model import train_preference_model

    s = train_preference_model(
        data,
        base,
        out,
        lora=lora,
        epochs=epochs,
        learning_rate=lr,
        batch_size=batch_size,
        max_length=max_length,
        eval_fraction=eval_fraction,
        max_steps=max_steps,
        seed=seed,
        overwrite=overwrite,
    )
    held = "no held-out pairs"
    if s["eval_pairs"]:
        acc = "n/a (all ties)" if s["accuracy"] is None else f"{s['accuracy']:.1%}"
        held = f"held-out accuracy {acc}, BCE {s['mean_bce']:.4f}, ECE {s['ece']:.3f} on {s['eval_pairs']} pairs"
    loss = "n/a" if s["final_loss"] is None else f"{s['final_loss']:.4f}"
    typer.echo(f"trained {s['steps']} steps, final loss {loss}; {held} → {out}", err=True)


def score(
    model: Path = typer.Option(
        ..., "--model", "-m", help="Preference model directory from `cai rl-cai train-pm`."
    ),
    data: Path = typer.Option(
        ..., "--input", "-i", help="JSONL with `prompt` and `response` per row."
    ),
    out: Path = typer.Option(
        ..., "--out", "-o", help="The input rows with a `reward` added, same order."
    ),
    batch_size: int = typer.Option(16, help="Rows scored together."),
) -> None:
    """Score (prompt, response) rows with a trained preference model."""
    from constitutional.errors import UserError
    from constitutional.jsonl import iter_jsonl, write_jsonl
    from constitutional.train import preference_model as pm

    rows, convs = [], []
    for line, row in iter_jsonl(data):  # check every row before loading the model
        conv, problem = pm.conversation(row.get("prompt"), row.get("response"))
        if problem:
            raise UserError(f"bad `prompt`/`response`: {problem}", data, line)
        rows.append(row)
        convs.append(conv)
    lm, tokenizer = pm.load_preference_model(model)
    rewards = pm.rewards(lm, tokenizer, convs, batch_size=batch_size)
    write_jsonl(out, ({**row, "reward": r} for row, r in zip(rows, rewards)))
    typer.echo(f"scored {len(rows)} rows → {out}", err=True)
