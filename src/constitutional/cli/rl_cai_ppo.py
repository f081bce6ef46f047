"""`cai rl-cai ppo`: PPO against the preference model, the RL step of RL-CAI as in the paper
(registered by cli.rl_cai)."""

from __future__ import annotations

from pathlib import Path

import typer


def ppo(
    prompts: str = typer.Option(..., "--prompts", "-p", help="JSONL with `prompt`, or builtin:advbench|harmbench|strongreject|self_instruct|mt_bench."),
    policy: str = typer.Option("embedded", "--policy", help="Model to train and KL reference, usually the SL-CAI checkpoint ('embedded', .gguf, HF or LoRA dir)."),
    reward_model: Path = typer.Option(..., "--reward-model", help="Preference model directory from `cai rl-cai train-pm`."),
    out: Path = typer.Option(..., "--out", "-o", help="Checkpoint directory (loads with --model OUT)."),
    beta: float = typer.Option(0.05, help="KL penalty β per token: larger keeps the policy nearer the reference."),
    adaptive_kl: bool = typer.Option(False, "--adaptive-kl", help="Adapt β towards --target-kl (Ziegler et al. 2019)."),
    target_kl: float = typer.Option(6.0, help="With --adaptive-kl: KL per response to aim for, in nats."),
    steps: int = typer.Option(20, help="Rollouts, each followed by PPO epochs on it."),
    batch_size: int = typer.Option(8, help="Prompts per rollout."),
    max_new_tokens: int = typer.Option(32, help="New tokens per sampled response."),
    lr: float = typer.Option(1e-4, "--lr", help="Learning rate of the LoRA weights (value head: 10x)."),
    seed: int = typer.Option(0, help="Seed of LoRA init, prompt order and sampling."),
    overwrite: bool = typer.Option(False, help="Replace an existing checkpoint directory."),
) -> None:
    """Train the policy with PPO against the preference model, with a KL penalty to the reference."""
    from constitutional.train.ppo import train_ppo

    s = train_ppo(prompts, policy, reward_model, out, beta=beta, adaptive_kl=adaptive_kl, target_kl=target_kl,
                  steps=steps, batch_size=batch_size, max_new_tokens=max_new_tokens, learning_rate=lr, seed=seed,
                  overwrite=overwrite)  # fmt: skip
    typer.echo(f"trained {s['steps']} steps, PM reward {s['reward_first']:.3f} → {s['reward_last']:.3f}, "
               f"KL {s['kl_last']:.3f}, β {s['beta']:.4g} → {out}", err=True)  # fmt: skip
