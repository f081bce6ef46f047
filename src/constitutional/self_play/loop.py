"""Self-play: the model labels its own samples against the constitution, then learns from them.

    cai self-play --iterations 2 --out runs/self-play

Each iteration n (the self-rewarding loop of Yuan et al. 2024, https://arxiv.org/abs/2401.10020,
with Constitutional AI's comparison principles as the judging rubric, Bai et al. 2022 section 4):

1. the current model M(n-1) answers each prompt several times; the same model compares pairs of
   its answers under randomly drawn comparison principles (log-prob labels, swap-averaged): this
   is `label_pairs` with one model in both roles;
2. a frozen reference judge (by default the starting model) labels the same pairs; if its
   agreement with the self-judge falls below `min_agreement` the loop stops before training on
   labels that no longer mean what they did (reward hacking of the self-judge);
3. soft-label DPO (`train_dpo`) trains M(n) on the pairs, with M(n-1) as the frozen reference;
4. M(n) and the starting model answer held-out red-team and helpful prompts and the reference
   judge compares them: harmless and helpful win rates against the start.

Artifacts: OUT/iter-N/ holds labels.jsonl (samples, self and reference labels), prefs.jsonl (TRL
rows), checkpoint/, metrics.json and manifest.json; OUT/self_play.json collects every
iteration's metrics for the report. metrics.json is written last, so a killed run resumes at the
first iteration without one (finished steps inside it, and every cached model call, are reused).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from statistics import fmean
from typing import Any

from constitutional.errors import UserError
from constitutional.jsonl import read_json, read_jsonl, write_json, write_jsonl
from constitutional.provenance import RunManifest, derive_seed

ARTIFACT = "self_play"
SCHEMA_VERSION = 1
RESUMABLE = ("iterations",)  # the only setting a resumed run may change
Say = Callable[[str], None]
Progress = Callable[[str, int], None]


@dataclass
class SelfPlayConfig:
    """Knobs of the self-play loop; defaults are the embedded-model demo size.

    Args:
        model: the starting model ('embedded', a .gguf file, an HF or LoRA directory).
        reference_judge: the frozen judge spec; None means the starting model.
        iterations: label → DPO rounds to run (a resumed run may raise it).
        prompts / limit: training prompts (JSONL or builtin:NAME) and how many to use.
        pairs_per_prompt: pairs sampled per prompt (2 × this responses per prompt).
        temperature / max_tokens: how the model samples its responses.
        fewshot / principles_per_pair / swap_average: how the judges are asked (as `rl-cai label`).
        beta / dpo_steps / batch_size / learning_rate / lora: the DPO step of each iteration.
        eval_red_team / eval_helpful / eval_limit / eval_max_tokens: held-out scoring prompts.
        min_agreement: stop when self/reference agreement falls below this, in [0, 1].
        seed: every sample, draw and training run derives from it.
    """

    model: str = "embedded"
    reference_judge: str | None = None
    constitution: str = "default"
    iterations: int = 2
    prompts: str = "builtin:harmbench"
    limit: int | None = 4
    pairs_per_prompt: int = 2
    temperature: float = 1.0
    max_tokens: int = 48
    fewshot: int = 1
    principles_per_pair: int = 1
    swap_average: bool = True
    beta: float = 0.1
    dpo_steps: int = 2
    batch_size: int = 4
    learning_rate: float | None = None
    lora: bool = True
    eval_red_team: str = "builtin:strongreject"
    eval_helpful: str = "builtin:mt_bench"
    eval_limit: int = 4
    eval_max_tokens: int = 48
    min_agreement: float = 0.5
    seed: int = 0

    def check(self, constitution) -> None:
        """Raise UserError for settings no run could honour (before any model loads)."""
        for name in (
            "iterations",
            "pairs_per_prompt",
            "max_tokens",
            "dpo_steps",
            "batch_size",
            "eval_limit",
            "eval_max_tokens",
        ):
            if getattr(self, name) < 1:
                raise UserError(
                    f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}"
                )
        if self.limit is not None and self.limit < 1:
            raise UserError(f"--limit must be at least 1, got {self.limit}")
        if not 0 <= self.min_agreement <= 1:
            raise UserError(f"--min-agreement must be in [0, 1], got {self.min_agreement}")
        if not self.beta > 0:
            raise UserError(f"--beta must be > 0, got {self.beta}")
        if self.fewshot < 0:
            raise UserError(f"--fewshot must be >= 0, got {self.fewshot}")
        self.label_config(1).check(constitution)

    def label_config(self, iteration: int):
        """How iteration `iteration` samples and self-labels (a fresh seed per iteration)."""
        from constitutional.rl_cai.label import LabelConfig

        return LabelConfig(
            mode="logprob",
            swap_average=self.swap_average,
            principles_per_pair=self.principles_per_pair,
            fewshot=self.fewshot,
            temperature=self.temperature,
            max_tokens=self.max_tokens,
            seed=iteration_seed(self.seed, iteration),
        )


def iteration_seed(seed: int, iteration: int) -> int:
    """A per-iteration seed small enough for every RNG (numpy wants < 2**32)."""
    return derive_seed(seed, "self-play", iteration) % 2**31


def expand_prompts(rows: list[dict], pairs_per_prompt: int) -> list[dict]:
    """One row per pair to sample: ids 'ID#0', 'ID#1', ... so each pair gets its own seeds."""
    out = []
    for i, row in enumerate(rows):
        base = str(row.get("id", f"prompt-{i}"))
        out += [{"id": f"{base}#{j}", "prompt": row["prompt"]} for j in range(pairs_per_prompt)]
    return out


@dataclass
class Inputs:
    """What the loop reads, loaded and checked up front."""

    constitution: Any
    prompts: list[dict]
    red_team: list[dict]
    helpful: list[dict]


def load_inputs(cfg: SelfPlayConfig) -> Inputs:
    """Constitution and prompt sets, each error naming its file and line; config checked."""
    from constitutional.constitution import load_constitution
    from constitutional.generate import load_prompts

    rules = load_constitution(cfg.constitution)
    cfg.check(rules)
    prompts = load_prompts(cfg.prompts, chat_allowed=False)[: cfg.limit]
    red = load_prompts(cfg.eval_red_team, chat_allowed=False)[: cfg.eval_limit]
    helpful = load_prompts(cfg.eval_helpful, chat_allowed=False)[: cfg.eval_limit]
    return Inputs(rules, expand_prompts(prompts, cfg.pairs_per_prompt), red, helpful)


def check_resume(out: Path, cfg: SelfPlayConfig) -> None:
    """A run directory may be resumed only with the same settings (iterations aside)."""
    path = out / "self_play.json"
    if not path.is_file():
        return
    old = (read_json(path, ARTIFACT) or {}).get("settings") or {}
    new = settings(cfg)
    changed = sorted(
        k for k in new.keys() | old.keys() if k not in RESUMABLE and old.get(k) != new.get(k)
    )
    if changed:
        raise UserError(
            f"holds a self-play run with other settings ({', '.join(changed)}); "
            "use another --out, or the same settings to resume it",
            path,
        )


def settings(cfg: SelfPlayConfig) -> dict[str, Any]:
    return asdict(cfg)


def run_self_play(
    cfg: SelfPlayConfig,
    out: str | Path,
    make_backend: Callable[[str], Any],
    make_reference: Callable[[], Any],
    *,
    say: Say = print,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Run (or resume) the loop into `out`; returns the self_play.json document.

    Args:
        make_backend: model spec → local CachedBackend (policies must be local: they are trained).
        make_reference: → the reference judge's CachedBackend, built on first use.
    """
    out = Path(out)
    inputs = load_inputs(cfg)
    check_resume(out, cfg)
    out.mkdir(parents=True, exist_ok=True)
    progress = progress or (lambda label, n: None)
    manifest = RunManifest(out / "manifest.json")
    doc = {
        "artifact": ARTIFACT,
        "schema_version": SCHEMA_VERSION,
        "settings": settings(cfg),
        "constitution": {"hash": inputs.constitution.hash, "version": inputs.constitution.version},
        "iterations": [],
        "stopped": None,
        "final_model": cfg.model,
    }
    reference = _Lazy(make_reference)
    for n in range(1, cfg.iterations + 1):
        step = Iteration(n, out, cfg, inputs, make_backend, reference, progress)
        if step.finished():
            say(f"[{n}/{cfg.iterations}] unchanged, skipped")
            metrics = step.metrics()
        else:
            say(f"[{n}/{cfg.iterations}] sampling with {step.policy_spec} ...")
            start = time.perf_counter()
            first = doc["iterations"][0]["agreement"]["rate"] if doc["iterations"] else None
            metrics = step.run(first)
            manifest.record(
                f"self_play iter-{n}",
                backend=step.policy,
                wall_seconds=time.perf_counter() - start,
                seed=cfg.seed,
                constitution=doc["constitution"],
                outputs=[step.dir.name],
                result=summary(metrics),
            )
            say(f"[{n}/{cfg.iterations}] {describe(metrics)}")
        doc["iterations"].append(metrics)
        if metrics.get("stopped"):
            doc["stopped"] = {"iteration": n, "reason": metrics["stopped"]}
            say(f"stopped at iteration {n}: {metrics['stopped']}")
            break
        doc["final_model"] = str(step.checkpoint)
        write_json(out / "self_play.json", doc)
    write_json(out / "self_play.json", doc)
    return doc


