"""Turn pydantic errors into one short line a constitution author can act on."""

from __future__ import annotations

from typing import Any

_YAML_TYPES = {
    "dict": "a mapping",
    "list": "a list",
    "str": "text",
    "int": "an integer",
    "float": "a number",
    "bool": "a boolean",
    "date": "a date",
    "datetime": "a date",
}


def dotted(loc: tuple[str | int, ...]) -> str:
    """`("fewshot", "comparison", 0, "answer")` -> `fewshot.comparison[0].answer`."""
    out = ""
    for step in loc:
        out += f"[{step}]" if isinstance(step, int) else (f".{step}" if out else str(step))
    return out


def _kind(value: Any) -> str:
    if value is None:
        return "nothing"
    return _YAML_TYPES.get(type(value).__name__, type(value).__name__)


def _shown(value: Any) -> str:
    if isinstance(value, (list, dict)) or value is None:
        return _kind(value)
    # YAML reads unquoted yes/no/1.0/2024-01-01 as non-text; quoting is the usual fix.
    return f"{_kind(value)} {value} (quote it in YAML)"


def describe_error(
    err: dict[str, Any], loc: tuple[str | int, ...], message: str | None = None
) -> str:
    """One line for one pydantic error dict, prefixed with the dotted location.

    Args:
        err: an item of `ValidationError.errors()`.
        loc: where it happened (for cross-field errors, not the error's own `loc`).
        message: a ready message that replaces the one derived from `err`.
    """
    where = dotted(loc) or "top level"
    parent = dotted(loc[:-1]) or "top level"
    kind, value = err["type"], err.get("input")
    if message is not None:
        return f"{where}: {message}"
    if kind == "extra_forbidden":
        return f"unknown key {loc[-1]!r} in {parent}"
    if kind == "missing":
        return f"missing required key {loc[-1]!r} in {parent}"
    if kind == "string_too_short" or (kind == "string_type" and value is None):
        return f"{where}: must not be empty"
    if kind == "string_type":
        return f"{where}: expected text, got {_shown(value)}"
    if kind == "string_pattern_mismatch":
        rule = (err.get("ctx") or {}).get("pattern", "")
        return f"{where}: {value!r} is not allowed here (must match {rule})"
    if kind == "literal_error":
        return f"{where}: must be {err['ctx']['expected']}, got {value!r}"
    if kind in ("list_type", "model_type", "dict_type", "model_attributes_type"):
        want = "a list" if kind == "list_type" else "a mapping"
        return f"{where}: expected {want}, got {_kind(value)}"
    if kind == "too_short":
        return f"{where}: needs at least one item"
    return f"{where}: {err['msg']}"
