"""How a comparison is put to the feedback model: Bai et al. 2022, section 4.1.

The user turn holds the conversation, the principle's question and the two options; the
assistant turn is pre-filled up to "The answer is: (" so that the very next token is the letter
and `choice_logprobs(["A", "B"])` reads the judgement off one forward pass. In chain-of-thought
mode the assistant first reasons after "Let's think step by step:", then the same answer stub
follows the reasoning. Few-shot exemplars from the constitution come first as earlier turns.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from constitutional.backends.base import Message, Prompt
from constitutional.constitution import Constitution
from constitutional.provenance import derive_seed

ANSWER_STUB = "The answer is: ("
COT_TRIGGER = "Let's think step by step:"
COT_ANSWER = "\nTherefore the answer is: ("
# Reasoning is sampled up to (not into) the answer, which is scored, not sampled.
COT_STOP = ["Therefore", "The answer is"]
# Without access to the chat template (HTTP servers) the assistant turn cannot be pre-filled,
# so the instruction asks for the bare letter and the server's top_logprobs score it.
LETTER_ONLY = "Reply with only the letter of the better option: A or B."
THINK_FIRST = "Think step by step before choosing."

Render = Callable[[list[Message]], str]


def question(prompt: str, response_a: str, response_b: str, principle: str) -> str:
    """The user turn of one comparison, laid out as in the paper's feedback prompt."""
    return (
        "Consider the following conversation between a human and an assistant:\n\n"
        f"Human: {prompt.strip()}\n\n"
        f"{principle.strip()}\n"
        "Options:\n"
        f"(A) {response_a.strip()}\n"
        f"(B) {response_b.strip()}\n\n"
        "Choose the better option, (A) or (B)."
    )


def fewshot_messages(constitution: Constitution, count: int, cot: bool) -> list[Message]:
    """The first `count` comparison exemplars as finished turns.

    Logprob mode shows only the answers (the model is never asked to reason there); cot mode
    shows the reasoning and then the answer, the shape the live turn will take.
    """
    messages: list[Message] = []
    for ex in constitution.fewshot.comparison[:count]:
        principle = constitution.comparison_principle(ex.principle).text
        answer = f"{ANSWER_STUB}{ex.answer})"
        if cot:
            answer = f"{COT_TRIGGER}\n{ex.reasoning.strip()}{COT_ANSWER}{ex.answer})"
        messages += [
            {
                "role": "user",
                "content": question(ex.prompt, ex.response_a, ex.response_b, principle),
            },
            {"role": "assistant", "content": answer},
        ]
    return messages


def judge_messages(
    fewshot: list[Message], prompt: str, response_a: str, response_b: str, principle: str
) -> list[Message]:
    """The chat up to the live comparison question (the assistant turn is added by `*_prompt`)."""
    return [
        *fewshot,
        {"role": "user", "content": question(prompt, response_a, response_b, principle)},
    ]


def renderer(backend) -> Render | None:
    """The backend's chat-template renderer, looking through a CachedBackend; None for HTTP."""
    render = getattr(backend, "render", None) or getattr(
        getattr(backend, "inner", None), "render", None
    )
    return render if callable(render) else None


def answer_prompt(
    render: Render | None, messages: list[Message], reasoning: str | None = None
) -> Prompt:
    """The prompt whose next token is the letter: raw text when we can render, else messages.

    Args:
        render: from `renderer`; None falls back to a chat asking for the bare letter.
        messages: from `judge_messages`.
        reasoning: cot mode's sampled reasoning (None in logprob mode).
    """
    if render is not None:
        prefill = (
            ANSWER_STUB if reasoning is None else f"{COT_TRIGGER}\n{reasoning.strip()}{COT_ANSWER}"
        )
        return render(messages) + prefill
    if reasoning is None:
        last = messages[-1]
        return [*messages[:-1], {**last, "content": f"{last['content']}\n\n{LETTER_ONLY}"}]
    return [
        *messages,
        {"role": "assistant", "content": reasoning.strip()},
        {"role": "user", "content": LETTER_ONLY},
    ]


def reasoning_prompt(render: Render | None, messages: list[Message]) -> Prompt:
    """The prompt that makes the model write its step-by-step reasoning (cot mode)."""
    if render is not None:
        return render(messages) + COT_TRIGGER + "\n"
    last = messages[-1]
    return [*messages[:-1], {**last, "content": f"{last['content']}\n\n{THINK_FIRST}"}]


def draw_principles(constitution: Constitution, seed: int, pair_id: str, k: int = 1):
    """K distinct comparison principles for one pair, uniformly at random (reproducible).

    Shared by labelling and the judge audit, so an audited judge sees the principle its labels used.
    """
    rng = random.Random(derive_seed(seed, "comparison", pair_id))
    return rng.sample(constitution.comparison, k)
