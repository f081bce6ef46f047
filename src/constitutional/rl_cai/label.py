"""RL-CAI preference labelling: two policy samples per prompt → AI feedback → soft labels.

Bai et al. 2022, section 4 (https://arxiv.org/abs/2212.08073). The policy answers each prompt
twice (one batched call, seeded per sample); a comparison principle is drawn per pair (or K of
them, averaged as an ensemble); the feedback model's p(A) is read off `choice_logprobs` in one
call over every judgement, after sampled reasoning in cot mode. Degenerate pairs and judgements
are kept with `discarded: true` and a reason; human preferences can be mixed in as hard labels.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from statistics import fmean
from typing import Any

from constitutional.backends import CachedBackend, GenerationRequest, Prompt
from constitutional.constitution import Constitution
from constitutional.errors import UserError
from constitutional.judge import labels, layout
from constitutional.judge.labels import hard_label
from constitutional.judge.layout import draw_principles
from constitutional.provenance import derive_seed, row_meta
from constitutional.sampling import sample_at_ratio

ARTIFACT = "rl_cai_labels"
SCHEMA_VERSION = 1
MODES = ("logprob", "cot")
Progress = Callable[[str, int], None]  # (stage label, total) starts a stage; ("", n) advances it


@dataclass
class LabelConfig:
    """Knobs of AI-feedback labelling.

    Args:
        mode: "logprob" (read p(A) directly) or "cot" (reason first, then read p(A)).
        clamp: [lo, hi] band for p(A); applied in cot mode, and in logprob mode if `clamp_logprob`.
        swap_average: also judge with A and B swapped and average, cancelling position bias.
        principles_per_pair: K distinct principles per pair; their p(A) are averaged.
        fewshot: constitution comparison exemplars shown before each question.
        temperature / max_tokens: policy sampling; cot_temperature / cot_max_tokens: cot reasoning.
        human_ratio: share of human hard labels in the output, in [0, 1).
        seed: run seed; every draw and sample derives from it.
    """

    mode: str = "logprob"
    clamp: tuple[float, float] = (0.4, 0.6)
    clamp_logprob: bool = False
    swap_average: bool = False
    principles_per_pair: int = 1
    fewshot: int = 2
    temperature: float = 1.0
    max_tokens: int = 128
    cot_temperature: float = 0.0
    cot_max_tokens: int = 128
    human_ratio: float = 0.0
    seed: int = 0

    def check(self, constitution: Constitution) -> None:
        """Raise UserError for settings no run could honour."""
        lo, hi = self.clamp
        if self.mode not in MODES:
            raise UserError(f"--mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if not (0 <= lo <= hi <= 1):
            raise UserError(f"--clamp needs 0 <= lo <= hi <= 1, got {lo} {hi}")
        if not 1 <= self.principles_per_pair <= len(constitution.comparison):
            raise UserError(
                f"--principles-per-pair must be in [1, {len(constitution.comparison)}], got {self.principles_per_pair}"
            )
        if not 0 <= self.human_ratio < 1:
            raise UserError(f"--human-ratio must be in [0, 1), got {self.human_ratio}")


def label_pairs(
    constitution: Constitution,
    prompts: Sequence[dict],
    policy: CachedBackend,
    feedback: CachedBackend,
    config: LabelConfig,
    progress: Progress | None = None,
) -> list[dict[str, Any]]:
    """Sample pairs from `policy` and label them with `feedback`; one row per prompt."""
    progress, cfg = progress or (lambda label, n: None), config
    rows = [_new_row(p, i, cfg, policy, feedback) for i, p in enumerate(prompts)]
    samples = _run(
        policy,
        [
            _request(
                [{"role": "user", "content": r["prompt"]}],
                cfg.temperature,
                cfg.max_tokens,
                derive_seed(cfg.seed, "sample", r["id"], j),
            )
            for r in rows
            for j in (0, 1)
        ],
        "policy samples",
        progress,
    )
    fewshot, render = (
        layout.fewshot_messages(constitution, cfg.fewshot, cfg.mode == "cot"),
        layout.renderer(feedback),
    )
    jobs = _judge_jobs(constitution, rows, samples, fewshot, cfg)
    reasonings = _reasonings(feedback, render, jobs, cfg, progress)
    judge_prompts = [layout.answer_prompt(render, j[-1], r) for j, r in zip(jobs, reasonings)]
    progress("feedback judgements", len(judge_prompts))
    scores = feedback.choice_logprobs(judge_prompts, ["A", "B"]) if judge_prompts else []
    progress("", len(judge_prompts))

    for (row, pid, swapped, _), reasoning, (logp_a, logp_b) in zip(jobs, reasonings, scores):
        if reasoning is not None:
            row["cot"].append(reasoning)
        problem = labels.judgement_problem(logp_a, logp_b)
        if problem is not None:
            row["reason"] = row["reason"] or problem
            continue
        p = labels.two_way_softmax(logp_a, logp_b)
        row["_swapped" if swapped else "_raw"].append(labels.unswap(p) if swapped else p)
        row["_by_principle"].setdefault(pid, []).append(labels.unswap(p) if swapped else p)
    meta = row_meta(ARTIFACT, SCHEMA_VERSION, constitution)
    for row in rows:
        _finish(row, cfg, meta)
    return rows


def _judge_jobs(
    constitution: Constitution, rows: list[dict], samples: list, fewshot: list, cfg: LabelConfig
) -> list[tuple[dict, str, bool, list]]:
    """Store each row's sampled pair and list the feedback model's comparisons of it."""
    jobs = []  # (row, principle id, swapped, messages): K principles x (1 or 2) orders per pair
    for k, row in enumerate(rows):
        row["response_a"], row["response_b"] = (
            samples[2 * k].text.strip(),
            samples[2 * k + 1].text.strip(),
        )
        row["reason"] = labels.pair_problem(row["response_a"], row["response_b"])
        principles = draw_principles(constitution, cfg.seed, row["id"], cfg.principles_per_pair)
        row["principle_ids"] = [p.id for p in principles]
        for p in principles if row["reason"] is None else []:
            for swapped in (False, True) if cfg.swap_average else (False,):
                a, b = (
                    (row["response_b"], row["response_a"])
                    if swapped
                    else (row["response_a"], row["response_b"])
                )
                jobs.append(
                    (
                        row,
                        p.id,
                        swapped,
                        layout.judge_messages(fewshot, row["prompt"], a, b, p.text),
                    )
                )
    return jobs


def _reasonings(
    feedback: CachedBackend, render, jobs: list, cfg: LabelConfig, progress: Progress
) -> list[str | None]:
    """cot mode: the feedback model's reasoning before each judgement; None per job otherwise."""
    reasonings: list[str | None] = [None] * len(jobs)
    if cfg.mode == "cot":
        requests = [
            _request(
                layout.reasoning_prompt(render, m),
                cfg.cot_temperature,
                cfg.cot_max_tokens,
                derive_seed(cfg.seed, "cot", row["id"], pid, swapped),
                stop=layout.COT_STOP,
            )
            for row, pid, swapped, m in jobs
        ]
        reasonings = [
            c.text.strip() for c in _run(feedback, requests, "feedback reasoning", progress)
        ]
    return reasonings


