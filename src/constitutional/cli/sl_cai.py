"""`cai sl-cai generate` and `cai sl-cai train`: the supervised stage of Constitutional AI."""

from __future__ import annotations

from pathlib import Path

import typer

from constitutional.cli.models import (
    BackendOpt,
    BaseUrlOpt,
    CacheOpt,
    Concurrency16Opt,
    ModelOpt,
    NoCacheOpt,
    SlotsOpt,
    backend_options,
    stage_progress,
)

SCALE = "Scale-out"
ExecutorOpt = typer.Option(
    "local",
    "--executor",
    help="local: model calls in this process; ray: fanned out over Ray workers (same output).",
    rich_help_panel=SCALE,
)
RayAddressOpt = typer.Option(
    None,
    "--ray-address",
    help="ray: 'auto', host:port or ray://host:port of a running cluster (default: start a local one).",
    rich_help_panel=SCALE,
)
WorkersOpt = typer.Option(
    2,
    "--workers",
    help="ray: workers, each with its own backend (a model each, or a client of --base-url).",
    rich_help_panel=SCALE,
)
WorkerCpusOpt = typer.Option(
    1, "--worker-cpus", help="ray: CPUs (and torch threads) per worker.", rich_help_panel=SCALE
)
WorkerGpusOpt = typer.Option(
    0.0,
    "--worker-gpus",
    help="ray: GPUs per worker (1 for a model per GPU).",
    rich_help_panel=SCALE,
)

app = typer.Typer(
    help="SL-CAI: critique → revision data, then supervised fine-tuning.", no_args_is_help=True
)


def sft_path(out: Path) -> Path:
    """Where the TRL-ready export of `out` goes: sl.jsonl → sl.sft.jsonl."""
    return out.with_name(out.name.removesuffix(".jsonl") + ".sft.jsonl")


PromptsOpt = typer.Option(
    ...,
    "--prompts",
    "-p",
    help="Red-team prompts: JSONL with `prompt`, or builtin:advbench|harmbench|strongreject.",
)
OutOpt = typer.Option(
    ...,
    "--out",
    "-o",
    help="Trace JSONL (every round, discards with reasons); the SFT export goes to OUT.sft.jsonl.",
)
ConstitutionOpt = typer.Option(
    "default", "--constitution", "-c", help="Constitution YAML, or 'default'."
)
HelpfulPromptsOpt = typer.Option(
    "builtin:self_instruct",
    help="Helpful prompts to mix in (JSONL or builtin:self_instruct|mt_bench).",
)
HelpfulRatioOpt = typer.Option(
    0.5, help="Share of helpful rows in the SFT export, in [0, 1); 0 disables mixing."
)
CritiqueOpt = typer.Option(
    True,
    "--critique/--no-critique",
    help="--no-critique: revise without writing a critique first (the paper's ablation).",
)


@app.command()
def generate(
    prompts: str = PromptsOpt,
    out: Path = OutOpt,
    constitution: str = ConstitutionOpt,
    rounds: int = typer.Option(4, help="Critique/revision rounds per prompt."),
    helpful_prompts: str = HelpfulPromptsOpt,
    helpful_ratio: float = HelpfulRatioOpt,
    limit: int = typer.Option(None, help="Use only the first N red-team prompts."),
    temperature_start: float = typer.Option(0.9, help="Temperature of the first round."),
    temperature_end: float = typer.Option(0.4, help="Temperature of the last round."),
    max_tokens: int = typer.Option(200, help="New tokens per response or revision."),
    fewshot: int = typer.Option(2, help="Constitution exemplars shown before each request."),
    critique: bool = CritiqueOpt,
    seed: int = typer.Option(0, help="Run seed: principle draws and samples derive from it."),
    backend: str = BackendOpt,
    model: str = ModelOpt,
    base_url: str = BaseUrlOpt,
    batch_size: int | None = SlotsOpt,
    concurrency: int = Concurrency16Opt,
    cache: Path = CacheOpt,
    no_cache: bool = NoCacheOpt,
    executor: str = ExecutorOpt,
    ray_address: str = RayAddressOpt,
    workers: int = WorkersOpt,
    worker_cpus: int = WorkerCpusOpt,
    worker_gpus: float = WorkerGpusOpt,
) -> None:
    """Generate critique → revision traces and TRL-ready SFT rows from red-team prompts."""
    import time

    from constitutional.constitution import load_constitution
    from constitutional.errors import UserError
    from constitutional.generate import load_prompts
    from constitutional.jsonl import write_jsonl
    from constitutional.scale import ExecutorConfig, executor_backend
    from constitutional.sl_cai import SLConfig, generate_sl_data, to_sft_rows

    if not 0 <= helpful_ratio < 1:
        raise UserError(f"--helpful-ratio must be in [0, 1), got {helpful_ratio}")
    rules = load_constitution(constitution)
    red = load_prompts(prompts, chat_allowed=False)[:limit]
    helpful = load_prompts(helpful_prompts, chat_allowed=False) if helpful_ratio > 0 else []
    config = SLConfig(
        rounds=rounds,
        temperature_start=temperature_start,
        temperature_end=temperature_end,
        max_tokens=max_tokens,
        fewshot=fewshot,
        helpful_ratio=helpful_ratio,
        critique=critique,
        seed=seed,
    )
    where = ExecutorConfig(executor, ray_address, workers, worker_cpus, worker_gpus)
    options = backend_options(backend, base_url, batch_size, concurrency)

    start = time.perf_counter()
    with (
        executor_backend(
            where, backend, model, options, cache=cache, use_cache=not no_cache
        ) as llm,
        stage_progress() as progress,
    ):
        traces = generate_sl_data(rules, red, helpful, llm, config, progress)
    write_jsonl(out, traces)
    sft = to_sft_rows(traces)
    write_jsonl(sft_path(out), sft)
    kept = sum(1 for t in traces if t["kind"] == "red_team" and not t["discarded"])
    _record_generate(out, llm, time.perf_counter() - start, rules, config, where)
    typer.echo(
        f"{kept}/{len(red)} red-team prompts kept, {len(sft)} SFT rows → {sft_path(out)}", err=True
    )


