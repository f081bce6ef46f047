"""Where a stage's model calls run: in this process (`local`) or fanned out over Ray (`ray`).

Either way the stage gets one CachedBackend and does not know the difference; the response cache
stays in the driver, so results are committed as they arrive and a killed run resumes.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from constitutional.backends import CachedBackend, ResponseCache, make_backend
from constitutional.errors import UserError

EXECUTORS = ("local", "ray")


@dataclass
class ExecutorConfig:
    """How to run model calls.

    Args:
        kind: "local" (this process) or "ray".
        ray_address: None starts a local Ray instance; "auto", "host:port" or "ray://host:port"
            joins a running cluster.
        workers: Ray actors, each with its own backend (a model per worker, or a server client).
        cpus_per_worker: CPUs (and torch threads) per actor.
        gpus_per_worker: GPUs per actor; 1 for a model per GPU.
    """

    kind: str = "local"
    ray_address: str | None = None
    workers: int = 2
    cpus_per_worker: int = 1
    gpus_per_worker: float = 0

    def describe(self) -> dict[str, Any]:
        """What the manifest records about the executor."""
        if self.kind == "local":
            return {"kind": "local"}
        return {
            "kind": "ray",
            "address": self.ray_address or "local",
            "workers": self.workers,
            "cpus_per_worker": self.cpus_per_worker,
            "gpus_per_worker": self.gpus_per_worker,
        }


@contextmanager
def executor_backend(
    config: ExecutorConfig,
    backend: str,
    model: str | None,
    options: dict[str, Any],
    *,
    cache: str | Path | None = None,
    use_cache: bool = True,
) -> Iterator[CachedBackend]:
    """A cached backend that runs its calls as `config` says; Ray workers stop on exit.

    Raises:
        UserError: unknown executor, missing Ray, unreachable cluster, bad worker counts.
    """
    if config.kind == "local":
        yield make_backend(backend, model, cache=cache, use_cache=use_cache, **options)
        return
    if config.kind != "ray":
        raise UserError(f"unknown executor {config.kind!r}; choose one of {', '.join(EXECUTORS)}")
    from constitutional.scale.cluster import connect
    from constitutional.scale.ray_backend import RayBackend

    if backend == "local":  # convert a GGUF once here, not once per worker (and check the spec)
        from constitutional.backends.local import resolve_model

        resolve_model(model or "embedded")
    started = connect(config.ray_address, num_cpus=config.workers * config.cpus_per_worker)
    inner = None
    try:
        inner = RayBackend(
            backend,
            model,
            options,
            workers=config.workers,
            cpus_per_worker=config.cpus_per_worker,
            gpus_per_worker=config.gpus_per_worker,
        )
        yield CachedBackend(inner, _response_cache(cache) if use_cache else None)
    finally:
        if inner is not None:
            inner.close()
        if started:
            import ray

            ray.shutdown()


def _response_cache(path: str | Path | None) -> ResponseCache:
    from constitutional.paths import default_response_cache

    return ResponseCache(path or default_response_cache())