def _new_row(prompt_row: dict, index: int, cfg: LabelConfig, policy, feedback) -> dict[str, Any]:
    return {
        "id": str(prompt_row.get("id", f"prompt-{index}")),
        "source": "ai",
        "prompt": prompt_row["prompt"],
        "response_a": None,
        "response_b": None,
        "principle_ids": [],
        "_raw": [],
        "_swapped": [],
        "_by_principle": {},
        "cot": [] if cfg.mode == "cot" else None,
        "mode": cfg.mode,
        "policy_model": policy.model,
        "feedback_model": feedback.model,
        "seed": cfg.seed,
    }


def _finish(row: dict, cfg: LabelConfig, meta: dict) -> None:
    raw, swapped, by_principle = row.pop("_raw"), row.pop("_swapped"), row.pop("_by_principle")
    row["discarded"] = row["reason"] is not None
    row.update(p_a_raw=None, p_a_swapped=None, p_a=None, flip=None, p_a_by_principle=None)
    if not row["discarded"]:
        # Each principle's own verdict (swap-averaged, unclamped): principle audits read these.
        row["p_a_by_principle"] = {pid: fmean(ps) for pid, ps in by_principle.items()}
        # Ensemble: mean over principles. Raw and swapped stay unclamped so flips can be audited.
        row["p_a_raw"] = p = fmean(raw)
        if cfg.swap_average:
            row["p_a_swapped"] = fmean(swapped)
            row["flip"] = labels.flip(row["p_a_raw"], row["p_a_swapped"])
            p = labels.swap_average(row["p_a_raw"], row["p_a_swapped"])
        row["p_a"] = labels.clamp(p, *cfg.clamp) if cfg.mode == "cot" or cfg.clamp_logprob else p
    row["meta"] = meta


def _request(
    prompt: Prompt, temperature: float, max_tokens: int, seed: int, stop=()
) -> GenerationRequest:
    kind = {"prompt": prompt} if isinstance(prompt, str) else {"messages": list(prompt)}
    return GenerationRequest(
        **kind, temperature=temperature, max_tokens=max_tokens, seed=seed, stop=list(stop)
    )


def _run(backend: CachedBackend, requests: list[GenerationRequest], label: str, progress: Progress):
    progress(label, len(requests))
    return backend.generate(requests, on_result=lambda i, c: progress("", 1)) if requests else []


def mix_human(
    rows: list[dict], human: Sequence[dict], ratio: float, seed: int, constitution
) -> list[dict]:
    """Append human hard labels so they make up `ratio` of the output (capped by supply).

    A seeded coin puts `chosen` on side A (p_a = 1.0) or B (p_a = 0.0): side is no signal.
    """
    picked = sample_at_ratio(human, len(rows), ratio, seed)  # the SL-CAI mixing rule, reused
    rng, meta = (
        random.Random(derive_seed(seed, "human-side")),
        row_meta(ARTIFACT, SCHEMA_VERSION, constitution),
    )
    out = list(rows)
    for h in picked:
        chosen_is_a = rng.random() < 0.5
        out.append(
            hard_label(
                h["id"], "human", h["prompt"], h["chosen"], h["rejected"], chosen_is_a, seed, meta
            )
        )
    return out
