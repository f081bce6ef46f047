"""An OpenAI-compatible HTTP API in front of any `Backend`.

It lets a trained checkpoint be served to ordinary OpenAI clients, and gives tests (and a guard
proxy) a real upstream. Endpoints: GET /health, GET /v1/models, POST /v1/chat/completions,
POST /v1/completions. Errors use OpenAI's shape: {"error": {"message", "type", "param", "code"}}.

Requests run concurrently: over the local backend they share one continuous batch (see
`engine.py`). One client cannot tie the server up: the body size, the rows per request
(prompts x n) and max_tokens are capped, a prompt must fit the model's context, a request's rows
stop when its client disconnects, and an unexpected failure answers a fixed 500 (details go to
the log, never to the client).
"""

from __future__ import annotations

import json
import logging
import re
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import anyio
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from constitutional.backends.base import (
    Backend,
    Completion,
    GenerationRequest,
    Prompt,
    TokenLogprob,
)
from constitutional.errors import UserError
from constitutional.serve.engine import BatchingEngine, ClientGone, EngineStopped, SerialEngine
from constitutional.serve.schemas import ChatCompletionRequest, CompletionRequest, SamplingParams

log = logging.getLogger(__name__)
INTERNAL_ERROR = "internal server error"  # the only text a 500 carries
TOKENISING_AT_ONCE = 2  # requests tokenised concurrently (bounds the memory long prompts take)


@dataclass(frozen=True)
class Limits:
    """What one request may ask of the server (each a `cai serve` option).

    Attributes:
        max_tokens: the largest `max_tokens` accepted (400 above); None: the model's context
            length. A prompt must leave room for its `max_tokens` within the context (400), and
            a request without `max_tokens` gets the endpoint's default, shortened to the room left.
        max_rows: the most completions one request may ask for: prompts x n (400 above).
        max_body_bytes: the largest request body (413 above).
        max_in_flight: completion requests admitted at once, decoding or queued for a slot;
            more are answered 503 at once (each queued one holds its prompt in memory).
    """

    max_tokens: int | None = None
    max_rows: int = 16
    max_body_bytes: int = 1 << 20
    max_in_flight: int = 256


class Busy(Exception):
    """Too many requests in flight: answered 503, the client may retry later."""


class BadRequest(Exception):
    """A request the server will not run; answered 400 naming the parameter."""

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.message, self.param = message, param


def create_app(
    backend: Backend, *, model_name: str | None = None, limits: Limits | None = None
) -> FastAPI:
    """Build the FastAPI app serving `backend`.

    Args:
        backend: any object implementing the `Backend` protocol. The local backend's requests
            share one continuous batch; others run one `generate` call at a time.
        model_name: the model id clients see in /v1/models and responses; default
            `backend.model`. The `model` field of requests is accepted and ignored.
        limits: what one request may ask for (see `Limits`).

    Returns:
        The ASGI app; run it with uvicorn.
    """
    limits = limits or Limits()
    model_id = model_name or backend.model
    created = int(time.time())
    runner = Runner(backend, limits)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        runner.engine.close()  # rows still decoding stop at their next step

    app = FastAPI(title="constitutional", docs_url=None, redoc_url=None, lifespan=lifespan)
    app.state.engine, app.state.limits = runner.engine, limits
    install_error_handlers(app)
    app.add_middleware(CatchAll)
    app.add_middleware(BodyLimit, max_bytes=limits.max_body_bytes)  # added last: runs first
    generate = runner.generate

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok", "model": model_id}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        card = {"id": model_id, "object": "model", "created": created, "owned_by": "constitutional"}
        return {"object": "list", "data": [card]}

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest, http: Request):
        messages = [m.as_backend_message() for m in body.messages]
        k = (body.top_logprobs or 0) if body.logprobs else None
        completions = await generate(body, [messages], k, http)
        meta = _meta("chatcmpl", model_id)
        if body.stream:
            return _sse(_chat_chunks(meta, completions, body.include_usage(), body.n))
        return _chat_response(meta, completions, body.n)

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, http: Request):
        completions = await generate(body, list(body.prompts()), body.logprobs, http)
        meta = _meta("cmpl", model_id)
        if body.stream:
            return _sse(_text_chunks(meta, completions, body.include_usage(), body.n))
        return _text_response(meta, completions, body.n)

    return app


