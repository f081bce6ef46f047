"""Word n-gram helpers for simple, explainable text checks: SL-CAI's critique/revision checks and
collective drafting's "does this principle just restate the statement?" check use the same ones."""

from __future__ import annotations

import re

MIN_DISTINCT = 0.5  # below this share of distinct word 3-grams, text is looping on itself


def words(text: str) -> list[str]:
    """Lower-cased runs of word characters: words("It's OK.") = ["it", "s", "ok"]."""
    return re.findall(r"\w+", text.lower())


def overlap(text: str, other: str, n: int = 4) -> float:
    """Fraction of `text`'s word n-grams that also occur in `other` (0 when text is too short)."""
    mine, theirs = words(text), words(other)
    grams = {tuple(mine[i : i + n]) for i in range(len(mine) - n + 1)}
    other_grams = {tuple(theirs[i : i + n]) for i in range(len(theirs) - n + 1)}
    return len(grams & other_grams) / len(grams) if grams else 0.0


def looping(text: str, n: int = 3) -> bool:
    """True when the text mostly repeats itself ("It is not helpful. It is not helpful. ...")."""
    tokens = words(text)
    grams = [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
    return len(grams) >= 10 and len(set(grams)) / len(grams) < MIN_DISTINCT
