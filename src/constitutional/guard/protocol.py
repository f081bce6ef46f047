"""What the guard proxy asks of a trained guard, and what it gets back.

The classifiers (`guard/classifiers.py`, trained by `cai guard train`) implement `Guard`; the
proxy (`guard/proxy.py`, `cai guard serve`) only ever calls these two methods, so either side can
be swapped (a scripted guard in tests, a remote classifier later).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from constitutional.backends.base import Message


@dataclass(frozen=True)
class Verdict:
    """One classifier decision.

    score: calibrated probability that the text is harmful, in [0, 1].
    flagged: score at or above the threshold calibrated for the target false-refusal rate.
    stage: which stage decided: "cheap" (embeddings + logistic regression) or "strong" (a small
        LM with a classification head), the cascade sending only uncertain cases to "strong".
    category: the constitution category id judged most likely, when known.
    """

    score: float
    flagged: bool
    stage: str
    category: str | None = None


@runtime_checkable
class Guard(Protocol):
    """A trained set of constitutional classifiers."""

    constitution_hash: str

    def check_input(self, messages: list[Message]) -> Verdict:
        """Judge a request (the whole conversation so far) before it reaches the model."""
        ...

    def check_output(self, messages: list[Message], response_so_far: str) -> Verdict:
        """Judge a response prefix in the context of its request (the exchange classifier);
        called repeatedly as a stream grows, so it must be cheap on the common path."""
        ...
