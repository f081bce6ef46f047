"""The RL step of RL-CAI done with GRPO: group-relative advantages instead of a value head.

Group Relative Policy Optimization (Shao et al. 2024, https://arxiv.org/abs/2402.03300) samples
`num_generations` responses per prompt, scores each with the reward, and uses the reward minus
the group mean (divided by the group's standard deviation) as every token's advantage, so no
value head is trained. A KL term β·KL(π‖π_ref) keeps the policy near the SL-CAI model, as in PPO.
This is a thin recipe on TRL's `GRPOTrainer`:

    cai rl-cai grpo --prompts builtin:advbench --policy sl-ckpt/ --reward-model pm/ --out grpo-ckpt/
    cai rl-cai grpo --prompts builtin:advbench --policy sl-ckpt/ --reward judge --feedback embedded --out grpo-ckpt/

The reward is the preference model from `cai rl-cai train-pm`, passed to TRL as the sequence-
classification model it is (TRL chat-templates prompt + response and reads the head, as
`preference_model.rewards` does), or the d-RLAIF judge of rewards.py (the feedback model's
expected 1-9 rating against a random principle), or any RewardFunction. The policy gets a fresh
LoRA adapter (dropout 0: sampling and update see the same log-probs); the reference is the same
model with the adapter disabled, so no second copy is held.

Saved as `cai rl-cai dpo` and `ppo` save (see dpo.py): an adapter naming the policy spec as its
base, or the merged full model when the policy is itself a LoRA checkpoint or `lora=False`; plus
`train_log.json` (per step: reward, its spread, KL, length, loss), `reward.svg`, `loss.svg` and
`cai_checkpoint.json`.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from constitutional.atomic_dir import refuse_existing
from constitutional.backends.base import Backend
from constitutional.errors import UserError
from constitutional.generate import load_prompts
from constitutional.train.checkpoint import (
    rl_fields,
    save_policy,
    staged_checkpoint,
    write_checkpoint_record,
    write_train_log,
)
from constitutional.train.common import load_policy, logged_steps, require_train_extra, trainer_args
from constitutional.train.rewards import (
    JudgeReward,
    RbrFactory,
    RewardFunction,
    build_reward,
    check_reward,
    reward_arguments,
)

LOG_KEYS = (
    "step",
    "reward",
    "reward_std",
    "kl",
    "loss",
    "completions/mean_length",
    "entropy",
    "frac_reward_zero_std",
    "learning_rate",
)


def train_grpo(
    prompts: str | Path,
    policy: str,
    out: str | Path,
    *,
    reward: str | RewardFunction = "pm",
    reward_model: str | Path | None = None,
    judge: Backend | None = None,
    constitution: str = "default",
    rbr: str | Path | None = None,
    rbr_weight: float = 1.0,
    rbr_class: str = "hard_refuse",
    rbr_factory: RbrFactory | None = None,
    beta: float = 0.04,
    steps: int = 20,
    prompts_per_step: int = 4,
    num_generations: int = 4,
    max_new_tokens: int = 32,
    temperature: float = 1.0,
    learning_rate: float | None = None,
    lora: bool = True,
    lora_r: int = 16,
    lora_alpha: int = 32,
    seed: int = 0,
    overwrite: bool = False,
    bf16: bool | None = None,
    activation_checkpointing: bool = False,
) -> dict[str, Any]:
    """GRPO of `policy` against a reward; writes a checkpoint directory atomically.

    Args:
        prompts: JSONL with a `prompt` per row, or `builtin:NAME`.
        policy: the model to train, usually the SL-CAI checkpoint; also the KL reference.
        out: checkpoint directory to create (refused if it exists and is not empty).
        reward: "pm" (preference model), "judge" (feedback model's expected rating in [0, 1]),
            "pm+rbr" (the PM plus a weighted rule-based reward), or a
            RewardFunction(prompts, responses) -> list of floats.
        reward_model: preference model directory (reward "pm" only).
        judge: the feedback model as a Backend (reward "judge"; the grader for "pm+rbr").
        constitution: YAML or "default": the principles the judge rates against.
        rbr / rbr_weight / rbr_class / rbr_factory: reward "pm+rbr": weights from `cai rbr fit`, the
            factor on the RBR score (PM + rbr_weight · RBR), the prompts' class, `rbr.reward.rbr_reward`.
        beta: KL coefficient to the reference (GRPO's β; 0 drops the reference altogether).
        steps: optimiser steps; each samples `num_generations` responses for `prompts_per_step` prompts.
        num_generations: group size G (>= 2: advantages are relative to the group).
        max_new_tokens / temperature: sampling of responses.
        learning_rate: default 5e-5 with LoRA, 1e-6 for full fine-tuning.
        lora / lora_r / lora_alpha: a fresh LoRA adapter (default) or full fine-tuning.
        seed: seeds LoRA init, prompt order and sampling.
        overwrite: replace an existing non-empty `out`.
        bf16 / activation_checkpointing: mixed precision and memory switches (`trainer_args`).

    Returns:
        {"steps", "reward_first", "reward_last", "kl_last", "wall_seconds", "out"}: the mean
        reward of the first and last step's responses and the last step's mean KL.
    """
    # Read off the arguments before any other local exists: hyperparameters and reward
    # options are recorded under the arguments' own names.
    args = dict(locals())
    hp = grpo_hparams(args)
    started, out = time.monotonic(), Path(out)
    rows = load_prompts(prompts, chat_allowed=False)  # bad input fails before any model load
    refuse_existing(out, overwrite)
    check_grpo_settings(hp)
    check_reward(reward, reward_model, judge, rbr)
    device = grpo_setup(seed)
    rewards = trl_rewards(reward, device=device, **reward_arguments(args))
    model, tokenizer, policy_is_adapter = load_grpo_policy(policy, device == "cuda" and lora, lora)
    trained = (model, tokenizer, policy_is_adapter)
    return _train_and_save(
        trained, rewards, rows, (policy, prompts, out), overwrite, hp, (device, started)
    )


def grpo_hparams(args: dict[str, Any]) -> dict[str, Any]:
    """The hyperparameters `train_grpo` records, from its arguments."""
    learning_rate, lora = args["learning_rate"], args["lora"]
    return {
        "beta": args["beta"],
        "steps": args["steps"],
        "prompts_per_step": args["prompts_per_step"],
        "num_generations": args["num_generations"],
        "max_new_tokens": args["max_new_tokens"],
        "temperature": args["temperature"],
        "lora": lora,
        "lora_r": args["lora_r"],
        "lora_alpha": args["lora_alpha"],
        "seed": args["seed"],
        "bf16": args["bf16"],
        "activation_checkpointing": args["activation_checkpointing"],
        "learning_rate": learning_rate if learning_rate is not None else 5e-5 if lora else 1e-6,
    }


def _train_and_save(
    trained: tuple,
    rewards: tuple,
    rows: list,
    sources: tuple,
    overwrite: bool,
    hp: dict,
    run_info: tuple,
) -> dict[str, Any]:
    """Train in a staging directory, save the policy with its reward curve and provenance, and
    move it to `out`. Returns train_grpo's summary."""
    model, tokenizer, policy_is_adapter = trained
    reward_funcs, reward_tokenizers, record = rewards
    policy, prompts, out = sources
    device, started = run_info
    lora, seed, beta = hp["lora"], hp["seed"], hp["beta"]
    with staged_checkpoint(out, overwrite) as tmp:
        trainer = grpo_trainer(
            model, tokenizer, (reward_funcs, reward_tokenizers), rows, tmp, hp, device == "cuda"
        )
        trainer.train()
        saved_adapter = save_policy(
            trainer.model, tokenizer, tmp, policy, lora=lora, policy_is_adapter=policy_is_adapter
        )
        log = logged_steps(trainer, LOG_KEYS, "reward")
        summary = grpo_summary(trainer.state.global_step, log, started, out)
        count_unscored(record, reward_funcs)
        write_train_log(tmp, log, reward="reward", loss="loss")
        write_checkpoint_record(
            tmp,
            rl_fields("grpo", policy, saved_adapter, record, beta, prompts),
            hyperparameters=grpo_record_hparams(hp, trainer.args),
            seed=seed,
            device=device,
            summary=summary,
        )
    return summary


def check_grpo_settings(hp: dict[str, Any]) -> None:
    if hp["beta"] < 0 or hp["num_generations"] < 2:
        raise UserError(
            "--beta must be >= 0 and --num-generations >= 2 (advantages are relative to the group)"
        )
    if (
        min(hp["steps"], hp["prompts_per_step"], hp["max_new_tokens"]) < 1
        or not hp["temperature"] > 0
    ):
        raise UserError("steps, prompts per step and max new tokens must be >= 1; temperature > 0")


def grpo_summary(
    steps: int, log: list[dict[str, Any]], started: float, out: Path
) -> dict[str, Any]:
    """What `train_grpo` returns: the first and last step's mean reward, the last step's KL."""
    return {
        "steps": steps,
        "reward_first": log[0]["reward"] if log else None,
        "reward_last": log[-1]["reward"] if log else None,
        "kl_last": log[-1]["kl"] if log else None,
        "wall_seconds": round(time.monotonic() - started, 3),
        "out": str(out),
    }


def count_unscored(record: dict[str, Any], reward_funcs: list) -> None:
    """With a judge reward, record how many judgements had no usable log-probs."""
    judges = [
        j for j in (getattr(f, "reward", None) for f in reward_funcs) if isinstance(j, JudgeReward)
    ]
    if judges:
        record["unscored"] = sum(j.unscored for j in judges)


def grpo_setup(seed: int) -> str:
    """Check the train extra, quiet the progress bars, seed; returns the device."""
    require_train_extra("torch", "datasets", "peft", "transformers", "trl")
    import torch
    from datasets import disable_progress_bars
    from transformers import set_seed
    from transformers.utils import logging as hf_logging

    disable_progress_bars()
    hf_logging.disable_progress_bar()
    set_seed(seed)
    return "cuda" if torch.cuda.is_available() else "cpu"


def load_grpo_policy(policy: str, bf16: bool, lora: bool):
    """The policy (a LoRA one comes back merged), in bf16 for LoRA on a GPU (PEFT keeps the
    adapter in fp32), else fp32; with LoRA its own weights stay frozen."""
    import torch

    model, tokenizer, policy_is_adapter = load_policy(policy)
    model = model.to(torch.bfloat16 if bf16 else torch.float32).requires_grad_(not lora)
    return model, tokenizer, policy_is_adapter


def grpo_trainer(
    model,
    tokenizer,
    rewards: tuple[list, list],
    rows: list[dict],
    tmp: Path,
    hp: dict[str, Any],
    cuda: bool,
):
    """TRL's GRPOTrainer over `rows`' prompts; `rewards` is (reward_funcs, their tokenizers)."""
    from datasets import Dataset
    from peft import LoraConfig
    from trl import GRPOConfig, GRPOTrainer

    config = GRPOConfig(
        **trainer_args(
            tmp,
            hp["seed"],
            cuda,
            bf16=hp["bf16"],
            activation_checkpointing=hp["activation_checkpointing"],
        ),
        beta=hp["beta"],
        num_generations=hp["num_generations"],
        per_device_train_batch_size=hp["prompts_per_step"]
        * hp["num_generations"],  # counts responses
        max_steps=hp["steps"],
        max_completion_length=hp["max_new_tokens"],
        temperature=hp["temperature"],
        learning_rate=hp["learning_rate"],
        disable_dropout=True,  # sampling and update must see the same log-probs
    )
    peft_config = None
    if hp["lora"]:
        peft_config = LoraConfig(
            r=hp["lora_r"],
            lora_alpha=hp["lora_alpha"],
            lora_dropout=0.0,
            target_modules="all-linear",
            task_type="CAUSAL_LM",
        )
    dataset = Dataset.from_list(
        [{"prompt": [{"role": "user", "content": r["prompt"]}]} for r in rows]
    )
    return GRPOTrainer(
        model=model,
        reward_funcs=rewards[0],
        args=config,
        train_dataset=dataset,
        processing_class=tokenizer,
        reward_processing_classes=rewards[1],
        peft_config=peft_config,
    )


def grpo_record_hparams(hp: dict[str, Any], config) -> dict[str, Any]:
    """The hyperparameters `cai_checkpoint.json` records, TRL's own defaults included."""
    return {
        "beta": hp["beta"],
        "steps": hp["steps"],
        "prompts_per_step": hp["prompts_per_step"],
        "num_generations": hp["num_generations"],
        "max_new_tokens": hp["max_new_tokens"],
        "temperature": hp["temperature"],
        "learning_rate": hp["learning_rate"],
        "loss_type": config.loss_type,
        "scale_rewards": config.scale_rewards,
        "epsilon": config.epsilon,
        "num_iterations": config.num_iterations,
        "lora": hp["lora"],
        "lora_r": hp["lora_r"],
        "lora_alpha": hp["lora_alpha"],
        "lora_dropout": 0.0,
    }


def trl_rewards(
    reward, reward_model, judge, constitution: str, seed: int, device: str, **rbr_options
):
    """(reward_funcs, reward_processing_classes, record) for GRPOTrainer.

    The preference model goes in as the model it is, with its own tokenizer; a RewardFunction
    goes in behind `as_trl_reward`.
    """
    if reward == "pm":
        from constitutional.train.preference_model import load_preference_model

        pm, pm_tokenizer = load_preference_model(reward_model, device)
        return (
            [pm],
            [pm_tokenizer],
            {"kind": "pm", "reward_model": str(Path(reward_model).expanduser().resolve())},
        )
    fn, record = build_reward(
        reward,
        reward_model=reward_model,
        judge=judge,
        constitution=constitution,
        seed=seed,
        device=device,
        **rbr_options,
    )
    return [as_trl_reward(fn, record["kind"])], [None], record


def as_trl_reward(fn: RewardFunction, name: str):
    """A RewardFunction(prompts, responses) in TRL's reward signature: conversational prompts
    (the user's text is the last message) and completions (one assistant message each)."""

    def reward(prompts, completions, **kwargs) -> list[float]:
        return fn([p[-1]["content"] for p in prompts], [c[-1]["content"] for c in completions])

    reward.__name__ = name  # TRL logs it as rewards/<name>/mean
    reward.reward = fn  # type: ignore[attr-defined]
    return reward
