"""`cai guard serve`: an OpenAI-compatible proxy that puts a `Guard` around any chat model.

    client --> proxy: check_input --> upstream /v1/chat/completions --> check_output --> client

A flagged request is answered with a refusal and never reaches the upstream. A streamed answer
is forwarded through a hold-back buffer: after `guard.check_output` passes on the text so far,
only `len(text) - holdback_chars` characters are released, so the classifier always sees
`holdback_chars` characters past anything the client has received. When a check flags, the
held-back text is dropped and the stream ends with finish_reason "content_filter". The tail is
released only after the complete answer passes. Non-streamed answers are checked whole.
Either way the client gets only text the guard passed: the proxy writes its own answers and
chunks from the upstream's message content, never the upstream's bodies, so other choices, tool
calls, reasoning fields, logprobs, extra fields and error messages of the upstream are dropped
(the README's guard section lists what is enforced).
(Constitutional Classifiers, Sharma et al. 2025, https://arxiv.org/abs/2501.18837.)

The proxy only ever calls `Guard.check_input` / `Guard.check_output` (guard/protocol.py). They
are blocking model calls, so they run in a worker thread under one lock; the event loop keeps
serving other streams meanwhile.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, ClassVar

import anyio
import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool

from constitutional.backends.base import Message
from constitutional.errors import UserError
from constitutional.guard.audit import AuditLog, AuditRecord
from constitutional.guard.protocol import Guard, Verdict
from constitutional.guard.views import HOLDBACK_CHARS, release_point
from constitutional.serve.app import install_error_handlers, openai_error
from constitutional.serve.schemas import ChatCompletionRequest

log = logging.getLogger(__name__)

INPUT_REFUSAL = (
    "I can't help with this request: it asks for something this service's usage policy rules "
    "out. I'm glad to help with a different question."
)
OUTPUT_REFUSAL = (
    "\n\n[The rest of this answer was withheld: it moved into content this service's usage "
    "policy does not allow.]"
)
MAX_BODY_BYTES = 1_000_000  # far above any chat request a person types; stops abuse early
# Classifier work grows with the text (it is scored in windows), so texts past this many
# characters are refused unscored rather than scored in part: ~250 MiniLM windows (a 25 KB text,
# 97 windows, took 10 s on a busy 2-core host). A request over it gets a 400; an answer
# growing past it is cut off.
MAX_CHECK_CHARS = 64_000


def create_guard_app(
    guard: Guard,
    upstream_url: str,
    *,
    audit_db: str | Path,
    api_keys: set[str] | None = None,
    metrics_key: str | None = None,
    fail_closed: bool = True,
    holdback_chars: int = HOLDBACK_CHARS,
    model_name: str = "guarded",
    upstream_api_key: str | None = None,
    max_body_bytes: int = MAX_BODY_BYTES,
    max_check_chars: int = MAX_CHECK_CHARS,
    timeout: float = 120.0,
    transport: httpx.AsyncBaseTransport | None = None,
) -> FastAPI:
    """Build the guard proxy app.

    Args:
        guard: the classifiers; only `check_input` and `check_output` are called.
        upstream_url: the upstream API root including /v1, e.g. "http://127.0.0.1:8000/v1".
        audit_db: SQLite file receiving one row per chat request.
        transport: how to reach the upstream; default the network. `local_upstream` gives an
            in-process one, so the guard can front the local backend without a second server.
        api_keys: bearer tokens accepted on /v1/*; None or empty: no authentication.
        metrics_key: bearer token for /metrics; None: /metrics answers loopback clients only.
        fail_closed: when the classifier raises, refuse (True) or let the text through (False).
        holdback_chars: characters of a stream kept back until the classifier has seen past
            them; larger is safer and adds latency (typical 32-256).
        model_name: the model id listed by /v1/models.
        upstream_api_key: bearer token sent to the upstream, if it needs one.
        max_body_bytes: larger request bodies get 413.
        max_check_chars: longest conversation or answer the classifiers are asked to score; a
            longer request gets a 400, a longer answer is cut off (both audited).
        timeout: seconds allowed for connecting to and between reads from the upstream.

    Returns:
        The ASGI app; run it with uvicorn.
    """
    if holdback_chars < 0:
        raise UserError(f"holdback_chars must be >= 0, got {holdback_chars}")
    app = FastAPI(title="constitutional guard", docs_url=None, redoc_url=None)
    install_error_handlers(app)
    # Overrides the serve app's handler for anything unhandled (see `_crash`).
    app.add_exception_handler(Exception, _crash)
    app.add_middleware(_Gate, api_keys=set(api_keys or ()), max_body_bytes=max_body_bytes)
    proxy = _Proxy(
        guard,
        upstream_url,
        AuditLog(audit_db),
        fail_closed=fail_closed,
        holdback=holdback_chars,
        model_name=model_name,
        upstream_api_key=upstream_api_key,
        timeout=timeout,
        transport=transport,
        max_check_chars=max_check_chars,
    )
    _add_routes(app, proxy, _encoded_keys({metrics_key} if metrics_key else set()))
    # Exposed for tests and the benchmark.
    app.state.metrics, app.state.audit = proxy.metrics, proxy.audit
    return app


async def _crash(_: Request, exc: Exception) -> JSONResponse:
    """A 500 naming no exception text: that text may quote a request or a secret."""
    log.error("unhandled %s in the guard proxy", type(exc).__name__)
    return openai_error(500, "internal error in the guard proxy", "server_error")


def _add_routes(app: FastAPI, proxy: _Proxy, metrics_keys: list[bytes]) -> None:
    """The proxy's four routes; /v1/* is behind `_Gate`, /metrics behind `_metrics_refusal`."""

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/metrics", response_class=PlainTextResponse)
    async def prometheus(request: Request):
        return _metrics_refusal(request, metrics_keys) or PlainTextResponse(proxy.metrics.render())

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        card = {
            "id": proxy.model_name,
            "object": "model",
            "created": 0,
            "owned_by": "constitutional",
        }
        return {"object": "list", "data": [card]}

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest):
        return await proxy.chat(body)


class _Proxy:
    """The request path of the guard proxy: input check, upstream call, output checks, audit."""

    def __init__(
        self,
        guard: Guard,
        upstream_url: str,
        audit: AuditLog,
        *,
        fail_closed: bool,
        holdback: int,
        model_name: str,
        upstream_api_key: str | None,
        timeout: float,
        transport: httpx.AsyncBaseTransport | None,
        max_check_chars: int,
    ):
        self.guard, self.audit, self.fail_closed = guard, audit, fail_closed
        self.max_check_chars = max_check_chars
        self.holdback, self.model_name = holdback, model_name
        self.upstream = upstream_url.rstrip("/")
        self.headers = {"Authorization": f"Bearer {upstream_api_key}"} if upstream_api_key else {}
        self.timeout, self.transport = timeout, transport
        self.metrics = _Metrics()
        self.lock = threading.Lock()  # one classifier: concurrent requests take turns
        self.client: httpx.AsyncClient | None = None  # made on first use, inside the server's loop

    def http(self) -> httpx.AsyncClient:
        if self.client is None:
            limits = httpx.Limits(max_connections=256, max_keepalive_connections=64)
            self.client = httpx.AsyncClient(
                timeout=self.timeout, headers=self.headers, limits=limits, transport=self.transport
            )
        return self.client

    async def judge(self, record: AuditRecord, check: Callable[[], Verdict]) -> Verdict | None:
        """Run one check; on a classifier error count it, log it and return None."""

        def locked() -> Verdict:
            with self.lock:
                return check()

        try:
            return await run_in_threadpool(locked)
        except Exception as e:  # noqa: BLE001 - any classifier failure: the policy decides
            self.metrics.inc("classifier_errors")
            record.error = f"classifier: {type(e).__name__}: {e}"
            log.warning("request %s: %s", record.request_id, record.error)
            return None

    def blocked(self, verdict: Verdict | None) -> bool:
        return verdict.flagged if verdict is not None else self.fail_closed

    async def check_output(self, record: AuditRecord, messages: list[Message], text: str) -> bool:
        """True when `text` may be shown; updates the record. Past `max_check_chars` the text
        is not scored and not shown (fail closed: scoring only part of it would be a bypass)."""
        if len(text) > self.max_check_chars:
            record.error = f"output over {self.max_check_chars} characters: cut off unchecked"
            return False
        verdict = await self.judge(record, lambda: self.guard.check_output(messages, text))
        record.output_checks += 1
        if verdict is not None:
            record.output_score, record.output_flagged = verdict.score, verdict.flagged
        return not self.blocked(verdict)

    async def finish(self, record: AuditRecord, start: float) -> None:
        record.latency_ms = (time.perf_counter() - start) * 1000
        if record.decision == "refused_output":
            self.metrics.inc("flagged_outputs")
        try:
            await run_in_threadpool(self.audit.write, record)
        except Exception:  # the log must not take answers down with it
            log.exception("request %s: audit write failed", record.request_id)

    def note_failure(self, record: AuditRecord, e: Exception) -> str:
        """Count and audit a failure by its type only (exception text may quote the request);
        returns who failed, for the client's message."""
        upstream = isinstance(e, (httpx.HTTPError, UpstreamError))
        self.metrics.inc("upstream_errors" if upstream else "internal_errors")
        record.decision = "upstream_error" if upstream else "error"
        record.error = f"{'upstream' if upstream else 'proxy'}: {type(e).__name__}"
        log.warning("request %s: %s", record.request_id, record.error)
        return "the upstream model" if upstream else "the guard proxy"

    async def failed(self, record: AuditRecord, start: float, e: Exception) -> JSONResponse:
        where = self.note_failure(record, e)
        await self.finish(record, start)
        status = 502 if record.decision == "upstream_error" else 500
        return openai_error(status, f"{where} failed: {type(e).__name__}", "server_error")

    async def chat(self, body: ChatCompletionRequest):
        start = time.perf_counter()
        self.metrics.inc("requests")
        if body.n != 1 or body.logprobs:
            # Other samples and token logprobs would show text the guard has not cleared.
            raise UserError("the guard proxy serves n=1 without logprobs")
        record = AuditRecord(uuid.uuid4().hex, self.guard.constitution_hash, stream=body.stream)
        payload = body.model_dump(exclude_none=True)
        if not _encodable(payload):
            record.decision, record.error = "bad_request", "request: text is not valid Unicode"
            await self.finish(record, start)
            return openai_error(
                400,
                "the request holds text that is not valid Unicode "
                "(a lone surrogate such as \\ud800)",
                "invalid_request_error",
            )
        try:
            return await self.serve(record, start, body, payload)
        except Exception as e:  # noqa: BLE001 - a bug of ours still gets an audit row, no text
            return await self.failed(record, start, e)

    async def serve(
        self,
        record: AuditRecord,
        start: float,
        body: ChatCompletionRequest,
        payload: dict[str, Any],
    ):
        messages = [m.as_backend_message() for m in body.messages]
        if sum(len(m["content"]) for m in messages) > self.max_check_chars:
            record.decision = "bad_request"
            record.error = f"request: conversation over {self.max_check_chars} characters"
            await self.finish(record, start)
            message = f"the conversation is longer than this guard checks ({self.max_check_chars} characters)"
            return openai_error(400, message, "invalid_request_error")
        verdict = await self.judge(record, lambda: self.guard.check_input(messages))
        if verdict is not None:
            record.input_score, record.input_flagged = verdict.score, verdict.flagged
            record.input_stage = verdict.stage
        if self.blocked(verdict):
            self.metrics.inc("flagged_inputs")
            record.decision = "refused_input"
            await self.finish(record, start)
            return _refusal(self.model_name, body.stream, INPUT_REFUSAL)
        if body.stream:
            return await self.stream(record, start, messages, payload)
        return await self.complete(record, start, messages, payload)

    async def complete(
        self, record: AuditRecord, start: float, messages: list[Message], payload: dict[str, Any]
    ):
        """A non-streamed answer, rebuilt from its checked text: nothing else of the upstream's
        body (other choices, tool calls, reasoning, logprobs, extra fields) reaches the client."""
        try:
            r = await self.http().post(f"{self.upstream}/chat/completions", json=payload)
            if r.status_code != 200:
                return await self.upstream_status(record, start, r.status_code)
            text, finish_reason, usage = _read_answer(_upstream_json(r.content))
        except Exception as e:  # noqa: BLE001 - unreachable, malformed, anything: no text leaks
            return await self.failed(record, start, e)
        if not await self.check_output(record, messages, text):
            record.decision = "refused_output"
            await self.finish(record, start)
            return _refusal(self.model_name, False, OUTPUT_REFUSAL.strip())
        await self.finish(record, start)
        return _answer(self.model_name, text, finish_reason, usage)

    async def upstream_status(self, record: AuditRecord, start: float, status: int) -> JSONResponse:
        """An upstream error status: its body (unchecked text) is dropped, only the status told.
        429 and 503 keep their status so that clients back off; anything else is a 502."""
        self.metrics.inc("upstream_errors")
        record.decision, record.error = "upstream_error", f"upstream: HTTP {status}"
        await self.finish(record, start)
        message = f"the upstream model answered HTTP {status}"
        return openai_error(status if status in (429, 503) else 502, message, "server_error")

    async def stream(
        self, record: AuditRecord, start: float, messages: list[Message], payload: dict[str, Any]
    ):
        try:
            request = self.http().build_request(
                "POST", f"{self.upstream}/chat/completions", json=payload
            )
            response = await self.http().send(request, stream=True)
        except Exception as e:  # noqa: BLE001 - see `complete`
            return await self.failed(record, start, e)
        if response.status_code != 200:
            await response.aclose()
            return await self.upstream_status(record, start, response.status_code)
        return StreamingResponse(
            self.events(record, start, messages, response), media_type="text/event-stream"
        )

    async def events(
        self, record: AuditRecord, start: float, messages: list[Message], response: httpx.Response
    ) -> AsyncIterator[str]:
        """The client's SSE stream. Every failure inside it, of any kind, ends it with an error
        event and still writes the audit row."""
        chunks, done = _ChunkMaker(self.model_name), False
        try:
            yield _sse(chunks.make({"role": "assistant", "content": ""}))
            async for event in _guarded(
                record, messages, response, self.check_output, self.holdback
            ):
                yield _sse(chunks.make(*event) if isinstance(event, tuple) else chunks.usage(event))
        except Exception as e:  # noqa: BLE001 - the held-back text was never cleared: dropped
            where = self.note_failure(record, e)
            # OpenAI streams report a failure mid-stream as an event carrying an error object.
            error = {
                "message": f"{where} failed mid-stream: {type(e).__name__}",
                "type": "server_error",
            }
            yield _sse({"error": {**error, "param": None, "code": None}})
        else:
            done = True
        finally:
            if not done and record.decision == "allowed":
                record.decision = "client_closed"
            # Shielded: when the client hangs up this runs while the task is cancelled, and
            # the upstream must still be closed and the request still logged.
            with anyio.CancelScope(shield=True):
                await response.aclose()
                await self.finish(record, start)
        yield "data: [DONE]\n\n"


class UpstreamError(ValueError):
    """The upstream's answer is not one the proxy can check and pass on (wrong shape, or an
    error object mid-stream)."""


FINISH_REASONS = {"stop", "length", "content_filter"}
USAGE_FIELDS = ("prompt_tokens", "completion_tokens", "total_tokens")


def _upstream_json(data: str | bytes) -> Any:
    try:
        return json.loads(data)
    except ValueError:
        raise UpstreamError("the upstream sent something that is not JSON") from None


def _finish_reason(value: Any) -> str | None:
    """An upstream finish_reason as the client may see it: a string from a fixed set, since
    the upstream's own string is unchecked text ("tool_calls": the calls were dropped, "stop")."""
    if value is None:
        return None
    return value if value in FINISH_REASONS else "stop"


def _usage(value: Any) -> dict[str, int] | None:
    """The token counts of an upstream usage object, and nothing else it carries."""
    if not isinstance(value, dict):
        return None
    counts = {k: value[k] for k in USAGE_FIELDS if type(value.get(k)) is int}
    return counts or None


def _read_answer(body: Any) -> tuple[str, str, dict[str, int] | None]:
    """(content, finish_reason, usage) of choice 0 of a chat.completion; UpstreamError when the
    body is not one."""
    choices = body.get("choices") if isinstance(body, dict) else None
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise UpstreamError("the upstream answer has no choices list")
    message = choices[0].get("message")
    content = message.get("content") if isinstance(message, dict) else 0
    if content is not None and not isinstance(content, str):
        raise UpstreamError("the upstream answer's message.content is not a string")
    return (
        content or "",
        _finish_reason(choices[0].get("finish_reason")) or "stop",
        _usage(body.get("usage")),
    )


def _read_chunk(chunk: Any) -> tuple[str, str | None, dict[str, int] | None]:
    """(content delta, finish_reason, usage) of one upstream chat.completion.chunk; anything
    else it holds is ignored; UpstreamError when it is not a chunk."""
    if not isinstance(chunk, dict) or "error" in chunk:
        raise UpstreamError("the upstream sent an error or a non-object mid-stream")
    choices = chunk.get("choices")
    if not isinstance(choices, list):
        raise UpstreamError("an upstream chunk's choices is not a list")
    if not choices:
        return "", None, _usage(chunk.get("usage"))
    choice = choices[0]
    delta = choice.get("delta") if isinstance(choice, dict) else None
    if not isinstance(delta, dict):
        raise UpstreamError("an upstream chunk has no delta object")
    content = delta.get("content")
    if content is not None and not isinstance(content, str):
        raise UpstreamError("an upstream chunk's delta.content is not a string")
    return content or "", _finish_reason(choice.get("finish_reason")), None


def _encodable(payload: dict[str, Any]) -> bool:
    """False when the request holds a lone surrogate: no UTF-8 for the upstream or the model."""
    try:
        json.dumps(payload, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


async def _guarded(
    record: AuditRecord,
    messages: list[Message],
    response: httpx.Response,
    check: Callable[[AuditRecord, list[Message], str], Awaitable[bool]],
    holdback: int,
) -> AsyncIterator[tuple[dict[str, Any], str | None] | dict[str, int]]:
    """Read the upstream SSE stream; yield (delta, finish_reason) pairs the client may see, and
    the upstream's token counts (a dict) at the very end.

    Invariant: every character yielded was part of a text that passed `check` and that ran at
    least `holdback` characters further (or was the complete answer); the same cadence as
    `views.stream_checkpoints`, which evaluation uses.
    """
    text, released, finish_reason, usage = "", 0, "stop", None
    passed = None  # the last text that passed a check
    async for line in response.aiter_lines():
        if not line.startswith("data:"):
            continue
        data = line[len("data:") :].strip()
        if data == "[DONE]":
            break
        content, finish, counts = _read_chunk(_upstream_json(data))
        text += content
        finish_reason, usage = finish or finish_reason, counts or usage
        safe = release_point(len(text), released, holdback)
        if safe is None:
            continue  # nothing new could be released: save the classifier call
        if not await check(record, messages, text):
            record.decision = "refused_output"
            yield {"content": OUTPUT_REFUSAL}, "content_filter"
            return
        yield {"content": text[released:safe]}, None
        released, passed = safe, text
    if text != passed and not await check(record, messages, text):
        record.decision = "refused_output"
        yield {"content": OUTPUT_REFUSAL}, "content_filter"
        return
    if released < len(text):
        yield {"content": text[released:]}, None
    yield {}, finish_reason
    if usage is not None:
        yield usage


class _ChunkMaker:
    """chat.completion.chunk events under one id, as our own server writes them."""

    def __init__(self, model: str):
        self.meta = {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": model,
        }

    def make(self, delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        return {**self.meta, "choices": [choice]}

    def usage(self, counts: dict[str, int]) -> dict[str, Any]:
        """The usage chunk that ends a stream, holding only the upstream's token counts."""
        return {**self.meta, "choices": [], "usage": counts}


def _sse(event: dict[str, Any]) -> str:
    return f"data: {json.dumps(event)}\n\n"


def _refusal(model: str, stream: bool, message: str) -> dict[str, Any] | StreamingResponse:
    """A completed answer holding only `message`, finish_reason "content_filter"."""
    if stream:
        chunks = _ChunkMaker(model)
        events = [
            _sse(chunks.make({"role": "assistant", "content": ""})),
            _sse(chunks.make({"content": message})),
            _sse(chunks.make({}, "content_filter")),
            "data: [DONE]\n\n",
        ]
        return StreamingResponse(iter(events), media_type="text/event-stream")
    return _answer(model, message, "content_filter", None)


def _answer(
    model: str, text: str, finish_reason: str, usage: dict[str, int] | None
) -> dict[str, Any]:
    """A chat.completion holding one choice with `text`, under our own id and model."""
    choice = {
        "index": 0,
        "message": {"role": "assistant", "content": text},
        "logprobs": None,
        "finish_reason": finish_reason,
    }
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [choice],
        "usage": usage or {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
    }


class _Metrics:
    """Counters for /metrics in Prometheus' text format (no client library needed)."""

    HELP: ClassVar[dict[str, str]] = {
        "requests": "Chat completion requests received.",
        "flagged_inputs": "Requests refused because the input classifier flagged them.",
        "flagged_outputs": "Responses stopped because the output classifier flagged them.",
        "classifier_errors": "Classifier calls that raised (handled by the fail-open/closed policy).",
        "upstream_errors": "Requests the upstream model failed (unreachable, error status, cut off, malformed).",
        "internal_errors": "Requests the proxy itself failed (a bug; the audit row names the exception type).",
    }

    def __init__(self) -> None:
        self.counts = dict.fromkeys(self.HELP, 0)
        self._lock = threading.Lock()

    def inc(self, name: str) -> None:
        with self._lock:
            self.counts[name] += 1

    def render(self) -> str:
        with self._lock:
            counts = dict(self.counts)
        lines = []
        for name, value in counts.items():
            metric = f"cai_guard_{name}_total"
            lines += [f"# HELP {metric} {self.HELP[name]}", f"# TYPE {metric} counter"]
            lines.append(f"{metric} {value}")
        flagged = counts["flagged_inputs"] + counts["flagged_outputs"]
        rate = flagged / counts["requests"] if counts["requests"] else 0.0
        lines += [
            "# HELP cai_guard_flag_rate Share of requests refused at input or output.",
            "# TYPE cai_guard_flag_rate gauge",
            f"cai_guard_flag_rate {rate:.6g}",
        ]
        return "\n".join(lines) + "\n"


class _Gate:
    """ASGI middleware for /v1/*: bearer-token check (401) and request size limit (413).

    It reads the whole body (at most `max_body_bytes`) before the app sees it, so a request
    sent without Content-Length is bounded too, and replays it to the app.
    """

    def __init__(self, app: Any, *, api_keys: set[str], max_body_bytes: int):
        self.app, self.max_body_bytes = app, max_body_bytes
        self.api_keys = _encoded_keys(api_keys)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/v1/"):
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        if self.api_keys and not _bearer_matches(headers.get(b"authorization", b""), self.api_keys):
            error = openai_error(401, "missing or invalid API key", "invalid_request_error")
            error.headers["WWW-Authenticate"] = "Bearer"
            await error(scope, receive, send)
            return
        too_large = openai_error(
            413, f"request body over {self.max_body_bytes} bytes", "invalid_request_error"
        )
        declared = headers.get(b"content-length", b"0")
        if declared.isdigit() and int(declared) > self.max_body_bytes:
            await too_large(scope, receive, send)
            return
        body, more = b"", True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.max_body_bytes:
                await too_large(scope, receive, send)
                return
        replayed = False

        async def replay() -> dict[str, Any]:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # afterwards: http.disconnect when the client leaves

        await self.app(scope, replay, send)


def _encoded_keys(keys: set[str]) -> list[bytes]:
    return [key.encode("utf-8") for key in keys]


def _bearer_matches(header: bytes, keys: list[bytes]) -> bool:
    """Whether an Authorization header carries one of `keys`. Compared as bytes: a header may
    hold any byte, and `compare_digest` raises on non-ASCII str. Every key is compared, so the
    time taken does not reveal which key or prefix matched."""
    scheme, _, token = header.partition(b" ")
    token = token.strip()
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(token, key)
    return scheme.lower() == b"bearer" and matched


def _metrics_refusal(request: Request, keys: list[bytes]) -> JSONResponse | None:
    """Why this client may not read /metrics (401 / 403), or None when it may: with a metrics
    key, every client must send it; without one, only loopback clients are answered."""
    if keys:
        header = request.headers.get("authorization", "").encode("latin-1")  # the raw bytes
        if not _bearer_matches(header, keys):
            return openai_error(401, "missing or invalid metrics key", "invalid_request_error")
        return None
    if not _loopback(request.client.host if request.client else None):
        message = "/metrics answers loopback clients only; start the proxy with --metrics-key"
        return openai_error(403, message + " to scrape it from elsewhere", "invalid_request_error")
    return None


def _loopback(host: str | None) -> bool:
    try:
        return host is not None and ipaddress.ip_address(host).is_loopback
    except ValueError:  # not an address (e.g. a unix socket path)
        return False


def local_upstream(model: str) -> tuple[str, httpx.AsyncBaseTransport]:
    """(upstream_url, transport) for guarding a local model in this process: our own
    OpenAI-compatible app over the local backend, reached through ASGI instead of a socket."""
    from constitutional.backends import make_backend
    from constitutional.serve.app import create_app

    app = create_app(make_backend("local", model))
    return "http://local-upstream/v1", httpx.ASGITransport(app=app)
