"""Request bodies of the OpenAI-compatible server, validated by pydantic.

Defaults follow the OpenAI API (temperature 1, top_p 1, n 1; legacy completions stop after 16
tokens). Unknown fields (frequency_penalty, user, ...) are accepted and ignored so that ordinary
OpenAI clients work; fields we would silently get wrong (echo, top_logprobs without logprobs)
are rejected with a 400.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

CHAT_DEFAULT_MAX_TOKENS = 512  # OpenAI's chat default is "up to the context"; keep CPU runs short
COMPLETION_DEFAULT_MAX_TOKENS = 16  # the OpenAI legacy completions default
MAX_N = 16
MAX_TOP_LOGPROBS = 20
MAX_STOP = 4  # OpenAI's limit; each stop string is searched for in the text after every token
SEED_RANGE = (-(2**63), 2**63 - 1)  # a signed 64-bit integer, as OpenAI documents it


class TextPart(BaseModel):
    """One part of a multi-part message; only text parts are supported."""

    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    """A chat message; `developer` is OpenAI's newer name for `system`."""

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart] | None = None

    def as_backend_message(self) -> dict[str, str]:
        """The {"role", "content"} dict the backends take, parts joined into one string."""
        role = "system" if self.role == "developer" else self.role
        content = self.content
        if isinstance(content, list):
            content = "".join(part.text for part in content)
        return {"role": role, "content": content or ""}


class StreamOptions(BaseModel):
    include_usage: bool = False


class SamplingParams(BaseModel):
    """Parameters shared by both endpoints."""

    model_config = ConfigDict(extra="ignore")

    model: str | None = None  # accepted and ignored: the server has exactly one model
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    max_tokens: int | None = Field(None, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=SEED_RANGE[0], le=SEED_RANGE[1])
    n: int = Field(1, ge=1, le=MAX_N)
    stream: bool = False
    stream_options: StreamOptions | None = None

    @field_validator("stop")
    @classmethod
    def _stop_as_list(cls, v: str | list[str] | None) -> list[str]:
        if v is None:
            return []
        stops = [s for s in ([v] if isinstance(v, str) else v) if s]
        if len(stops) > MAX_STOP:
            raise ValueError(f"at most {MAX_STOP} stop sequences are allowed")
        return stops

    def stop_list(self) -> list[str]:
        """`stop` normalised to a list without empty strings."""
        return list(self.stop or [])

    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    def requested_max_tokens(self) -> int | None:
        """The client's own limit on new tokens, if it set one."""
        return self.max_tokens

    def default_max_tokens(self) -> int:
        """New tokens when the client sets no limit (the server may shorten it to fit)."""
        return COMPLETION_DEFAULT_MAX_TOKENS


class ChatCompletionRequest(SamplingParams):
    """Body of POST /v1/chat/completions."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)  # newer name for max_tokens
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)

    @model_validator(mode="after")
    def _top_logprobs_needs_logprobs(self) -> ChatCompletionRequest:
        if self.top_logprobs and not self.logprobs:
            raise ValueError("top_logprobs requires logprobs: true")
        return self

    def requested_max_tokens(self) -> int | None:
        """The client's own limit, if it set one (under either name)."""
        return self.max_completion_tokens or self.max_tokens

    def default_max_tokens(self) -> int:
        return CHAT_DEFAULT_MAX_TOKENS


class CompletionRequest(SamplingParams):
    """Body of POST /v1/completions (the legacy, raw-prompt endpoint)."""

    prompt: str | list[str]
    logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)
    echo: bool = False

    @field_validator("prompt")
    @classmethod
    def _prompt_not_empty(cls, v: str | list[str]) -> str | list[str]:
        if isinstance(v, list) and not v:
            raise ValueError("prompt must not be an empty list")
        return v

    @field_validator("echo")
    @classmethod
    def _no_echo(cls, v: bool) -> bool:
        if v:
            raise ValueError("echo is not supported by this server")
        return v

    def prompts(self) -> list[str]:
        return [self.prompt] if isinstance(self.prompt, str) else list(self.prompt)
