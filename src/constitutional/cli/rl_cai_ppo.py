"""`cai rl-cai ppo`: PPO against the preference model, the RL step of RL-CAI as in the paper, or
against the feedback model's direct ratings (d-RLAIF) with `--reward judge` (registered by
cli.rl_cai)."""

from __future__ import annotations

from pathlib import Path

import typer

from constitutional.cli.models import BackendOpt, BaseUrlOpt, backend_from_options

PromptsOpt = typer.Option(
    ...,
    "--prompts",
    "-p",
    help="JSONL with `prompt`, or builtin:advbench|harmbench|strongreject|self_instruct|mt_bench.",
)
PolicyOpt = typer.Option(
    "embedded",
    "--policy",
    help="Model to train and KL reference, usually the SL-CAI checkpoint ('embedded', .gguf, HF or LoRA dir).",
)
RewardOpt = typer.Option(
    "pm",
    "--reward",
    help="pm: the preference model scores; judge: the feedback model rates each response (d-RLAIF); "
    "pm+rbr: PM + weighted rule-based reward graded by --feedback.",
)
RewardModelOpt = typer.Option(
    None,
    "--reward-model",
    help="--reward pm: preference model directory from `cai rl-cai train-pm`.",
)
FeedbackOpt = typer.Option(
    None,
    "--feedback",
    help="--reward judge: the model that rates each response; "
    "pm+rbr: grades the propositions ('embedded', HF dir, or server model).",
)
ConstitutionOpt = typer.Option(
    "default",
    "--constitution",
    "-c",
    help="--reward judge: constitution YAML whose comparison principles it rates against.",
)
RbrOpt = typer.Option(
    None, "--rbr", help="--reward pm+rbr: rule-based reward weights from `cai rbr fit`."
)
RbrWeightOpt = typer.Option(
    1.0, "--rbr-weight", help="--reward pm+rbr: reward = PM + this × RBR score."
)
RbrClassOpt = typer.Option(
    "hard_refuse",
    "--rbr-class",
    help="--reward pm+rbr: response class of every prompt (a class of the RBR rules).",
)
JudgeBatchSizeOpt = typer.Option(
    16, help="--reward judge, local backend: responses rated together."
)
OutOpt = typer.Option(..., "--out", "-o", help="Checkpoint directory (loads with --model OUT).")
BetaOpt = typer.Option(
    0.05, help="KL penalty β per token: larger keeps the policy nearer the reference."
)
AdaptiveKlOpt = typer.Option(
    False, "--adaptive-kl", help="Adapt β towards --target-kl (Ziegler et al. 2019)."
)
TargetKlOpt = typer.Option(6.0, help="With --adaptive-kl: KL per response to aim for, in nats.")
LrOpt = typer.Option(1e-4, "--lr", help="Learning rate of the LoRA weights (value head: 10x).")


def ppo(
    prompts: str = PromptsOpt,
    policy: str = PolicyOpt,
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
    out: Path = OutOpt,
    beta: float = BetaOpt,
    adaptive_kl: bool = AdaptiveKlOpt,
    target_kl: float = TargetKlOpt,
    steps: int = typer.Option(20, help="Rollouts, each followed by PPO epochs on it."),
    batch_size: int = typer.Option(8, help="Prompts per rollout."),
    max_new_tokens: int = typer.Option(32, help="New tokens per sampled response."),
    lr: float = LrOpt,
    seed: int = typer.Option(0, help="Seed of LoRA init, prompt order and sampling."),
    overwrite: bool = typer.Option(False, help="Replace an existing checkpoint directory."),
) -> None:
    """Train the policy with PPO against the preference model (or the judge), with a KL penalty to the reference."""
    from constitutional.rbr.reward import rbr_reward
    from constitutional.train.ppo import train_ppo

    judge = judge_from_options(
        reward, reward_model, feedback, constitution, backend, base_url, judge_batch_size, rbr
    )
    s = train_ppo(
        prompts,
        policy,
        reward_model,
        out,
        reward=reward,
        judge=judge,
        constitution=constitution,
        rbr=rbr,
        rbr_weight=rbr_weight,
        rbr_class=rbr_class,
        rbr_factory=rbr_reward,
        beta=beta,
        adaptive_kl=adaptive_kl,
        target_kl=target_kl,
        steps=steps,
        batch_size=batch_size,
        max_new_tokens=max_new_tokens,
        learning_rate=lr,
        seed=seed,
        overwrite=overwrite,
    )
    typer.echo(
        f"trained {s['steps']} steps, {reward} reward {s['reward_first']:.3f} → {s['reward_last']:.3f}, "
        f"KL {s['kl_last']:.3f}, β {s['beta']:.4g} → {out}",
        err=True,
    )


def judge_from_options(
    reward: str,
    reward_model: Path | None,
    feedback: str | None,
    constitution: str,
    backend: str,
    base_url: str | None,
    batch_size: int,
    rbr: Path | None = None,
):
    """The feedback Backend for `--reward judge` or `pm+rbr` (None for pm), after checking the
    options: a bad choice, constitution or RBR file fails before any model loads. Used by `ppo`
    and `grpo`."""
    from constitutional.constitution import load_constitution
    from constitutional.rbr.model import load_rbr
    from constitutional.train.rewards import check_reward

    check_reward(reward, reward_model, feedback, rbr)
    if reward not in ("judge", "pm+rbr"):
        return None
    if reward == "judge":
        load_constitution(constitution)
    else:
        load_rbr(rbr)
    # Every rating is of a freshly sampled response, so a response cache would only grow.
    return backend_from_options(backend, feedback, base_url, batch_size, batch_size, None, True)
