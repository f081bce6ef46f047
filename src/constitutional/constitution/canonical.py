"""Canonical forms of a constitution: compact sorted JSON for hashing, tidy YAML for writing."""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from constitutional.constitution.schema import Constitution


def canonical_json(constitution: Constitution) -> str:
    """The validated model as JSON with sorted keys and no spaces.

    Validation already stripped text and filled defaults, so two files that differ only in
    formatting, comments, key order or quoting style give the same string.
    """
    data = constitution.model_dump(mode="json")
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def canonical_hash(constitution: Constitution) -> str:
    """sha256 hex digest of `canonical_json`: the identity recorded in every artifact."""
    return hashlib.sha256(canonical_json(constitution).encode("utf-8")).hexdigest()


def constitution_hash(constitution: Constitution) -> str:
    """Same as `constitution.hash`; a function for callers that prefer one."""
    return canonical_hash(constitution)


def to_yaml_text(data: dict[str, Any]) -> str:
    """Dump plain data as block-style YAML, multi-line strings as `|` literals."""
    import yaml

    class _Dumper(yaml.SafeDumper):
        pass

    def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
        style = "|" if "\n" in value else None
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)

    _Dumper.add_representer(str, _str)
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=100)
