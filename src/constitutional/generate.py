"""`cai generate`: complete a JSONL file of prompts with any backend, resumably.

Input rows hold `prompt` (raw text) or `messages` (a chat); other fields (e.g. `id`) are kept.
Each row's sampling seed derives from the run seed and the row's position, so the same seed,
file and backend give the same output, and a killed run resumes from the response cache.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from constitutional.backends import CachedBackend, GenerationRequest
from constitutional.errors import UserError
from constitutional.jsonl import iter_jsonl, write_jsonl
from constitutional.prompts import resolve_prompts
from constitutional.provenance import RunManifest, derive_seed, row_meta

ARTIFACT = "generations"
SCHEMA_VERSION = 1


def load_prompts(spec: str | Path, *, chat_allowed: bool = True) -> list[dict[str, Any]]:
    """Read and check a prompts file or `builtin:NAME` set; errors name the file and line.

    Args:
        spec: a JSONL path or a bundled set such as `builtin:advbench`.
        chat_allowed: accept `messages` rows; stages that need a single `prompt` pass False.
    """
    path = resolve_prompts(spec)
    rows = []
    for line, row in iter_jsonl(path):
        prompt, messages = row.get("prompt"), row.get("messages")
        if prompt is None and messages is None:
            raise UserError("row has neither a `prompt` nor a `messages` field", path, line)
        if prompt is None and not chat_allowed:
            raise UserError(
                "row has no `prompt` field (this stage needs plain prompts)", path, line
            )
        if prompt is not None and not (isinstance(prompt, str) and prompt.strip()):
            raise UserError("`prompt` must be a non-empty string", path, line)
        if messages is not None and not _valid_messages(messages):
            raise UserError("`messages` must be a list of {role, content} strings", path, line)
        rows.append(row)
    if not rows:
        raise UserError("no prompts: the file is empty", path)
    return rows


def _valid_messages(messages: Any) -> bool:
    return (
        isinstance(messages, list)
        and bool(messages)
        and all(
            isinstance(m, dict)
            and isinstance(m.get("role"), str)
            and isinstance(m.get("content"), str)
            for m in messages
        )
    )


def build_requests(
    rows: list[dict[str, Any]], *, temperature: float, top_p: float, max_tokens: int, seed: int
) -> list[GenerationRequest]:
    return [
        GenerationRequest(
            messages=row.get("messages"),
            prompt=row.get("prompt") if row.get("messages") is None else None,
            temperature=temperature,
            top_p=top_p,
            max_tokens=max_tokens,
            seed=derive_seed(seed, "generate", i),
        )
        for i, row in enumerate(rows)
    ]


def run_generate(
    rows: list[dict[str, Any]],
    out: str | Path,
    backend: CachedBackend,
    *,
    temperature: float = 0.7,
    top_p: float = 1.0,
    max_tokens: int = 256,
    seed: int = 0,
    manifest: str | Path | None = None,
    on_result: Callable[[int, Any], None] | None = None,
) -> dict[str, Any]:
    """Complete every row and write `out` atomically; returns a summary for the CLI."""
    requests = build_requests(
        rows, temperature=temperature, top_p=top_p, max_tokens=max_tokens, seed=seed
    )
    start = time.perf_counter()
    completions = backend.generate(requests, on_result=on_result)
    wall = time.perf_counter() - start
    meta = row_meta(ARTIFACT, SCHEMA_VERSION)
    write_jsonl(
        out,
        (
            {
                **row,
                "response": c.text,
                "finish_reason": c.finish_reason,
                "prompt_tokens": c.prompt_tokens,
                "completion_tokens": c.completion_tokens,
                "backend": backend.name,
                "model": backend.model,
                "seed": r.seed,
                "meta": meta,
            }
            for row, r, c in zip(rows, requests, completions)
        ),
    )
    params = {"temperature": temperature, "top_p": top_p, "max_tokens": max_tokens, "seed": seed}
    RunManifest(manifest or Path(f"{out}.manifest.json")).record(
        "generate", backend=backend, wall_seconds=wall, params=params, outputs=[str(out)]
    )
    return {"rows": len(rows), "wall_seconds": wall, **vars(backend.usage)}
