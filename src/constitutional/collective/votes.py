"""Loading votes (and statement texts) from CSV into a participant × statement matrix.

Two layouts are accepted, told apart by the header:

- ours: `participant,statement,vote`;
- the Polis export: `votes.csv` with `timestamp,datetime,comment-id,voter-id,vote` and
  `comments.csv` with `comment-id,comment-body,...`.

Our own layout's text cells may carry a leading `'` that `spreadsheet_safe` added on export (a
spreadsheet would otherwise run a statement such as `=HYPERLINK(...)` as a formula); reading
takes it off again, so texts round-trip exactly.

Votes are 1 (agree), -1 (disagree) or 0 (pass). When a participant voted twice on a statement the
later vote wins (by Polis timestamp, else by line). Every bad row is a `UserError` naming its line.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from constitutional.errors import UserError

SIMPLE = ("participant", "statement", "vote")
POLIS = ("voter-id", "comment-id", "vote")
VOTE_VALUES = {"1": 1, "-1": -1, "0": 0, "+1": 1}
FORMULA_START = (
    "=",
    "+",
    "-",
    "@",
    "\t",
    "\r",
)  # what makes a spreadsheet read a cell as a formula (OWASP)


def spreadsheet_safe(cell: str | int) -> str | int:
    """A CSV cell a spreadsheet shows as text: a `'` before a string that starts like a formula.

    Strings already starting with `'` get one more, so `from_spreadsheet_safe` can undo exactly;
    numbers (a vote of -1) stay numbers.
    """
    if isinstance(cell, str) and cell.startswith((*FORMULA_START, "'")):
        return "'" + cell
    return cell


def from_spreadsheet_safe(text: str) -> str:
    """The text `spreadsheet_safe` was given."""
    return text[1:] if text.startswith("'") and text[1:].startswith((*FORMULA_START, "'")) else text


@dataclass
class Votes:
    """Votes as a dense matrix: `matrix[i, j]` is participant i's vote on statement j, NaN if none."""

    participants: list[str]
    statements: list[str]
    matrix: np.ndarray  # (n_participants, n_statements), values in {1, -1, 0, NaN}
    texts: dict[str, str] = field(
        default_factory=dict
    )  # statement id -> text, when comments are given

    @property
    def n_votes(self) -> int:
        return int(np.count_nonzero(~np.isnan(self.matrix)))


def _rows(path: Path) -> tuple[list[str], Any]:
    """Read `path` as CSV with a header; return (lower-cased header, csv reader over the rest)."""
    if not path.is_file():
        raise UserError("no such file", path)
    try:
        with path.open(
            encoding="utf-8-sig", newline=""
        ) as f:  # newline="": a \r inside a quoted cell stays
            text = f.read()
    except UnicodeDecodeError:
        raise UserError("not valid UTF-8", path) from None
    reader = csv.reader(text.splitlines(keepends=True))
    header = next(reader, None)
    if not header or not any(cell.strip() for cell in header):
        raise UserError("empty file: expected a CSV header", path, 1)
    names = [cell.strip().lower() for cell in header]
    return names, reader


def _layout(names: list[str], path: Path, wanted: tuple[tuple[str, ...], ...]) -> tuple[str, ...]:
    for columns in wanted:
        if all(c in names for c in columns):
            return columns
    options = " or ".join(",".join(c) for c in wanted)
    raise UserError(f"header must have the columns {options}; got {','.join(names)}", path, 1)


def _natural(ids: list[str]) -> list[str]:
    """Integer ids (Polis comment ids) sort numerically; other ids keep first-seen order."""
    if all(i.lstrip("-").isdigit() for i in ids):
        return sorted(ids, key=int)
    return ids


def load_votes(votes: str | Path, comments: str | Path | None = None) -> Votes:
    """Read a votes CSV (our layout or the Polis export) and, optionally, statement texts.

    Args:
        votes: CSV with `participant,statement,vote` or Polis `...,comment-id,voter-id,vote`.
        comments: CSV with `comment-id,comment-body` (Polis) or `statement,text`.

    Returns:
        The vote matrix, participants in first-seen order, statements in id order.
    """
    path = Path(votes)
    names, reader = _rows(path)
    person_col, statement_col, vote_col = (
        names.index(c) for c in _layout(names, path, (SIMPLE, POLIS))
    )
    time_col = names.index("timestamp") if "timestamp" in names and "voter-id" in names else None
    latest: dict[
        tuple[str, str], tuple[float, int]
    ] = {}  # (participant, statement) -> (when, vote)
    for row in reader:
        line = reader.line_num
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != len(names):
            raise UserError(f"expected {len(names)} fields, got {len(row)}", path, line)
        person, statement = row[person_col].strip(), row[statement_col].strip()
        if not person or not statement:
            raise UserError("empty participant or statement id", path, line)
        vote = VOTE_VALUES.get(row[vote_col].strip())
        if vote is None:
            raise UserError(f"vote must be 1, -1 or 0, got {row[vote_col]!r}", path, line)
        when = float(line)
        if time_col is not None:
            try:
                when = float(row[time_col])
            except ValueError:
                raise UserError(
                    f"timestamp must be a number, got {row[time_col]!r}", path, line
                ) from None
        key = (person, statement)
        if key not in latest or when >= latest[key][0]:
            latest[key] = (when, vote)
    if not latest:
        raise UserError("no votes", path)
    participants = list(dict.fromkeys(p for p, _ in latest))
    statements = _natural(list(dict.fromkeys(s for _, s in latest)))
    row_of = {p: i for i, p in enumerate(participants)}
    col_of = {s: j for j, s in enumerate(statements)}
    matrix = np.full((len(participants), len(statements)), np.nan)
    for (person, statement), (_, vote) in latest.items():
        matrix[row_of[person], col_of[statement]] = vote
    texts = load_texts(comments) if comments is not None else {}
    return Votes(participants, statements, matrix, texts)


def load_texts(comments: str | Path) -> dict[str, str]:
    """Statement id -> text from `comment-id,comment-body` (Polis) or `statement,text` CSV."""
    path = Path(comments)
    names, reader = _rows(path)
    id_col, text_col = (
        names.index(c)
        for c in _layout(names, path, (("comment-id", "comment-body"), ("statement", "text")))
    )
    ours = names[text_col] == "text"  # only our own export is escaped; a Polis export is read as is
    texts: dict[str, str] = {}
    for row in reader:
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != len(names):
            raise UserError(f"expected {len(names)} fields, got {len(row)}", path, reader.line_num)
        if not row[id_col].strip():
            raise UserError("empty statement id", path, reader.line_num)
        text = row[text_col].strip()
        texts[row[id_col].strip()] = from_spreadsheet_safe(text) if ours else text
    return texts
