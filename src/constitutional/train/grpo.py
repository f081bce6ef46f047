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

import shutil
import time
from pathlib import Path
from typing import Any

from constitutional.backends.base import Backend
from constitutional.errors import UserError
from constitutional.jsonl import write_json
from constitutional.provenance import package_versions
from constitutional.train.rewards import JudgeReward, RewardFunction, build_reward, check_reward
from constitutional.train.sft import (
    CHECKPOINT_SCHEMA,
    base_reference,
    publish_dir,
    save_model_dir,
    staging_dir,
    trainer_args,
    write_loss_svg,
)

LOG_KEYS = ("step", "reward", "reward_std", "kl", "loss", "completions/mean_length", "entropy",
            "frac_reward_zero_std", "learning_rate")  # fmt: skip


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
            "pm+rbr" (the PM plus a weighted rule-based reward), or a RewardFunction(prompts, responses) -> list of floats.
        reward_model: preference model directory (reward "pm" only).
        judge: the feedback model as a Backend (reward "judge"; the grader for "pm+rbr").
        constitution: YAML or "default": the principles the judge rates against.
        rbr / rbr_weight / rbr_class: reward "pm+rbr": weights from `cai rbr fit`, the factor
            on the RBR score (reward = PM + rbr_weight · RBR) and the prompts' response class.
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
    started = time.monotonic()
    out = Path(out)
    from constitutional.generate import load_prompts

    rows = load_prompts(prompts, chat_allowed=False)  # bad input fails before any model load
    if out.exists() and (out.is_file() or any(out.iterdir())) and not overwrite:
        raise UserError("output exists and is not empty; pass --overwrite to replace it", out)
    if beta < 0 or num_generations < 2:
        raise UserError("--beta must be >= 0 and --num-generations >= 2 (advantages are relative to the group)")
    if min(steps, prompts_per_step, max_new_tokens) < 1 or not temperature > 0:
        raise UserError("steps, prompts per step and max new tokens must be >= 1; temperature > 0")
    check_reward(reward, reward_model, judge, rbr)
    if learning_rate is None:
        learning_rate = 5e-5 if lora else 1e-6
    try:
        import torch
        from datasets import Dataset, disable_progress_bars
        from peft import LoraConfig
        from transformers import set_seed
        from transformers.utils import logging as hf_logging
        from trl import GRPOConfig, GRPOTrainer
    except ImportError as e:
        raise UserError(f"training needs {e.name}, part of the train extra: pip install 'constitutional[train]'") from None
    from constitutional.backends.local import _load_uncached, resolve_model

    disable_progress_bars()
    hf_logging.disable_progress_bar()
    set_seed(seed)
    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    reward_funcs, reward_tokenizers, record = trl_rewards(reward, reward_model, judge, constitution, seed, device,
                                                          rbr=rbr, rbr_weight=rbr_weight, rbr_class=rbr_class)
    policy_path = resolve_model(policy)
    policy_is_adapter = (policy_path / "adapter_config.json").is_file()
    model, tokenizer = _load_uncached(policy_path, "cpu")  # a LoRA policy comes back merged
    model = model.to(torch.bfloat16 if cuda and lora else torch.float32).requires_grad_(not lora)
    dataset = Dataset.from_list([{"prompt": [{"role": "user", "content": r["prompt"]}]} for r in rows])

    tmp = staging_dir(out)
    try:
        config = GRPOConfig(
            **trainer_args(tmp, seed, cuda, bf16=bf16, activation_checkpointing=activation_checkpointing),
            beta=beta,
            num_generations=num_generations,
            per_device_train_batch_size=prompts_per_step * num_generations,  # counts responses
            max_steps=steps,
            max_completion_length=max_new_tokens,
            temperature=temperature,
            learning_rate=learning_rate,
            disable_dropout=True,  # sampling and update must see the same log-probs
        )
        peft_config = None
        if lora:
            peft_config = LoraConfig(r=lora_r, lora_alpha=lora_alpha, lora_dropout=0.0, target_modules="all-linear",
                                     task_type="CAUSAL_LM")  # fmt: skip
        trainer = GRPOTrainer(
            model=model,
            reward_funcs=reward_funcs,
            args=config,
            train_dataset=dataset,
            processing_class=tokenizer,
            reward_processing_classes=reward_tokenizers,
            peft_config=peft_config,
        )
        trainer.train()
        shutil.rmtree(tmp / "trainer", ignore_errors=True)

        # Save: an adapter over the policy spec, or the full (merged) model; see dpo.py.
        trained = trainer.model
        saved_adapter = lora and not policy_is_adapter
        if lora and not saved_adapter:
            trained = trained.merge_and_unload()
        save_model_dir(trained, tokenizer, tmp, policy, adapter=saved_adapter)

        log = [{k: e.get(k) for k in LOG_KEYS} for e in trainer.state.log_history if "reward" in e]
        summary = {
            "steps": trainer.state.global_step,
            "reward_first": log[0]["reward"] if log else None,
            "reward_last": log[-1]["reward"] if log else None,
            "kl_last": log[-1]["kl"] if log else None,
            "wall_seconds": round(time.monotonic() - started, 3),
            "out": str(out),
        }
        judges = [getattr(f, "reward", None) for f in reward_funcs]
        if any(isinstance(j, JudgeReward) for j in judges):
            record["unscored"] = sum(j.unscored for j in judges if isinstance(j, JudgeReward))
        write_json(tmp / "train_log.json", log)
        write_loss_svg(tmp / "reward.svg", [(e["step"], e["reward"]) for e in log])
        write_loss_svg(tmp / "loss.svg", [(e["step"], e["loss"]) for e in log if e["loss"] is not None])
        write_json(tmp / "cai_checkpoint.json", {
            "schema": CHECKPOINT_SCHEMA,
            "stage": "rl-cai-grpo",
            "kind": "grpo",
            "policy": base_reference(policy),
            "reference": base_reference(policy),
            "base": base_reference(policy) if saved_adapter else None,
            "reward_model": record.get("reward_model"),
            "reward": record,
            "beta": beta,
            "prompts": str(prompts),
            "hyperparameters": {
                "beta": beta, "steps": steps, "prompts_per_step": prompts_per_step,
                "num_generations": num_generations, "max_new_tokens": max_new_tokens, "temperature": temperature,
                "learning_rate": learning_rate, "loss_type": config.loss_type, "scale_rewards": config.scale_rewards,
                "epsilon": config.epsilon, "num_iterations": config.num_iterations, "lora": lora,
                "lora_r": lora_r, "lora_alpha": lora_alpha, "lora_dropout": 0.0,
            },
            "seed": seed,
            "device": device,
            **summary,
            "packages": package_versions(),
        })  # fmt: skip
        publish_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return summary


