"""Constitutions: versioned YAML principles for critique/revision and AI-feedback comparison.

`load_constitution()` returns the packaged default; `load_constitution(path)` validates a file
and reports the first problem as `UserError` with FILE:LINE. `Constitution.hash` identifies the
content (not the formatting) and is recorded in every artifact built from it.
"""

from constitutional.constitution.canonical import canonical_json, constitution_hash
from constitutional.constitution.diff import diff_constitutions, format_diff
from constitutional.constitution.load import (
    default_constitution_path,
    load_constitution,
    save_constitution,
)
from constitutional.constitution.schema import (
    Categories,
    Category,
    ComparisonExample,
    ComparisonPrinciple,
    Constitution,
    CritiqueRevision,
    CritiqueRevisionExample,
    FewShot,
    GroupSupport,
    Provenance,
    SourceStatement,
)

__all__ = [
    "Categories",
    "Category",
    "ComparisonExample",
    "ComparisonPrinciple",
    "Constitution",
    "CritiqueRevision",
    "CritiqueRevisionExample",
    "FewShot",
    "GroupSupport",
    "Provenance",
    "SourceStatement",
    "canonical_json",
    "constitution_hash",
    "default_constitution_path",
    "diff_constitutions",
    "format_diff",
    "load_constitution",
    "save_constitution",
]
