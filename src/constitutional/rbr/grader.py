"""P(yes) for every proposition about every reply, read from any backend's `choice_logprobs`.

All proposition × reply questions go to the backend in one call, reply-major: the questions about
one reply differ only in their last lines, so with a batch size equal to the number of
propositions the local backend prefills each conversation once and shares its KV cache across
the questions (`LocalBackend._inputs_with_shared_prefix`). No sampling, so grading is
deterministic and the response cache makes a rerun free.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from constitutional.backends.base import Backend, Message
from constitutional.rbr.propositions import Propositions

# The conversation and reply come first and the question last, so that the shared prefix is long.
TEMPLATE = """Read this conversation between a user and an AI assistant, then answer one question \
about the assistant's final reply.

<conversation>
{conversation}
</conversation>

<final_reply>
{response}
</final_reply>

Question about the final reply: {question}
Answer with only "yes" or "no"."""

YES, NO = ("Yes", "yes", " Yes", " yes"), ("No", "no", " No", " no")

Conversation = str | list[Message]  # a bare user prompt, or the turns before the reply


def render_conversation(conversation: Conversation) -> str:
    """`User: ...` / `Assistant: ...` lines; a bare string is one user turn."""
    if isinstance(conversation, str):
        conversation = [{"role": "user", "content": conversation}]
    return "\n\n".join(f"{m['role'].capitalize()}: {m['content'].strip()}" for m in conversation)


def question_messages(conversation: Conversation, response: str, question: str) -> list[Message]:
    text = TEMPLATE.format(
        conversation=render_conversation(conversation),
        response=response.strip(),
        question=question.strip(),
    )
    return [{"role": "user", "content": text}]


def p_yes(logprobs: Sequence[float]) -> float:
    """P(yes) from the log-probs of the YES then NO spellings, normalised over those two answers.

    Example: log-probs (log .3, log .1, -inf, -inf | log .2, -inf, -inf, -inf) give
    P(yes) = (.3 + .1) / (.3 + .1 + .2) = 2/3. NaN when no spelling has any mass.
    """
    yes = [x for x in logprobs[: len(YES)] if x != -math.inf and not math.isnan(x)]
    no = [x for x in logprobs[len(YES) :] if x != -math.inf and not math.isnan(x)]
    if not yes and not no:
        return math.nan
    top = max(yes + no)  # shift: very negative log-probs do not underflow to 0/0
    mass_yes, mass_no = sum(math.exp(x - top) for x in yes), sum(math.exp(x - top) for x in no)
    return mass_yes / (mass_yes + mass_no)


class Grader:
    """Asks a backend every proposition of `propositions` about each reply.

    Args:
        backend: any Backend; only `choice_logprobs` is called.
        propositions: the RBR file whose questions are asked.

    Answers with no mass on any yes/no spelling (possible with an HTTP server's top log-probs)
    count as 0.5 and are counted in `unscored`.
    """

    def __init__(self, backend: Backend, propositions: Propositions):
        self.backend, self.propositions = backend, propositions
        self.unscored = 0

    def __call__(
        self, conversations: Sequence[Conversation], responses: Sequence[str]
    ) -> np.ndarray:
        """(n_replies, n_propositions) array of P(yes), columns in `propositions.ids` order."""
        questions = [p.question for p in self.propositions.propositions]
        asks = [
            question_messages(c, r, q) for c, r in zip(conversations, responses) for q in questions
        ]
        rows = self.backend.choice_logprobs(asks, [*YES, *NO]) if asks else []
        probs = np.array([p_yes(row) for row in rows], dtype=float).reshape(
            len(responses), len(questions)
        )
        missing = np.isnan(probs)
        self.unscored += int(missing.sum())
        probs[missing] = 0.5
        return probs
