"""The RL step of RL-CAI as in the paper: PPO against the preference model, with a KL penalty.

Bai et al. 2022 (section 4) fine-tune the SL-CAI model with PPO, the reward being the preference
model's score minus β·KL to the SL-CAI policy (Ziegler et al. 2019; Stiennon et al. 2020):

    cai rl-cai ppo --prompts builtin:advbench --policy sl-ckpt/ --reward-model pm/ --out ppo-ckpt/

or, with no preference model, the feedback model's expected 1-9 rating of each response against
a principle of the constitution (d-RLAIF, Lee et al. 2023; see rewards.py):

    cai rl-cai ppo --prompts builtin:advbench --policy sl-ckpt/ --reward judge --feedback embedded --out ppo-ckpt/

TRL no longer ships PPO, so this is a compact one, one idea per function:

    rollout   sample a response per prompt (temperature T, no top-k / top-p: the true policy)
    score     reward(prompt, response) at the response's last token, minus β·(log π - log π_ref)
              at every token
    gae       advantages with γ = 1, λ = 0.95, from a value head on the policy's last hidden state
    update    a few epochs of minibatch steps on the clipped policy loss + clipped value loss

The policy is the causal LM with a fresh LoRA adapter (dropout 0, so the log-probs of rollout and
update agree); the reference is the same model with the adapter disabled, so no second copy is
held (full fine-tuning keeps a frozen copy instead). The value head is a separate `nn.Linear` on
the detached last hidden state, trained by the same optimiser (at 10x the learning rate: it starts
from zero and must catch up with the rewards). β is fixed, or adapted towards `target_kl` with
Ziegler et al.'s proportional controller.

Saved as `cai rl-cai dpo` saves (see dpo.py): an adapter naming the policy spec as its base, or the
merged full model when the policy is itself a LoRA checkpoint or `lora=False`; plus
`train_log.json` (per step: reward, KL, response length, losses, β), `reward.svg`, `loss.svg`
and `cai_checkpoint.json`.
"""

from __future__ import annotations

import copy
import random
import time
from dataclasses import dataclass
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
from constitutional.train.common import load_policy, require_train_extra
from constitutional.train.rewards import (
    JudgeReward,
    RbrFactory,
    RewardFunction,
    build_reward,
    check_reward,
    reward_arguments,
)

GAMMA, LAMBDA = 1.0, 0.95  # GAE: no discount within a response; λ trades bias for variance
CLIP, VALUE_CLIP = 0.2, 0.2  # PPO's ε for the ratio, and for the value change per update
VALUE_COEF, VALUE_LR_SCALE = 0.5, 10.0
KL_HORIZON = 10_000  # adaptive β: rollouts over which the controller closes the gap (Ziegler)


