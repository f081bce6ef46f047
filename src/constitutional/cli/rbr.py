"""`cai rbr`: rule-based rewards: check the propositions file, fit weights on gold data,
evaluate grader and weights, score replies. The work is in constitutional.rbr.pipeline."""

from __future__ import annotations

import time
from pathlib import Path

import typer

from constitutional.cli.models import BackendOpt, BaseUrlOpt, backend_from_options

app = typer.Typer(
    help="Rule-based rewards: propositions graded by a model, weights fitted on gold data.",
    no_args_is_help=True,
)

PropositionsOpt = typer.Option(
    "default", "--propositions", help="Propositions and rules YAML, or 'default'."
)
GraderOpt = typer.Option(
    None,
    "--model",
    "-m",
    help="Grader model: 'embedded' (default), .gguf, HF dir, or server model.",
)
BatchOpt = typer.Option(
    None,
    "--batch-size",
    help="local backend: questions per forward pass (default: one reply's, so its conversation is prefilled once).",
)
ConcurrencyOpt = typer.Option(16, help="openai backend: requests in flight.")
CacheOpt = typer.Option(None, help="Response cache file (default $CAI_CACHE_DIR/responses.sqlite).")
NoCacheOpt = typer.Option(False, "--no-cache", help="Neither read nor write the response cache.")
LimitOpt = typer.Option(
    None, "--limit", help="Use a seeded random sample of N replies from each gold file."
)
COpt = typer.Option(
    1.0, "--c", help="Inverse L2 strength of the pairwise logistic regression (0.01-100)."
)
SeedOpt = typer.Option(0, "--seed", help="Seed of the held-out split and of pair sampling.")


def grader_factory(
    backend,
    model,
    base_url,
    batch_size,
    concurrency,
    cache,
    no_cache,
    propositions: str,
    built: list | None = None,
):
    """A zero-argument builder of the grader backend, so inputs are checked before any model loads.
    The backend it builds is appended to `built`, for the manifest to read its usage meter."""

    def build():
        from constitutional.rbr.propositions import load_propositions

        batch = batch_size or len(load_propositions(propositions).ids)
        grader = backend_from_options(backend, model, base_url, batch, concurrency, cache, no_cache)
        if built is not None:
            built.append(grader)
        return grader

    return build


def record(stage: str, out: Path, built: list, started: float, **fields) -> None:
    """The grader's calls and tokens go to OUT.manifest.json, as every model-calling stage's do."""
    from constitutional.provenance import RunManifest

    RunManifest(Path(f"{out}.manifest.json")).record(
        stage,
        backend=built[0] if built else None,
        wall_seconds=time.perf_counter() - started,
        outputs=[str(out)],
        **fields,
    )


@app.command()
def validate(propositions: Path = typer.Argument(..., help="Propositions and rules YAML.")) -> None:
    """Check a propositions/rules file; exit 2 with FILE:LINE on the first problem."""
    from constitutional.rbr.propositions import load_propositions

    props = load_propositions(propositions)
    typer.echo(
        f"{propositions}: {len(props.ids)} propositions, classes {', '.join(props.classes)}, "
        f"grades {' > '.join(props.grades)}"
    )


