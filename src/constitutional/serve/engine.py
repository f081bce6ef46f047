"""How concurrent HTTP requests share one model.

`BatchingEngine` (for the local backend) runs one continuous batcher in a thread of its own:
requests that arrive while it decodes join the batch between two steps, and a request whose
client has left, or every request once the server stops, gives its rows' slots up at the next
step. `SerialEngine` is the fallback for any other backend: one `generate` call at a time.

Each request keeps its own seed and positions in the batch (see `backends/continuous.py`), so
its answer does not depend on which other requests it happened to share the batch with.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import queue
import threading
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from starlette.concurrency import run_in_threadpool

from constitutional.backends.base import Backend, Completion, GenerationRequest

if TYPE_CHECKING:
    from constitutional.backends.continuous import Row
    from constitutional.backends.local import LocalBackend

log = logging.getLogger(__name__)
POLL_S = 0.1  # how often a waiting request checks that its client is still connected

IsGone = Callable[[], Awaitable[bool]]  # whether the HTTP client has disconnected


class EngineStopped(Exception):
    """The server is shutting down: the request was dropped unanswered."""


class ClientGone(Exception):
    """The client disconnected before its answer was ready; its rows were stopped."""


@dataclass(eq=False)  # compared and hashed by identity: the engine keeps sets of jobs
class Job:
    """One HTTP request's rows, from the event loop to the engine thread and back."""

    requests: list[GenerationRequest]
    prompt_ids: list[list[int]]
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future
    results: list[Completion | None] = field(default_factory=list)
    first: int = 0  # index of its first row in the engine's numbering
    left: int = 0  # rows not finished yet
    cancelled: bool = False  # set by the event loop, read by the engine between steps

    def settle(self, outcome: list[Completion] | BaseException) -> None:
        """Hand the outcome to the waiting request (from any thread; once)."""

        def set_outcome() -> None:
            if self.future.done():
                return
            if isinstance(outcome, BaseException):
                self.future.set_exception(outcome)
            else:
                self.future.set_result(outcome)

        try:
            self.loop.call_soon_threadsafe(set_outcome)
        except RuntimeError:  # the event loop is closed: nobody is waiting any more
            pass


async def wait_for(job: Job, is_gone: IsGone) -> list[Completion]:
    """The job's completions; cancels its rows if the client leaves or the request is cancelled
    (uvicorn cancels requests still running when its graceful shutdown times out)."""
    try:
        while True:
            done, _ = await asyncio.wait({job.future}, timeout=POLL_S)
            if done:
                return job.future.result()
            if await is_gone():
                raise ClientGone()
    finally:
        job.cancelled = True  # a no-op once the answer is there