def train_ppo(
    prompts: str | Path,
    policy: str,
    reward_model: str | Path | None,
    out: str | Path,
    *,
    reward: str | RewardFunction = "pm",
    judge: Backend | None = None,
    constitution: str = "default",
    rbr: str | Path | None = None,
    rbr_weight: float = 1.0,
    rbr_class: str = "hard_refuse",
    rbr_factory: RbrFactory | None = None,
    beta: float = 0.05,
    adaptive_kl: bool = False,
    target_kl: float = 6.0,
    steps: int = 20,
    batch_size: int = 8,
    ppo_epochs: int = 2,
    minibatch_size: int = 4,
    learning_rate: float = 1e-4,
    max_new_tokens: int = 32,
    temperature: float = 1.0,
    entropy_coef: float = 0.0,
    lora: bool = True,
    lora_r: int = 16,
    lora_alpha: int = 32,
    seed: int = 0,
    overwrite: bool = False,
) -> dict[str, Any]:
    """PPO of `policy` against a reward; writes a checkpoint directory atomically.

    Args:
        prompts: JSONL with a `prompt` per row, or `builtin:NAME`; batches cycle through them.
        policy: the model to train and KL reference, usually the SL-CAI checkpoint (any model spec).
        reward_model: a preference model directory from `cai rl-cai train-pm` (reward "pm" only).
        out: checkpoint directory to create (refused if it exists and is not empty).
        beta: KL penalty per token (the initial value when `adaptive_kl`).
        adaptive_kl / target_kl: adapt β so the per-response KL nears `target_kl` (nats).
        steps: rollouts (each of `batch_size` prompts), each followed by `ppo_epochs` passes.
        minibatch_size: responses per optimiser step.
        learning_rate: of the LoRA weights (or all weights); the value head's is 10x.
        max_new_tokens / temperature / entropy_coef: sampling of responses; entropy bonus weight (0: none).
        lora / lora_r / lora_alpha: a fresh LoRA adapter (default) or full fine-tuning.
        seed: seeds LoRA init, prompt order and sampling.
        overwrite: replace an existing non-empty `out`.
        reward: "pm" (the preference model), "judge" (the feedback model's expected rating in
            [0, 1]), "pm+rbr" (the PM plus a weighted rule-based reward), or any
            RewardFunction(prompts, responses) -> list of floats.
        judge: the feedback model as a Backend (reward "judge"; the grader for "pm+rbr").
        constitution: YAML or "default": the principles the judge rates against.
        rbr / rbr_weight / rbr_class / rbr_factory: reward "pm+rbr": weights from `cai rbr fit`, the
            factor on the RBR score (PM + rbr_weight · RBR), the prompts' class, `rbr.reward.rbr_reward`.

    Returns:
        {"steps", "reward_first", "reward_last", "kl_last", "beta", "wall_seconds", "out"}: mean
        reward of the first and last rollout, and the last rollout's mean KL.
    """
    # Read off the arguments before any other local exists: hyperparameters and reward
    # options are recorded under the arguments' own names.
    args = dict(locals())
    hp = ppo_hparams(args)
    started, out = time.monotonic(), Path(out)
    rows = load_prompts(prompts, chat_allowed=False)  # bad input fails before any model load
    refuse_existing(out, overwrite)
    check_ppo_settings(hp, target_kl)
    check_reward(reward, reward_model, judge, rbr)
    device = ppo_setup(seed)  # after the checks: the train extra is imported only now
    reward_fn, reward_record = build_reward(reward, device=device, **reward_arguments(args))
    run = PPORun.start(
        policy, hp, device, reward_fn, KLController(beta, target_kl if adaptive_kl else None)
    )
    log = run.train(rows, random.Random(seed))
    sources = (policy, prompts, out)
    return _save_ppo(run, log, sources, overwrite, reward_record, hp, (seed, device, beta, started))


def ppo_hparams(args: dict[str, Any]) -> dict[str, Any]:
    """The hyperparameters `train_ppo` records, from its arguments."""
    adaptive_kl, learning_rate = args["adaptive_kl"], args["learning_rate"]
    return {
        "beta": args["beta"],
        "adaptive_kl": adaptive_kl,
        "target_kl": args["target_kl"] if adaptive_kl else None,
        "steps": args["steps"],
        "batch_size": args["batch_size"],
        "ppo_epochs": args["ppo_epochs"],
        "minibatch_size": args["minibatch_size"],
        "learning_rate": learning_rate,
        "value_learning_rate": learning_rate * VALUE_LR_SCALE,
        "max_new_tokens": args["max_new_tokens"],
        "temperature": args["temperature"],
        "entropy_coef": args["entropy_coef"],
        "gamma": GAMMA,
        "lambda": LAMBDA,
        "clip": CLIP,
        "value_clip": VALUE_CLIP,
        "value_coef": VALUE_COEF,
        "lora": args["lora"],
        "lora_r": args["lora_r"],
        "lora_alpha": args["lora_alpha"],
        "lora_dropout": 0.0,
    }


def _save_ppo(
    run, log, sources: tuple, overwrite: bool, reward_record: dict, hp: dict, run_info: tuple
) -> dict[str, Any]:
    """Save the trained policy with its loss curve and provenance into `out`, atomically."""
    policy, prompts, out = sources
    seed, device, beta, started = run_info
    lora = hp["lora"]
    # Saved as an adapter over the policy, or as the merged model.
    with staged_checkpoint(out, overwrite) as tmp:
        saved_adapter = save_policy(
            run.model,
            run.tokenizer,
            tmp,
            policy,
            lora=lora,
            policy_is_adapter=run.policy_is_adapter,
        )
        summary = ppo_summary(log, run.kl_ctl.beta, started, out)
        write_train_log(tmp, log, reward="reward", loss="policy_loss")
        write_checkpoint_record(
            tmp,
            rl_fields("ppo", policy, saved_adapter, reward_record, beta, prompts),
            hyperparameters=hp,
            seed=seed,
            device=device,
            summary=summary,
        )
    return summary


