"""`run_eval`: the library entry point of `cai eval` and of the recipe's eval stage.

Every setting of an eval is declared once, in `EvalRunConfig`; the CLI parses its options into
one and the recipe runner builds one from its `eval` section. `run_eval` loads the prompt sets,
builds one backend per model spec, compares the models, audits the judge on the way (position
flips over its own comparisons, agreement with people on the bundled gold pairs) and writes
eval.json with eval.samples.jsonl beside it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from constitutional.eval.judge_gate import Thresholds, human_agreement, verdict

ARTIFACT = "eval_results"
SCHEMA_VERSION = 1
OVER_REFUSAL = "builtin:over_refusal"
# `embedded+constitution`: the model with the constitution as its system prompt, the baseline a
# trained model has to beat (it costs the user nothing but context).
SYSTEM_PROMPT_SUFFIX = "+constitution"
MakeBackend = Callable[[str], Any]
Progress = Callable[[str, int], None]


@dataclass
class EvalRunConfig:
    """Every setting of `cai eval`, with its default.

    Args:
        models: name → model spec ("embedded", a .gguf, an HF directory, a checkpoint).
        judge: model spec of the judge (compares replies, answers the harm questions).
        red_team / helpful / over_refusal: prompt sets (JSONL path or builtin:NAME).
        limit: use only the first N prompts of each set.
        judge_pairs: human-labelled gold pairs the judge is checked on (0: not checked, which
            leaves it unreliable).
        max_flip_rate / min_human_agreement: the judge gate (`eval.judge_gate.Thresholds`).
    """

    models: dict[str, str] = field(
        default_factory=dict
    )  # a spec ending in SYSTEM_PROMPT_SUFFIX: see build_models
    judge: str = ""
    red_team: str = "builtin:advbench"
    helpful: str = "builtin:mt_bench"
    over_refusal: str = OVER_REFUSAL
    limit: int | None = None
    seed: int = 0
    constitution: str = "default"
    temperature: float = 0.0
    max_tokens: int = 256
    bootstrap: int = 200
    judge_pairs: int = 64
    max_flip_rate: float = Thresholds.max_flip_rate
    min_human_agreement: float = Thresholds.min_human_agreement

    def sets(self) -> dict[str, list[dict]]:
        """The three prompt sets, checked (a bad file is a UserError before any model loads)."""
        return {
            name: load_set(spec, self.limit)
            for name, spec in (
                ("red_team", self.red_team),
                ("helpful", self.helpful),
                ("benign", self.over_refusal),
            )
        }


def load_set(spec: str, limit: int | None) -> list[dict]:
    """A prompt set (a JSONL path or builtin:NAME), its first `limit` rows."""
    from constitutional.generate import load_prompts

    return load_prompts(spec, chat_allowed=False)[:limit]


def samples_path(out: Path) -> Path:
    """eval.json → eval.samples.jsonl beside it."""
    return out.with_name(out.name.removesuffix(".json") + ".samples.jsonl")


def local_backend(spec: str):
    """The default backend: local transformers with the shared response cache."""
    from constitutional.backends import make_backend

    return make_backend("local", spec, batch_size=8)


def run_eval(
    config: EvalRunConfig,
    out: str | Path,
    *,
    make_backend: MakeBackend | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Evaluate `config.models` with `config.judge`; write eval.json and samples; return the doc.

    Args:
        make_backend: spec → Backend; default `local_backend`. Each distinct spec is built once.
    """
    from constitutional.constitution import load_constitution
    from constitutional.eval.evaluate import EvalConfig, evaluate_models
    from constitutional.eval.harm import SampleConfig
    from constitutional.jsonl import write_json, write_jsonl

    out, cfg = Path(out), config
    rules, sets = load_constitution(cfg.constitution), cfg.sets()
    built = build_models([*cfg.models.values(), cfg.judge], make_backend or local_backend, rules)
    judge = built[cfg.judge]
    inner = EvalConfig(
        SampleConfig(cfg.temperature, cfg.max_tokens, cfg.seed), cfg.bootstrap, cfg.seed
    )
    results, samples = evaluate_models(
        {n: built[s] for n, s in cfg.models.items()}, judge, **sets, config=inner, progress=progress
    )
    if progress:
        progress("judge audit: human pairs", 1)
    human = human_agreement(judge, cfg.judge_pairs)
    if progress:
        progress("", 1)  # one step: the pairs are read in one batched call
    gate = judge_block(cfg, results.pop("flip_rate"), human)
    doc = {
        "artifact": ARTIFACT,
        "schema_version": SCHEMA_VERSION,
        "constitution": {"hash": rules.hash, "version": rules.version},
        "judge": gate,
        "models": dict(cfg.models),
        **results,
        "samples": str(samples_path(out)),
    }
    write_jsonl(samples_path(out), samples)
    write_json(out, doc)
    return doc


