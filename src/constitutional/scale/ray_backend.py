"""A Backend whose calls fan out over Ray actors, each holding its own backend.

Each worker owns a model (a local transformers model per worker, a vLLM engine per GPU) or a
client of a shared server. The driver keeps the response cache and the stage's own logic, and
only the model calls travel. For the `local` backend, requests are cut into the batches that
`plan_batches` gives (similar lengths together, rows in the single-process order). A request's
output does not depend on the rows it shares a batch with (its own seed, its own positions), so
the output is identical to a single-process run, bit for bit, whichever worker takes which
batch; tests/test_scale_ray.py holds us to that. Other backends get contiguous chunks.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from constitutional.backends.base import (
    Completion,
    GenerationRequest,
    OnResult,
    Prompt,
    choice_logprobs_counted,
)
from constitutional.errors import BackendError, UserError
from constitutional.scale.cluster import import_ray

SERVER_CHUNK = 64  # requests per task for backends that batch for themselves (openai, vllm)


class _Worker:
    """One Ray actor: a backend built in the worker process, driven batch by batch."""

    def __init__(
        self, backend: str, model: str | None, options: dict[str, Any], threads: int, cwd: str
    ):
        import torch

        from constitutional.backends import make_backend

        if os.path.isdir(cwd):  # relative model paths mean what they mean to the driver
            os.chdir(cwd)
        torch.set_num_threads(threads)  # Ray sets OMP_NUM_THREADS; torch may have read it late
        # Ray reports an exception from __init__ without the exception itself, so keep it and
        # raise it from describe(), where it reaches the driver intact (e.g. a UserError).
        self.error: Exception | None = None
        try:
            self.backend = make_backend(backend, model, use_cache=False, **options).inner
        except (UserError, BackendError) as e:
            self.error = e

    def describe(self) -> tuple[str, str, str]:
        if self.error is not None:
            raise self.error
        return self.backend.name, self.backend.model, self.backend.fingerprint()

    def plan(self, requests: list[GenerationRequest], batch_size: int) -> list[list[int]]:
        """Batches of request indices: similar prompt lengths together, as one process groups them."""
        if self.backend.name != "local":
            return [
                list(range(i, min(i + SERVER_CHUNK, len(requests))))
                for i in range(0, len(requests), SERVER_CHUNK)
            ]
        from constitutional.backends.local import plan_batches

        texts = [self.backend.render(r.messages or r.prompt) for r in requests]
        prompt_ids = self.backend.tokenizer(texts, add_special_tokens=False)["input_ids"]
        return plan_batches(requests, prompt_ids, batch_size)

    def generate(
        self, batch: list[int], requests: list[GenerationRequest]
    ) -> tuple[list[int], list[Completion]]:
        return batch, self.backend.generate(requests)

    def choice_logprobs(
        self, start: int, prompts: list[Prompt], choices: list[str]
    ) -> tuple[int, list[list[float]], list[int]]:
        return start, *choice_logprobs_counted(self.backend, prompts, choices)


class RayBackend:
    """Fan a backend's calls out over `workers` Ray actors (Ray must already be connected).

    `name`, `model` and `fingerprint()` are the workers' own, so traces, manifests and cache
    keys are the same as a single-process run's: a run may move between executors and resume.

    Args:
        backend: the backend each worker builds ("local", "openai", "vllm").
        model: its model spec; local workers must see the same path (or "embedded").
        options: backend options (batch_size, base_url, concurrency, ...).
        workers: actors to start.
        cpus_per_worker: CPUs Ray reserves for each actor, and its torch threads.
        gpus_per_worker: GPUs per actor (1 for a local or vllm model per GPU; 0 on CPU).
    """

    def __init__(
        self,
        backend: str,
        model: str | None,
        options: dict[str, Any],
        *,
        workers: int = 2,
        cpus_per_worker: int = 1,
        gpus_per_worker: float = 0,
    ):
        if workers < 1 or cpus_per_worker < 1 or gpus_per_worker < 0:
            raise UserError("need --workers >= 1, --worker-cpus >= 1 and --worker-gpus >= 0")
        self._ray = ray = import_ray()
        self.batch_size = int(options.get("batch_size") or 16)  # requests per task sent to a worker
        actor = ray.remote(num_cpus=cpus_per_worker, num_gpus=gpus_per_worker)(_Worker)
        cwd = os.getcwd()
        self.workers = [
            actor.remote(backend, model, options, cpus_per_worker, cwd) for _ in range(workers)
        ]
        try:
            described = self._get([w.describe.remote() for w in self.workers])
        except BaseException:
            self.close()
            raise
        self.name, self.model, self._fingerprint = described[0]

    def fingerprint(self) -> str:
        return self._fingerprint

    def generate(
        self, requests: Sequence[GenerationRequest], on_result: OnResult | None = None
    ) -> list[Completion]:
        """Plan the batches on one worker, then hand them to whichever worker is free."""
        requests = list(requests)
        if not requests:
            return []
        plan = self._get(self.workers[0].plan.remote(requests, self.batch_size))
        results: list[Completion | None] = [None] * len(requests)
        tasks = [lambda w, b=b: w.generate.remote(b, [requests[i] for i in b]) for b in plan]
        for batch, completions in self._unordered(tasks):
            for i, completion in zip(batch, completions):
                results[i] = completion
                if on_result:
                    on_result(i, completion)
        return results  # type: ignore[return-value]

    def choice_logprobs(
        self, prompts: Sequence[Prompt], choices: Sequence[str]
    ) -> list[list[float]]:
        return self.choice_logprobs_with_usage(prompts, choices)[0]

    def choice_logprobs_with_usage(
        self, prompts: Sequence[Prompt], choices: Sequence[str]
    ) -> tuple[list[list[float]], list[int]]:
        """Contiguous chunks of `batch_size` prompts: the local backend's own batches. The
        workers' token counts come back with their rows, so the driver's meter sees them."""
        prompts, choices = list(prompts), list(choices)
        rows: list[list[float]] = [[] for _ in prompts]
        tokens = [0] * len(prompts)
        starts = range(0, len(prompts), self.batch_size)
        tasks = [
            lambda w, s=s: w.choice_logprobs.remote(s, prompts[s : s + self.batch_size], choices)
            for s in starts
        ]
        for start, chunk, counts in self._unordered(tasks):
            rows[start : start + len(chunk)] = chunk
            tokens[start : start + len(counts)] = counts
        return rows, tokens

    def close(self) -> None:
        for w in self.workers:
            self._ray.kill(w)
        self.workers = []

    def _unordered(self, tasks):
        """Run `task(worker)` for every task on the next free worker; yield results as they come."""
        from ray.util import ActorPool

        pool = ActorPool(self.workers)
        try:
            yield from pool.map_unordered(lambda worker, task: task(worker), tasks)
        except self._ray.exceptions.RayError as e:
            raise _user_facing(e) from None

    def _get(self, refs):
        try:
            return self._ray.get(refs)
        except self._ray.exceptions.RayError as e:
            raise _user_facing(e) from None


def _user_facing(error: Exception) -> Exception:
    """A worker's UserError/BackendError as itself; anything else as a one-line BackendError.

    Ray wraps a task's exception in RayTaskError, which keeps the original in `.cause`.
    """
    cause = getattr(error, "cause", None)
    while cause is not None:
        if isinstance(cause, UserError | BackendError):
            return cause
        cause = getattr(cause, "cause", None)
    text = str(error).strip().splitlines()
    return BackendError(f"a Ray worker failed: {text[-1] if text else type(error).__name__}")