def ppo_setup(seed: int) -> str:
    """Check the train extra and seed everything; returns the device."""
    require_train_extra("torch", "peft", "transformers")
    import torch
    from transformers import set_seed

    set_seed(seed)
    return "cuda" if torch.cuda.is_available() else "cpu"


def ppo_summary(
    log: list[dict[str, Any]], beta: float, started: float, out: Path
) -> dict[str, Any]:
    """What `train_ppo` returns: the first and last rollout's mean reward, the last one's KL."""
    return {
        "steps": len(log),
        "reward_first": log[0]["reward"],
        "reward_last": log[-1]["reward"],
        "kl_last": log[-1]["kl"],
        "beta": beta,
        "wall_seconds": round(time.monotonic() - started, 3),
        "out": str(out),
    }


def check_ppo_settings(hp: dict[str, Any], target_kl: float) -> None:
    if hp["beta"] < 0 or (hp["adaptive_kl"] and not target_kl > 0):
        raise UserError("--beta must be >= 0 (and the target KL > 0 with --adaptive-kl)")
    sizes = (
        hp["steps"],
        hp["batch_size"],
        hp["ppo_epochs"],
        hp["minibatch_size"],
        hp["max_new_tokens"],
    )
    if min(sizes) < 1 or not hp["temperature"] > 0:
        raise UserError(
            "steps, batch size, epochs, minibatch size and max new tokens must be >= 1; temperature > 0"
        )


@dataclass
class PPORun:
    """What one PPO run holds: the policy (LoRA-wrapped, or with a frozen copy `ref`), the value
    head and their optimiser, the reward and the KL controller."""

    device: str
    model: Any
    tokenizer: Any
    policy_is_adapter: bool
    ref: Any
    value_head: Any
    optimizer: Any
    reward_fn: Any
    kl_ctl: KLController
    hp: dict[str, Any]

    @classmethod
    def start(
        cls, policy: str, hp: dict[str, Any], device: str, reward_fn, kl_ctl: KLController
    ) -> PPORun:
        import torch
        from peft import LoraConfig, get_peft_model

        model, tokenizer, policy_is_adapter = load_policy(policy)  # a LoRA policy comes back merged
        model = model.float().to(device)
        ref = None
        if hp["lora"]:
            config = LoraConfig(
                r=hp["lora_r"],
                lora_alpha=hp["lora_alpha"],
                lora_dropout=0.0,
                target_modules="all-linear",
                task_type="CAUSAL_LM",
            )
            model = get_peft_model(model, config)
        else:
            ref = copy.deepcopy(model).eval().requires_grad_(False)
            model.requires_grad_(True)
        value_head = torch.nn.Linear(model.config.get_text_config().hidden_size, 1).to(device)
        torch.nn.init.zeros_(value_head.weight), torch.nn.init.zeros_(value_head.bias)
        optimizer = torch.optim.Adam(
            [
                {
                    "params": [p for p in model.parameters() if p.requires_grad],
                    "lr": hp["learning_rate"],
                },
                {"params": value_head.parameters(), "lr": hp["value_learning_rate"]},
            ]
        )
        return cls(
            device,
            model,
            tokenizer,
            policy_is_adapter,
            ref,
            value_head,
            optimizer,
            reward_fn,
            kl_ctl,
            hp,
        )

    def train(self, rows: list[dict], order: random.Random) -> list[dict[str, Any]]:
        """`steps` rollouts, each followed by its PPO update; the per-step log. Batches cycle
        through the prompts in an order drawn afresh (seeded) each time they run out."""
        queue: list[dict] = []
        log = []
        for step in range(1, self.hp["steps"] + 1):
            batch = []
            while len(batch) < self.hp["batch_size"]:
                queue = queue or order.sample(rows, len(rows))
                batch.append(queue.pop()["prompt"])
            log.append(self.step(step, batch))
            self.kl_ctl.update(log[-1]["kl"], self.hp["batch_size"])
        return log

    def step(self, step: int, batch: list[str]) -> dict[str, Any]:
        """One rollout on `batch`, scored, turned into advantages and trained on; its log entry."""
        import torch

        hp, model, temperature = self.hp, self.model, self.hp["temperature"]
        roll = rollout(
            model,
            self.tokenizer,
            batch,
            max_new_tokens=hp["max_new_tokens"],
            temperature=temperature,
        )
        scores = torch.tensor(
            self.reward_fn(batch, roll["texts"]), dtype=torch.float32, device=self.device
        )
        with torch.no_grad():
            logp, values, _ = forward(model, self.value_head, roll, temperature)
            ref_logp = reference_logprobs(model, self.ref, roll, temperature)
        mask = roll["mask"]
        kl = (logp - ref_logp) * mask
        rewards = token_rewards(scores, kl, mask, self.kl_ctl.beta)
        advantages, returns = gae(rewards, values, mask)
        advantages = whiten(advantages, mask)
        stats = ppo_update(
            model,
            self.value_head,
            self.optimizer,
            roll,
            logp,
            values,
            advantages,
            returns,
            epochs=hp["ppo_epochs"],
            minibatch_size=hp["minibatch_size"],
            temperature=temperature,
            entropy_coef=hp["entropy_coef"],
        )
        entry = {
            "step": step,
            "reward": scores.mean().item(),
            "kl": kl.sum(1).mean().item(),
            "response_length": mask.sum(1).float().mean().item(),
            "beta": self.kl_ctl.beta,
            **stats,
        }
        if isinstance(self.reward_fn, JudgeReward):
            entry["unscored"] = (
                self.reward_fn.unscored
            )  # judgements with no usable log-probs, so far
        return entry


