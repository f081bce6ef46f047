"""How critique and revision requests are laid out as a chat, with few-shot exemplars first.

The principle texts come from the constitution; this module only arranges turns, as in the
paper: the red-team prompt, the response, the critique request, the critique, the revision request.
"""

from __future__ import annotations

from constitutional.backends.base import Message
from constitutional.constitution import Constitution, CritiqueRevision


def _turns(prompt: str, response: str, pair: CritiqueRevision) -> list[Message]:
    return [
        {"role": "user", "content": prompt},
        {"role": "assistant", "content": response},
        {"role": "user", "content": pair.critique},
    ]


def fewshot_messages(
    constitution: Constitution, count: int, critique: bool = True
) -> list[Message]:
    """The first `count` critique/revision exemplars as complete earlier turns of the chat
    (without their critiques when `critique` is False, as direct revision asks)."""
    messages: list[Message] = []
    for ex in constitution.fewshot.critique_revision[:count]:
        pair = constitution.pair(ex.principle)
        if critique:
            messages += [
                *_turns(ex.prompt, ex.response, pair),
                {"role": "assistant", "content": ex.critique},
            ]
        else:
            messages += [
                {"role": "user", "content": ex.prompt},
                {"role": "assistant", "content": ex.response},
            ]
        messages += [
            {"role": "user", "content": pair.revision},
            {"role": "assistant", "content": ex.revision},
        ]
    return messages


def critique_messages(
    fewshot: list[Message], prompt: str, response: str, pair: CritiqueRevision
) -> list[Message]:
    """Ask for a critique of `response` against one principle."""
    return [*fewshot, *_turns(prompt, response, pair)]


def revision_messages(
    fewshot: list[Message], prompt: str, response: str, pair: CritiqueRevision, critique: str
) -> list[Message]:
    """Ask for a revision that answers `critique`; shares the critique request's prefix."""
    return [
        *critique_messages(fewshot, prompt, response, pair),
        {"role": "assistant", "content": critique},
        {"role": "user", "content": pair.revision},
    ]


def direct_revision_messages(
    fewshot: list[Message], prompt: str, response: str, pair: CritiqueRevision
) -> list[Message]:
    """Ask for a revision with no critique before it (the ablation of Bai et al. 2022, fig. 7)."""
    return [
        *fewshot,
        {"role": "user", "content": prompt},
        {"role": "assistant", "content": response},
        {"role": "user", "content": pair.revision},
    ]
