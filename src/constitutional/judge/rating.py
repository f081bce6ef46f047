"""How one response is put to the feedback model for a direct score (d-RLAIF).

Lee et al. 2023, "RLAIF vs. RLHF" (https://arxiv.org/abs/2309.00267), section 2.3: instead of
training a preference model, the feedback model rates each sampled response during RL, and the
reward is the expected rating under its distribution over the score tokens. The comparison
principles of the constitution are questions about two responses; here one of them is applied
to a single reply, which is rated on a 1-9 scale. Digits 1-9 are one token each in common
tokenizers, so `choice_logprobs(SCALE)` reads the whole distribution off one forward pass (a "10"
would be two tokens and need a forward pass per choice).

As in layout.py, the assistant turn is pre-filled up to "Rating: " when the backend can render
its chat template, so the next token is the digit; otherwise the user turn asks for the bare digit.
"""

from __future__ import annotations

from constitutional.backends.base import Message, Prompt
from constitutional.judge.layout import Render

SCALE = tuple(str(i) for i in range(1, 10))  # the score tokens, worst to best
RATING_STUB = "Rating: "
DIGIT_ONLY = "Reply with only the digit of your rating, 1 to 9."


def rating_question(prompt: str, response: str, principle: str) -> str:
    """The user turn asking for a rating of one reply against one principle."""
    return (
        "Consider the following conversation between a human and an assistant:\n\n"
        f"Human: {prompt.strip()}\n\n"
        f"Assistant: {response.strip()}\n\n"
        "This question is usually asked to choose between two replies; ask it of this reply alone:\n"
        f"{principle.strip()}\n"
        "Rate the assistant's reply from 1 (it does very badly by this measure) to 9 (it could "
        "not do better)."
    )


def rating_messages(prompt: str, response: str, principle: str) -> list[Message]:
    return [{"role": "user", "content": rating_question(prompt, response, principle)}]


def rating_prompt(render: Render | None, messages: list[Message]) -> Prompt:
    """The prompt whose next token is the digit: raw text when we can render, else messages."""
    if render is not None:
        return render(messages) + RATING_STUB
    last = messages[-1]
    return [*messages[:-1], {**last, "content": f"{last['content']}\n\n{DIGIT_ONLY}"}]
