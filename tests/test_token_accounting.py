"""Every stage that calls a model records what it cost: a stage whose manifest says 0 prompt
tokens after asking a model something is a bug (it was, for every `choice_logprobs` judge).

Each stage runs once, at toy size, on the tiny random Llama. Where a stage has a judge, the judge
is a second copy of the tiny model under another path, so its meter holds the judge's calls only:
`choice_logprobs` reads, which cost prompt tokens and no completion tokens.
"""

from __future__ import annotations

import json
import shutil

import pytest
from typer.testing import CliRunner

from constitutional.backends import CachedBackend, ResponseCache
from constitutional.backends.base import Completion
from constitutional.backends.cache import cache_key
from constitutional.backends.local import LocalBackend
from constitutional.cli import app
from constitutional.jsonl import write_jsonl

PROMPTS = [
    {"id": f"p{i}", "prompt": f"How do I {t}?"}
    for i, t in enumerate(["pick a lock", "bake bread", "write a poem"])
]
MINI_PROPOSITIONS = """\
name: mini
grades: [good, bad]
propositions:
  - id: refusal
    question: Does it refuse?
rules:
  refuse:
    - grade: good
      when: {refusal: true}
  comply:
    - grade: good
      when: {refusal: false}
"""

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny training runs on one thread


def cai(*args):
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, (result.output, result.exception)
    return result


def stage(manifest, name: str) -> dict:
    return json.loads(manifest.read_text())["stages"][name]


@pytest.fixture(scope="module")
def judge_dir(tiny_model_dir, tmp_path_factory):
    """The tiny model under a second path: a separate backend, so a separate usage meter."""
    return shutil.copytree(tiny_model_dir, tmp_path_factory.mktemp("judge") / "tiny-judge")


@pytest.fixture(scope="module")
def prompts(tmp_path_factory):
    path = tmp_path_factory.mktemp("prompts") / "prompts.jsonl"
    write_jsonl(path, PROMPTS)
    return path


# --- the meter itself -------------------------------------------------------------------------------


class Counted:
    """A backend that reports 7 prompt tokens per scored prompt, and counts what it was asked."""

    name, model = "fake", "fake"

    def __init__(self):
        self.asked = 0

    def fingerprint(self) -> str:
        return "fake"

    def choice_logprobs_with_usage(self, prompts, choices):
        self.asked += len(prompts)
        return [[-1.0] * len(choices) for _ in prompts], [7] * len(prompts)


def test_choice_logprobs_meter_fresh_and_cached(tmp_path):
    cache = ResponseCache(tmp_path / "c.sqlite")
    inner = Counted()
    first = CachedBackend(inner, cache)
    assert first.choice_logprobs(["x", "y"], ["A", "B"]) == [[-1.0, -1.0]] * 2
    assert vars(first.usage) == {
        "calls": 2,
        "cache_hits": 0,
        "prompt_tokens": 14,
        "completion_tokens": 0,
        "cached_prompt_tokens": 0,
        "cached_completion_tokens": 0,
    }
    again = CachedBackend(inner, cache)  # a rerun: the cache answers, and remembers what it saved
    assert again.choice_logprobs(["y", "z"], ["A", "B"]) == [[-1.0, -1.0]] * 2 and inner.asked == 3
    assert (
        again.usage.calls,
        again.usage.cache_hits,
        again.usage.prompt_tokens,
        again.usage.cached_prompt_tokens,
    ) == (2, 1, 7, 7)


def test_a_cache_row_from_before_token_counting_still_reads(tmp_path):
    cache = ResponseCache(tmp_path / "c.sqlite")
    cache.put(
        cache_key("fake", "choice_logprobs", ["old", ["A", "B"]]), [-0.5, -2.0]
    )  # the old shape: a bare row
    backend = CachedBackend(Counted(), cache)
    assert backend.choice_logprobs(["old"], ["A", "B"]) == [[-0.5, -2.0]]
    assert (backend.usage.cache_hits, backend.usage.cached_prompt_tokens) == (
        1,
        0,
    )  # its cost was never known


