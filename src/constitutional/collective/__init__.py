"""Collective constitution: public votes on statements → opinion groups, consensus, division."""

from constitutional.collective.analysis import AnalysisConfig, analyze, cluster, project, smoothed
from constitutional.collective.votes import Votes, load_texts, load_votes

__all__ = [
    "AnalysisConfig",
    "Votes",
    "analyze",
    "cluster",
    "load_texts",
    "load_votes",
    "project",
    "smoothed",
]