def trl_rewards(reward, reward_model, judge, constitution: str, seed: int, device: str, **rbr_options):
    """(reward_funcs, reward_processing_classes, record) for GRPOTrainer.

    The preference model goes in as the model it is, with its own tokenizer; a RewardFunction
    goes in behind `as_trl_reward`.
    """
    if reward == "pm":
        from constitutional.train.preference_model import load_preference_model

        pm, pm_tokenizer = load_preference_model(reward_model, device)
        return [pm], [pm_tokenizer], {"kind": "pm", "reward_model": str(Path(reward_model).expanduser().resolve())}
    fn, record = build_reward(reward, reward_model=reward_model, judge=judge, constitution=constitution,
                              seed=seed, device=device, **rbr_options)
    return [as_trl_reward(fn, record["kind"])], [None], record


def as_trl_reward(fn: RewardFunction, name: str):
    """A RewardFunction(prompts, responses) in TRL's reward signature: conversational prompts
    (the user's text is the last message) and completions (one assistant message each)."""

    def reward(prompts, completions, **kwargs) -> list[float]:
        return fn([p[-1]["content"] for p in prompts], [c[-1]["content"] for c in completions])

    reward.__name__ = name  # TRL logs it as rewards/<name>/mean
    reward.reward = fn  # type: ignore[attr-defined]
    return reward