# --- requests -------------------------------------------------------------------------------


class Runner:
    """Checks each request against the limits, then has the engine run it."""

    def __init__(self, backend: Backend, limits: Limits):
        self.backend, self.limits = backend, limits
        self.batching = all(
            hasattr(backend, a) for a in ("batcher", "prompt_ids", "context_length", "completion")
        )
        self.engine = BatchingEngine(backend) if self.batching else SerialEngine(backend)  # type: ignore[arg-type]
        self.context = backend.context_length if self.batching else None  # type: ignore[attr-defined]
        self.cap = limits.max_tokens or self.context
        self.in_flight = 0  # only the event loop's thread touches it
        self.tokenising = anyio.Semaphore(TOKENISING_AT_ONCE)  # not bound to one event loop

    async def generate(
        self, body: SamplingParams, prompts: list[Prompt], logprobs: int | None, http: Request
    ) -> list[Completion]:
        """The completions of every prompt x n; raises BadRequest or Busy instead."""
        if self.in_flight >= self.limits.max_in_flight:
            raise Busy()
        self.in_flight += 1
        try:
            return await self._checked(body, prompts, logprobs, http)
        finally:
            self.in_flight -= 1

    async def _checked(
        self, body: SamplingParams, prompts: list[Prompt], logprobs: int | None, http: Request
    ) -> list[Completion]:
        rows, cap = len(prompts) * body.n, self.cap
        if rows > self.limits.max_rows:
            raise BadRequest(
                f"{len(prompts)} prompt(s) x n={body.n} is more than the {self.limits.max_rows} "
                "completions one request may ask for",
                "n",
            )
        asked = body.requested_max_tokens()
        if cap is not None and asked is not None and asked > cap:
            raise BadRequest(
                f"max_tokens is {asked}; this server allows at most {cap}", "max_tokens"
            )
        if not self.batching:
            # No tokenizer here to check the context: the backend judges the prompt's length.
            max_tokens = asked or min(body.default_max_tokens(), cap or body.default_max_tokens())
            requests = [r for p in prompts for r in _fan_out(body, max_tokens, logprobs, p)]
            return await self.engine.generate(requests, None, http.is_disconnected)
        async with self.tokenising:  # each may hold up to a body's worth of tokens in memory
            requests, ids = await run_in_threadpool(
                _prepare, self.backend, body, prompts, logprobs, cap, self.context
            )
        return await self.engine.generate(requests, ids, http.is_disconnected)


def _prepare(
    backend,
    body: SamplingParams,
    prompts: list[Prompt],
    logprobs: int | None,
    cap: int | None,
    context: int,
) -> tuple[list[GenerationRequest], list[list[int]]]:
    """Tokenise each prompt, check it fits the context, and fan it out to n requests."""
    requests, ids = [], []
    for prompt in prompts:
        prompt_ids = backend.prompt_ids(prompt, limit=context)
        if prompt_ids is None:
            raise BadRequest(
                f"the prompt is longer than this model's context of {context} tokens",
                _prompt_param(body),
            )
        max_tokens = _max_tokens(body, len(prompt_ids), cap, context)
        fanned = _fan_out(body, max_tokens, logprobs, prompt)
        requests += fanned
        ids += [prompt_ids] * len(fanned)
    return requests, ids


def _prompt_param(body: SamplingParams) -> str:
    return "messages" if isinstance(body, ChatCompletionRequest) else "prompt"