def test_generate_cache_hits_keep_their_tokens(tmp_path):
    class Fixed:
        name, model = "fake", "fake"

        def fingerprint(self):
            return "fake"

        def generate(self, requests, on_result=None):
            out = [Completion("hi", "stop", 5, 2) for _ in requests]
            for i, c in enumerate(out):
                if on_result:
                    on_result(i, c)
            return out

    from constitutional.backends import GenerationRequest

    cache = ResponseCache(tmp_path / "c.sqlite")
    request = GenerationRequest(prompt="hello")
    CachedBackend(Fixed(), cache).generate([request])
    rerun = CachedBackend(Fixed(), cache)
    rerun.generate([request])
    assert (
        rerun.usage.prompt_tokens,
        rerun.usage.cached_prompt_tokens,
        rerun.usage.cached_completion_tokens,
    ) == (0, 5, 2)


def test_a_backend_that_cannot_count_is_metered_as_zero_tokens():
    class Plain:
        name, model = "plain", "plain"

        def fingerprint(self):
            return "plain"

        def choice_logprobs(self, prompts, choices):
            return [[0.0] * len(choices) for _ in prompts]

    backend = CachedBackend(Plain(), None)
    assert backend.choice_logprobs(["a"], ["A"]) == [[0.0]]
    assert (backend.usage.calls, backend.usage.prompt_tokens) == (1, 0)


def test_local_judge_counts_the_rendered_prompt(tiny_model_dir):
    backend = CachedBackend(LocalBackend(str(tiny_model_dir), batch_size=4), None)
    chat = [{"role": "user", "content": "Which is better, A or B?"}]
    backend.choice_logprobs([chat, "The answer is"], ["A", "B"])
    tokenizer = backend.inner.tokenizer
    expected = sum(
        len(tokenizer(backend.inner.render(p), add_special_tokens=False)["input_ids"])
        for p in (chat, "The answer is")
    )
    assert backend.usage.prompt_tokens == expected and backend.usage.completion_tokens == 0


# --- every model-calling stage, through its command ----------------------------------------------------


def test_generate_records_tokens(tiny_model_dir, prompts, tmp_path):
    out = tmp_path / "gen.jsonl"
    cai(
        "generate",
        "--model",
        tiny_model_dir,
        "--prompts",
        prompts,
        "--out",
        out,
        "--max-tokens",
        4,
        "--no-cache",
    )
    tokens = stage(tmp_path / "gen.jsonl.manifest.json", "generate")["tokens"]
    assert tokens["prompt_tokens"] > 0 and tokens["completion_tokens"] > 0


def test_sl_cai_generate_records_tokens(tiny_model_dir, prompts, tmp_path):
    out = tmp_path / "sl.jsonl"
    cai(
        "sl-cai",
        "generate",
        "--model",
        tiny_model_dir,
        "--prompts",
        prompts,
        "--out",
        out,
        "--rounds",
        1,
        "--max-tokens",
        4,
        "--fewshot",
        0,
        "--helpful-ratio",
        0,
        "--no-cache",
    )
    tokens = stage(tmp_path / "sl.jsonl.manifest.json", "sl_cai_generate")["tokens"]
    assert tokens["prompt_tokens"] > 0 and tokens["completion_tokens"] > 0


def test_rl_cai_label_records_the_judges_tokens(tiny_model_dir, judge_dir, prompts, tmp_path):
    out = tmp_path / "labels.jsonl"
    cai(
        "rl-cai",
        "label",
        "--policy",
        tiny_model_dir,
        "--feedback",
        judge_dir,
        "--prompts",
        prompts,
        "--out",
        out,
        "--max-tokens",
        4,
        "--fewshot",
        0,
        "--no-cache",
    )
    entry = stage(tmp_path / "labels.jsonl.manifest.json", "rl_cai_label")
    judge = entry["tokens"]  # the feedback model only ever scores A against B
    assert judge["calls"] > 0 and judge["prompt_tokens"] > 0 and judge["completion_tokens"] == 0
    assert entry["policy"]["tokens"]["prompt_tokens"] > 0


def test_eval_records_the_judges_tokens(tiny_model_dir, judge_dir, prompts, tmp_path):
    out = tmp_path / "eval.json"
    cai(
        "eval",
        "--models",
        f"a={tiny_model_dir}",
        "--judge",
        judge_dir,
        "--red-team",
        prompts,
        "--helpful",
        prompts,
        "--over-refusal",
        prompts,
        "--limit",
        2,
        "--max-tokens",
        4,
        "--bootstrap",
        5,
        "--out",
        out,
        "--no-cache",
    )
    tokens = stage(tmp_path / "eval.json.manifest.json", "eval")["tokens"]
    assert tokens["calls"] > 0 and tokens["prompt_tokens"] > 0


