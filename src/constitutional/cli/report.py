"""`cai report RUN_DIR`: the run's artifacts as one static HTML page.

A plain command function; the root app registers it (`app.command()(report)`).
"""

from __future__ import annotations

from pathlib import Path

import typer


def report(
    run_dir: Path = typer.Argument(
        ...,
        help="Run directory: manifest.json, eval.json, audit.json, principles.json, sl.jsonl, checkpoints.",
    ),
    out: Path = typer.Option(
        None, "--out", "-o", help="HTML file to write (default RUN_DIR/report.html)."
    ),
) -> None:
    """Render a run directory as a self-contained HTML report (opens offline, loads nothing)."""
    from constitutional.report import render_report

    path = render_report(run_dir, out)
    typer.echo(f"report → {path}", err=True)