@app.command()
def fit(
    gold: str = typer.Option(
        "builtin:rbr_train",
        "--gold",
        help="Gold JSONL (conversation, response, response_class, labels) or builtin:rbr_train.",
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Fitted weights (JSON) to write."),
    propositions: str = PropositionsOpt,
    held_out: float = typer.Option(
        0.2, "--held-out", help="Share of the gold replies kept out of fitting and reported on."
    ),
    limit: int = LimitOpt,
    c: float = COpt,
    seed: int = SeedOpt,
    backend: str = BackendOpt,
    model: str = GraderOpt,
    base_url: str = BaseUrlOpt,
    batch_size: int = BatchOpt,
    concurrency: int = ConcurrencyOpt,
    cache: Path = CacheOpt,
    no_cache: bool = NoCacheOpt,
) -> None:
    """Grade gold replies, fit per-class weights so better grades outscore worse, report held-out accuracy."""
    from constitutional.rbr.pipeline import run_fit

    built: list = []
    build = grader_factory(
        backend, model, base_url, batch_size, concurrency, cache, no_cache, propositions, built
    )
    started = time.perf_counter()
    metrics = run_fit(
        gold, out, build, propositions=propositions, held_out=held_out, limit=limit, c=c, seed=seed
    )
    record(
        "rbr_fit",
        out,
        built,
        started,
        seed=seed,
        params={"gold": gold, "held_out": held_out, "limit": limit, "c": c},
    )
    _print_metrics(metrics)
    typer.echo(f"→ {out}", err=True)


@app.command("eval")
def eval_(
    train: str = typer.Option(
        "builtin:rbr_train", "--train", help="Gold JSONL the weights are fitted on."
    ),
    test: str = typer.Option("builtin:rbr_test", "--test", help="Held-out gold JSONL reported on."),
    rbr: Path = typer.Option(
        None, "--rbr", help="Use these fitted weights instead of fitting on --train."
    ),
    out: Path = typer.Option(None, "--out", "-o", help="Write the full metrics as JSON."),
    propositions: str = PropositionsOpt,
    limit: int = LimitOpt,
    c: float = COpt,
    seed: int = SeedOpt,
    backend: str = BackendOpt,
    model: str = GraderOpt,
    base_url: str = BaseUrlOpt,
    batch_size: int = BatchOpt,
    concurrency: int = ConcurrencyOpt,
    cache: Path = CacheOpt,
    no_cache: bool = NoCacheOpt,
) -> None:
    """Proposition grading accuracy against human labels and ranking accuracy of the fitted reward."""
    from constitutional.rbr.pipeline import run_eval

    built: list = []
    build = grader_factory(
        backend, model, base_url, batch_size, concurrency, cache, no_cache, propositions, built
    )
    started = time.perf_counter()
    metrics = run_eval(
        train, test, build, propositions=propositions, rbr=rbr, limit=limit, c=c, seed=seed, out=out
    )
    if out is not None:  # without --out nothing is written, so there is no manifest to keep
        record(
            "rbr_eval",
            out,
            built,
            started,
            seed=seed,
            params={"train": train, "test": test, "rbr": str(rbr) if rbr else None, "limit": limit},
        )
    _print_metrics(metrics)


@app.command()
def score(
    data: Path = typer.Option(
        ...,
        "--data",
        "-d",
        help="JSONL with conversation (or prompt), response, and optionally response_class.",
    ),
    rbr: Path = typer.Option(..., "--rbr", help="Fitted weights from `cai rbr fit`."),
    out: Path = typer.Option(
        ..., "--out", "-o", help="The rows with an added `rbr` {score, grade, propositions}."
    ),
    response_class: str = typer.Option(
        None, "--response-class", help="Class of rows without `response_class` (e.g. hard_refuse)."
    ),
    backend: str = BackendOpt,
    model: str = GraderOpt,
    base_url: str = BaseUrlOpt,
    batch_size: int = BatchOpt,
    concurrency: int = ConcurrencyOpt,
    cache: Path = CacheOpt,
    no_cache: bool = NoCacheOpt,
) -> None:
    """Grade each reply's propositions and score it with the fitted rule-based reward."""
    from constitutional.rbr.model import load_rbr
    from constitutional.rbr.pipeline import run_score

    source = load_rbr(rbr).source  # a bad weights file fails before the model loads
    built: list = []
    build = grader_factory(
        backend, model, base_url, batch_size, concurrency, cache, no_cache, source, built
    )
    started = time.perf_counter()
    s = run_score(data, rbr, out, build, response_class=response_class)
    record(
        "rbr_score",
        out,
        built,
        started,
        params={"data": str(data), "rbr": str(rbr), "response_class": response_class},
    )
    typer.echo(
        f"scored {s['rows']} replies ({s['unscored']} unanswerable questions) → {out}", err=True
    )


def _print_metrics(m: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"proposition grading on {m['replies']['test']} held-out replies")
    for col in ("proposition", "accuracy", "majority", "auc", "positives", "n"):
        table.add_column(col, justify="left" if col == "proposition" else "right")
    for name, v in m["propositions"].items():
        auc = "n/a" if v["auc"] is None else f"{v['auc']:.3f}"
        table.add_row(
            name,
            f"{v['accuracy']:.3f}",
            f"{v['majority']:.3f}",
            auc,
            str(v["positives"]),
            str(v["n"]),
        )
    console = Console(stderr=True)
    console.print(table)
    rank = m["ranking"]["all"]
    accuracy, majority, auc = (
        _num(m[f"proposition_{k}_mean"]) for k in ("accuracy", "majority", "auc")
    )
    lines = [
        f"mean proposition accuracy {accuracy} (always the majority label: {majority}), mean AUC {auc}",
        f"ranking accuracy (pairs of different grade) {_fmt(rank['pairs'])}",
        f"ranking accuracy (best grade vs worse) {_fmt(rank['ideal_pairs'])}",
    ]
    if "ranking_with_gold_labels" in m:
        lines.append(
            f"same fit on the human labels (perfect grader) {_fmt(m['ranking_with_gold_labels']['pairs'])}"
        )
    console.print("\n".join(lines))


def _num(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def _fmt(v: dict) -> str:
    return "n/a (no pairs)" if v["accuracy"] is None else f"{v['accuracy']:.3f} over {v['n']} pairs"