def _max_tokens(body: SamplingParams, prompt_tokens: int, cap: int | None, context: int) -> int:
    """The request's max_tokens, checked against the room its prompt leaves in the context."""
    room = context - prompt_tokens
    if room < 1:
        raise BadRequest(
            f"the prompt is {prompt_tokens} tokens; this model's context is {context} tokens",
            _prompt_param(body),
        )
    asked = body.requested_max_tokens()
    if asked is None:
        return min(body.default_max_tokens(), cap or room, room)
    if asked > room:
        raise BadRequest(
            f"the prompt ({prompt_tokens} tokens) and max_tokens ({asked}) exceed this "
            f"model's context of {context} tokens",
            "max_tokens",
        )
    return asked


def _fan_out(
    body: SamplingParams, max_tokens: int, logprobs: int | None, prompt: Prompt
) -> list[GenerationRequest]:
    """n requests for one prompt with seeds seed, seed+1, ... (distinct samples, reproducible).

    Without a seed we draw one, as OpenAI does: repeated calls then give different samples.
    """
    seed = body.seed if body.seed is not None else secrets.randbelow(2**31)
    where = {"prompt": prompt} if isinstance(prompt, str) else {"messages": prompt}
    try:
        return [
            GenerationRequest(
                **where,
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

    @app.exception_handler(BadRequest)
    async def _bad_request(_: Request, exc: BadRequest) -> JSONResponse:
        return openai_error(400, exc.message, "invalid_request_error", exc.param)

    @app.exception_handler(Busy)
    async def _busy(_: Request, exc: Busy) -> JSONResponse:
        response = openai_error(503, "the server is busy; retry later", "server_error")
        response.headers["retry-after"] = "1"
        return response

    @app.exception_handler(EngineStopped)
    async def _stopping(_: Request, exc: EngineStopped) -> JSONResponse:
        return openai_error(503, "the server is shutting down", "server_error")

    @app.exception_handler(ClientGone)
    async def _gone(_: Request, exc: ClientGone) -> JSONResponse:
        return openai_error(499, "client closed the request", "client_closed")  # nobody reads it

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        type_ = "invalid_request_error" if exc.status_code < 500 else "server_error"
        return openai_error(exc.status_code, str(exc.detail), type_)

    @app.exception_handler(Exception)
    async def _crash(_: Request, exc: Exception) -> JSONResponse:
        # Exception text may carry internals (paths, shapes, inputs): it goes to the log only.
        log.error("request failed", exc_info=exc)
        return openai_error(500, INTERNAL_ERROR, "server_error")


# --- middleware -----------------------------------------------------------------------------


class CatchAll:
    """Answers an unexpected exception with the fixed 500 and keeps the connection usable.

    Starlette's last-resort handler re-raises after answering, and uvicorn then closes the
    connection, so a client's next request on it was reset. Here the exception stops.
    """

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracked(message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except Exception as exc:  # the point of this middleware
            log.error("request failed", exc_info=exc)
            if not started:  # a half-sent stream can only be cut
                await openai_error(500, INTERNAL_ERROR, "server_error")(scope, receive, send)


class BodyLimit:
    """Refuses request bodies over `max_bytes` with a 413, before reading more than that."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._too_large(scope, receive, send)
            return
        body, more = bytearray(), True
        while more:  # a chunked body declares no length: count it as it comes
            message = await receive()
            if message["type"] != "http.request":
                return  # the client left
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.max_bytes:
                await self._too_large(scope, receive, send)
                return
        await self.app(scope, _replay(bytes(body), receive), send)

    async def _too_large(self, scope, receive, send) -> None:
        message = f"the request body is larger than {self.max_bytes} bytes"
        await openai_error(413, message, "invalid_request_error")(scope, receive, send)


def _replay(body: bytes, receive):
    """A receive channel that gives the app the buffered body, then the client's own messages
    (a disconnect, which requests watch for)."""
    sent = False

    async def replayed():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed
