"""`cai guard serve`: an OpenAI-compatible proxy that puts a `Guard` around any chat model.

    client --> proxy: check_input --> upstream /v1/chat/completions --> check_output --> client

A flagged request is answered with a refusal and never reaches the upstream. A streamed answer
is forwarded through a hold-back buffer: after `guard.check_output` passes on the text so far,
only `len(text) - holdback_chars` characters are released, so the classifier always sees
`holdback_chars` characters past anything the client has received. When a check flags, the
held-back text is dropped and the stream ends with finish_reason "content_filter". The tail is
released only after the complete answer passes. Non-streamed answers are checked whole.
(Constitutional Classifiers, Sharma et al. 2025, https://arxiv.org/abs/2501.18837.)

The proxy only ever calls `Guard.check_input` / `Guard.check_output` (guard/protocol.py). They
are blocking model calls, so they run in a worker thread under one lock; the event loop keeps
serving other streams meanwhile.
"""

from __future__ import annotations

import hmac
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
from fastapi import FastAPI
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool

from constitutional.backends.base import Message
from constitutional.errors import UserError
from constitutional.guard.audit import AuditLog, AuditRecord
from constitutional.guard.protocol import Guard, Verdict
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


def create_guard_app(
    guard: Guard,
    upstream_url: str,
    *,
    audit_db: str | Path,
    api_keys: set[str] | None = None,
    fail_closed: bool = True,
    holdback_chars: int = 64,
    model_name: str = "guarded",
    upstream_api_key: str | None = None,
    max_body_bytes: int = MAX_BODY_BYTES,
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
        fail_closed: when the classifier raises, refuse (True) or let the text through (False).
        holdback_chars: characters of a stream kept back until the classifier has seen past
            them; larger is safer and adds latency (typical 32-256).
        model_name: the model id listed by /v1/models.
        upstream_api_key: bearer token sent to the upstream, if it needs one.
        max_body_bytes: larger request bodies get 413.
        timeout: seconds allowed for connecting to and between reads from the upstream.

    Returns:
        The ASGI app; run it with uvicorn.
    """
    if holdback_chars < 0:
        raise UserError(f"holdback_chars must be >= 0, got {holdback_chars}")
    app = FastAPI(title="constitutional guard", docs_url=None, redoc_url=None)
    install_error_handlers(app)
    app.add_middleware(_Gate, api_keys=set(api_keys or ()), max_body_bytes=max_body_bytes)
    audit = AuditLog(audit_db)
    metrics = _Metrics()
    lock = threading.Lock()
    upstream = upstream_url.rstrip("/")
    headers = {"Authorization": f"Bearer {upstream_api_key}"} if upstream_api_key else {}
    client: list[httpx.AsyncClient] = []  # made on first use, inside the server's event loop

    def http() -> httpx.AsyncClient:
        if not client:
            limits = httpx.Limits(max_connections=256, max_keepalive_connections=64)
            client.append(httpx.AsyncClient(timeout=timeout, headers=headers, limits=limits, transport=transport))
        return client[0]

    async def judge(record: AuditRecord, check: Callable[[], Verdict]) -> Verdict | None:
        """Run one check; on a classifier error count it, log it and decide by policy.

        Returns the verdict, or None when the classifier failed.
        """

        def locked() -> Verdict:
            with lock:  # one classifier: concurrent requests take turns
                return check()

        try:
            return await run_in_threadpool(locked)
        except Exception as e:  # noqa: BLE001 - any classifier failure: the policy decides
            metrics.inc("classifier_errors")
            record.error = f"classifier: {type(e).__name__}: {e}"
            log.warning("request %s: %s", record.request_id, record.error)
            return None

    def blocked(verdict: Verdict | None) -> bool:
        return verdict.flagged if verdict is not None else fail_closed

    async def check_output(record: AuditRecord, messages: list[Message], text: str) -> bool:
        """True when `text` may be shown; updates the record."""
        verdict = await judge(record, lambda: guard.check_output(messages, text))
        record.output_checks += 1
        if verdict is not None:
            record.output_score, record.output_flagged = verdict.score, verdict.flagged
        return not blocked(verdict)

    async def finish(record: AuditRecord, start: float) -> None:
        record.latency_ms = (time.perf_counter() - start) * 1000
        if record.decision == "refused_output":
            metrics.inc("flagged_outputs")
        try:
            await run_in_threadpool(audit.write, record)
        except Exception:  # the log must not take answers down with it
            log.exception("request %s: audit write failed", record.request_id)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/metrics", response_class=PlainTextResponse)
    async def prometheus() -> str:
        return metrics.render()

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        card = {"id": model_name, "object": "model", "created": 0, "owned_by": "constitutional"}
        return {"object": "list", "data": [card]}

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest):
        start = time.perf_counter()
        metrics.inc("requests")
        if body.n != 1 or body.logprobs:
            # Other samples and token logprobs would show text the guard has not cleared.
            raise UserError("the guard proxy serves n=1 without logprobs")
        record = AuditRecord(uuid.uuid4().hex, guard.constitution_hash, stream=body.stream)
        messages = [m.as_backend_message() for m in body.messages]
        verdict = await judge(record, lambda: guard.check_input(messages))
        if verdict is not None:
            record.input_score, record.input_flagged = verdict.score, verdict.flagged
            record.input_stage = verdict.stage
        if blocked(verdict):
            metrics.inc("flagged_inputs")
            record.decision = "refused_input"
            await finish(record, start)
            return _refusal(model_name, body.stream, INPUT_REFUSAL)
        payload = body.model_dump(exclude_none=True)
        if body.stream:
            return await stream(record, start, messages, payload)
        return await complete(record, start, messages, payload)

    async def complete(
        record: AuditRecord, start: float, messages: list[Message], payload: dict[str, Any]
    ):
        try:
            r = await http().post(f"{upstream}/chat/completions", json=payload)
            answer = r.json() if r.status_code == 200 else None
            text = answer["choices"][0]["message"]["content"] or "" if answer else ""
        except (httpx.HTTPError, ValueError, KeyError, IndexError, TypeError) as e:
            return await upstream_failed(record, start, e)
        if answer is None:
            metrics.inc("upstream_errors")
            record.decision, record.error = "upstream_error", f"upstream: HTTP {r.status_code}"
            await finish(record, start)
            return JSONResponse(_json_or_error(r), status_code=r.status_code)
        if not await check_output(record, messages, text):
            record.decision = "refused_output"
            await finish(record, start)
            return _refusal(model_name, False, OUTPUT_REFUSAL.strip())
        await finish(record, start)
        return answer

    async def stream(
        record: AuditRecord, start: float, messages: list[Message], payload: dict[str, Any]
    ):
        try:
            request = http().build_request("POST", f"{upstream}/chat/completions", json=payload)
            response = await http().send(request, stream=True)
        except httpx.HTTPError as e:
            return await upstream_failed(record, start, e)
        if response.status_code != 200:
            await response.aread()
            await response.aclose()
            metrics.inc("upstream_errors")
            record.decision, record.error = (
                "upstream_error",
                f"upstream: HTTP {response.status_code}",
            )
            await finish(record, start)
            return JSONResponse(_json_or_error(response), status_code=response.status_code)

        async def events() -> AsyncIterator[str]:
            chunks, done = _ChunkMaker(model_name), False
            try:
                yield _sse(chunks.make({"role": "assistant", "content": ""}))
                async for event in _guarded(
                    record, messages, response, check_output, holdback_chars
                ):
                    yield _sse(
                        chunks.make(*event) if isinstance(event, tuple) else chunks.restamp(event)
                    )
            except (httpx.HTTPError, ValueError) as e:
                # The held-back text was never cleared, so it is dropped; OpenAI streams report
                # a failure mid-stream as an event carrying an error object.
                metrics.inc("upstream_errors")
                record.decision, record.error = "upstream_error", f"upstream: {e!r}"
                message = f"the upstream model failed mid-stream: {type(e).__name__}"
                yield _sse(
                    {
                        "error": {
                            "message": message,
                            "type": "server_error",
                            "param": None,
                            "code": None,
                        }
                    }
                )
            else:
                done = True
            finally:
                if not done and record.decision == "allowed":
                    record.decision = "client_closed"
                # Shielded: when the client hangs up this runs while the task is cancelled, and
                # the upstream must still be closed and the request still logged.
                with anyio.CancelScope(shield=True):
                    await response.aclose()
                    await finish(record, start)
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    async def upstream_failed(record: AuditRecord, start: float, e: Exception) -> JSONResponse:
        metrics.inc("upstream_errors")
        record.decision, record.error = "upstream_error", f"upstream: {type(e).__name__}: {e}"
        await finish(record, start)
        return openai_error(502, f"the upstream model failed: {type(e).__name__}", "server_error")

    # Exposed for tests and the benchmark.
    app.state.metrics, app.state.audit = metrics, audit
    return app


async def _guarded(
    record: AuditRecord,
    messages: list[Message],
    response: httpx.Response,
    check: Callable[[AuditRecord, list[Message], str], Awaitable[bool]],
    holdback: int,
) -> AsyncIterator[tuple[dict[str, Any], str | None] | dict[str, Any]]:
    """Read the upstream SSE stream; yield (delta, finish_reason) pairs the client may see, and
    the upstream's usage chunk (a dict) at the very end.

    Invariant: every character yielded was part of a text that passed `check` and that ran at
    least `holdback` characters further (or was the complete answer).
    """
    text, released, finish_reason, usage = "", 0, "stop", None
    async for line in response.aiter_lines():
        if not line.startswith("data:"):
            continue
        data = line[len("data:") :].strip()
        if data == "[DONE]":
            break
        chunk = json.loads(data)
        if not chunk.get("choices"):
            usage = chunk  # the usage chunk comes last; forward it after the final check
            continue
        choice = chunk["choices"][0]
        text += choice.get("delta", {}).get("content") or ""
        finish_reason = choice.get("finish_reason") or finish_reason
        safe = len(text) - holdback
        if safe <= released:
            continue  # nothing new could be released: save the classifier call
        if not await check(record, messages, text):
            record.decision = "refused_output"
            yield {"content": OUTPUT_REFUSAL}, "content_filter"
            return
        yield {"content": text[released:safe]}, None
        released = safe
    if not await check(record, messages, text):
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

    def restamp(self, chunk: dict[str, Any]) -> dict[str, Any]:
        """An upstream chunk (the usage one) under our id and model."""
        return {**chunk, **self.meta}


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
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": message},
                "logprobs": None,
                "finish_reason": "content_filter",
            }
        ],
        "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
    }


def _json_or_error(response: httpx.Response) -> dict[str, Any]:
    """The upstream's error body when it is JSON, else one in OpenAI's shape."""
    try:
        body = response.json()
        if isinstance(body, dict):
            return body
    except ValueError:
        pass
    message = f"the upstream model answered HTTP {response.status_code}"
    return {"error": {"message": message, "type": "server_error", "param": None, "code": None}}


class _Metrics:
    """Counters for /metrics in Prometheus' text format (no client library needed)."""

    HELP: ClassVar[dict[str, str]] = {
        "requests": "Chat completion requests received.",
        "flagged_inputs": "Requests refused because the input classifier flagged them.",
        "flagged_outputs": "Responses stopped because the output classifier flagged them.",
        "classifier_errors": "Classifier calls that raised (handled by the fail-open/closed policy).",
        "upstream_errors": "Requests the upstream model failed (unreachable, error status, cut off).",
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
        self.app, self.api_keys, self.max_body_bytes = app, api_keys, max_body_bytes

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/v1/"):
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        if self.api_keys and not self._authorized(headers.get(b"authorization", b"")):
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

    def _authorized(self, header: bytes) -> bool:
        scheme, _, token = header.decode("latin-1").partition(" ")
        # compare_digest on every key: the time taken does not reveal which prefix matched.
        return scheme.lower() == "bearer" and any(
            hmac.compare_digest(token.strip(), key) for key in self.api_keys
        )


def local_upstream(model: str) -> tuple[str, httpx.AsyncBaseTransport]:
    """(upstream_url, transport) for guarding a local model in this process: our own
    OpenAI-compatible app over the local backend, reached through ASGI instead of a socket."""
    from constitutional.backends import make_backend
    from constitutional.serve.app import create_app

    app = create_app(make_backend("local", model))
    return "http://local-upstream/v1", httpx.ASGITransport(app=app)
