"""YAML files validated by pydantic models, with every problem reported as FILE:LINE.

Constitutions and recipes both load through `load_yaml_model`: compose the node tree (it keeps
line marks), refuse duplicate keys, validate, and turn the earliest problem into a `UserError`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from constitutional.errors import UserError

Model = TypeVar("Model", bound=BaseModel)


class LocatedValueError(ValueError):
    """A cross-field problem (duplicate id, dangling reference) that knows where it lives.

    Raise it from a model validator; the loader reports it at the line of `loc`.

    Args:
        loc: path of keys/indexes to the offending value, like a pydantic error `loc`.
        message: what is wrong.
        first_loc: for duplicates, where the first occurrence lives.
    """

    def __init__(self, loc: tuple[str | int, ...], message: str, first_loc: tuple | None = None):
        self.loc, self.message, self.first_loc = loc, message, first_loc
        super().__init__(message)


def load_yaml_model(
    path: str | Path, model: type[Model], what: str, check: Callable[[Model], None] | None = None
) -> Model:
    """Read `path`, validate it as `model`; `what` names the expected content for an empty file.

    `check` may look further (files named in the document exist, ...) and raise a
    LocatedValueError, reported at its line like any schema problem.
    """
    path = Path(path)
    node, data = _parse(path, _read_text(path), what)
    try:
        loaded = model.model_validate(data)
        if check is not None:
            check(loaded)
        return loaded
    except ValidationError as e:
        raise _located(e, node, path) from None
    except LocatedValueError as e:
        raise UserError(f"{dotted(e.loc)}: {e.message}", path, _line_of(node, e.loc)) from None


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


def _read_text(path: Path) -> str:
    if not path.exists():
        raise UserError("no such file", path)
    if not path.is_file():
        raise UserError("not a file", path)
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise UserError("not valid UTF-8", path, raw.count(b"\n", 0, e.start) + 1) from None


def _parse(path: Path, text: str, what: str) -> tuple[yaml.Node, Any]:
    """Compose the node tree (it keeps line marks), check duplicate keys, then build the data."""
    loader = None
    try:
        loader = yaml.SafeLoader(text)
        node = loader.get_single_node()
        if node is None:
            raise UserError(f"empty file: expected {what}", path)
        _check_duplicate_keys(node, path)
        return node, loader.construct_document(node)
    except yaml.MarkedYAMLError as e:
        message = ", ".join(part for part in (e.context, e.problem) if part)
        raise UserError(f"invalid YAML: {message}", path, _yaml_error_line(e, text)) from None
    except yaml.YAMLError as e:  # ReaderError (a control character) carries an offset instead
        line = text.count("\n", 0, getattr(e, "position", 0)) + 1
        raise UserError(f"invalid YAML: {e}".splitlines()[0], path, line) from None
    finally:
        if loader is not None:
            loader.dispose()


def _yaml_error_line(error: yaml.MarkedYAMLError, text: str) -> int | None:
    mark = error.problem_mark or error.context_mark
    # An unclosed quote or bracket is only noticed at the end of the file; the place where the
    # unfinished construct starts is what the author needs to see.
    if error.context_mark and mark.index >= len(text.rstrip()):
        mark = error.context_mark
    return mark.line + 1 if mark else None


def _check_duplicate_keys(node: yaml.Node, path: Path) -> None:
    # PyYAML keeps the last of two equal keys without a word; a silently lost principle is worse.
    seen: set[int] = set()
    stack = [node]
    while stack:
        current = stack.pop()
        if id(current) in seen:  # aliases share nodes
            continue
        seen.add(id(current))
        if isinstance(current, yaml.MappingNode):
            keys: set[tuple[str, str]] = set()
            for key, _ in current.value:
                if isinstance(key, yaml.ScalarNode):
                    if (key.tag, key.value) in keys:
                        raise UserError(
                            f"duplicate key {key.value!r}", path, key.start_mark.line + 1
                        )
                    keys.add((key.tag, key.value))
            stack.extend(child for pair in reversed(current.value) for child in reversed(pair))
        elif isinstance(current, yaml.SequenceNode):
            stack.extend(reversed(current.value))


def _located(error: ValidationError, root: yaml.Node, path: Path) -> UserError:
    """The earliest-in-file problem of a ValidationError, as a UserError with its line."""
    found = []
    for err in error.errors():
        if err["loc"] and err["loc"][-1] == "[key]":  # a bad mapping key: point at the key
            err["loc"] = err["loc"][:-1]
        cause = (err.get("ctx") or {}).get("error")
        if isinstance(cause, LocatedValueError):
            line = _line_of(root, cause.loc)
            message = describe_error(err, cause.loc, cause.message)
            if cause.first_loc is not None:
                message += f" (first used on line {_line_of(root, cause.first_loc)})"
        else:
            line, message = _line_of(root, err["loc"]), describe_error(err, err["loc"])
        found.append((line, message))
    line, message = min(found, key=lambda item: item[0])
    return UserError(message, path, line)


def _line_of(root: yaml.Node, loc: tuple[str | int, ...]) -> int:
    """1-based line of the deepest node along `loc` that exists in the document.

    The last step into a mapping points at the key: unknown keys, empty values and wrong types
    are then reported where the key is written, even when the value starts on a later line.
    """
    node = root
    for depth, step in enumerate(loc):
        child = _child(node, step)
        if child is None:
            break
        key, value = child
        if depth == len(loc) - 1:
            node = key
            break
        node = value
    return node.start_mark.line + 1


def _child(node: yaml.Node, step: str | int) -> tuple[yaml.Node, yaml.Node] | None:
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            if isinstance(key, yaml.ScalarNode) and key.value == str(step):
                return key, value
    elif isinstance(node, yaml.SequenceNode) and isinstance(step, int) and step < len(node.value):
        return node.value[step], node.value[step]
    return None