# -- rollout -----------------------------------------------------------------------------------


def rollout(
    model, tokenizer, prompts: list[str], *, max_new_tokens: int, temperature: float
) -> dict:
    """Sample one response per prompt. Returns ids (prompt + response, prompts left-padded),
    attention_mask, the prompt width, `mask` over response tokens (up to and including EOS) and
    the decoded `texts`."""
    import torch

    texts = [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True
        )
        for p in prompts
    ]
    tokenizer.padding_side = "left"
    enc = tokenizer(texts, add_special_tokens=False, padding=True, return_tensors="pt").to(
        model.device
    )
    model.eval()
    with torch.no_grad():
        ids = model.generate(
            **enc,
            do_sample=True,
            temperature=temperature,
            top_k=0,
            top_p=1.0,
            max_new_tokens=max_new_tokens,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    width = enc["input_ids"].shape[1]
    response = ids[:, width:]
    ended = (response == tokenizer.eos_token_id).long().cumsum(1)
    mask = (
        (ended == 0) | ((ended == 1) & (response == tokenizer.eos_token_id))
    ).float()  # EOS counts
    texts = tokenizer.batch_decode(
        response * mask.long() + tokenizer.pad_token_id * (1 - mask.long()),
        skip_special_tokens=True,
    )
    attention = torch.cat([enc["attention_mask"], mask.long()], dim=1)
    return {"ids": ids, "attention_mask": attention, "width": width, "mask": mask, "texts": texts}


def forward(model, value_head, roll: dict, temperature: float, rows=slice(None)):
    """Per response token: log π(token) at `temperature`, the value of the state before it, and
    the policy's entropy there. Each (batch, response length)."""
    import torch

    ids, attention = roll["ids"][rows], roll["attention_mask"][rows]
    positions = (attention.cumsum(1) - 1).clamp(min=0)  # as generate() numbers left-padded rows
    out = model(
        input_ids=ids,
        attention_mask=attention,
        position_ids=positions,
        output_hidden_states=True,
        use_cache=False,
    )
    w = roll["width"]
    logits = out.logits[:, w - 1 : -1].float() / temperature  # position t predicts token t + 1
    logprobs = torch.log_softmax(logits, dim=-1)
    token_logp = logprobs.gather(-1, ids[:, w:, None]).squeeze(-1)
    entropy = -(logprobs.exp() * logprobs).sum(-1)
    values = value_head(out.hidden_states[-1][:, w - 1 : -1].detach().float()).squeeze(-1)
    return token_logp, values, entropy


def reference_logprobs(model, ref, roll: dict, temperature: float):
    """log π_ref per response token: the policy with its LoRA adapter off, or the frozen copy."""
    if ref is not None:
        return forward(ref, _NoValue(), roll, temperature)[0]
    with model.disable_adapter():
        return forward(model, _NoValue(), roll, temperature)[0]


class _NoValue:
    """A stand-in value head for reference passes."""

    def __call__(self, hidden):
        return hidden[..., :1]


# -- advantages and losses ---------------------------------------------------------------------


def token_rewards(scores, kl, mask, beta: float):
    """−β·KL at every response token, plus the PM score on the last one."""
    import torch

    rewards = -beta * kl * mask
    last = (mask.sum(1).long() - 1).clamp(min=0)
    return rewards + torch.zeros_like(rewards).scatter(
        1, last[:, None], scores[:, None].to(rewards.dtype)
    )


def gae(rewards, values, mask, gamma: float = GAMMA, lam: float = LAMBDA):
    """Generalised advantage estimates and returns (advantage + value), 0 past each response."""
    import torch

    rewards, values = rewards * mask, values * mask  # past the end: no reward, value 0
    advantages = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(rewards.shape[1])):
        next_value = values[:, t + 1] if t + 1 < rewards.shape[1] else torch.zeros_like(running)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running = delta + gamma * lam * running
        advantages[:, t] = running
    advantages = advantages * mask
    return advantages, advantages + values


