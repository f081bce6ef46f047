"""One function per pipeline stage: read the upstream artifacts, call the library, write outputs.

Each stage takes the run context and its recipe section and returns what the manifest should
record about it (counts, scores). Files live at fixed names inside the run directory, so any
stage's output can be inspected or fed to the matching `cai` command by hand.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from constitutional.recipe.schema import Recipe

# Fixed artifact names inside a run directory.
SL_TRACES, SL_SFT, SL_DIRECT = "sl.jsonl", "sl.sft.jsonl", "sl.direct.jsonl"
SL_CKPT = "sl-ckpt"
LABELS, LABELS_DPO = "labels.jsonl", "labels.dpo.jsonl"
PM_CKPT = "pm"
RL_CKPT = "rl-ckpt"
EVAL, AUDIT, PRINCIPLES, REVISIONS = "eval.json", "audit.json", "principles.json", "revisions.json"


@dataclass
class RunContext:
    """What every stage may use: the recipe, the run directory, the constitution, backends."""

    recipe: Recipe
    run_dir: Path
    constitution: Any
    progress: Callable[[str, int], None]
    _backends: dict[str, Any] = field(default_factory=dict)

    def model_spec(self, name: str) -> str:
        """'base' → the recipe's model; 'sl' / 'rl' → this run's checkpoints; else as given."""
        named = {
            "base": self.recipe.model,
            "sl": str(self.run_dir / SL_CKPT),
            "rl": str(self.run_dir / RL_CKPT),
        }
        return named.get(name, name)

    def backend(self, name: str):
        """One backend per model, shared by the stages; all write the run's own response cache."""
        spec = self.model_spec(name)
        if spec not in self._backends:
            from constitutional.backends import make_backend

            b = self.recipe.backend
            options = (
                {"batch_size": b.batch_size, "precision": b.precision}
                if b.name == "local"
                else {"base_url": b.base_url, "concurrency": b.concurrency}
            )
            self._backends[spec] = make_backend(
                b.name, spec, cache=self.run_dir / "responses.sqlite", use_cache=b.cache, **options
            )
        return self._backends[spec]

    def begin_stage(self) -> None:
        """Fresh usage meters, so each stage records its own tokens, not the run's running total."""
        from constitutional.backends import Usage

        for backend in self._backends.values():
            backend.usage = Usage()

    def path(self, name: str) -> Path:
        return self.run_dir / name


def sl_cai(ctx: RunContext, cfg) -> dict[str, Any]:
    from constitutional.generate import load_prompts
    from constitutional.jsonl import write_jsonl
    from constitutional.sl_cai import SLConfig, generate_sl_data, to_sft_rows

    red = load_prompts(cfg.prompts, chat_allowed=False)[: cfg.limit]
    helpful = load_prompts(cfg.helpful_prompts, chat_allowed=False) if cfg.helpful_ratio > 0 else []
    config = SLConfig(
        rounds=cfg.rounds,
        temperature_start=cfg.temperature_start,
        temperature_end=cfg.temperature_end,
        max_tokens=cfg.max_tokens,
        fewshot=cfg.fewshot,
        helpful_ratio=cfg.helpful_ratio,
        critique=cfg.critique,
        seed=ctx.recipe.seed,
    )
    llm = ctx.backend("base")
    traces = generate_sl_data(ctx.constitution, red, helpful, llm, config, ctx.progress)
    sft = to_sft_rows(traces)
    write_jsonl(ctx.path(SL_TRACES), traces)
    write_jsonl(ctx.path(SL_SFT), sft)
    if (
        cfg.ablation_prompts
    ):  # the paper's ablation: the same prompts revised with no critique first
        direct = generate_sl_data(
            ctx.constitution,
            red[: cfg.ablation_prompts],
            [],
            llm,
            replace(config, critique=False, helpful_ratio=0.0),
            ctx.progress,
        )
        write_jsonl(ctx.path(SL_DIRECT), direct)
    kept = sum(1 for t in traces if t["kind"] == "red_team" and not t["discarded"])
    return {
        "backend": llm,
        "counts": {
            "red_team": len(red),
            "kept": kept,
            "sft_rows": len(sft),
            "ablation_prompts": cfg.ablation_prompts,
        },
    }


def sft(ctx: RunContext, cfg) -> dict[str, Any]:
    from constitutional.train.sft import train_sft

    s = train_sft(
        ctx.path(SL_SFT),
        ctx.recipe.model,
        ctx.path(SL_CKPT),
        overwrite=True,
        seed=ctx.recipe.seed,
        **_train_args(cfg),
    )
    return {"result": _without(s, "out")}


