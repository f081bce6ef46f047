"""`cai serve`: serve a model over an OpenAI-compatible HTTP API."""

from __future__ import annotations

import typer


def serve(
    model: str = typer.Option(
        "embedded", "--model", "-m", help="'embedded', a .gguf file or an HF model directory."
    ),
    host: str = typer.Option("127.0.0.1", help="Interface to listen on (0.0.0.0 for all)."),
    port: int = typer.Option(8000, help="TCP port to listen on."),
    batch_size: int = typer.Option(
        8,
        help="Most rows decoded together (concurrent requests share them); the KV budget may lower it.",
    ),
    max_tokens_cap: int = typer.Option(
        None,
        "--max-tokens-cap",
        min=1,
        help="Largest max_tokens a request may ask for (400 above); default: the model's context length.",
    ),
    max_rows: int = typer.Option(
        16, "--max-rows", min=1, help="Most completions per request: prompts x n (400 above)."
    ),
    max_body_bytes: int = typer.Option(
        1 << 20, "--max-body-bytes", min=1, help="Largest request body in bytes (413 above)."
    ),
    max_in_flight: int = typer.Option(
        256, "--max-in-flight", min=1, help="Requests decoding or queued at once (503 beyond)."
    ),
    shutdown_timeout: float = typer.Option(
        3.0,
        "--shutdown-timeout",
        min=0,
        help="Seconds requests in flight get to finish after SIGTERM/Ctrl-C before they are stopped.",
    ),
) -> None:
    """Serve a model over an OpenAI-compatible HTTP API (/v1/chat/completions, ...)."""
    # Heavy imports here, so `cai --help` stays fast.
    import uvicorn

    from constitutional.backends.local import LocalBackend
    from constitutional.serve.app import Limits, create_app

    backend = LocalBackend(model, batch_size=batch_size)
    limits = Limits(
        max_tokens=max_tokens_cap,
        max_rows=max_rows,
        max_body_bytes=max_body_bytes,
        max_in_flight=max_in_flight,
    )
    rows = (
        backend.batcher().slots
    )  # the KV budget ($CAI_KV_BUDGET_GB) may allow fewer than --batch-size
    typer.echo(
        f"serving {model} at http://{host}:{port}/v1 ({rows} rows decoded together, "
        f"context {backend.context_length} tokens)",
        err=True,
    )
    uvicorn.run(
        create_app(backend, limits=limits),
        host=host,
        port=port,
        log_level="info",
        timeout_graceful_shutdown=shutdown_timeout,
    )
