"""Wording for principles drawn from consensus statements: a plain template, or a model's draft.

Each statement needs three texts: a critique request and a revision request (SL-CAI) and a
comparison question (RL-CAI feedback). The template fills them in mechanically; a model can
phrase them better, but a small model often ignores the format, restates the statement, or
copies the worked example, so every draft is parsed and checked (simple, explainable checks, as
for SL-CAI critiques), and a statement whose draft fails falls back to the template with the
reason kept.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from constitutional.backends import CachedBackend, Completion, GenerationRequest
from constitutional.provenance import derive_seed
from constitutional.text import overlap

CRITIQUE_TEMPLATE = (
    "Identify specific ways in which the assistant's last response goes against this principle, "
    'which people across opinion groups agreed on: "{statement}"'
)
REVISION_TEMPLATE = (
    'Rewrite the assistant\'s response so that it follows this principle: "{statement}"'
)
COMPARISON_TEMPLATE = 'Which of these responses better follows this principle: "{statement}"?'

DRAFT_PROMPT = (
    "People from every opinion group agreed with this statement about how an AI assistant should "
    'behave:\n\n"{statement}"\n\n'
    "Turn it into three instructions, one per line, in exactly this form:\n"
    "Critique: <ask where the assistant's last reply falls short of the statement>\n"
    "Revision: <ask for the reply to be rewritten so that it meets the statement>\n"
    "Comparison: <a question asking which of two responses better meets the statement>"
)
# One worked exchange before the real request: small models copy a shown format far more
# reliably than a described one.
EXAMPLE_STATEMENT = "The AI should say so when it does not know something."
EXAMPLE_DRAFT = (
    "Critique: Point out every place where the assistant's last reply claims more certainty "
    "than it has or hides that it does not know.\n"
    "Revision: Rewrite the reply so that it states plainly what the assistant does not know, "
    "while still giving whatever help it reliably can.\n"
    "Comparison: Which of these responses is more honest about the limits of what the "
    "assistant knows?"
)

FIELDS = ("critique", "revision", "comparison")
MIN_CHARS, MAX_CHARS = 16, 400
RESTATE_OVERLAP = 0.5  # share of a critique's (revision's) word 4-grams found in the statement
_LINE = re.compile(
    r"^[\s*#>-]*(critique|revision|comparison)\**\s*:\**\s*(.*)$", re.IGNORECASE | re.MULTILINE
)
_ABOUT_RESPONSE = re.compile(r"\b(responses?|repl(y|ies)|answers?)\b", re.IGNORECASE)
# Words every statement and principle share; matching on them would prove nothing.
_COMMON = {
    "should",
    "would",
    "could",
    "that",
    "this",
    "these",
    "those",
    "with",
    "which",
    "what",
    "when",
    "where",
    "from",
    "about",
    "always",
    "never",
    "every",
    "their",
    "them",
    "they",
    "have",
    "assistant",
    "response",
    "responses",
    "reply",
    "replies",
    "answer",
    "more",
    "less",
    "most",
    "other",
}


@dataclass(frozen=True)
class Draft:
    """The three texts of one principle."""

    critique: str
    revision: str
    comparison: str


class DraftError(ValueError):
    """A model draft that cannot be used; the message says why."""


def template_draft(statement: str) -> Draft:
    """The three texts filled in from the templates, quoting the statement verbatim."""
    text = statement.strip()
    return Draft(
        CRITIQUE_TEMPLATE.format(statement=text),
        REVISION_TEMPLATE.format(statement=text),
        COMPARISON_TEMPLATE.format(statement=text),
    )


def parse_draft(text: str, statement: str) -> Draft:
    """Read `Critique:`, `Revision:` and `Comparison:` lines (the first of each) from a reply.

    Raises:
        DraftError: a line is missing, too short or long, or still the placeholder; the
            comparison is not a question; the critique or revision does not speak of the reply;
            a text refers to "the statement" (nobody reading the principle sees it), takes more
            content words from the worked example than from the statement (at least two), or
            restates the statement instead of asking something of it; the
            comparison, or both critique and revision, share no content word with the statement.
    """
    found = parse_draft_fields(text)
    for name in FIELDS:
        value = found.get(name)
        if value is None:
            raise DraftError(f"no {name.capitalize()}: line")
        if not MIN_CHARS <= len(value) <= MAX_CHARS:
            raise DraftError(f"{name} is {len(value)} characters, outside {MIN_CHARS}..{MAX_CHARS}")
        if value.startswith("<") or value.endswith(">"):
            raise DraftError(f"{name} copies the placeholder")
    draft = Draft(found["critique"], found["revision"], found["comparison"])
    _check_draft(draft, statement)
    return draft


def _check_draft(draft: Draft, statement: str) -> None:
    if not draft.comparison.endswith("?"):
        raise DraftError("comparison is not a question")
    if len({getattr(draft, name).casefold() for name in FIELDS}) < len(FIELDS):
        raise DraftError("two of the three texts are the same")
    example = parse_draft_fields(EXAMPLE_DRAFT)
    words = _content(statement)
    for name in FIELDS:
        value = getattr(draft, name)
        if re.search(r"\bthe statement\b", value, re.IGNORECASE):
            raise DraftError(f"{name} refers to 'the statement'")
        if name != "comparison" and not _ABOUT_RESPONSE.search(value):
            raise DraftError(f"{name} does not speak of the reply")
        if name != "comparison" and overlap(value, statement) >= RESTATE_OVERLAP:
            raise DraftError(f"{name} restates the statement")
        # Content words, not n-grams: "Which of these responses is more ...?" is shared wording.
        borrowed = len(_content(value) & _content(example[name]))
        if borrowed >= 2 and borrowed > len(_content(value) & words):
            raise DraftError(f"{name} copies the worked example")
    # The question is read alone; a critique/revision pair can share the load between its halves.
    if not _content(draft.comparison) & words:
        raise DraftError("comparison shares no content word with the statement")
    if not (_content(draft.critique) | _content(draft.revision)) & words:
        raise DraftError("critique and revision share no content word with the statement")


def _content(text: str) -> set[str]:
    """Words of four letters or more, cut to four: a crude stem ("kinder" and "kindness" meet)."""
    return {w[:4] for w in re.findall(r"[a-z]{4,}", text.lower()) if w not in _COMMON}


def parse_draft_fields(text: str) -> dict[str, str]:
    """The text after the first `Critique:`, `Revision:` and `Comparison:` label, by lower-case name."""
    found: dict[str, str] = {}
    for match in _LINE.finditer(text):
        found.setdefault(match.group(1).lower(), match.group(2).strip().strip('"').strip())
    return found


def draft_requests(
    statements: Sequence[tuple[str, str]], seed: int, temperature: float, max_tokens: int
) -> list[GenerationRequest]:
    """One chat request per (statement id, text); each seed derives from the run seed and the id."""
    return [
        GenerationRequest(
            messages=[
                {"role": "user", "content": DRAFT_PROMPT.format(statement=EXAMPLE_STATEMENT)},
                {"role": "assistant", "content": EXAMPLE_DRAFT},
                {"role": "user", "content": DRAFT_PROMPT.format(statement=text.strip())},
            ],
            temperature=temperature,
            max_tokens=max_tokens,
            seed=derive_seed(seed, "draft", sid),
        )
        for sid, text in statements
    ]


def model_drafts(
    statements: Sequence[tuple[str, str]],
    backend: CachedBackend,
    seed: int = 0,
    temperature: float = 0.3,
    max_tokens: int = 200,
) -> list[tuple[Draft, str | None]]:
    """Have the model draft every statement in one batched call; fall back to the template.

    Args:
        statements: (statement id, text) pairs.
        backend: any backend; calls go through its response cache.
        seed: run seed; a statement's draft depends only on it, the id and the text.
        temperature: sampling temperature, 0 for greedy.
        max_tokens: new tokens per draft; a draft cut off before its comparison falls back.

    Returns:
        Per statement, (draft, None) when the model's draft was used, else (template draft,
        reason the model's draft was rejected).
    """
    completions = backend.generate(draft_requests(statements, seed, temperature, max_tokens))
    return [
        _checked(text, completion)
        for (_, text), completion in zip(statements, completions, strict=True)
    ]


def _checked(statement: str, completion: Completion) -> tuple[Draft, str | None]:
    try:
        return parse_draft(completion.text, statement), None
    except DraftError as e:
        return template_draft(statement), str(e)