def label(ctx: RunContext, cfg) -> dict[str, Any]:
    if cfg.source == "revisions":
        return _revision_labels(ctx)
    from constitutional import rl_cai
    from constitutional.generate import load_prompts
    from constitutional.jsonl import write_jsonl

    config = rl_cai.LabelConfig(
        mode=cfg.mode,
        swap_average=cfg.swap_average,
        principles_per_pair=cfg.principles_per_pair,
        fewshot=cfg.fewshot,
        max_tokens=cfg.max_tokens,
        seed=ctx.recipe.seed,
    )
    config.check(ctx.constitution)
    rows = load_prompts(cfg.prompts, chat_allowed=False)[: cfg.limit]
    policy = ctx.backend("sl" if ctx.recipe.stages.sft else "base")
    feedback = ctx.backend(cfg.feedback)
    labelled = rl_cai.label_pairs(ctx.constitution, rows, policy, feedback, config, ctx.progress)
    dpo = rl_cai.to_dpo_rows(labelled)
    write_jsonl(ctx.path(LABELS), labelled)
    write_jsonl(ctx.path(LABELS_DPO), dpo)
    kept = sum(not r["discarded"] for r in labelled)
    sampled = (
        "shared with feedback"
        if policy is feedback
        else {"model": policy.model, "tokens": vars(policy.usage).copy()}
    )
    return {
        "backend": feedback,
        "policy": sampled,
        "counts": {"pairs": len(labelled), "kept": kept, "dpo": len(dpo)},
    }


def _revision_labels(ctx: RunContext) -> dict[str, Any]:
    """Judge-free preference pairs from this run's SL-CAI traces (no model is called)."""
    from constitutional.jsonl import read_jsonl, write_jsonl
    from constitutional.rl_cai import to_dpo_rows
    from constitutional.rl_cai.revision_pairs import revision_pairs

    labelled = revision_pairs(read_jsonl(ctx.path(SL_TRACES)), ctx.recipe.seed, ctx.constitution)
    dpo = to_dpo_rows(labelled)
    write_jsonl(ctx.path(LABELS), labelled)
    write_jsonl(ctx.path(LABELS_DPO), dpo)
    return {
        "source": "revisions",
        "counts": {"pairs": len(labelled), "kept": len(labelled), "dpo": len(dpo)},
    }


def preference_model(ctx: RunContext, cfg) -> dict[str, Any]:
    from constitutional.train.preference_model import train_preference_model

    s = train_preference_model(
        ctx.path(LABELS),
        ctx.recipe.model,
        ctx.path(PM_CKPT),
        overwrite=True,
        eval_fraction=cfg.eval_fraction,
        seed=ctx.recipe.seed,
        **_train_args(cfg),
    )
    return {"result": _without(s, "out")}


def policy(ctx: RunContext, cfg) -> dict[str, Any]:
    start = ctx.model_spec("sl" if ctx.recipe.stages.sft else "base")
    if cfg.method == "dpo":
        from constitutional.train.dpo import train_dpo

        s = train_dpo(
            ctx.path(LABELS_DPO),
            start,
            ctx.path(RL_CKPT),
            beta=cfg.beta,
            overwrite=True,
            seed=ctx.recipe.seed,
            **_train_args(cfg),
        )
    else:
        from constitutional.train.ppo import train_ppo

        s = train_ppo(
            cfg.prompts or ctx.recipe.stages.label.prompts,
            start,
            ctx.path(PM_CKPT),
            ctx.path(RL_CKPT),
            beta=cfg.beta,
            steps=cfg.steps,
            batch_size=cfg.batch_size,
            max_new_tokens=cfg.max_new_tokens,
            learning_rate=cfg.learning_rate or 1e-4,
            lora=cfg.lora,
            seed=ctx.recipe.seed,
            overwrite=True,
        )
    return {"method": cfg.method, "result": _without(s, "out")}


