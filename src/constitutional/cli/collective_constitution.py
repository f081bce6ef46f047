"""`cai collective to-constitution`: consensus statements → a constitution YAML with provenance.

`run_to_constitution` is the Python entry point; the typer command only parses options, builds
the backend when a model drafts, and calls it.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Any

import typer

from constitutional.cli.models import (
    BackendOpt,
    BaseUrlOpt,
    CacheOpt,
    Concurrency16Opt,
    ModelOpt,
    NoCacheOpt,
    SlotsOpt,
    backend_from_options,
)
from constitutional.errors import UserError

DRAFTS = ("template", "model")


def parse_k(text: str) -> tuple[int, int]:
    """`"2..5"` → (2, 5); `"3"` → (3, 3). Both ends at least 2."""
    low, sep, high = text.partition("..")
    try:
        k_min, k_max = int(low), int(high if sep else low)
    except ValueError:
        raise UserError(f"--k must be N or MIN..MAX, got {text!r}") from None
    if k_min < 2 or k_max < k_min:
        raise UserError(f"--k needs 2 <= MIN <= MAX, got {text!r}")
    return k_min, k_max


def load_input(
    source: Path, comments: Path | None, threshold: float | None, **analysis_options: Any
):
    """An `analyze --out` JSON is read as it is; anything else is a votes CSV, analysed here."""
    from constitutional.collective.to_constitution import analysis_from_votes, load_analysis

    if source.suffix.lower() == ".json":
        if comments is not None:
            raise UserError(
                "COMMENTS goes with a votes CSV; an analysis JSON already holds the texts", comments
            )
        return load_analysis(source, threshold)
    return analysis_from_votes(source, comments, threshold, **analysis_options)


def run_to_constitution(
    analysis,
    out: str | Path,
    *,
    source: str,
    backend=None,
    threshold: float | None = None,
    limit: int = 0,
    seed: int = 0,
    temperature: float = 0.3,
    max_tokens: int = 200,
    name: str = "collective",
    version: str = "1.0.0",
    description: str | None = None,
    params: dict[str, Any] | None = None,
) -> tuple[Any, list[str | None]]:
    """Build the constitution from a loaded analysis; write `out` (YAML) and `out.manifest.json`.

    Args:
        analysis: from `load_input`.
        source: the input's name, recorded in every principle's provenance.
        backend: a CachedBackend that drafts the wording, or None for the plain template.
        threshold: consensus cut-off; None keeps the analysis's own.
        limit: most principles (highest consensus first); 0 for all.
        params: more settings to record in the manifest.

    Returns:
        (the Constitution, per principle the reason its model draft fell back, or None).
    """
    from constitutional.collective.drafting import model_drafts, template_draft
    from constitutional.collective.to_constitution import build_constitution, consensus_cut, select
    from constitutional.constitution import save_constitution
    from constitutional.provenance import RunManifest

    start = time.perf_counter()
    rows = select(analysis, threshold, limit)
    if backend is None:
        drafts = [(template_draft(r.text or ""), None) for r in rows]
    else:
        drafts = model_drafts(
            [(r.statement, r.text or "") for r in rows], backend, seed, temperature, max_tokens
        )
    cut = consensus_cut(analysis, threshold)
    constitution = build_constitution(
        analysis,
        rows,
        drafts,
        source=f"collective:{source}",
        name=name,
        version=version,
        description=description,
        model=f"{backend.name}:{backend.model}" if backend is not None else None,
        extra_metadata={"seed": seed, "consensus_threshold": cut},
    )
    save_constitution(constitution, out)
    RunManifest(Path(f"{out}.manifest.json")).record(
        "collective_to_constitution",
        backend=backend,
        wall_seconds=time.perf_counter() - start,
        seed=seed,
        constitution={"hash": constitution.hash, "version": constitution.version},
        params={
            "source": source,
            "consensus_threshold": cut,
            "limit": limit,
            "temperature": temperature,
            "max_tokens": max_tokens,
            **(params or {}),
        },
        outputs=[str(out)],
    )
    return constitution, [fallback for _, fallback in drafts]


SourceArg = typer.Argument(
    ...,
    help="An `analyze --out` JSON, or a votes CSV (then analysed here with the options below).",
)
CommentsArg = typer.Argument(
    None, help="Statement texts for a votes CSV: Polis comments.csv or statement,text."
)
OutOpt = typer.Option(
    ..., "--out", "-o", help="Constitution YAML to write (and OUT.manifest.json)."
)
ConsensusThresholdOpt = typer.Option(
    None,
    "--consensus-threshold",
    help="Least group-aware consensus for a statement, 0..1 (default: the analysis's, 0.5).",
)
LimitOpt = typer.Option(0, "--limit", help="Most principles, highest consensus first; 0 for all.")
DraftOpt = typer.Option(
    "template",
    "--draft",
    help="Wording: 'template' (no model) or 'model' (the backend drafts; failed drafts fall back).",
)
DescriptionOpt = typer.Option(
    None, "--description", help="Constitution description (default: a summary of the input)."
)
SeedOpt = typer.Option(0, "--seed", help="Seed of the drafts and, for a votes CSV, of k-means.")
MinVotesOpt = typer.Option(
    7, "--min-votes", help="Votes CSV only: leave out participants with fewer votes."
)
KOpt = typer.Option(
    "2..5", "--k", help="Votes CSV only: numbers of opinion groups to try, MIN..MAX."
)


def to_constitution(
    source: Path = SourceArg,
    comments: Path = CommentsArg,
    out: Path = OutOpt,
    consensus_threshold: float = ConsensusThresholdOpt,
    limit: int = LimitOpt,
    draft: str = DraftOpt,
    name: str = typer.Option("collective", "--name", help="Constitution name."),
    version: str = typer.Option("1.0.0", "--version", help="Constitution version."),
    description: str = DescriptionOpt,
    seed: int = SeedOpt,
    min_votes: int = MinVotesOpt,
    k: str = KOpt,
    temperature: float = typer.Option(0.3, help="--draft model: sampling temperature; 0 = greedy."),
    max_tokens: int = typer.Option(200, help="--draft model: new tokens per draft."),
    backend: str = BackendOpt,
    model: str = ModelOpt,
    base_url: str = BaseUrlOpt,
    batch_size: int | None = SlotsOpt,
    concurrency: int = Concurrency16Opt,
    cache: Path = CacheOpt,
    no_cache: bool = NoCacheOpt,
) -> None:
    """Turn the statements every opinion group agreed with into constitution principles.

    Each statement at or above the consensus threshold becomes a critique/revision pair and a
    comparison question (same id, `collective-<statement>`), each with provenance: the
    statement's id, text, consensus and per-group votes, and whether a model or the template
    worded it. Check the result with `cai constitution validate OUT` and compare it with
    `cai constitution diff default OUT`.
    """
    if draft not in DRAFTS:
        raise UserError(f"--draft must be one of {', '.join(DRAFTS)}, got {draft!r}")
    k_min, k_max = parse_k(k)
    options = {"min_votes": min_votes, "k_min": k_min, "k_max": k_max}
    analysis = load_input(
        source, comments, consensus_threshold, seed=seed, **options
    )  # before a model load
    llm = (
        backend_from_options(backend, model, base_url, batch_size, concurrency, cache, no_cache)
        if draft == "model"
        else None
    )
    constitution, fallbacks = run_to_constitution(
        analysis,
        out,
        source=source.name,
        backend=llm,
        threshold=consensus_threshold,
        limit=limit,
        seed=seed,
        temperature=temperature,
        max_tokens=max_tokens,
        name=name,
        version=version,
        description=description,
        params={
            "input": str(source),
            "comments": str(comments) if comments else None,
            "draft": draft,
            **(options if source.suffix.lower() != ".json" else {}),
        },
    )
    n = len(constitution.critique_revision)
    how = (
        "template"
        if llm is None
        else f"{fallbacks.count(None)} drafted by the model, {n - fallbacks.count(None)} by the template"
    )
    typer.echo(f"{n} principles ({how}), hash {constitution.short_hash} → {out}", err=True)
    reasons = Counter(f for f in fallbacks if f)
    if llm is not None and reasons:
        typer.echo(
            "fallbacks: " + "; ".join(f"{r} ×{c}" for r, c in reasons.most_common()), err=True
        )
