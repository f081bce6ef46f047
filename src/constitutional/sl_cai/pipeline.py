"""SL-CAI data generation: response → N rounds of critique + revision → SFT rows.

Bai et al. 2022, section 3 (https://arxiv.org/abs/2212.08073). Each round draws one
critique/revision pair uniformly at random (seeded per prompt and round), asks for a critique of
the latest response, then for a revision that uses it. Every round runs as one batched call over
all live prompts, so the engine sees full batches. Helpful prompts are answered by the same model
and mixed in so that fine-tuning does not trade helpfulness away.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from constitutional.backends import CachedBackend, Completion, GenerationRequest
from constitutional.constitution import Constitution
from constitutional.provenance import derive_seed, row_meta
from constitutional.sampling import sample_at_ratio
from constitutional.sl_cai.checks import critique_problem, revision_problem
from constitutional.sl_cai.prompts import (
    critique_messages,
    direct_revision_messages,
    fewshot_messages,
    revision_messages,
)

ARTIFACT = "sl_cai"
SCHEMA_VERSION = 1
Progress = Callable[[str, int], None]  # (stage label, total) starts a stage; ("", 1) advances it


@dataclass
class SLConfig:
    """Knobs of SL-CAI data generation (defaults follow the paper's spirit at small scale).

    Args:
        rounds: critique/revision rounds per red-team prompt (the paper uses up to 4).
        temperature_start / temperature_end: the schedule runs linearly from the first round to
            the last: varied early critiques, conservative late revisions.
        response_temperature: for initial and helpful responses.
        max_tokens: for responses and revisions; critiques get `critique_max_tokens`.
        fewshot: how many of the constitution's exemplars precede each request.
        helpful_ratio: share of helpful rows in the SFT export, in [0, 1).
        critique: False revises without a critique first (the paper's critique ablation).
        seed: run seed; every draw and sample derives from it.
    """

    rounds: int = 4
    temperature_start: float = 0.9
    temperature_end: float = 0.4
    response_temperature: float = 0.7
    max_tokens: int = 200
    critique_max_tokens: int = 128
    fewshot: int = 2
    helpful_ratio: float = 0.5
    critique: bool = True
    seed: int = 0

    def temperature(self, round_index: int) -> float:
        if self.rounds <= 1:
            return self.temperature_start
        step = (self.temperature_end - self.temperature_start) / (self.rounds - 1)
        return round(self.temperature_start + step * round_index, 4)


def draw_principle(constitution: Constitution, seed: int, prompt_id: str, round_index: int):
    """The uniformly drawn critique/revision pair for one prompt and round (reproducible)."""
    rng = random.Random(derive_seed(seed, "principle", prompt_id, round_index))
    return rng.choice(constitution.critique_revision)


def generate_sl_data(
    constitution: Constitution,
    red_team: Sequence[dict],
    helpful: Sequence[dict],
    backend: CachedBackend,
    config: SLConfig,
    progress: Progress | None = None,
) -> list[dict[str, Any]]:
    """Run the whole SL-CAI generation; returns one trace row per prompt (red-team, then helpful)."""
    progress = progress or (lambda label, n: None)
    cfg, fewshot = config, fewshot_messages(constitution, config.fewshot, critique=config.critique)
    traces = [_new_trace(row, i, "red_team") for i, row in enumerate(red_team)]
    traces += [
        _new_trace(row, i, "helpful")
        for i, row in enumerate(
            sample_at_ratio(helpful, len(red_team), cfg.helpful_ratio, cfg.seed)
        )
    ]

    first = [
        _request(
            [{"role": "user", "content": t["prompt"]}],
            cfg.response_temperature,
            cfg.max_tokens,
            cfg.seed,
            t["id"],
            "response",
        )
        for t in traces
    ]
    for t, c in zip(traces, _run(backend, first, "responses", progress)):
        t["initial_response"] = t["final_response"] = c.text
        _count(t, c)

    live = [t for t in traces if t["kind"] == "red_team"]
    for k in range(cfg.rounds):
        pairs = [draw_principle(constitution, cfg.seed, t["id"], k) for t in live]
        steps = [
            {
                "round": k + 1,
                "principle_id": p.id,
                "temperature": cfg.temperature(k),
                "critique": None,
                "revision": None,
                "reason": None,
            }
            for p in pairs
        ]
        for t, s in zip(live, steps):
            t["rounds"].append(s)
        if cfg.critique:
            _critique_round(live, pairs, steps, backend, cfg, fewshot, progress)
        _revision_round(live, pairs, steps, backend, cfg, fewshot, progress)

    meta = row_meta(ARTIFACT, SCHEMA_VERSION, constitution)
    for t in traces:
        _finish(t, backend, cfg.seed, meta)
    return traces


def _critique_round(
    live, pairs, steps, backend, cfg: SLConfig, fewshot, progress: Progress
) -> None:
    """Ask each live trace for a critique of its latest answer; mark unusable critiques."""
    k = steps[0]["round"] - 1 if steps else 0
    requests = [
        _request(
            critique_messages(fewshot, t["prompt"], t["final_response"], p),
            s["temperature"],
            cfg.critique_max_tokens,
            cfg.seed,
            t["id"],
            "critique",
            k,
        )
        for t, p, s in zip(live, pairs, steps)
    ]
    for t, s, c in zip(
        live, steps, _run(backend, requests, f"round {k + 1}/{cfg.rounds} critiques", progress)
    ):
        _count(t, c)
        s["critique"] = c.text.strip()
        s["reason"] = critique_problem(s["critique"], t["final_response"])


def _revision_round(
    live, pairs, steps, backend, cfg: SLConfig, fewshot, progress: Progress
) -> None:
    """Ask for a revision where the critique (if any) was usable; a revision that passes the
    checks becomes the trace's answer."""
    k = steps[0]["round"] - 1 if steps else 0
    todo = [(t, p, s) for t, p, s in zip(live, pairs, steps) if s["reason"] is None]
    requests = [
        _request(
            _revision_request(fewshot, t, p, s["critique"]),
            s["temperature"],
            cfg.max_tokens,
            cfg.seed,
            t["id"],
            "revision",
            k,
        )
        for t, p, s in todo
    ]
    for (t, _, s), c in zip(
        todo, _run(backend, requests, f"round {k + 1}/{cfg.rounds} revisions", progress)
    ):
        _count(t, c)
        s["revision"] = c.text.strip()
        s["reason"] = revision_problem(s["revision"], t["final_response"], s["critique"] or "")
        if s["reason"] is None:
            t["final_response"] = s["revision"]
    for s in steps:
        s["discarded"] = s["reason"] is not None


def _revision_request(fewshot, trace: dict, pair, critique: str | None):
    """After the critique when there is one; else straight after the answer (`--no-critique`)."""
    if critique is None:
        return direct_revision_messages(fewshot, trace["prompt"], trace["final_response"], pair)
    return revision_messages(fewshot, trace["prompt"], trace["final_response"], pair, critique)


def _new_trace(row: dict, index: int, kind: str) -> dict[str, Any]:
    prompt_id = str(row.get("id", f"{kind}-{index}"))
    return {
        "id": prompt_id,
        "kind": kind,
        "prompt": row["prompt"],
        "rounds": [],
        "tokens": {"prompt": 0, "completion": 0},
    }


def _request(
    messages, temperature, max_tokens, seed, prompt_id, stage, round_index=0
) -> GenerationRequest:
    return GenerationRequest(
        messages=messages,
        temperature=temperature,
        max_tokens=max_tokens,
        seed=derive_seed(seed, stage, prompt_id, round_index),
    )


def _run(
    backend: CachedBackend, requests: list[GenerationRequest], label: str, progress: Progress
) -> list[Completion]:
    progress(label, len(requests))
    return backend.generate(requests, on_result=lambda i, c: progress("", 1)) if requests else []


def _count(trace: dict, c: Completion) -> None:
    trace["tokens"]["prompt"] += c.prompt_tokens
    trace["tokens"]["completion"] += c.completion_tokens


def _finish(t: dict, backend: CachedBackend, seed: int, meta: dict) -> None:
    kept = [r for r in t["rounds"] if not r["discarded"]]
    t["discarded"] = t["kind"] == "red_team" and not kept
    t["reason"] = "no round produced a usable critique and revision" if t["discarded"] else None
    t.update(model=backend.model, backend=backend.name, seed=seed, meta=meta)


def to_sft_rows(traces: Sequence[dict]) -> list[dict[str, Any]]:
    """TRL conversational rows: the prompt, then the final revision (or helpful answer)."""
    return [
        {
            "messages": [
                {"role": "user", "content": t["prompt"]},
                {"role": "assistant", "content": t["final_response"]},
            ],
            "id": t["id"],
            "kind": t["kind"],
        }
        for t in traces
        if not t["discarded"]
    ]
