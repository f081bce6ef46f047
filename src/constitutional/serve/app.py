"""An OpenAI-compatible HTTP API in front of any `Backend`.

It lets a trained checkpoint be served to ordinary OpenAI clients, and gives tests (and a guard
proxy) a real upstream. Endpoints: GET /health, GET /v1/models, POST /v1/chat/completions,
POST /v1/completions. Errors use OpenAI's shape: {"error": {"message", "type", "param", "code"}}.

The backend is blocking CPU/GPU work on one model, so calls run in a worker thread (the event
loop stays free for other connections) and a lock lets one call use the model at a time.
"""

from __future__ import annotations

import json
import re
import secrets
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from constitutional.backends.base import Backend, Completion, GenerationRequest, TokenLogprob
from constitutional.errors import UserError
from constitutional.serve.schemas import ChatCompletionRequest, CompletionRequest, SamplingParams


def create_app(backend: Backend, *, model_name: str | None = None) -> FastAPI:
    """Build the FastAPI app serving `backend`.

    Args:
        backend: any object implementing the `Backend` protocol.
        model_name: the model id clients see in /v1/models and responses; default
            `backend.model`. The `model` field of requests is accepted and ignored.

    Returns:
        The ASGI app; run it with uvicorn.
    """
    app = FastAPI(title="constitutional", docs_url=None, redoc_url=None)
    model_id = model_name or backend.model
    created = int(time.time())
    lock = threading.Lock()

    def generate_blocking(requests: list[GenerationRequest]) -> list[Completion]:
        with lock:  # one model: concurrent HTTP requests take turns
            return backend.generate(requests)

    async def generate(requests: list[GenerationRequest]) -> list[Completion]:
        return await run_in_threadpool(generate_blocking, requests)

    install_error_handlers(app)

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok", "model": model_id}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        card = {"id": model_id, "object": "model", "created": created, "owned_by": "constitutional"}
        return {"object": "list", "data": [card]}

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest):
        messages = [m.as_backend_message() for m in body.messages]
        k = (body.top_logprobs or 0) if body.logprobs else None
        requests = _fan_out(body, body.resolved_max_tokens(), k, messages=messages)
        completions = await generate(requests)
        meta = _meta("chatcmpl", model_id)
        if body.stream:
            return _sse(_chat_chunks(meta, completions, body.include_usage(), body.n))
        return _chat_response(meta, completions, body.n)

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest):
        requests = [
            r
            for prompt in body.prompts()
            for r in _fan_out(body, body.resolved_max_tokens(), body.logprobs, prompt=prompt)
        ]
        completions = await generate(requests)
        meta = _meta("cmpl", model_id)
        if body.stream:
            return _sse(_text_chunks(meta, completions, body.include_usage(), body.n))
        return _text_response(meta, completions, body.n)

    return app


# --- requests -------------------------------------------------------------------------------


def _fan_out(
    body: SamplingParams, max_tokens: int, logprobs: int | None, **prompt: Any
) -> list[GenerationRequest]:
    """n requests for one prompt with seeds seed, seed+1, ... (distinct samples, reproducible).

    Without a seed we draw one, as OpenAI does: repeated calls then give different samples.
    """
    seed = body.seed if body.seed is not None else secrets.randbelow(2**31)
    try:
        return [
            GenerationRequest(
                **prompt,
                temperature=body.temperature,
                top_p=body.top_p,
                max_tokens=max_tokens,
                stop=body.stop_list(),
                seed=seed + i,
                logprobs=logprobs,
            )
            for i in range(body.n)
        ]
    except ValueError as e:
        raise UserError(str(e)) from e


# --- responses ------------------------------------------------------------------------------


def _meta(prefix: str, model_id: str) -> dict[str, Any]:
    return {"id": f"{prefix}-{uuid.uuid4().hex}", "created": int(time.time()), "model": model_id}


def _usage(completions: Sequence[Completion], n: int) -> dict[str, int]:
    """OpenAI counts a prompt once however many samples (n) were drawn from it."""
    prompt = sum(c.prompt_tokens for c in completions[::n])
    completion = sum(c.completion_tokens for c in completions)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def _token_bytes(token: str) -> list[int]:
    return list(token.encode("utf-8"))


def _chat_logprobs(logprobs: list[TokenLogprob] | None) -> dict[str, Any] | None:
    """Chat format: content[j] = {token, logprob, bytes, top_logprobs: [...] best first}."""
    if logprobs is None:
        return None

    def entry(token: str, logprob: float) -> dict[str, Any]:
        return {"token": token, "logprob": logprob, "bytes": _token_bytes(token)}

    content = []
    for t in logprobs:
        top = sorted(t.top.items(), key=lambda kv: kv[1], reverse=True)
        content.append({**entry(t.token, t.logprob), "top_logprobs": [entry(*kv) for kv in top]})
    return {"content": content}


