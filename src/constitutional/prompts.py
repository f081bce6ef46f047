"""Prompt sets by name: bundled ones (`builtin:advbench`) or any JSONL file path.

The bundled sets and their licenses are listed in `data/SOURCES.md`.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from constitutional.errors import UserError

BUILTIN_PREFIX = "builtin:"
RED_TEAM_SETS = ("advbench", "harmbench", "strongreject")
# The three red-team sets split once into disjoint training and evaluation prompts (`splits.py`).
SPLIT_SETS = ("red_team_train", "red_team_eval")
HELPFUL_SETS = ("self_instruct", "mt_bench")
BENIGN_SETS = ("over_refusal",)  # harmless requests that sound sensitive (over-refusal checks)


def builtin_names() -> list[str]:
    return [*RED_TEAM_SETS, *SPLIT_SETS, *HELPFUL_SETS, *BENIGN_SETS]


def resolve_prompts(spec: str | Path) -> Path:
    """A path for `spec`: `builtin:NAME` for a bundled set, otherwise the path itself."""
    text = str(spec)
    if not text.startswith(BUILTIN_PREFIX):
        return Path(spec)
    name = text.removeprefix(BUILTIN_PREFIX)
    if name not in builtin_names():
        raise UserError(
            f"unknown builtin prompt set {name!r}; choose one of {', '.join(builtin_names())}"
        )
    return Path(str(resources.files("constitutional") / "data" / f"{name}.jsonl"))