def test_judge_audit_records_tokens(judge_dir, tmp_path):
    labels = tmp_path / "labels.jsonl"
    write_jsonl(
        labels,
        [
            {
                "id": f"p{i}",
                "prompt": f"Question {i}?",
                "response_a": "Sure, here it is.",
                "response_b": "No.",
                "principle_ids": ["harm"],
                "source": "ai",
                "discarded": False,
            }
            for i in range(2)
        ],
    )
    out = tmp_path / "audit.json"
    cai(
        "audit",
        "judge",
        "--labels",
        labels,
        "--judge",
        judge_dir,
        "--no-injection",
        "--out",
        out,
        "--no-cache",
    )
    tokens = stage(tmp_path / "audit.json.manifest.json", "judge_audit")["tokens"]
    assert tokens["calls"] > 0 and tokens["prompt_tokens"] > 0 and tokens["completion_tokens"] == 0


def test_rbr_fit_eval_and_score_record_tokens(judge_dir, tmp_path):
    mini = tmp_path / "mini.yaml"
    mini.write_text(MINI_PROPOSITIONS)
    gold = tmp_path / "gold.jsonl"
    write_jsonl(
        gold,
        [
            {
                "conversation": [{"role": "user", "content": p["prompt"]}],
                "response": f"Reply {i}.",
                "response_class": "refuse" if i % 2 else "comply",
                "labels": {"refusal": i % 3 == 0},
            }
            for i, p in enumerate(PROMPTS * 2)
        ],
    )
    grader = ["--model", judge_dir, "--no-cache"]
    fitted = tmp_path / "rbr.json"
    cai(
        "rbr",
        "fit",
        "--gold",
        gold,
        "--propositions",
        mini,
        "--held-out",
        0.5,
        "--out",
        fitted,
        *grader,
    )
    cai("rbr", "eval", "--rbr", fitted, "--test", gold, "--out", tmp_path / "eval.json", *grader)
    data = tmp_path / "replies.jsonl"
    write_jsonl(data, [{"prompt": "Hi?", "response": "I can't help with that."}])
    cai(
        "rbr",
        "score",
        "--data",
        data,
        "--rbr",
        fitted,
        "--out",
        tmp_path / "scored.jsonl",
        "--response-class",
        "refuse",
        *grader,
    )
    for name, path in (
        ("rbr_fit", fitted),
        ("rbr_eval", tmp_path / "eval.json"),
        ("rbr_score", tmp_path / "scored.jsonl"),
    ):
        tokens = stage(path.with_name(path.name + ".manifest.json"), name)["tokens"]
        assert tokens["calls"] > 0 and tokens["prompt_tokens"] > 0, name


def test_guard_synth_records_tokens(tiny_model_dir, tmp_path):
    out = tmp_path / "guard.jsonl"
    cai(
        "guard", "synth", "--model", tiny_model_dir, "--out", out, "--per-category", 1, "--no-cache"
    )
    tokens = stage(tmp_path / "guard.jsonl.manifest.json", "guard_synth")["tokens"]
    assert tokens["prompt_tokens"] > 0 and tokens["completion_tokens"] > 0


def test_self_play_records_self_judge_and_reference_tokens(
    tiny_model_dir, judge_dir, prompts, tmp_path
):
    out = tmp_path / "run"
    cai(
        "self-play",
        "--model",
        tiny_model_dir,
        "--reference-judge",
        judge_dir,
        "--out",
        out,
        "--prompts",
        prompts,
        "--iterations",
        1,
        "--limit",
        2,
        "--max-tokens",
        4,
        "--dpo-steps",
        1,
        "--batch-size",
        2,
        "--fewshot",
        0,
        "--eval-red-team",
        prompts,
        "--eval-helpful",
        prompts,
        "--eval-limit",
        1,
        "--eval-max-tokens",
        4,
        "--min-agreement",
        0,
        "--decode-batch",
        8,
    )
    label = stage(out / "iter-1" / "manifest.json", "label")
    assert label["tokens"]["prompt_tokens"] > 0  # the model samples and judges itself
    assert (
        label["reference"]["tokens"]["prompt_tokens"] > 0
    )  # the frozen reference judge only scores
    assert stage(out / "manifest.json", "self_play iter-1")["tokens"]["prompt_tokens"] > 0
    assert json.loads((out / "iter-1" / "metrics.json").read_text())["stopped"] is None
    assert (
        stage(out / "iter-1" / "manifest.json", "eval")["tokens"]["prompt_tokens"] > 0
    )  # the reference scored the new model
