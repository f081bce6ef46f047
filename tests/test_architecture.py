"""Rules of the code's shape that ruff does not check. The package layers themselves are
import-linter contracts in pyproject.toml, checked by `make check`."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "constitutional"
MAX_LINES = 80
# Known to be longer, in code other work is reshaping; a new entry needs a reason.
TOO_LONG_FOR_NOW: set[tuple[str, str]] = set()


def modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        yield path.relative_to(PACKAGE).as_posix(), ast.parse(path.read_text(encoding="utf-8"))


def top_package(name: str) -> str:
    """`constitutional.train.sft` -> "train"; a top-level module is its own package."""
    return name.split(".")[1] if name.count(".") else ""


def test_no_private_name_is_imported_from_another_package():
    found = []
    for rel, tree in modules():
        here = rel.split("/")[0].removesuffix(".py")
        for node in ast.walk(tree):
            if not (
                isinstance(node, ast.ImportFrom)
                and (node.module or "").startswith("constitutional.")
            ):
                continue
            for alias in node.names:
                private = alias.name.startswith("_") and not alias.name.startswith("__")
                if private and top_package(node.module) != here:
                    found.append(f"{rel}:{node.lineno} {node.module}.{alias.name}")
    assert found == []


def test_no_function_is_over_80_lines():
    found = []
    for rel, tree in modules():
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_LINES and (rel, node.name) not in TOO_LONG_FOR_NOW:
                    found.append(f"{rel}:{node.lineno} {node.name} ({lines} lines)")
    assert found == []
