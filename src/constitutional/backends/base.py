"""The one protocol every stage uses to reach a model, and the records it exchanges."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol, runtime_checkable

Message = dict[str, str]  # {"role": "system" | "user" | "assistant", "content": "..."}
Prompt = str | list[Message]  # a raw prompt (no template) or a chat conversation
OnResult = Callable[[int, "Completion"], None]  # (index into requests, completion) as each finishes


@dataclass
class GenerationRequest:
    """One sampling call. Exactly one of `messages` (chat template applied) or `prompt` (raw).

    `seed` makes sampling reproducible per request, whatever batch it lands in.
    `logprobs`: None for none; k >= 0 to return each generated token's log-prob and its top-k.
    `min_tokens`: neither EOS nor a stop string ends the reply before this many tokens (vLLM's
    `min_tokens`); throughput benchmarks use it to run every row to full length.
    """

    messages: list[Message] | None = None
    prompt: str | None = None
    temperature: float = 0.0
    top_p: float = 1.0
    max_tokens: int = 256
    stop: list[str] = field(default_factory=list)
    seed: int = 0
    logprobs: int | None = None
    min_tokens: int = 0

    def __post_init__(self) -> None:
        if (self.messages is None) == (self.prompt is None):
            raise ValueError("a GenerationRequest needs exactly one of `messages` or `prompt`")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if not self.min_tokens:  # added later: requests without it keep their cache keys
            del d["min_tokens"]
        return d


@dataclass
class TokenLogprob:
    """A generated token, its log-probability and the top alternatives at that position."""

    token: str
    logprob: float
    top: dict[str, float] = field(default_factory=dict)


@dataclass
class Completion:
    """What a backend returns for one request. Token counts feed the run manifest."""

    text: str
    finish_reason: str  # "stop" (eos or a stop string) or "length"
    prompt_tokens: int
    completion_tokens: int
    logprobs: list[TokenLogprob] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Completion:
        logprobs = d.get("logprobs")
        if logprobs is not None:
            logprobs = [TokenLogprob(**t) for t in logprobs]
        return cls(**{**d, "logprobs": logprobs})


@runtime_checkable
class Backend(Protocol):
    """How every stage reaches a model: local transformers, any OpenAI-compatible server.

    `name` is the backend kind ("local", "openai"); `model` is the model as the user named it;
    `fingerprint()` identifies the weights as well (used in cache keys).
    """

    name: str
    model: str

    def fingerprint(self) -> str: ...

    def generate(
        self, requests: Sequence[GenerationRequest], on_result: OnResult | None = None
    ) -> list[Completion]:
        """Complete every request (batched or concurrent), calling `on_result` as each is done."""
        ...

    def choice_logprobs(
        self, prompts: Sequence[Prompt], choices: Sequence[str]
    ) -> list[list[float]]:
        """Log-probability of each choice as the continuation of each prompt, no sampling.

        Returns one row per prompt with one entry per choice, e.g. p("A") vs p("B") for a judge.
        """
        ...


def choice_logprobs_counted(
    backend: Backend, prompts: Sequence[Prompt], choices: Sequence[str]
) -> tuple[list[list[float]], list[int]]:
    """`choice_logprobs` plus the prompt tokens each prompt cost, for the usage meter.

    Backends that can count (local, openai, vllm, ray) offer `choice_logprobs_with_usage`; any
    other backend (a test double, a third-party one) still works and is counted as 0 tokens.
    """
    counted = getattr(backend, "choice_logprobs_with_usage", None)
    if counted is not None:
        return counted(prompts, choices)
    return backend.choice_logprobs(prompts, choices), [0] * len(prompts)