class BatchingEngine:
    """Feeds every request to one `ContinuousBatcher` over a local backend, in its own thread.

    Args:
        backend: the local backend (its model, tokenizer, KV store).
        slots: rows decoded together at most; default: as many as the KV budget allows.
    """

    def __init__(self, backend: LocalBackend, slots: int | None = None):
        self.backend, self.slots = backend, slots
        self._queue: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self._stopped = False
        self._counter = itertools.count()
        self.live: dict[int, Job] = {}  # engine index -> its job; only the engine thread writes it

    async def generate(
        self, requests: Sequence[GenerationRequest], prompt_ids: list[list[int]], is_gone: IsGone
    ) -> list[Completion]:
        """Decode `requests` (already tokenised) among whatever else is running."""
        if self._stopped:
            raise EngineStopped()
        loop = asyncio.get_running_loop()
        job = Job(list(requests), prompt_ids, loop, loop.create_future(), [None] * len(requests))
        job.left = len(requests)
        self._ensure_started()
        self._queue.put(job)
        return await wait_for(job, is_gone)

    def close(self) -> None:
        """Stop: rows in flight end at the next step and their requests get `EngineStopped`."""
        self._stopped = True
        self._queue.put(None)

    def busy(self) -> bool:
        """Whether any request is waiting or decoding (tests watch rows stop)."""
        return bool(self.live) or not self._queue.empty()

    def _ensure_started(self) -> None:
        # Started on first use: apps built without a lifespan (tests, ASGI transports) work too.
        with self._start_lock:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._serve, name="cai-serve-engine", daemon=True
                )
                self._thread.start()

    def _serve(self) -> None:
        while True:
            job = self._queue.get()  # idle until a request comes
            if job is None or self._stopped:
                self._fail_pending(job)
                return
            try:
                self._run(job)
            except Exception:  # a bug here must not leave every later request hanging
                log.exception("serving engine failed")

    def _run(self, first: Job) -> None:
        """One batcher run: from an idle engine until it is idle again."""
        requests: dict[int, GenerationRequest] = {}
        prompt_ids: dict[int, list[int]] = {}
        intake = _Intake(self, requests, prompt_ids)
        start = intake.add(first)

        def finished(row: Row) -> None:
            job = self.live.get(row.index)
            if job is None:
                return
            job.results[row.index - job.first] = self.backend.completion(row)
            job.left -= 1
            if job.left == 0:
                intake.forget(job)
                job.settle(job.results)  # type: ignore[arg-type]

        try:
            self.backend.batcher(self.slots).run(requests, prompt_ids, start, finished, intake)  # type: ignore[arg-type]
        except Exception as exc:  # the engine must outlive one failed batch
            log.exception("generation failed")
            for job in set(self.live.values()):
                job.settle(exc)
        finally:
            for job in set(self.live.values()):  # cut short by `close()`
                if not job.cancelled:
                    job.settle(EngineStopped())
            self.live.clear()
        if self._stopped:
            self._fail_pending(None)

    def _fail_pending(self, job: Job | None) -> None:
        """Answer every queued request: the server is stopping."""
        while job is not None or not self._queue.empty():
            if job is not None:
                job.settle(EngineStopped())
            job = self._queue.get_nowait() if not self._queue.empty() else None


class _Intake:
    """The batcher's view of arriving requests: it numbers their rows, and forgets a job's rows
    once it is answered or cancelled (a busy server may never go idle, so nothing may pile up)."""

    def __init__(self, engine: BatchingEngine, requests: dict, prompt_ids: dict):
        self.engine, self.requests, self.prompt_ids = engine, requests, prompt_ids

    def add(self, job: Job) -> list[int]:
        indices = [next(self.engine._counter) for _ in job.requests]
        job.first = indices[0]
        for i, request, ids in zip(indices, job.requests, job.prompt_ids):
            self.requests[i], self.prompt_ids[i], self.engine.live[i] = request, ids, job
        return indices

    def forget(self, job: Job) -> None:
        for i in range(job.first, job.first + len(job.requests)):
            self.requests.pop(i, None)
            self.prompt_ids.pop(i, None)
            self.engine.live.pop(i, None)

    def arrivals(self) -> list[int]:
        for job in {job for job in self.engine.live.values() if job.cancelled}:
            self.forget(job)  # its rows were freed, or are freed by `cancelled` right after
        new: list[int] = []
        while not self.engine._queue.empty():
            job = self.engine._queue.get_nowait()
            if job is None:  # `close()`: what is in flight ends as cancelled
                continue
            new += self.add(job)
        return new

    def cancelled(self, index: int) -> bool:
        job = self.engine.live.get(index)
        return job is None or job.cancelled or self.engine._stopped


class SerialEngine:
    """Any backend, one call at a time in a worker thread (the model is not shared safely)."""

    def __init__(self, backend: Backend):
        self.backend = backend
        self._lock = threading.Lock()

    def _generate(self, requests: list[GenerationRequest]) -> list[Completion]:
        with self._lock:
            return self.backend.generate(requests)

    async def generate(
        self, requests: Sequence[GenerationRequest], prompt_ids: object, is_gone: IsGone
    ) -> list[Completion]:
        return await run_in_threadpool(self._generate, list(requests))

    def close(self) -> None:
        pass
