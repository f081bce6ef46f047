"""A static, offline HTML report of a run: stages, evaluation, judge audit, traces, training."""

from constitutional.report.load import RunArtifacts, load_run
from constitutional.report.render import build_html, render_report

__all__ = ["RunArtifacts", "build_html", "load_run", "render_report"]
