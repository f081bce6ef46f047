"""`cai guard ...`: constitutional classifiers, from synthetic data to a guard proxy."""

from __future__ import annotations

from pathlib import Path

import typer

from constitutional.cli.guard_serve import serve
from constitutional.cli.guard_train import evaluate, train
from constitutional.cli.models import (
    BackendOpt,
    BaseUrlOpt,
    CacheOpt,
    Concurrency16Opt,
    ModelOpt,
    NoCacheOpt,
    SlotsOpt,
    backend_from_options,
    stage_progress,
)

app = typer.Typer(
    help="Constitutional classifiers: synthetic data, training, and a guard proxy.",
    no_args_is_help=True,
)


def discards_path(out: Path) -> Path:
    """Where the rows dropped by `synth` go, with reasons: guard.jsonl → guard.discards.jsonl."""
    return out.with_name(out.name.removesuffix(".jsonl") + ".discards.jsonl")


@app.command()
def synth(
    constitution: str = typer.Option(
        "default",
        "--constitution",
        "-c",
        help="Constitution YAML with a `categories` section, or 'default'.",
    ),
    out: Path = typer.Option(
        ..., "--out", "-o", help="Labelled JSONL (kept rows); discards go to OUT.discards.jsonl."
    ),
    per_category: int = typer.Option(20, help="Distinct user queries to generate per category."),
    responses: bool = typer.Option(
        False, "--responses", help="Also answer each query, for output/exchange classifiers."
    ),
    response_max_tokens: int = typer.Option(
        256, help="Longest response, in tokens (with --responses)."
    ),
    augment: str = typer.Option(
        "", help="Comma-separated augmentations: paraphrase,roleplay,obfuscate,translate,multiturn."
    ),
    heldout: float = typer.Option(
        0.2, help="Share of source queries per category held out, in [0, 1)."
    ),
    temperature: float = typer.Option(1.0, help="Sampling temperature of the queries."),
    seed: int = typer.Option(0, help="Run seed: samples and template choices derive from it."),
    backend: str = BackendOpt,
    model: str = ModelOpt,
    base_url: str = BaseUrlOpt,
    batch_size: int | None = SlotsOpt,
    concurrency: int = Concurrency16Opt,
    cache: Path = CacheOpt,
    no_cache: bool = NoCacheOpt,
) -> None:
    """Generate labelled, augmented guard data from the constitution's categories."""
    import time

    from constitutional.constitution import load_constitution
    from constitutional.guard.synth import (
        SynthConfig,
        check_inputs,
        parse_augmentations,
        synthesize,
    )
    from constitutional.jsonl import write_jsonl
    from constitutional.provenance import RunManifest

    rules = load_constitution(constitution)
    config = SynthConfig(
        per_category=per_category,
        responses=responses,
        augment=parse_augmentations(augment),
        heldout=heldout,
        seed=seed,
        temperature=temperature,
        response_max_tokens=response_max_tokens,
    )
    check_inputs(rules, config)  # before paying for a model load
    llm = backend_from_options(backend, model, base_url, batch_size, concurrency, cache, no_cache)

    start = time.perf_counter()
    with stage_progress() as progress:
        rows = synthesize(rules, llm, config, progress)
    kept = [r for r in rows if not r["discarded"]]
    write_jsonl(out, kept)
    write_jsonl(discards_path(out), [r for r in rows if r["discarded"]])
    RunManifest(Path(f"{out}.manifest.json")).record(
        "guard_synth",
        backend=llm,
        wall_seconds=time.perf_counter() - start,
        seed=seed,
        constitution={"hash": rules.hash, "version": rules.version},
        params={
            **vars(config),
            "augment": list(config.augment),
            "languages": list(config.languages),
        },
        outputs=[str(out), str(discards_path(out))],
    )
    categories = [c.id for c in (*rules.categories.harmful, *rules.categories.harmless)]
    _summarise(kept, len(rows) - len(kept), categories, per_category, out)


def _summarise(
    kept: list[dict], discarded: int, categories: list[str], per_category: int, out: Path
) -> None:
    from collections import Counter

    sources = Counter(r["category"] for r in kept if r["augmentation"] == "none")
    held = sum(r["split"] == "heldout" for r in kept)
    typer.echo(
        f"{len(kept)} rows ({held} held out) from {sum(sources.values())} queries, "
        f"{discarded} discarded → {out}",
        err=True,
    )
    short = {c: sources[c] for c in categories if sources[c] < per_category}
    if short:  # the model repeated itself: say so rather than let a category be quietly thin
        typer.echo(
            "fewer queries than asked: " + ", ".join(f"{c} {n}" for c, n in sorted(short.items())),
            err=True,
        )


# Training and serving live in their own modules; each imports its heavy parts only when it runs.
app.command("train")(train)
app.command("eval")(evaluate)
app.command("serve")(serve)
