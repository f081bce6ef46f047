"""`cai self-play`: the self-rewarding constitutional loop (sample → self-judge → DPO, K times)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer

from constitutional.cli.models import stage_progress

OutOpt = typer.Option(
    ...,
    "--out",
    "-o",
    help="Run directory: iter-N/ per iteration, self_play.json, report.html.",
)
IterationsOpt = typer.Option(
    2,
    "--iterations",
    "-k",
    help="Sample → judge → DPO rounds (raise it to extend a finished run).",
)
ModelOpt = typer.Option(
    "embedded",
    "--model",
    "-m",
    help="Starting model ('embedded', .gguf, HF or LoRA dir); trained locally.",
)
ConstitutionOpt = typer.Option(
    "default", "--constitution", "-c", help="Constitution YAML, or 'default'."
)
PromptsOpt = typer.Option(
    "builtin:harmbench",
    "--prompts",
    "-p",
    help="Training prompts: JSONL with `prompt`, or builtin:NAME.",
)
PairsPerPromptOpt = typer.Option(
    2, help="Pairs sampled per prompt (2 x this responses per prompt)."
)
PrinciplesPerPairOpt = typer.Option(
    1, help="Comparison principles drawn per pair; p(A) is averaged over them."
)
SwapAverageOpt = typer.Option(
    True, "--swap-average/--no-swap-average", help="Judge in both A/B orders and average."
)
BetaOpt = typer.Option(
    0.1, help="DPO KL strength β (the previous iteration's model is the reference)."
)
LrOpt = typer.Option(None, "--lr", help="DPO learning rate (default 5e-5 LoRA, 5e-6 full).")
LoraOpt = typer.Option(
    True,
    "--lora/--full",
    help="Fresh LoRA adapter per iteration (default) or full fine-tuning.",
)
EvalRedTeamOpt = typer.Option(
    "builtin:strongreject", help="Held-out red-team prompts for the harmless score."
)
EvalHelpfulOpt = typer.Option(
    "builtin:mt_bench", help="Held-out helpful prompts for the helpful score."
)
MinAgreementOpt = typer.Option(
    0.5,
    help="Stop when the self-judge agrees with the reference judge on fewer pairs than this share.",
)
ReferenceJudgeOpt = typer.Option(
    None, "--reference-judge", help="Frozen reference judge (default: the starting model)."
)
ReferenceBackendOpt = typer.Option(
    "local", "--reference-backend", help="local or openai: how the reference judge is reached."
)
ReferenceBaseUrlOpt = typer.Option(
    None,
    "--reference-base-url",
    help="openai reference judge: server URL (key from $OPENAI_API_KEY).",
)
SeedOpt = typer.Option(0, help="Run seed: samples, principle draws and training derive from it.")
NoCacheOpt = typer.Option(
    False, "--no-cache", help="Do not use the run's response cache (OUT/responses.sqlite)."
)


def self_play(
    out: Path = OutOpt,
    iterations: int = IterationsOpt,
    model: str = ModelOpt,
    constitution: str = ConstitutionOpt,
    prompts: str = PromptsOpt,
    limit: int = typer.Option(4, help="Use only the first N training prompts."),
    pairs_per_prompt: int = PairsPerPromptOpt,
    temperature: float = typer.Option(1.0, help="Sampling temperature of the responses."),
    max_tokens: int = typer.Option(48, help="New tokens per sampled response."),
    fewshot: int = typer.Option(1, help="Constitution comparison exemplars shown to both judges."),
    principles_per_pair: int = PrinciplesPerPairOpt,
    swap_average: bool = SwapAverageOpt,
    beta: float = BetaOpt,
    dpo_steps: int = typer.Option(2, help="DPO optimiser steps per iteration."),
    batch_size: int = typer.Option(4, help="DPO preference pairs per step."),
    lr: float = LrOpt,
    lora: bool = LoraOpt,
    eval_red_team: str = EvalRedTeamOpt,
    eval_helpful: str = EvalHelpfulOpt,
    eval_limit: int = typer.Option(4, help="Prompts of each held-out set."),
    eval_max_tokens: int = typer.Option(48, help="New tokens per held-out reply."),
    min_agreement: float = MinAgreementOpt,
    reference_judge: str = ReferenceJudgeOpt,
    reference_backend: str = ReferenceBackendOpt,
    reference_base_url: str = ReferenceBaseUrlOpt,
    seed: int = SeedOpt,
    decode_batch: int = typer.Option(16, help="local backend: rows decoded together."),
    no_cache: bool = NoCacheOpt,
) -> None:
    """Self-rewarding loop: the model judges its own samples against the constitution, then DPO.

    Stops early when the self-judge stops agreeing with a frozen reference judge. A killed run
    resumes at the first unfinished iteration; the report goes to OUT/report.html.
    """
    from constitutional.report import render_report
    from constitutional.self_play.loop import SelfPlayConfig, run_self_play

    _check_reference(reference_backend, reference_judge)
    cfg = SelfPlayConfig(
        model=model,
        reference_judge=reference_judge,
        constitution=constitution,
        iterations=iterations,
        prompts=prompts,
        limit=limit,
        pairs_per_prompt=pairs_per_prompt,
        temperature=temperature,
        max_tokens=max_tokens,
        fewshot=fewshot,
        principles_per_pair=principles_per_pair,
        swap_average=swap_average,
        beta=beta,
        dpo_steps=dpo_steps,
        batch_size=batch_size,
        learning_rate=lr,
        lora=lora,
        eval_red_team=eval_red_team,
        eval_helpful=eval_helpful,
        eval_limit=eval_limit,
        eval_max_tokens=eval_max_tokens,
        min_agreement=min_agreement,
        seed=seed,
    )
    reference_opts = (reference_judge, reference_backend, reference_base_url)
    local, reference = _backend_factories(out, model, reference_opts, decode_batch, no_cache)

    def say(line: str) -> None:
        typer.echo(line, err=True)

    with stage_progress() as progress:
        doc = run_self_play(cfg, out, local, reference, say=say, progress=progress)
    say(f"report → {render_report(out)} · final model {doc['final_model']}")


def _check_reference(reference_backend: str, reference_judge: str | None) -> None:
    """Refuse a reference judge the run could not build, before any model loads."""
    from constitutional.errors import UserError

    if reference_backend not in ("local", "openai"):
        raise UserError(f"--reference-backend must be local or openai, got {reference_backend!r}")
    if reference_backend == "openai" and not reference_judge:
        raise UserError(
            "--reference-backend openai needs --reference-judge (the server's model name)"
        )


def _backend_factories(
    out: Path, model: str, reference_opts: tuple, decode_batch: int, no_cache: bool
) -> tuple[Callable[[str], Any], Callable[[], Any]]:
    """The run's backend makers: `local(spec)` builds each local model once, `reference()` the
    frozen reference judge."""
    from constitutional.backends import make_backend

    reference_judge, reference_backend, reference_base_url = reference_opts
    cache = out / "responses.sqlite"
    built: dict[str, object] = {}

    def local(spec: str):  # one backend per model; all share the run's own response cache
        if spec not in built:
            built[spec] = make_backend(
                "local", spec, cache=cache, use_cache=not no_cache, batch_size=decode_batch
            )
        return built[spec]

    def reference():
        if reference_backend == "local":
            return local(reference_judge or model)
        return make_backend(
            "openai",
            reference_judge,
            cache=cache,
            use_cache=not no_cache,
            base_url=reference_base_url,
        )

    return local, reference
