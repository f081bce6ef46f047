"""`cai rl-cai label`: AI-feedback preference labels, the first step of RL-CAI."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from constitutional.cli.models import (
    BackendOpt,
    BaseUrlOpt,
    CacheOpt,
    Concurrency16Opt,
    NoCacheOpt,
    SlotsOpt,
    backend_from_options,
    stage_progress,
)
from constitutional.cli.rl_cai_dpo import dpo
from constitutional.cli.rl_cai_grpo import grpo
from constitutional.cli.rl_cai_pm import score, train_pm
from constitutional.cli.rl_cai_ppo import ppo

app = typer.Typer(
    help="RL-CAI: AI-feedback preference labels for reward modelling / DPO.", no_args_is_help=True
)


def dpo_path(out: Path) -> Path:
    """Where the TRL preference export of `out` goes: prefs.jsonl → prefs.dpo.jsonl."""
    return out.with_name(out.name.removesuffix(".jsonl") + ".dpo.jsonl")


@app.callback()
def _group() -> None:
    """RL-CAI: AI-feedback preference labels for reward modelling / DPO."""
    # A callback keeps this a command group even with one command, so `rl-cai label` is stable.


PolicyOpt = typer.Option(
    ...,
    "--policy",
    help="Model that writes the two responses ('embedded', .gguf, HF dir, or server model).",
)
FeedbackOpt = typer.Option(
    ..., "--feedback", help="Model that judges them (may be the same as --policy)."
)
PromptsOpt = typer.Option(
    ...,
    "--prompts",
    "-p",
    help="JSONL with `prompt`, or builtin:advbench|harmbench|strongreject|self_instruct|mt_bench.",
)
OutOpt = typer.Option(
    ...,
    "--out",
    "-o",
    help="Label JSONL (discards kept with reasons); TRL rows go to OUT.dpo.jsonl.",
)
ConstitutionOpt = typer.Option(
    "default", "--constitution", "-c", help="Constitution YAML, or 'default'."
)
ModeOpt = typer.Option(
    "logprob", help="logprob: p(A) read directly; cot: reason step by step first."
)
ClampOpt = typer.Option(
    (0.4, 0.6),
    help="Band LO HI for p(A); applied in cot mode (and logprob with --clamp-logprob).",
)
SwapAverageOpt = typer.Option(
    False,
    "--swap-average",
    help="Also judge with A/B swapped and average (cancels position bias).",
)
PrinciplesPerPairOpt = typer.Option(1, help="K principles per pair; p(A) is averaged over them.")
FewshotOpt = typer.Option(2, help="Constitution comparison exemplars shown before each question.")
HumanPrefsOpt = typer.Option(
    None, help="HH-style JSONL with prompt, chosen, rejected: mixed in as hard labels."
)
HumanRatioOpt = typer.Option(
    0.1, help="Share of human rows in the output, in [0, 1) (with --human-prefs)."
)
SeedOpt = typer.Option(0, help="Run seed: samples, principle draws and sides derive from it.")


@app.command()
def label(
    policy: str = PolicyOpt,
    feedback: str = FeedbackOpt,
    prompts: str = PromptsOpt,
    out: Path = OutOpt,
    constitution: str = ConstitutionOpt,
    mode: str = ModeOpt,
    clamp: tuple[float, float] = ClampOpt,
    clamp_logprob: bool = typer.Option(False, "--clamp-logprob", help="Clamp in logprob mode too."),
    swap_average: bool = SwapAverageOpt,
    principles_per_pair: int = PrinciplesPerPairOpt,
    fewshot: int = FewshotOpt,
    limit: int = typer.Option(None, help="Use only the first N prompts."),
    temperature: float = typer.Option(1.0, help="Policy sampling temperature."),
    max_tokens: int = typer.Option(128, help="New tokens per policy response."),
    cot_temperature: float = typer.Option(0.0, help="cot mode: temperature of the reasoning."),
    cot_max_tokens: int = typer.Option(128, help="cot mode: new tokens of reasoning at most."),
    human_prefs: Path = HumanPrefsOpt,
    human_ratio: float = HumanRatioOpt,
    seed: int = SeedOpt,
    backend: str = BackendOpt,
    base_url: str = BaseUrlOpt,
    batch_size: int | None = SlotsOpt,
    concurrency: int = Concurrency16Opt,
    cache: Path = CacheOpt,
    no_cache: bool = NoCacheOpt,
) -> None:
    """Sample two responses per prompt, have the feedback model compare them, write soft labels."""
    import time

    from constitutional import rl_cai
    from constitutional.constitution import load_constitution
    from constitutional.generate import load_prompts
    from constitutional.jsonl import write_jsonl

    rules = load_constitution(constitution)
    config = rl_cai.LabelConfig(
        mode=mode,
        clamp=tuple(clamp),
        clamp_logprob=clamp_logprob,
        swap_average=swap_average,
        principles_per_pair=principles_per_pair,
        fewshot=fewshot,
        temperature=temperature,
        max_tokens=max_tokens,
        cot_temperature=cot_temperature,
        cot_max_tokens=cot_max_tokens,
        human_ratio=human_ratio if human_prefs else 0.0,
        seed=seed,
    )
    config.check(rules)
    # check every input before loading a model
    rows = load_prompts(prompts, chat_allowed=False)[:limit]
    human = rl_cai.load_human_prefs(human_prefs) if human_prefs else []

    options = (backend, base_url, batch_size, concurrency, cache, no_cache)
    policy_llm, feedback_llm = _backends(policy, feedback, options)

    start = time.perf_counter()
    with stage_progress() as progress:
        labelled = rl_cai.label_pairs(rules, rows, policy_llm, feedback_llm, config, progress)
    labelled = rl_cai.mix_human(labelled, human, config.human_ratio, seed, rules)
    write_jsonl(out, labelled)
    dpo = rl_cai.to_dpo_rows(labelled)
    write_jsonl(dpo_path(out), dpo)
    seconds = time.perf_counter() - start
    _report_label(out, labelled, dpo, rules, config, (policy, policy_llm, feedback_llm), seconds)


def _backends(policy: str, feedback: str, options: tuple) -> tuple[Any, Any]:
    """One backend per distinct model, so that policy == feedback loads the model once."""
    built: dict[str, Any] = {}
    for spec in (policy, feedback):
        if spec not in built:
            built[spec] = backend_from_options(options[0], spec, *options[1:])
    return built[policy], built[feedback]


def _report_label(out: Path, labelled, dpo, rules, config, models: tuple, seconds: float) -> None:
    """Record the run manifest of `label` and print its counts."""
    from constitutional.provenance import RunManifest

    policy, policy_llm, feedback_llm = models
    ai = [r for r in labelled if r["source"] == "ai"]
    kept, flips = sum(not r["discarded"] for r in ai), sum(bool(r["flip"]) for r in ai)
    # A shared backend meters policy and feedback tokens together under `tokens`.
    policy_usage = (
        "shared with feedback"
        if policy_llm is feedback_llm
        else {"model": policy, "tokens": vars(policy_llm.usage).copy()}
    )
    RunManifest(Path(f"{out}.manifest.json")).record(
        "rl_cai_label",
        backend=feedback_llm,
        wall_seconds=seconds,
        seed=config.seed,
        constitution={"hash": rules.hash, "version": rules.version},
        policy=policy_usage,
        params=vars(config),
        counts={
            "pairs": len(ai),
            "kept": kept,
            "flips": flips,
            "human": len(labelled) - len(ai),
            "dpo": len(dpo),
        },
        outputs=[str(out), str(dpo_path(out))],
    )
    typer.echo(
        f"{kept}/{len(ai)} pairs labelled ({flips} swap flips), {len(labelled) - len(ai)} human rows, "
        f"{len(dpo)} preference rows → {dpo_path(out)}",
        err=True,
    )


# Training commands live in their own modules; each imports TRL/PEFT only when it runs.
app.command("train-pm")(train_pm)
app.command("score")(score)
app.command("dpo")(dpo)
app.command("ppo")(ppo)
app.command("grpo")(grpo)
