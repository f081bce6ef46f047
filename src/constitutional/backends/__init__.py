"""Backends: the one way any stage reaches a model.

`make_backend("local", "embedded")` or `make_backend("openai", "gpt-4o-mini", base_url=...)`;
SDKs and torch load lazily, only for the backend asked for.
"""

from __future__ import annotations

from pathlib import Path

from constitutional.backends.base import (
    Backend,
    Completion,
    GenerationRequest,
    Prompt,
    TokenLogprob,
)
from constitutional.backends.cache import CachedBackend, ResponseCache, Usage
from constitutional.errors import UserError

BACKENDS = ("local", "openai", "vllm", "mock")

__all__ = [
    "BACKENDS",
    "Backend",
    "CachedBackend",
    "Completion",
    "GenerationRequest",
    "Prompt",
    "ResponseCache",
    "TokenLogprob",
    "Usage",
    "make_backend",
]


def make_backend(
    name: str = "local",
    model: str | None = None,
    *,
    cache: str | Path | None = None,
    use_cache: bool = True,
    **options,
) -> CachedBackend:
    """Build a backend by name, wrapped with the durable response cache and a usage meter.

    Args:
        name: "local" (transformers in this process), "openai" (any OpenAI-compatible server),
            "vllm" (vLLM's offline engine in this process; CUDA only) or "mock" (scripted
            replies and uniform log-probs, no model; see `backends.mock`).
        model: model spec; local default "embedded", openai requires a model name.
        cache: SQLite file for the response cache; default `$CAI_CACHE_DIR/responses.sqlite`.
        use_cache: False to neither read nor write the cache (results are still metered).
        **options: backend-specific keyword arguments (batch_size, base_url, concurrency, ...).
    """
    if name == "local":
        from constitutional.backends.local import LocalBackend

        inner: Backend = LocalBackend(model or "embedded", **options)
    elif name == "openai":
        if not model:
            raise UserError("the openai backend needs --model (the server's model name)")
        from constitutional.backends.openai_http import OpenAIBackend

        inner = OpenAIBackend(model, **options)
    elif name == "vllm":
        if not model:
            raise UserError("the vllm backend needs --model (an HF directory; see `cai export`)")
        from constitutional.backends.vllm_offline import VLLMBackend

        # Commands pass every backend's knobs; vLLM schedules its own batches and has no server.
        own = {
            k: v for k, v in options.items() if k not in ("base_url", "concurrency", "batch_size")
        }
        inner = VLLMBackend(model, **own)
    elif name == "mock":  # scripted replies, no model: tests and dry runs (see backends/mock.py)
        from constitutional.backends.mock import MockBackend

        inner = MockBackend(model or "mock", **options)
    else:
        raise UserError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
    if not use_cache:
        return CachedBackend(inner, None)
    from constitutional.paths import default_response_cache

    return CachedBackend(inner, ResponseCache(cache or default_response_cache()))
