"""A backend with no model: scripted replies and log-probs, the same every run.

For tests, demos of the plumbing and dry runs of a recipe (`--backend mock`), in the spirit of
inspect_ai's `mockllm`: every request gets a reply from a script, every judgement a fixed row of
log-probs, and the backend remembers what it was asked, so a test can check the questions too.

    MockBackend()                                   # "Mock reply 3." for a request with seed 3
    MockBackend(reply=["first", "second"])          # replies in order; an error when they run out
    MockBackend(reply=lambda request: "...")        # reply computed from the request
    MockBackend(scores=(-1.0, -2.0))                # p("A") > p("B") for every judgement
    MockBackend(scores=lambda prompt, choices: ...) # a row of log-probs per prompt

Token counts are whitespace words, so usage and manifests have numbers to add up.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence

from constitutional.backends.base import (
    Completion,
    GenerationRequest,
    OnResult,
    Prompt,
    TokenLogprob,
)
from constitutional.errors import BackendError

Reply = str | Sequence[str] | Callable[[GenerationRequest], str]
Scores = Sequence[float] | Callable[[Prompt, Sequence[str]], Sequence[float]]


def default_reply(request: GenerationRequest) -> str:
    """Differs by seed, so two samples of one prompt (an A/B pair) are not identical."""
    return f"Mock reply {request.seed}."


class MockBackend:
    """The Backend protocol answered from a script; see the module doc.

    Args:
        model: the name it reports (and fingerprints with).
        reply: one text for every request, a list of texts handed out in order, or a function
            of the request. Default: `default_reply`.
        scores: log-probs for `choice_logprobs`: one row used for every prompt, or a function of
            (prompt, choices). Default: uniform over the choices.
        **options: other backends' settings (batch_size, base_url, ...), accepted and ignored so
            that `make_backend("mock", ...)` takes what any command passes.
    """

    name = "mock"

    def __init__(
        self,
        model: str = "mock",
        *,
        reply: Reply | None = None,
        scores: Scores | None = None,
        **options,
    ):
        self.model = model
        self._reply = as_reply(reply)
        self._scores = scores
        self.requests: list[GenerationRequest] = []  # every request, in the order received
        self.judged: list[Prompt] = []  # every prompt given to choice_logprobs

    def fingerprint(self) -> str:
        return f"mock:{self.model}"

    def generate(
        self, requests: Sequence[GenerationRequest], on_result: OnResult | None = None
    ) -> list[Completion]:
        out = []
        for i, request in enumerate(requests):
            self.requests.append(request)
            out.append(completion(request, self._reply(request)))
            if on_result is not None:
                on_result(i, out[-1])
        return out

    def choice_logprobs(
        self, prompts: Sequence[Prompt], choices: Sequence[str]
    ) -> list[list[float]]:
        self.judged += prompts
        return [self.score(p, choices) for p in prompts]

    def score(self, prompt: Prompt, choices: Sequence[str]) -> list[float]:
        if self._scores is None:
            return [-math.log(len(choices))] * len(choices)
        row = list(self._scores(prompt, choices) if callable(self._scores) else self._scores)
        if len(row) != len(choices):
            raise BackendError(
                f"the mock backend's scores have {len(row)} entries for {len(choices)} choices"
            )
        return row


def as_reply(reply: Reply | None) -> Callable[[GenerationRequest], str]:
    """The script as a function of the request."""
    if reply is None:
        return default_reply
    if isinstance(reply, str):
        return lambda request: reply
    if callable(reply):
        return reply
    queue: Iterator[str] = iter(list(reply))

    def next_reply(request: GenerationRequest) -> str:
        try:
            return next(queue)
        except StopIteration:
            raise BackendError("the mock backend's scripted replies ran out") from None

    return next_reply


def completion(request: GenerationRequest, text: str) -> Completion:
    """`text` as a finished reply: cut at the first stop string, counted in words, with a
    log-prob of 0 per word when the request asks for log-probs."""
    finish = "stop"
    for stop in request.stop:
        if stop and stop in text:
            text = text[: text.index(stop)]
    words = text.split()
    if len(words) > request.max_tokens:
        words, finish = words[: request.max_tokens], "length"
        text = " ".join(words)
    prompt = (
        request.prompt
        if request.prompt is not None
        else " ".join(m["content"] for m in request.messages or [])
    )
    logprobs = [TokenLogprob(w, 0.0) for w in words] if request.logprobs is not None else None
    return Completion(text, finish, len(prompt.split()), len(words), logprobs)
