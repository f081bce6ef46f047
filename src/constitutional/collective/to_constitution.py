"""Consensus statements of a collective analysis → a constitution with provenance.

Collective Constitutional AI (Anthropic and CIP, 2023) kept the public statements that every
opinion group supported and rewrote them as principles. Here a statement qualifies when its
group-aware consensus (the product of the groups' agree probabilities, from `analyze`) reaches
the threshold; each becomes one critique/revision pair and one comparison question with the same
id, and each principle carries the statement's id, text and per-group votes as provenance.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from constitutional.collective.drafting import Draft
from constitutional.constitution import (
    ComparisonPrinciple,
    Constitution,
    CritiqueRevision,
    GroupSupport,
    Provenance,
    SourceStatement,
)
from constitutional.errors import UserError
from constitutional.yamlfile import LocatedValueError, describe_error, dotted

ID_PREFIX = "collective-"


class _Loose(BaseModel):
    # An analysis file holds much more (points, silhouettes, ...); only what is read is checked.
    model_config = ConfigDict(extra="ignore", frozen=True)


class GroupStats(_Loose):
    group: int = Field(ge=0)
    p_agree: float = Field(ge=0, le=1)
    votes: int = Field(ge=0)
    agree: int = Field(ge=0)
    disagree: int = Field(ge=0)


class StatementStats(_Loose):
    statement: str = Field(min_length=1)
    text: str | None = None
    consensus: float = Field(ge=0, le=1)
    groups: list[GroupStats] = Field(min_length=1)


class Participants(_Loose):
    total: int = Field(ge=0)
    kept: int = Field(ge=0)


class AnalysisSettings(_Loose):
    consensus_threshold: float = Field(gt=0, lt=1)


class Analysis(_Loose):
    """The parts of a `cai collective analyze` result that a constitution is built from."""

    participants: Participants
    k: int = Field(ge=1)
    config: AnalysisSettings
    statement_stats: list[StatementStats] = Field(min_length=1)


def load_analysis(path: str | Path, threshold: float | None = None) -> Analysis:
    """Read an `analyze --out` JSON file; every problem is a UserError with FILE:LINE.

    Statements at or above the consensus threshold (`threshold`, else the file's own) must have
    text: the votes were analysed without a comments CSV otherwise.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError("no such file", path)
    try:
        text = path.read_bytes().decode("utf-8-sig")
        data = json.loads(text)
    except UnicodeDecodeError:
        raise UserError("not valid UTF-8", path) from None
    except json.JSONDecodeError as e:
        raise UserError(f"invalid JSON: {e.msg} (column {e.colno})", path, e.lineno) from None
    try:
        analysis = Analysis.model_validate(data)
        _check_texts(analysis, threshold)
        return analysis
    except ValidationError as e:
        problems = [(err["loc"], describe_error(err, err["loc"])) for err in e.errors()]
    except LocatedValueError as e:
        problems = [(e.loc, f"{dotted(e.loc)}: {e.message}")]
    lines = _lines(text, [loc for loc, _ in problems])
    line, message = min(zip(lines, (m for _, m in problems), strict=True))
    raise UserError(message, path, line)


def _lines(text: str, locs: list[tuple[str | int, ...]]) -> list[int]:
    """1-based line of each `loc` (pydantic-style path) in a JSON text; a missing step stops at
    its parent, and a last step into a mapping gives the key's line.

    `json` keeps no positions, but JSON is YAML and the YAML composer does; this runs only to
    name the line of a problem already found (libyaml's composer when present: large files).
    """
    import yaml

    root = yaml.compose(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    lines = []
    for loc in locs:
        node = root
        for depth, step in enumerate(loc, start=1):
            if isinstance(node, yaml.MappingNode):
                found = next(((k, v) for k, v in node.value if k.value == str(step)), None)
            elif (
                isinstance(node, yaml.SequenceNode)
                and isinstance(step, int)
                and step < len(node.value)
            ):
                found = (node.value[step], node.value[step])
            else:
                found = None
            if found is None:
                break
            node = found[0] if depth == len(loc) else found[1]
        lines.append(node.start_mark.line + 1)
    return lines


def analysis_from_votes(
    votes: str | Path, comments: str | Path | None, threshold: float | None = None, **config: Any
) -> Analysis:
    """Run `analyze` on a votes CSV (and statement texts) with `AnalysisConfig(**config)`."""
    from constitutional.collective import AnalysisConfig, analyze, load_votes

    analysis = Analysis.model_validate(
        analyze(load_votes(votes, comments), AnalysisConfig(**config))
    )
    missing = _untitled(analysis, threshold)
    if missing is not None:
        where = "is missing from this file" if comments else "pass the statements' comments CSV"
        raise UserError(
            f"consensus statement {missing[1].statement!r} has no text: {where}", comments or votes
        )
    return analysis


def _untitled(analysis: Analysis, threshold: float | None) -> tuple[int, StatementStats] | None:
    """The first statement at or above the threshold that has no text, with its index."""
    cut = consensus_cut(analysis, threshold)
    for i, row in enumerate(analysis.statement_stats):
        if row.consensus >= cut and not (row.text or "").strip():
            return i, row
    return None


def _check_texts(analysis: Analysis, threshold: float | None) -> None:
    missing = _untitled(analysis, threshold)
    if missing is not None:
        raise LocatedValueError(
            ("statement_stats", missing[0], "statement"),
            f"consensus statement {missing[1].statement!r} has no text; "
            "analyse the votes with their comments CSV",
        )


def select(
    analysis: Analysis, threshold: float | None = None, limit: int = 0
) -> list[StatementStats]:
    """Statements with consensus >= threshold (default: the analysis's), highest first, at most
    `limit` (0: all). Ties keep the analysis's statement order."""
    cut = consensus_cut(analysis, threshold)
    rows = sorted(
        (r for r in analysis.statement_stats if r.consensus >= cut), key=lambda r: -r.consensus
    )
    if not rows:
        best = max(r.consensus for r in analysis.statement_stats)
        raise UserError(
            f"no statement reaches consensus {cut} (the highest is {best:.3f}); "
            "lower --consensus-threshold"
        )
    return rows[:limit] if limit > 0 else rows


def consensus_cut(analysis: Analysis, threshold: float | None) -> float:
    """`threshold`, checked, or the analysis's own when None."""
    if threshold is None:
        return analysis.config.consensus_threshold
    if not 0 < threshold < 1:
        raise UserError(f"--consensus-threshold must be in (0, 1), got {threshold}")
    return threshold


def principle_ids(statement_ids: Sequence[str]) -> list[str]:
    """A slug per statement id (`collective-` + lower-cased id, other characters as '-'), unique."""
    taken: set[str] = set()
    out = []
    for sid in statement_ids:
        base = (ID_PREFIX + re.sub(r"[^a-z0-9_.-]+", "-", sid.lower()).strip("-._"))[:56]
        slug, n = base, 2
        while slug in taken:
            slug, n = f"{base}-{n}", n + 1
        taken.add(slug)
        out.append(slug)
    return out


def provenance(
    row: StatementStats, source: str, model: str | None, fallback: str | None
) -> Provenance:
    """Where a principle came from: the statement, its per-group votes and how it was drafted."""
    groups = [
        GroupSupport(
            group=g.group, p_agree=g.p_agree, votes=g.votes, agree=g.agree, disagree=g.disagree
        )
        for g in row.groups
    ]
    statement = SourceStatement(
        id=row.statement, text=row.text or "", consensus=row.consensus, groups=groups
    )
    return Provenance(
        source=source,
        drafted_by="model" if model and not fallback else "template",
        model=model,
        fallback=fallback,
        statements=[statement],
    )


def build_constitution(
    analysis: Analysis,
    rows: Sequence[StatementStats],
    drafts: Sequence[tuple[Draft, str | None]],
    *,
    source: str,
    model: str | None = None,
    name: str = "collective",
    version: str = "1.0.0",
    description: str | None = None,
    extra_metadata: dict[str, Any] | None = None,
) -> Constitution:
    """One critique/revision pair and one comparison principle per statement, same id and provenance.

    Args:
        analysis: the loaded analysis (for the metadata summary).
        rows: the chosen statements, from `select`.
        drafts: per row, (draft, fallback reason or None), from `template_draft` or `model_drafts`.
        source: names the input in every provenance record (e.g. "collective:analysis.json").
        model: "backend:model" when a model drafted, else None.
    """
    pairs, questions = [], []
    for pid, row, (draft, fallback) in zip(
        principle_ids([r.statement for r in rows]), rows, drafts, strict=True
    ):
        origin = provenance(row, source, model, fallback)
        pairs.append(
            CritiqueRevision(
                id=pid, critique=draft.critique, revision=draft.revision, provenance=origin
            )
        )
        questions.append(ComparisonPrinciple(id=pid, text=draft.comparison, provenance=origin))
    drafted = sum(fallback is None for _, fallback in drafts) if model else 0
    people = analysis.participants
    metadata = {
        "collective": {
            "source": source,
            "participants": people.kept,
            "opinion_groups": analysis.k,
            "statements": len(analysis.statement_stats),
            "principles": len(rows),
            "drafted": {"model": drafted, "template": len(rows) - drafted},
            **(extra_metadata or {}),
        }
    }
    description = description or (
        f"Principles from the {len(rows)} statements that all {analysis.k} opinion groups of "
        f"{people.kept} participants agreed with."
    )
    try:
        return Constitution(
            name=name,
            version=version,
            description=description,
            critique_revision=pairs,
            comparison=questions,
            metadata=metadata,
        )
    except ValidationError as e:  # only the user's --name/--version/--description can be at fault
        error = e.errors()[0]
        raise UserError(f"--{error['loc'][0]}: {error['msg']}, got {error['input']!r}") from None
