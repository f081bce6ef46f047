"""`cai generate`, `cai chat` and `cai serve`: talking to a model through a backend."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import typer

from constitutional.cli.serve import serve

BackendOpt = typer.Option(
    "local",
    "--backend",
    "-b",
    help="local (transformers), openai (any OpenAI-compatible server), "
    "vllm (in-process, GPU) or mock (scripted replies, no model).",
)
ModelOpt = typer.Option(
    None,
    "--model",
    "-m",
    help="local: 'embedded', a .gguf file or an HF dir; openai: the server's model name.",
)
BaseUrlOpt = typer.Option(
    None, "--base-url", help="openai backend: server URL (default $OPENAI_BASE_URL)."
)
SlotsOpt = typer.Option(
    None,
    "--batch-size",
    help="local backend: rows decoded together (default: "
    "as many as the KV memory budget $CAI_KV_BUDGET_GB allows, at most 128 on CPU).",
)

# The response-cache and concurrency options repeat in every command that calls a backend;
# declaring them once keeps their flags and help identical everywhere.
CacheOpt = typer.Option(None, help="Response cache file (default $CAI_CACHE_DIR/responses.sqlite).")
NoCacheOpt = typer.Option(False, "--no-cache", help="Neither read nor write the response cache.")
_CONCURRENCY_HELP = "openai backend: requests in flight."
Concurrency8Opt = typer.Option(8, help=_CONCURRENCY_HELP)
Concurrency16Opt = typer.Option(16, help=_CONCURRENCY_HELP)


def backend_from_options(
    backend: str,
    model: str | None,
    base_url: str | None,
    batch_size: int | None,
    concurrency: int,
    cache: Path | None,
    no_cache: bool,
):
    from constitutional.backends import make_backend

    options = backend_options(backend, base_url, batch_size, concurrency)
    return make_backend(backend, model, cache=cache, use_cache=not no_cache, **options)


def backend_options(
    backend: str, base_url: str | None, batch_size: int | None, concurrency: int
) -> dict[str, Any]:
    """The engine keywords that apply to BACKEND: slots for a local model, URL and requests in
    flight for a server."""
    if backend == "local":
        return {"batch_size": batch_size}
    return {"base_url": base_url, "concurrency": concurrency}


def generate(
    prompts: Path = typer.Option(
        ..., "--prompts", "-p", help="JSONL with a `prompt` or `messages` field per row."
    ),
    out: Path = typer.Option(
        ..., "--out", "-o", help="Output JSONL (written atomically at the end)."
    ),
    backend: str = BackendOpt,
    model: str = ModelOpt,
    base_url: str = BaseUrlOpt,
    temperature: float = typer.Option(0.7, help="Sampling temperature; 0 = greedy."),
    top_p: float = typer.Option(1.0, help="Nucleus sampling mass (0, 1]."),
    max_tokens: int = typer.Option(256, help="New tokens per response at most."),
    seed: int = typer.Option(0, help="Run seed; each row's seed derives from it."),
    batch_size: int | None = SlotsOpt,
    concurrency: int = Concurrency8Opt,
    cache: Path = CacheOpt,
    no_cache: bool = NoCacheOpt,
    manifest: Path = typer.Option(None, help="Run manifest to update (default OUT.manifest.json)."),
) -> None:
    """Complete every prompt in a JSONL file; a killed run resumes from the cache."""
    from rich.progress import Progress

    from constitutional.generate import load_prompts, run_generate

    rows = load_prompts(prompts)  # check the input before paying for a model load
    llm = backend_from_options(backend, model, base_url, batch_size, concurrency, cache, no_cache)
    with Progress(transient=False) as progress:
        task = progress.add_task("generating", total=len(rows))
        summary = run_generate(
            rows,
            out,
            llm,
            temperature=temperature,
            top_p=top_p,
            max_tokens=max_tokens,
            seed=seed,
            manifest=manifest,
            on_result=lambda i, c: progress.advance(task),
        )
    new_tokens = summary["completion_tokens"]
    typer.echo(
        f"wrote {summary['rows']} rows to {out} · cache {summary['cache_hits']} hits, "
        f"{summary['calls'] - summary['cache_hits']} new · {new_tokens} new tokens in "
        f"{summary['wall_seconds']:.1f}s ({new_tokens / max(summary['wall_seconds'], 1e-9):.1f} tok/s)",
        err=True,
    )


def chat(
    text: str = typer.Argument(..., help="The user message."),
    system: str = typer.Option(None, help="Optional system message."),
    backend: str = BackendOpt,
    model: str = ModelOpt,
    base_url: str = BaseUrlOpt,
    temperature: float = typer.Option(0.0, help="Sampling temperature; 0 = greedy."),
    max_tokens: int = typer.Option(256, help="New tokens at most."),
    seed: int = typer.Option(0, help="Sampling seed."),
) -> None:
    """Send one message to a model and print the reply (a quick look, not cached)."""
    from constitutional.backends import GenerationRequest

    llm = backend_from_options(backend, model, base_url, 1, 1, None, True)
    messages = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": text}
    ]
    request = GenerationRequest(
        messages=messages, temperature=temperature, max_tokens=max_tokens, seed=seed
    )
    typer.echo(llm.generate([request])[0].text)


@contextmanager
def stage_progress() -> Iterator[Callable[[str, int], None]]:
    """A progress display for multi-stage work. The yielded callback takes (label, total) to
    start a stage with its own bar, and ("", n) to advance the current one by n."""
    from rich.progress import Progress

    with Progress() as bar:
        task = None

        def progress(label: str, n: int) -> None:
            nonlocal task
            if label:
                task = bar.add_task(label, total=n)
            else:
                bar.advance(task, n)

        yield progress


def register(app: typer.Typer) -> None:
    app.command()(generate)
    app.command()(chat)
    app.command()(serve)
