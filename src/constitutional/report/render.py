"""`render_report`: one run directory in, one self-contained HTML file out."""

from __future__ import annotations

from pathlib import Path

from constitutional import __version__
from constitutional.jsonl import atomic_path
from constitutional.report import (
    audit,
    did_it_work,
    evaluation,
    manifest,
    principles,
    self_play,
    traces,
    training,
)
from constitutional.report.html import page
from constitutional.report.load import RunArtifacts, load_run

# Page order: what ran, how good it is (and how self-play moved it), whether the judge can be
# trusted, then the raw material.
SECTIONS = (manifest, did_it_work, evaluation, self_play, audit, principles, traces, training)


def build_html(run: RunArtifacts) -> str:
    """The report page for already loaded artifacts (no timestamp, so equal runs give equal pages)."""
    sections = [s for s in (module.render(run) for module in SECTIONS) if s is not None]
    subtitle = f"{run.run_dir.resolve()} · constitutional {__version__}"
    return page(f"Constitutional AI report: {run.run_dir.resolve().name}", subtitle, sections)


def render_report(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Render the static HTML report of a run directory.

    Every known artifact present in `run_dir` (manifest, eval.json, audit.json, principles.json,
    sl.jsonl, self_play.json, checkpoint train logs) gets a section; absent ones get a one-line
    "not run" note, except self-play, a separate command, whose section appears only after it ran.
    The page needs no network: styles and SVG charts are inline and it loads nothing.

    Args:
        run_dir: the directory holding a run's artifacts.
        out: where to write the page; default `run_dir/report.html`. Written atomically.

    Returns:
        The path written.

    Raises:
        UserError: `run_dir` is not a directory, or one of its artifacts is unreadable.
    """
    run = load_run(Path(run_dir))
    out = Path(out) if out is not None else run.run_dir / "report.html"
    text = build_html(run)
    with atomic_path(out) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return out
