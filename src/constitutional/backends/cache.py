"""A durable response cache, so a re-run or a resumed run never pays twice for the same call.

SQLite in WAL mode: each result is committed as soon as it arrives, so a run killed with SIGKILL
keeps everything finished before the kill. Keys hash the backend's fingerprint (model and
weights), the call kind and the full request, seed included.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from constitutional.backends.base import (
    Backend,
    Completion,
    GenerationRequest,
    OnResult,
    Prompt,
    choice_logprobs_counted,
)


def cache_key(fingerprint: str, kind: str, payload: Any) -> str:
    blob = json.dumps([fingerprint, kind, payload], sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()


class ResponseCache:
    """Key → JSON value store in one SQLite file, safe to share between threads and processes."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, check_same_thread=False, timeout=30)
        self._lock = threading.Lock()
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS responses (key TEXT PRIMARY KEY, value TEXT)"
            )
            self._db.commit()

    def get_many(self, keys: Sequence[str]) -> dict[str, Any]:
        found: dict[str, Any] = {}
        with self._lock:
            for start in range(0, len(keys), 500):  # SQLite caps bound parameters per query
                chunk = list(keys[start : start + 500])
                marks = ",".join("?" * len(chunk))
                rows = self._db.execute(
                    f"SELECT key, value FROM responses WHERE key IN ({marks})", chunk
                )
                found.update((k, json.loads(v)) for k, v in rows)
        return found

    def put(self, key: str, value: Any) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO responses VALUES (?, ?)",
                (key, json.dumps(value, ensure_ascii=False)),
            )
            self._db.commit()

    def __len__(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM responses").fetchone()[0]


@dataclass
class Usage:
    """Token accounting for one backend in one stage.

    `prompt_tokens` / `completion_tokens` are what the model actually processed. A cache hit
    costs nothing, so its tokens go to `cached_prompt_tokens` / `cached_completion_tokens`
    instead: the sum of both is what the stage would cost without the cache.
    A `choice_logprobs` call counts its prompt tokens and no completion tokens.
    """

    calls: int = 0
    cache_hits: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_prompt_tokens: int = 0
    cached_completion_tokens: int = 0

    def add(self, completion: Completion, cached: bool) -> None:
        self.count(completion.prompt_tokens, completion.completion_tokens, cached)

    def count(self, prompt_tokens: int, completion_tokens: int, cached: bool) -> None:
        self.calls += 1
        self.cache_hits += cached
        if cached:
            self.cached_prompt_tokens += prompt_tokens
            self.cached_completion_tokens += completion_tokens
        else:
            self.prompt_tokens += prompt_tokens
            self.completion_tokens += completion_tokens


class CachedBackend:
    """Wrap any Backend with the response cache (or none, with `cache=None`) and a usage meter."""

    def __init__(self, inner: Backend, cache: ResponseCache | None):
        self.inner, self.cache = inner, cache
        self.name, self.model = inner.name, inner.model
        self.usage = Usage()
        self._fingerprint = inner.fingerprint()

    def fingerprint(self) -> str:
        return self._fingerprint

    def generate(
        self, requests: Sequence[GenerationRequest], on_result: OnResult | None = None
    ) -> list[Completion]:
        keys = [cache_key(self._fingerprint, "generate", r.to_dict()) for r in requests]
        hits = self.cache.get_many(keys) if self.cache is not None else {}
        results: list[Completion | None] = [None] * len(requests)
        for i, key in enumerate(keys):
            if key in hits:
                results[i] = Completion.from_dict(hits[key])
                self._deliver(i, results[i], True, on_result)
        todo = [i for i, r in enumerate(results) if r is None]

        def store(j: int, completion: Completion) -> None:
            i = todo[j]
            results[i] = completion
            if self.cache is not None:
                self.cache.put(keys[i], completion.to_dict())
            self._deliver(i, completion, False, on_result)

        if todo:
            self.inner.generate([requests[i] for i in todo], on_result=store)
        return results  # type: ignore[return-value]

    def _deliver(
        self, i: int, completion: Completion, cached: bool, on_result: OnResult | None
    ) -> None:
        self.usage.add(completion, cached)
        if on_result:
            on_result(i, completion)

    def choice_logprobs(
        self, prompts: Sequence[Prompt], choices: Sequence[str]
    ) -> list[list[float]]:
        keys = [
            cache_key(self._fingerprint, "choice_logprobs", [p, list(choices)]) for p in prompts
        ]
        hits = self.cache.get_many(keys) if self.cache is not None else {}
        todo = [i for i, k in enumerate(keys) if k not in hits]
        rows, tokens = (
            choice_logprobs_counted(self.inner, [prompts[i] for i in todo], choices)
            if todo
            else ([], [])
        )
        for i, row, n in zip(todo, rows, tokens):
            hits[keys[i]] = entry = {"logprobs": row, "prompt_tokens": n}  # tokens kept for hits
            if self.cache is not None:
                self.cache.put(keys[i], entry)
        fresh = set(todo)
        for i, key in enumerate(keys):
            self.usage.count(scored_prompt_tokens(hits[key]), 0, cached=i not in fresh)
        return [scored_logprobs(hits[k]) for k in keys]


def scored_logprobs(entry: Any) -> list[float]:
    """The log-probs of a cached `choice_logprobs` entry. Rows written before token counting
    were the bare list; they stay readable."""
    return entry if isinstance(entry, list) else entry["logprobs"]


def scored_prompt_tokens(entry: Any) -> int:
    """The prompt tokens a cached `choice_logprobs` entry cost (0 for a bare pre-counting row)."""
    return 0 if isinstance(entry, list) else int(entry.get("prompt_tokens") or 0)