def whiten(x, mask, eps: float = 1e-8):
    """Zero mean, unit variance over the masked entries (PPO's advantage normalisation)."""
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    return (x - mean) * (var + eps).rsqrt() * mask


def masked_mean(x, mask):
    return (x * mask).sum() / mask.sum().clamp(min=1)


def policy_loss(logp, old_logp, advantages, mask, clip: float = CLIP):
    """PPO's clipped surrogate: mean of max(−A·r, −A·clip(r, 1−ε, 1+ε)), r = π/π_old; and the
    share of tokens where the clip is active."""
    ratio = (logp - old_logp).exp()
    unclipped, clipped = -advantages * ratio, -advantages * ratio.clamp(1 - clip, 1 + clip)
    return masked_mean(unclipped.maximum(clipped), mask), masked_mean(
        (clipped > unclipped).float(), mask
    )


def value_loss(values, old_values, returns, mask, clip: float = VALUE_CLIP):
    """½ mean of max((V − R)², (V_clipped − R)²), V_clipped = V_old + clip(V − V_old, ±ε)."""
    clipped = old_values + (values - old_values).clamp(-clip, clip)
    return 0.5 * masked_mean(((values - returns) ** 2).maximum((clipped - returns) ** 2), mask)


def ppo_update(
    model,
    value_head,
    optimizer,
    roll,
    old_logp,
    old_values,
    advantages,
    returns,
    *,
    epochs: int,
    minibatch_size: int,
    temperature: float,
    entropy_coef: float,
) -> dict:
    """`epochs` shuffled passes of minibatch steps; returns the losses averaged over them."""
    import torch

    model.train()
    n = old_logp.shape[0]
    totals: dict[str, float] = {
        "policy_loss": 0.0,
        "value_loss": 0.0,
        "entropy": 0.0,
        "clipfrac": 0.0,
    }
    count = 0
    for _ in range(epochs):
        for idx in torch.randperm(n).split(minibatch_size):
            mask = roll["mask"][idx]
            logp, values, entropy = forward(model, value_head, roll, temperature, rows=idx)
            pg, clipfrac = policy_loss(logp, old_logp[idx], advantages[idx], mask)
            vf = value_loss(values, old_values[idx], returns[idx], mask)
            ent = masked_mean(entropy, mask)
            loss = pg + VALUE_COEF * vf - entropy_coef * ent
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            for k, v in (
                ("policy_loss", pg),
                ("value_loss", vf),
                ("entropy", ent),
                ("clipfrac", clipfrac),
            ):
                totals[k] += v.item()
            count += 1
    model.eval()
    return {k: v / count for k, v in totals.items()}


class KLController:
    """β for the KL penalty: fixed, or (with a target) Ziegler et al.'s proportional controller,
    β ← β·(1 + clip(KL/target − 1, ±0.2)·n/horizon) after each rollout of n responses."""

    def __init__(self, beta: float, target: float | None = None, horizon: int = KL_HORIZON):
        self.beta, self.target, self.horizon = beta, target, horizon

    def update(self, kl: float, n: int) -> None:
        if self.target is not None:
            error = min(max(kl / self.target - 1, -0.2), 0.2)
            self.beta *= 1 + error * n / self.horizon
