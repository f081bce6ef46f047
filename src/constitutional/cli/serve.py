"""`cai serve`: serve a model over an OpenAI-compatible HTTP API."""

from __future__ import annotations

import typer


def serve(
    model: str = typer.Option(
        "embedded", "--model", "-m", help="'embedded', a .gguf file or an HF model directory."
    ),
    host: str = typer.Option("127.0.0.1", help="Interface to listen on (0.0.0.0 for all)."),
    port: int = typer.Option(8000, help="TCP port to listen on."),
    batch_size: int = typer.Option(8, help="Rows the model decodes together."),
) -> None:
    """Serve a model over an OpenAI-compatible HTTP API (/v1/chat/completions, ...)."""
    # Heavy imports here, so `cai --help` stays fast.
    import uvicorn

    from constitutional.backends.local import LocalBackend
    from constitutional.serve.app import create_app

    backend = LocalBackend(model, batch_size=batch_size)
    typer.echo(f"serving {model} at http://{host}:{port}/v1", err=True)
    uvicorn.run(create_app(backend), host=host, port=port, log_level="info")