def _record_generate(out: Path, llm, seconds: float, rules, config, where) -> None:
    """The run manifest of `generate`, beside its traces."""
    from constitutional.provenance import RunManifest

    RunManifest(Path(f"{out}.manifest.json")).record(
        "sl_cai_generate",
        backend=llm,
        wall_seconds=seconds,
        seed=config.seed,
        constitution={"hash": rules.hash, "version": rules.version},
        params=vars(config),
        executor=where.describe(),
        outputs=[str(out), str(sft_path(out))],
    )


@app.command()
def train(
    data: Path = typer.Option(
        ..., "--data", "-d", help="TRL-ready JSONL with `messages` (the .sft.jsonl from generate)."
    ),
    base: str = typer.Option(
        "embedded", "--base", help="Base model: 'embedded', a .gguf file or an HF dir."
    ),
    out: Path = typer.Option(
        ..., "--out", "-o", help="Checkpoint directory (loads with --model OUT)."
    ),
    lora: bool = typer.Option(
        True, "--lora/--full", help="LoRA adapter (default) or full fine-tuning."
    ),
    epochs: float = typer.Option(1.0, help="Passes over the data."),
    lr: float = typer.Option(None, "--lr", help="Learning rate (default 2e-4 LoRA, 1e-5 full)."),
    batch_size: int = typer.Option(8, help="Rows per optimiser step."),
    max_steps: int = typer.Option(-1, help="Stop after this many steps (-1: epochs decide)."),
    seed: int = typer.Option(0, help="Training seed."),
    overwrite: bool = typer.Option(False, help="Replace an existing checkpoint directory."),
    bf16: bool = typer.Option(
        None, "--bf16/--no-bf16", help="bf16 mixed precision (default: on with a GPU, off on CPU)."
    ),
    gradient_checkpointing: bool = typer.Option(
        False,
        "--gradient-checkpointing",
        help="Recompute activations in backward: less memory, ~30% slower.",
    ),
) -> None:
    """Fine-tune a model on SL-CAI data with TRL's SFTTrainer (+ PEFT LoRA)."""
    from constitutional.train.sft import train_sft

    summary = train_sft(
        data,
        base,
        out,
        lora=lora,
        epochs=epochs,
        learning_rate=lr,
        batch_size=batch_size,
        max_steps=max_steps,
        seed=seed,
        overwrite=overwrite,
        bf16=bf16,
        activation_checkpointing=gradient_checkpointing,
    )
    typer.echo(
        f"trained {summary['steps']} steps, final loss {summary['final_loss']:.4f} → {out}",
        err=True,
    )


@app.command()
def show(
    traces: Path = typer.Argument(..., help="Trace JSONL written by `cai sl-cai generate`."),
    n: int = typer.Option(3, help="How many red-team traces to print."),
    discarded: bool = typer.Option(
        False,
        "--discarded",
        help="Also print chains no revision of which passed the checks (after the kept ones).",
    ),
) -> None:
    """Print critique → revision chains whose revision passed the checks (the ones SFT learns from)."""
    from rich.console import Console

    from constitutional.jsonl import read_jsonl

    console = Console()
    red = [t for t in read_jsonl(traces) if t.get("kind") == "red_team"]
    kept = [t for t in red if not t["discarded"]]
    if not kept:
        hint = "" if discarded else "; --discarded prints them with the reasons"
        console.print(
            f"None of the {len(red)} red-team chains in {traces} has a revision that passed the checks{hint}.",
            markup=False,
            highlight=False,
        )
    shown = kept + [t for t in red if t["discarded"]] if discarded else kept
    for t in shown[:n]:
        _print_chain(console, t)


def _print_chain(console, t: dict) -> None:
    """One trace: the prompt, the first response, every round with its verdict, the final reply."""
    from rich.markup import escape

    console.rule(
        f"[bold]{escape(t['id'])}[/] {'(discarded: ' + escape(t['reason']) + ')' if t['discarded'] else ''}"
    )
    console.print(
        f"[bold]prompt[/]: {escape(t['prompt'])}\n[bold]response[/]: {escape(t['initial_response'])}"
    )
    for r in t["rounds"]:
        status = f"[red]discarded: {escape(r['reason'])}[/]" if r["discarded"] else "[green]kept[/]"
        console.print(
            f"\n[bold]round {r['round']}[/] principle={r['principle_id']} T={r['temperature']} {status}"
        )
        console.print(f"[bold]critique[/]: {escape(r['critique'])}")
        if r["revision"] is not None:
            console.print(f"[bold]revision[/]: {escape(r['revision'])}")
    console.print(f"\n[bold]final[/]: {escape(t['final_response'])}")
