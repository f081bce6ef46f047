"""Load a constitution from YAML; every problem becomes a `UserError` with FILE:LINE."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from constitutional.constitution.schema import Constitution
from constitutional.jsonl import atomic_path
from constitutional.yamlfile import load_yaml_model


def default_constitution_path() -> Path:
    """Where the packaged default constitution (default.yaml) lives."""
    return Path(str(files("constitutional.constitution") / "default.yaml"))


def load_constitution(path: str | Path | None = None) -> Constitution:
    """Read and validate a constitution file.

    Args:
        path: a YAML file; None or "default" means the packaged default.

    Returns:
        The validated constitution.

    Raises:
        UserError: naming the file and the 1-based line of the first problem.
    """
    if path is None or str(path) == "default":
        path = default_constitution_path()
    return load_yaml_model(path, Constitution, "a mapping with name, version, ...")


def save_constitution(constitution: Constitution, path: str | Path) -> None:
    """Write `constitution` as YAML atomically (comments are not kept)."""
    with atomic_path(path) as tmp:
        tmp.write_text(constitution.to_yaml(), encoding="utf-8")