class _Lazy:
    """Build a backend on first use: a run that resumes past every iteration loads none."""

    def __init__(self, make: Callable[[], Any]):
        self.make, self.value = make, None

    def __call__(self):
        if self.value is None:
            self.value = self.make()
        return self.value


def summary(m: dict[str, Any]) -> dict[str, Any]:
    """The few numbers of an iteration worth a manifest line."""
    return {
        "agreement": m["agreement"]["rate"],
        "prefs": m["counts"]["prefs"],
        "stopped": m.get("stopped"),
        **{
            f"{axis}_win_rate": (m.get("scores") or {}).get(axis, {}).get("p_win")
            for axis in ("harmless", "helpful")
        },
    }


def describe(m: dict[str, Any]) -> str:
    """One human line about a finished iteration."""
    a = m["agreement"]
    parts = [
        f"{m['counts']['prefs']} preference pairs",
        f"agreement with the reference judge {_num(a['rate'])} (n={a['n']})",
    ]
    for axis, s in (m.get("scores") or {}).items():
        parts.append(f"{axis} win rate vs start {_num(s['p_win'])}")
    return " · ".join(parts)


def _num(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2f}"


class Iteration:
    """One round of the loop in OUT/iter-N; each step is skipped when its output already exists."""

    def __init__(
        self,
        n: int,
        out: Path,
        cfg: SelfPlayConfig,
        inputs: Inputs,
        make_backend,
        reference,
        progress,
    ):
        self.n, self.cfg, self.inputs, self.progress = n, cfg, inputs, progress
        self.make_backend, self.reference = make_backend, reference
        self.dir = out / f"iter-{n}"
        self.checkpoint = (self.dir / "checkpoint").resolve()
        self.policy_spec = (
            cfg.model if n == 1 else str((out / f"iter-{n - 1}" / "checkpoint").resolve())
        )
        self.manifest = None
        self.policy = None

    def finished(self) -> bool:
        return (self.dir / "metrics.json").is_file()

    def metrics(self) -> dict[str, Any]:
        return read_json(self.dir / "metrics.json")

    def run(self, first_agreement: float | None) -> dict[str, Any]:
        """Label, check the judge, train, score; `first_agreement` is iteration 1's (drift baseline)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        self.manifest = RunManifest(self.dir / "manifest.json")
        self.policy = self.make_backend(self.policy_spec)
        rows = self.label()
        prefs = read_jsonl(self.dir / "prefs.jsonl")
        from constitutional.self_play.agreement import agreement

        m: dict[str, Any] = {
            "iteration": self.n,
            "policy": self.policy_spec,
            "seed": iteration_seed(self.cfg.seed, self.n),
            "counts": {
                "pairs": len(rows),
                "kept": sum(not r["discarded"] for r in rows),
                "prefs": len(prefs),
                "flips": sum(bool(r.get("flip")) for r in rows),
            },
            "agreement": agreement([r["p_a"] for r in rows], [r["p_a_reference"] for r in rows]),
            "agreement_drift": None,  # agreement now minus at iteration 1 (0 there by definition)
            "self_p_chosen": fmean(p["p_chosen"] for p in prefs) if prefs else None,
            "stopped": None,
            "dpo": None,
            "scores": None,
            "checkpoint": None,
        }
        rate = m["agreement"]["rate"]
        if rate is not None:
            m["agreement_drift"] = rate - (rate if first_agreement is None else first_agreement)
        m["stopped"] = self.stop_reason(m)
        if m["stopped"] is None:
            m["dpo"] = self.train()
            m["checkpoint"] = str(self.checkpoint)
            m["scores"] = self.score()
        write_json(self.dir / "metrics.json", m)  # last: its presence marks the iteration done
        return m

    def stop_reason(self, m: dict[str, Any]) -> str | None:
        a = m["agreement"]
        if a["n"] and a["rate"] < self.cfg.min_agreement:
            return f"agreement with the reference judge {a['rate']:.3f} < --min-agreement {self.cfg.min_agreement}"
        if not m["counts"]["prefs"]:
            return "no preference pairs: every pair was discarded or a tie"
        return None

    def label(self) -> list[dict]:
        """Samples and self-labels from the current model, plus the reference judge's labels."""
        from constitutional.judge.labels import to_dpo_rows
        from constitutional.rl_cai.label import label_pairs
        from constitutional.self_play.agreement import reference_labels

        path = self.dir / "labels.jsonl"
        if path.is_file() and (self.dir / "prefs.jsonl").is_file():
            return read_jsonl(path)
        start, cfg = time.perf_counter(), self.cfg
        rows = label_pairs(
            self.inputs.constitution,
            self.inputs.prompts,
            self.policy,
            self.policy,
            cfg.label_config(self.n),
            self.progress,
        )
        judge = self.reference()
        self.progress("reference judge", 1)
        ref = reference_labels(
            judge,
            rows,
            self.inputs.constitution,
            fewshot=cfg.fewshot,
            swap_average=cfg.swap_average,
        )
        self.progress("", 1)
        for row, p in zip(rows, ref):
            row["p_a_reference"], row["reference_model"] = p, judge.model
        write_jsonl(self.dir / "prefs.jsonl", to_dpo_rows(rows))
        write_jsonl(path, rows)
        self.manifest.record(
            "label",
            backend=self.policy,
            wall_seconds=time.perf_counter() - start,
            seed=cfg.seed,
            reference={"model": judge.model, "tokens": vars(judge.usage).copy()},
            outputs=[path.name, "prefs.jsonl"],
        )
        return rows

    def train(self) -> dict[str, Any]:
        """Soft-label DPO of the current model on this iteration's pairs; it is its own reference."""
        from constitutional.train.dpo import train_dpo

        done = read_json(self.checkpoint / "cai_checkpoint.json")
        if done is not None:
            return {
                k: done.get(k)
                for k in ("steps", "final_loss", "reward_margin", "reward_accuracy", "wall_seconds")
            }
        self.progress(f"DPO ({self.cfg.dpo_steps} steps)", 1)
        s = train_dpo(
            self.dir / "prefs.jsonl",
            self.policy_spec,
            self.checkpoint,
            beta=self.cfg.beta,
            lora=self.cfg.lora,
            learning_rate=self.cfg.learning_rate,
            batch_size=self.cfg.batch_size,
            max_steps=self.cfg.dpo_steps,
            seed=iteration_seed(self.cfg.seed, self.n),
            overwrite=True,
        )
        self.progress("", 1)
        s.pop("out", None)
        self.manifest.record(
            "dpo", wall_seconds=s["wall_seconds"], outputs=["checkpoint"], result=s
        )
        return s

    def score(self) -> dict[str, Any]:
        """The new model against the starting one on held-out prompts, judged by the reference."""
        start = time.perf_counter()
        judge = self.reference()
        scores = score_against_start(
            judge,
            self.make_backend(self.cfg.model),
            self.make_backend(str(self.checkpoint)),
            self.inputs.red_team,
            self.inputs.helpful,
            self.cfg,
        )
        self.manifest.record(
            "eval", backend=judge, wall_seconds=time.perf_counter() - start, result=scores
        )
        return scores


