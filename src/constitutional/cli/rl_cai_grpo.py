"""`cai rl-cai grpo`: GRPO (TRL GRPOTrainer) against the preference model or the feedback model's
direct ratings, an alternative to PPO for the RL step of RL-CAI (registered by cli.rl_cai)."""

from __future__ import annotations

from pathlib import Path

import typer

from constitutional.cli.models import BackendOpt, BaseUrlOpt

# The options GRPO shares with PPO are declared once, with the PPO command.
from constitutional.cli.rl_cai_ppo import (
    ConstitutionOpt,
    FeedbackOpt,
    JudgeBatchSizeOpt,
    OutOpt,
    PolicyOpt,
    PromptsOpt,
    RbrClassOpt,
    RbrOpt,
    RbrWeightOpt,
    RewardModelOpt,
    RewardOpt,
    judge_from_options,
)

BetaOpt = typer.Option(0.04, help="KL coefficient β to the reference (0: no reference at all).")
LoraOpt = typer.Option(
    True, "--lora/--full", help="Fresh LoRA adapter (default) or full fine-tuning."
)


def grpo(
    prompts: str = PromptsOpt,
    policy: str = PolicyOpt,
    out: Path = OutOpt,
    reward: str = RewardOpt,
    reward_model: Path = RewardModelOpt,
    feedback: str = FeedbackOpt,
    constitution: str = ConstitutionOpt,
    rbr: Path = RbrOpt,
    rbr_weight: float = RbrWeightOpt,
    rbr_class: str = RbrClassOpt,
    backend: str = BackendOpt,
    base_url: str = BaseUrlOpt,
    judge_batch_size: int = JudgeBatchSizeOpt,
    beta: float = BetaOpt,
    steps: int = typer.Option(20, help="Optimiser steps, each on freshly sampled groups."),
    prompts_per_step: int = typer.Option(4, help="Prompts per step."),
    num_generations: int = typer.Option(4, help="Responses per prompt (the group; >= 2)."),
    max_new_tokens: int = typer.Option(32, help="New tokens per sampled response."),
    temperature: float = typer.Option(1.0, help="Sampling temperature of the responses."),
    lr: float = typer.Option(None, "--lr", help="Learning rate (default 5e-5 LoRA, 1e-6 full)."),
    lora: bool = LoraOpt,
    seed: int = typer.Option(0, help="Seed of LoRA init, prompt order and sampling."),
    overwrite: bool = typer.Option(False, help="Replace an existing checkpoint directory."),
) -> None:
    """Train the policy with GRPO (group-relative advantages, no value head), KL-regularised to the reference."""
    from constitutional.rbr.reward import rbr_reward
    from constitutional.train.grpo import train_grpo

    judge = judge_from_options(
        reward, reward_model, feedback, constitution, backend, base_url, judge_batch_size, rbr
    )
    s = train_grpo(
        prompts,
        policy,
        out,
        reward=reward,
        reward_model=reward_model,
        judge=judge,
        constitution=constitution,
        rbr=rbr,
        rbr_weight=rbr_weight,
        rbr_class=rbr_class,
        rbr_factory=rbr_reward,
        beta=beta,
        steps=steps,
        prompts_per_step=prompts_per_step,
        num_generations=num_generations,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        learning_rate=lr,
        lora=lora,
        seed=seed,
        overwrite=overwrite,
    )
    first, last, kl = (
        "n/a" if v is None else f"{v:.3f}"
        for v in (s["reward_first"], s["reward_last"], s["kl_last"])
    )
    typer.echo(
        f"trained {s['steps']} steps, {reward} reward {first} → {last}, KL {kl} → {out}", err=True
    )
