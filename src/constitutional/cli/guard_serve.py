"""`cai guard serve`: an OpenAI-compatible proxy that checks requests and streamed answers with
trained constitutional classifiers before they pass."""

from __future__ import annotations

from pathlib import Path

import typer


def serve(
    guard_dir: Path = typer.Option(
        ..., "--guard", help="Directory written by `cai guard train` (the classifiers)."
    ),
    upstream: str = typer.Option(
        ...,
        "--upstream",
        help="The model's API root (e.g. http://127.0.0.1:8000/v1), "
        "or a local model ('embedded', .gguf, HF/LoRA dir) served in-process.",
    ),
    api_key: list[str] = typer.Option(
        [], "--api-key", help="Bearer token clients must send; repeat for several. None: open."
    ),
    metrics_key: str | None = typer.Option(
        None,
        "--metrics-key",
        envvar="CAI_METRICS_KEY",
        help="Bearer token for /metrics. Without it /metrics answers loopback clients only.",
    ),
    upstream_api_key: str | None = typer.Option(
        None, "--upstream-api-key", envvar="CAI_UPSTREAM_API_KEY", help="Token for the upstream."
    ),
    audit_db: Path = typer.Option(
        Path("guard.sqlite"), "--audit-db", help="SQLite file with one row per request."
    ),
    fail_open: bool = typer.Option(
        False, "--fail-open", help="Let text through when the classifier fails (default: refuse)."
    ),
    holdback: int = typer.Option(
        64, "--holdback", min=0, help="Characters of a stream held back until checked past them."
    ),
    max_check_chars: int = typer.Option(
        64_000,
        "--max-check-chars",
        min=1,
        help="Longest conversation or answer scored; longer requests get 400, longer answers are cut.",
    ),
    model_name: str = typer.Option("guarded", "--model-name", help="Model id in /v1/models."),
    host: str = typer.Option("127.0.0.1", help="Interface to listen on (0.0.0.0 for all)."),
    port: int = typer.Option(8080, help="TCP port to listen on."),
) -> None:
    """Serve a guarded model: refuse flagged requests, cut off flagged answers mid-stream."""
    # Heavy imports here, so `cai --help` stays fast.
    import uvicorn

    from constitutional.guard.classifiers import TrainedGuard
    from constitutional.guard.proxy import create_guard_app, local_upstream

    guard = TrainedGuard.load(guard_dir)
    transport = None
    if not upstream.startswith(("http://", "https://")):  # a local model spec, served in-process
        upstream_url, transport = local_upstream(upstream)
    else:
        upstream_url = upstream
    app = create_guard_app(
        guard,
        upstream_url,
        transport=transport,
        api_keys=set(api_key),
        metrics_key=metrics_key,
        audit_db=audit_db,
        fail_closed=not fail_open,
        holdback_chars=holdback,
        max_check_chars=max_check_chars,
        model_name=model_name,
        upstream_api_key=upstream_api_key,
    )
    policy = "fail-open" if fail_open else "fail-closed"
    typer.echo(f"guarding {upstream} at http://{host}:{port}/v1 ({policy})", err=True)
    uvicorn.run(app, host=host, port=port, log_level="info")