def _text_logprobs(logprobs: list[TokenLogprob] | None) -> dict[str, Any] | None:
    """Legacy format: parallel lists tokens, token_logprobs, top_logprobs, text_offset."""
    if logprobs is None:
        return None
    offsets, pos = [], 0
    for t in logprobs:
        offsets.append(pos)
        pos += len(t.token)
    return {
        "tokens": [t.token for t in logprobs],
        "token_logprobs": [t.logprob for t in logprobs],
        "top_logprobs": [dict(sorted(t.top.items(), key=lambda kv: -kv[1])) for t in logprobs],
        "text_offset": offsets,
    }


def _chat_response(meta: dict[str, Any], completions: list[Completion], n: int) -> dict[str, Any]:
    choices = [
        {
            "index": i,
            "message": {"role": "assistant", "content": c.text},
            "logprobs": _chat_logprobs(c.logprobs),
            "finish_reason": c.finish_reason,
        }
        for i, c in enumerate(completions)
    ]
    return {
        **meta,
        "object": "chat.completion",
        "choices": choices,
        "usage": _usage(completions, n),
    }


def _text_response(meta: dict[str, Any], completions: list[Completion], n: int) -> dict[str, Any]:
    choices = [
        {
            "index": i,
            "text": c.text,
            "logprobs": _text_logprobs(c.logprobs),
            "finish_reason": c.finish_reason,
        }
        for i, c in enumerate(completions)
    ]
    return {
        **meta,
        "object": "text_completion",
        "choices": choices,
        "usage": _usage(completions, n),
    }


# --- streaming ------------------------------------------------------------------------------
# For now the whole completion is generated first and then sent as several chunks (one per
# word), so clients that stream work unchanged; token-by-token streaming from the backend can
# replace `_pieces` later without changing the wire format.


def _pieces(text: str) -> list[str]:
    """Split text into word-sized pieces whose concatenation is exactly `text`."""
    return re.findall(r"\S+\s*|\s+", text)


def _sse(events: Iterator[dict[str, Any]]) -> StreamingResponse:
    def encode() -> Iterator[str]:
        for event in events:
            yield f"data: {json.dumps(event)}\n\n"
        yield "data: [DONE]\n\n"

    return StreamingResponse(encode(), media_type="text/event-stream")


def _chat_chunks(
    meta: dict[str, Any], completions: list[Completion], include_usage: bool, n: int
) -> Iterator[dict[str, Any]]:
    base = {**meta, "object": "chat.completion.chunk"}

    def chunk(index: int, delta: dict[str, Any], **extra: Any) -> dict[str, Any]:
        choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": None}
        return {**base, "choices": [{**choice, **extra}]}

    for i, c in enumerate(completions):
        yield chunk(i, {"role": "assistant", "content": ""})
        for j, piece in enumerate(_pieces(c.text)):
            # All token logprobs travel with the first piece: pieces are words, not tokens.
            yield chunk(
                i, {"content": piece}, logprobs=_chat_logprobs(c.logprobs) if j == 0 else None
            )
        yield chunk(i, {}, finish_reason=c.finish_reason)
    if include_usage:
        yield {**base, "choices": [], "usage": _usage(completions, n)}


def _text_chunks(
    meta: dict[str, Any], completions: list[Completion], include_usage: bool, n: int
) -> Iterator[dict[str, Any]]:
    base = {**meta, "object": "text_completion"}

    def chunk(index: int, text: str, **extra: Any) -> dict[str, Any]:
        choice = {"index": index, "text": text, "logprobs": None, "finish_reason": None}
        return {**base, "choices": [{**choice, **extra}]}

    for i, c in enumerate(completions):
        for j, piece in enumerate(_pieces(c.text)):
            yield chunk(i, piece, logprobs=_text_logprobs(c.logprobs) if j == 0 else None)
        yield chunk(i, "", finish_reason=c.finish_reason)
    if include_usage:
        yield {**base, "choices": [], "usage": _usage(completions, n)}


# --- errors ---------------------------------------------------------------------------------


def openai_error(status: int, message: str, type_: str, param: str | None = None) -> JSONResponse:
    """An error response in OpenAI's shape."""
    body = {"error": {"message": message, "type": type_, "param": param, "code": None}}
    return JSONResponse(body, status_code=status)


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    """One line naming each bad field, e.g. "body.temperature: Input should be <= 2"."""
    parts, param = [], None
    for err in exc.errors():
        loc = [str(x) for x in err.get("loc", ()) if x != "body"]
        param = param or (loc[0] if loc else None)
        parts.append(f"{'.'.join(loc) or 'body'}: {err.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request", param


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        message, param = _validation_message(exc)
        return openai_error(400, message, "invalid_request_error", param)

    @app.exception_handler(UserError)
    async def _user_error(_: Request, exc: UserError) -> JSONResponse:
        return openai_error(400, str(exc), "invalid_request_error")

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        type_ = "invalid_request_error" if exc.status_code < 500 else "server_error"
        return openai_error(exc.status_code, str(exc.detail), type_)

    @app.exception_handler(Exception)
    async def _crash(_: Request, exc: Exception) -> JSONResponse:
        # The backend failed: report it as a server error (clients may retry 5xx).
        return openai_error(500, f"{type(exc).__name__}: {exc}", "server_error")