def score_against_start(
    judge, start, current, red_team: list[dict], helpful: list[dict], cfg: SelfPlayConfig
) -> dict[str, Any]:
    """Harmless and helpful win rates of `current` over `start`, as in `cai eval`.

    Both models answer greedily; the judge compares each pair of replies in both orders with the
    evaluation questions of `cai eval` (not constitution principles, so the rubric the model was
    trained on does not grade it). `p_win` is the mean swap-averaged p(current better); `rate`
    and its interval count the prompts where that p exceeds 0.5.
    """
    from constitutional.eval.evaluate import HARMLESS_QUESTION, HELPFUL_QUESTION, pairwise
    from constitutional.eval.harm import SampleConfig, answer
    from constitutional.stats import rate

    sample = SampleConfig(temperature=0.0, max_tokens=cfg.eval_max_tokens, seed=cfg.seed)
    scores = {}
    for axis, prompts, question in (
        ("harmless", red_team, HARMLESS_QUESTION),
        ("helpful", helpful, HELPFUL_QUESTION),
    ):
        chats = [[{"role": "user", "content": r["prompt"]}] for r in prompts]
        replies = {
            "current": answer(current, chats, sample, f"self-play-{axis}"),
            "start": answer(start, chats, sample, f"self-play-{axis}"),
        }
        ps = [p for _, _, _, p in pairwise(judge, prompts, replies, question)]
        scores[axis] = {"p_win": fmean(ps) if ps else None, **rate(p > 0.5 for p in ps)}
    return scores
