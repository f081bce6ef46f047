"""Test helpers: inject HTTP faults in front of a real ASGI app, and run an app on real uvicorn.

`FaultInjector(app, plan)` is ASGI middleware. Each request to a completion endpoint takes the
next entry of `plan` (or `default` once the plan is used up):

    "ok"         pass the request to the app
    400, 429...  answer with that status and an OpenAI-shaped error body
    "timeout"    answer nothing until the client gives up (capped at `hang_s`, then 504)
    "malformed"  200 with the body `{not json`
    "missing"    200 with valid JSON that lacks `choices`
    "reset"      start a 200 response, send part of the body, then close the connection
                 (ASGI cannot send a TCP RST; uvicorn closes the socket mid-body instead)
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import uvicorn

Fault = str | int
FAULTED_PATHS = ("/v1/chat/completions", "/v1/completions")


class FaultInjector:
    """ASGI middleware that replaces responses with faults according to a plan.

    Args:
        app: the real ASGI app behind.
        plan: faults consumed one per request, in order.
        default: what to do once the plan is empty ("ok", or e.g. 500 for a dead server).
        hang_s: longest a "timeout" fault waits for the client to disconnect.
        retry_after: if set, 429 and 503 answers carry `Retry-After: <retry_after>`.

    Attributes:
        requests: requests seen on the faulted paths, faults included.
        max_in_flight: the most faulted-path requests handled at the same time.
    """

    def __init__(
        self,
        app,
        plan: list[Fault] | None = None,
        *,
        default: Fault = "ok",
        hang_s: float = 10.0,
        retry_after: float | None = None,
    ):
        self.app = app
        self.plan: list[Fault] = list(plan or [])
        self.default = default
        self.hang_s = hang_s
        self.retry_after = retry_after
        self.requests = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()  # the test thread rewrites the plan between calls

    def reset(self, plan: list[Fault] | None = None, *, default: Fault = "ok", **settings) -> None:
        """Start over with a new plan; counters go back to zero."""
        with self._lock:
            self.plan, self.default = list(plan or []), default
            self.requests = self.in_flight = self.max_in_flight = 0
            for key, value in settings.items():
                setattr(self, key, value)

    def _next(self) -> Fault:
        with self._lock:
            self.requests += 1
            return self.plan.pop(0) if self.plan else self.default

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["path"] not in FAULTED_PATHS:
            await self.app(scope, receive, send)
            return
        fault = self._next()
        self.in_flight += 1  # the event loop is single-threaded: no lock needed here
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await self._apply(fault, scope, receive, send)
        finally:
            self.in_flight -= 1

    async def _apply(self, fault: Fault, scope, receive, send) -> None:
        if fault == "ok":
            await self.app(scope, receive, send)
            return
        await _drain(receive)
        if isinstance(fault, int):
            headers = {}
            if fault in (429, 503) and self.retry_after is not None:
                headers["retry-after"] = f"{self.retry_after:g}"
            body = {"error": {"message": f"injected {fault}", "type": "injected", "code": fault}}
            await _respond(send, fault, json.dumps(body).encode(), headers)
        elif fault == "timeout":
            if not await _wait_for_disconnect(receive, self.hang_s):
                await _respond(send, 504, b'{"error": {"message": "hung too long"}}')
        elif fault == "malformed":
            await _respond(send, 200, b"{not json")
        elif fault == "missing":
            await _respond(send, 200, b'{"id": "x", "object": "chat.completion"}')
        elif fault == "reset":
            start = {"type": "http.response.start", "status": 200}
            start["headers"] = [
                (b"content-type", b"application/json"),
                (b"content-length", b"1000"),
            ]
            await send(start)
            await send({"type": "http.response.body", "body": b'{"id": "x", ', "more_body": True})
            # Returning now makes uvicorn close the connection with the body incomplete.
        else:
            raise ValueError(f"unknown fault {fault!r}")


async def _drain(receive) -> None:
    """Read the request body so the connection stays in a sane state."""
    while True:
        message = await receive()
        if message["type"] != "http.request" or not message.get("more_body"):
            return


async def _wait_for_disconnect(receive, limit: float) -> bool:
    """True once the client hangs up; False if it is still there after `limit` seconds."""
    try:
        async with asyncio.timeout(limit):
            while (await receive())["type"] != "http.disconnect":
                pass
        return True
    except TimeoutError:
        return False


async def _respond(send, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


@contextmanager
def running_server(app, host: str = "127.0.0.1", start_timeout: float = 10.0) -> Iterator[str]:
    """Serve `app` with uvicorn on a free port in a background thread; yield its /v1 base URL.

    The socket is bound here, before the thread starts, so there is no race for the port.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", lifespan="off", timeout_graceful_shutdown=2)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + start_timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            sock.close()
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.01)
    try:
        yield f"http://{host}:{port}/v1"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