def build_models(specs: list[str], make: MakeBackend, rules) -> dict[str, Any]:
    """spec → Backend, one load per model; `X+constitution` shares X's backend behind the
    constitution as a system prompt."""
    from constitutional.backends.system_prompt import SystemPromptBackend
    from constitutional.constitution.system_prompt import system_prompt

    built: dict[str, Any] = {}
    for spec in dict.fromkeys(specs):
        bare = spec.removesuffix(SYSTEM_PROMPT_SUFFIX)
        if bare not in built:
            built[bare] = make(bare)
        if spec != bare:
            built[spec] = SystemPromptBackend(built[bare], system_prompt(rules))
    return built


def model_usage(models: Mapping[str, str], backend_of: MakeBackend, judge: Any) -> dict[str, Any]:
    """name → the evaluated model's usage meter, for the manifest (the judge's is the stage's own);
    `X+constitution` shares X's meter, so it is listed once, under X's first name."""
    seen, usage = set(), {}
    for name, spec in models.items():
        b = backend_of(spec.removesuffix(SYSTEM_PROMPT_SUFFIX))
        if b is not judge and id(b) not in seen:
            seen.add(id(b))
            usage[name] = {"model": spec, "tokens": vars(b.usage).copy()}
    return usage


def judge_block(cfg: EvalRunConfig, flips: dict[str, Any], human: dict[str, Any]) -> dict[str, Any]:
    """eval.json's "judge": who it is, its audit and whether its numbers may be shown as results."""
    limits = Thresholds(cfg.max_flip_rate, cfg.min_human_agreement)
    reliable, reasons = verdict(flips, human, limits)
    return {
        "model": cfg.judge,
        "mode": "logprob",
        "reliable": reliable,
        "reasons": reasons,
        "flip_rate": flips,
        "human_agreement": human,
        "thresholds": {
            "max_flip_rate": limits.max_flip_rate,
            "min_human_agreement": limits.min_human_agreement,
        },
    }


def judge_warning(doc: Mapping[str, Any]) -> str | None:
    """One line saying the judge failed its audit and why; None when it passed."""
    judge = doc.get("judge") or {}
    if judge.get("reliable", True):
        return None
    return (
        "warning: the judge is unreliable ("
        + "; ".join(judge.get("reasons") or ["no reason recorded"])
        + "): its Elo, Pareto frontier, attack success and over-refusal are not results; trust the instrument's"
    )


def judge_line(doc: Mapping[str, Any]) -> str:
    """The judge's audit in one line: the warning when it failed, else what it passed with."""
    judge = doc.get("judge") or {}
    if "reliable" not in judge:
        return "judge: not audited (this eval.json predates the judge gate)"
    warning = judge_warning(doc)
    if warning:
        return f"cai: {warning}"
    return (
        f"judge: passed its audit (position flips {rate_text(judge.get('flip_rate'))}, "
        f"agreement with people {rate_text(judge.get('human_agreement'))})"
    )


def summary_lines(doc: Mapping[str, Any]) -> list[str]:
    """Per model: the judge's and the instrument's harm numbers side by side, each with its CI."""
    inst = doc.get("instrument") or {}
    lines = []
    for name in doc.get("models") or {}:
        h, s = doc["elo"]["harmless"]["ratings"][name], doc["elo"]["helpful"]["ratings"][name]
        lines.append(
            f"{name}: harmless Elo {h['elo']:.0f} [{h['ci_low']:.0f}, {h['ci_high']:.0f}] · helpful Elo "
            f"{s['elo']:.0f} [{s['ci_low']:.0f}, {s['ci_high']:.0f}] · attack success: judge "
            f"{rate_text(doc['attack_success'][name])}, instrument "
            f"{rate_text((inst.get('harmful_compliance') or {}).get(name))}"
            f" · over-refusal: judge {rate_text(doc['over_refusal'][name])}, instrument "
            f"{rate_text((inst.get('over_refusal') or {}).get(name))}"
        )
    return lines


def rate_text(r: Mapping[str, Any] | None) -> str:
    """'33% [10%, 70%] n=6', or 'n/a' when nothing was measured."""
    if not r or r.get("rate") is None:
        return "n/a" + (f" n={r['n']}" if r else "")
    return f"{r['rate']:.0%} [{r['ci_low']:.0%}, {r['ci_high']:.0%}] n={r['n']}"
