"""Load a constitution from YAML; every problem becomes a `UserError` with FILE:LINE."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from constitutional.constitution.errors import describe_error
from constitutional.constitution.schema import Constitution, ConstitutionValueError
from constitutional.errors import UserError
from constitutional.jsonl import atomic_path


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
    path = Path(path)
    node, data = _parse(path, _read_text(path))
    try:
        return Constitution.model_validate(data)
    except ValidationError as e:
        raise _located(e, node, path) from None


def save_constitution(constitution: Constitution, path: str | Path) -> None:
    """Write `constitution` as YAML atomically (comments are not kept)."""
    with atomic_path(path) as tmp:
        tmp.write_text(constitution.to_yaml(), encoding="utf-8")


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


def _parse(path: Path, text: str) -> tuple[yaml.Node, Any]:
    """Compose the node tree (it keeps line marks), check duplicate keys, then build the data."""
    loader = None
    try:
        loader = yaml.SafeLoader(text)
        node = loader.get_single_node()
        if node is None:
            raise UserError("empty file: expected a mapping with name, version, ...", path)
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
        if isinstance(cause, ConstitutionValueError):
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
