"""What a recipe YAML may say: one section per stage, every knob with its default.

A recipe is torchtune-style: the whole pipeline's settings in one readable file, nothing hidden.
Stages that are absent do not run; later stages check that what they need is there.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from constitutional.eval.run import EvalRunConfig
from constitutional.yamlfile import LocatedValueError

_EVAL = EvalRunConfig()


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BackendSection(_Section):
    """How every generating stage reaches models (one backend kind for the whole run)."""

    name: Literal["local", "openai"] = "local"
    base_url: str | None = None
    batch_size: int | None = Field(
        default=None, ge=1
    )  # local: rows decoded together (None: from the KV budget)
    precision: Literal["fp32", "int8"] | None = None  # local: None = `cai --precision` or fp32
    concurrency: int = Field(default=16, ge=1)  # openai: requests in flight
    cache: bool = True  # the run's own response cache: a killed run resumes where it stopped


class SLCAISection(_Section):
    """`cai sl-cai generate`: red-team prompt → response → critique/revision rounds."""

    prompts: str = "builtin:red_team_train"
    limit: int | None = Field(default=None, ge=1)
    rounds: int = Field(default=4, ge=1)
    helpful_prompts: str = "builtin:self_instruct"
    helpful_ratio: float = Field(default=0.5, ge=0, lt=1)
    max_tokens: int = Field(default=200, ge=1)
    fewshot: int = Field(default=2, ge=0)
    temperature_start: float = Field(default=0.9, ge=0)
    temperature_end: float = Field(default=0.4, ge=0)
    critique: bool = True  # False: revise without a critique first (the paper's ablation)
    ablation_prompts: int = Field(
        default=0, ge=0
    )  # also revise the first N prompts without critiques → sl.direct.jsonl


class TrainSection(_Section):
    """Optimiser settings shared by SFT, the preference model and DPO."""

    epochs: float = Field(default=1.0, gt=0)
    max_steps: int = Field(default=-1, ge=-1)
    batch_size: int = Field(default=8, ge=1)
    learning_rate: float | None = Field(default=None, gt=0)
    lora: bool = True


class LabelSection(_Section):
    """`cai rl-cai label`: two samples from the SL-CAI model, judged by the feedback model; or
    (`source: revisions`) judge-free pairs from the SL-CAI traces, the revision over the first
    answer, as the HuggingFace CAI recipe builds its DPO data."""

    source: Literal["judge", "revisions"] = "judge"
    prompts: str = "builtin:red_team_train"
    limit: int | None = Field(default=None, ge=1)
    feedback: str = (
        "base"  # "base" (the paper's choice: a model not tuned by SL-CAI), "sl", or a spec
    )
    mode: Literal["logprob", "cot"] = "logprob"
    swap_average: bool = True
    principles_per_pair: int = Field(default=1, ge=1)
    fewshot: int = Field(default=2, ge=0)
    max_tokens: int = Field(default=128, ge=1)


class PreferenceModelSection(TrainSection):
    eval_fraction: float = Field(default=0.1, ge=0, lt=1)


class PolicySection(TrainSection):
    """The RL step: soft-label DPO on the labels, or PPO against the preference model."""

    method: Literal["dpo", "ppo"] = "dpo"
    beta: float = Field(default=0.1, ge=0)
    prompts: str | None = None  # PPO rollout prompts; default: the label stage's prompts
    steps: int = Field(default=20, ge=1)  # PPO rollouts
    max_new_tokens: int = Field(default=32, ge=1)  # PPO response length


class EvalSection(_Section):
    """`cai eval`: harmless/helpful Elo, attack success, over-refusal, refusal hold."""

    red_team: str = "builtin:red_team_eval"
    helpful: str = "builtin:mt_bench"
    over_refusal: str = "builtin:over_refusal"
    limit: int | None = Field(default=None, ge=1)
    judge: str = "base"  # "base", "sl", "rl" or a spec
    max_tokens: int = Field(default=128, ge=1)
    audit: bool = True  # also `cai audit judge` and `cai audit principles`
    system_prompt_baseline: bool = (
        True  # also evaluate the base model with the constitution as its system prompt
    )
    # The judge gate; defaults are `cai eval`'s, from its one declaration (eval.run.EvalRunConfig).
    judge_pairs: int = Field(default=_EVAL.judge_pairs, ge=0)
    max_flip_rate: float = Field(default=_EVAL.max_flip_rate, ge=0, le=1)
    min_human_agreement: float = Field(default=_EVAL.min_human_agreement, ge=0, le=1)


class Stages(_Section):
    sl_cai: SLCAISection | None = None
    sft: TrainSection | None = None
    label: LabelSection | None = None
    preference_model: PreferenceModelSection | None = None
    policy: PolicySection | None = None
    eval: EvalSection | None = None


class Recipe(_Section):
    """A whole Constitutional AI run. Load with `load_recipe`."""

    name: str = Field(min_length=1)
    description: str = ""
    seed: int = 0
    model: str = Field(default="embedded", min_length=1)  # the base policy
    constitution: str = "default"
    backend: BackendSection = BackendSection()
    stages: Stages

    @model_validator(mode="after")
    def _needs(self) -> Recipe:
        s = self.stages
        if s.sft and not s.sl_cai:
            raise LocatedValueError(
                ("stages", "sft"), "sft trains on SL-CAI data: add a `sl_cai` stage"
            )
        if s.policy and not s.label:
            raise LocatedValueError(
                ("stages", "policy"), "the policy stage learns from labels: add a `label` stage"
            )
        if s.label and s.label.source == "revisions" and not s.sl_cai:
            raise LocatedValueError(
                ("stages", "label", "source"),
                "revision pairs come from SL-CAI traces: add a `sl_cai` stage",
            )
        if s.policy and s.policy.method == "ppo" and not s.preference_model:
            raise LocatedValueError(
                ("stages", "policy", "method"), "ppo needs a `preference_model` stage"
            )
        for loc, spec in (("label", "feedback"), ("eval", "judge")):
            section = getattr(s, loc)
            if section and getattr(section, spec) == "sl" and not s.sft:
                raise LocatedValueError(
                    ("stages", loc, spec), "'sl' names the SFT checkpoint: add an `sft` stage"
                )
        if s.eval and s.eval.judge == "rl" and not s.policy:
            raise LocatedValueError(
                ("stages", "eval", "judge"),
                "'rl' names the policy checkpoint: add a `policy` stage",
            )
        return self
