"""A backend seen through a system prompt: every chat gets the same system message first.

Wraps any Backend (usually a `CachedBackend`, so the cache keys include the system message and
the usage meter stays the inner one's). Raw-prompt requests pass through unchanged: they carry
no chat template to put a system turn in.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from constitutional.backends.base import Completion, GenerationRequest, Message, OnResult, Prompt


class SystemPromptBackend:
    """`inner` with `system` as the first message of every chat (an existing system turn is kept
    and the constitution's text is put before it)."""

    def __init__(self, inner: Any, system: str):
        self.inner, self.system = inner, system
        self.name, self.model = inner.name, f"{inner.model}+system"

    def __getattr__(self, attr: str) -> Any:  # usage, close, ... belong to the inner backend
        return getattr(self.inner, attr)

    def fingerprint(self) -> str:
        return self.inner.fingerprint()

    def with_system(self, messages: list[Message]) -> list[Message]:
        if messages and messages[0]["role"] == "system":
            merged = f"{self.system}\n\n{messages[0]['content']}"
            return [{"role": "system", "content": merged}, *messages[1:]]
        return [{"role": "system", "content": self.system}, *messages]

    def generate(
        self, requests: Sequence[GenerationRequest], on_result: OnResult | None = None
    ) -> list[Completion]:
        wrapped = [
            replace(r, messages=self.with_system(r.messages)) if r.messages is not None else r
            for r in requests
        ]
        return self.inner.generate(wrapped, on_result)

    def choice_logprobs(
        self, prompts: Sequence[Prompt], choices: Sequence[str]
    ) -> list[list[float]]:
        wrapped = [p if isinstance(p, str) else self.with_system(p) for p in prompts]
        return self.inner.choice_logprobs(wrapped, choices)