def evaluate(ctx: RunContext, cfg) -> dict[str, Any]:
    """Every model the run produced against the base model, with the judge's own audit; then
    audits of the judge and the principles from this run's own labels and traces."""
    from constitutional.eval.audits import run_judge_audit, run_principle_audit
    from constitutional.eval.run import SYSTEM_PROMPT_SUFFIX, EvalRunConfig, model_usage, run_eval

    stages = ctx.recipe.stages
    names = ["base", *(["sl"] if stages.sft else []), *(["rl"] if stages.policy else [])]
    models = {name: ctx.model_spec(name) for name in names}
    if cfg.system_prompt_baseline:  # the cheapest alternative to training, as a baseline
        models = {
            "base": models.pop("base"),
            "base+constitution": ctx.recipe.model + SYSTEM_PROMPT_SUFFIX,
            **models,
        }
    judge = ctx.model_spec(cfg.judge)
    config = EvalRunConfig(
        models=models,
        judge=judge,
        red_team=cfg.red_team,
        helpful=cfg.helpful,
        over_refusal=cfg.over_refusal,
        limit=cfg.limit,
        seed=ctx.recipe.seed,
        constitution=ctx.recipe.constitution,
        max_tokens=cfg.max_tokens,
        judge_pairs=cfg.judge_pairs,
        max_flip_rate=cfg.max_flip_rate,
        min_human_agreement=cfg.min_human_agreement,
    )
    doc = run_eval(config, ctx.path(EVAL), make_backend=ctx.backend, progress=ctx.progress)
    if (
        cfg.audit and stages.label and stages.label.source == "judge"
    ):  # revision pairs had no judge to audit
        # Self-preference: the feedback model's own answers against the SL-CAI model's.
        other = ctx.model_spec("sl") if stages.sft and stages.label.feedback == "base" else None
        run_judge_audit(
            ctx.path(LABELS),
            ctx.path(AUDIT),
            judge=ctx.model_spec(stages.label.feedback),
            other=other,
            constitution=ctx.recipe.constitution,
            limit=cfg.limit,
            seed=ctx.recipe.seed,
            max_tokens=cfg.max_tokens,
            make_backend=ctx.backend,
        )
    if cfg.audit and (stages.sl_cai or stages.label):
        run_principle_audit(
            ctx.path(PRINCIPLES),
            sl=ctx.path(SL_TRACES) if stages.sl_cai else None,
            labels=ctx.path(LABELS) if stages.label else None,
            constitution=ctx.recipe.constitution,
            seed=ctx.recipe.seed,
        )
    if stages.sl_cai:
        _revisions(ctx)
    inst = doc["instrument"]
    summary = {
        name: {
            "harmless_elo": round(doc["elo"]["harmless"]["ratings"][name]["elo"], 1),
            "helpful_elo": round(doc["elo"]["helpful"]["ratings"][name]["elo"], 1),
            "attack_success": doc["attack_success"][name]["rate"],
            "instrument_harmful_compliance": inst["harmful_compliance"][name]["rate"],
            "instrument_over_refusal": inst["over_refusal"][name]["rate"],
        }
        for name in models
    }
    gate = {"reliable": doc["judge"]["reliable"], "reasons": doc["judge"]["reasons"]}
    return {
        "backend": ctx.backend(judge),
        "models": models,
        "pareto": doc["pareto"],
        "judge": gate,
        "result": summary,
        "evaluated": model_usage(models, ctx.backend, ctx.backend(judge)),
    }


def _revisions(ctx: RunContext) -> None:
    """revisions.json: harmful compliance after each SL-CAI round, with and without critiques on
    the same prompts when the ablation ran (read from the traces; no model is called)."""
    from constitutional.eval.revisions import revisions_curve
    from constitutional.jsonl import read_jsonl, write_json

    traces = read_jsonl(ctx.path(SL_TRACES))
    doc: dict[str, Any] = {"artifact": "revisions_curve", "critique": revisions_curve(traces)}
    if ctx.path(SL_DIRECT).is_file():
        direct = read_jsonl(ctx.path(SL_DIRECT))
        ids = {t["id"] for t in direct}
        doc["ablation"] = {
            "prompts": len(direct),
            "critique": revisions_curve([t for t in traces if t["id"] in ids]),
            "direct": revisions_curve(direct),
        }
    write_json(ctx.path(REVISIONS), doc)


def _train_args(cfg) -> dict[str, Any]:
    return {
        "epochs": cfg.epochs,
        "max_steps": cfg.max_steps,
        "batch_size": cfg.batch_size,
        "learning_rate": cfg.learning_rate,
        "lora": cfg.lora,
    }


def _without(d: dict, *keys: str) -> dict:
    return {k: v for k, v in d.items() if k not in keys}


# Stage name → (function, outputs it leaves in the run directory), in pipeline order.
STAGES: dict[str, tuple[Callable[[RunContext, Any], dict], tuple[str, ...]]] = {
    "sl_cai": (sl_cai, (SL_TRACES, SL_SFT)),
    "sft": (sft, (SL_CKPT,)),
    "label": (label, (LABELS, LABELS_DPO)),
    "preference_model": (preference_model, (PM_CKPT,)),
    "policy": (policy, (RL_CKPT,)),
    "eval": (evaluate, (EVAL,)),
}
