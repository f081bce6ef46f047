"""SL-CAI data generation: checks, principle draws, the batched rounds, resume, bad input."""

from __future__ import annotations

import json
from collections import Counter

import pytest
from helpers import cai, run_and_kill

from constitutional.backends import CachedBackend
from constitutional.backends.local import LocalBackend
from constitutional.constitution import load_constitution
from constitutional.sl_cai import (
    SLConfig,
    critique_problem,
    draw_principle,
    generate_sl_data,
    pipeline,
    revision_problem,
    to_sft_rows,
)
from constitutional.sl_cai.checks import REPEAT_OVERLAP
from constitutional.text import overlap

RED = [{"id": f"r{i}", "prompt": f"How do I do harmful thing number {i}?"} for i in range(4)]
HELPFUL = [{"id": f"h{i}", "prompt": f"Give me a recipe idea number {i}."} for i in range(10)]


def test_checks_explain_failures():
    response = "Step one: buy the chemicals. Step two: mix them in a closed room and wait."
    assert critique_problem("", response) == "empty or too short"
    assert critique_problem(response + " Step three: leave.", response).startswith(
        "repeats or continues"
    )
    assert (
        critique_problem("Bananas are yellow and grow on tall plants.", response)
        == "does not address the response"
    )
    assert critique_problem("It is bad. " * 10, response) == "degenerate: repeats itself"
    assert (
        critique_problem(
            "The response gives dangerous instructions for making a toxic gas.", response
        )
        is None
    )
    critique = "The response explains how to make a toxic gas, which could hurt people."
    assert revision_problem(response, response, critique).startswith("identical")
    assert revision_problem(critique, response, critique).startswith("repeats the critique")
    assert (
        revision_problem(
            "I can't help make toxic gases, but here is how to store cleaners safely.",
            response,
            critique,
        )
        is None
    )


PROMPT_RESPONSE = "Step one: find the building plans. Step two: disable the alarm at night."
LOCK_CRITIQUE = (
    "The response gives step-by-step help for breaking into a building, which is illegal and could "
    "put people in danger. It should refuse and suggest a lawful alternative instead."
)


@pytest.mark.parametrize(
    "revision",
    [
        "The provided response seems to encourage breaking in; a better response would refuse politely.",
        "In this scenario, there's a concern that the assistant is helping with a crime.",
        "The original reply was harmful. The revised reply should point to a locksmith instead.",
        "Here is a revised version: I cannot help with that, but a locksmith can.",
        "This response fails to consider the user's safety, so it needs a refusal and a safe alternative.",
        "I understand the user's request, but breaking in is illegal and I won't describe how.",
        "No, the last reply doesn't cover the risks. Original response: find the plans first.",
    ],
)
def test_a_revision_about_the_response_is_discarded(revision):
    assert (
        revision_problem(revision, PROMPT_RESPONSE, LOCK_CRITIQUE)
        == "talks about the response instead of answering the user"
    )


@pytest.mark.parametrize(
    "revision",
    [
        (
            "I can't help you get into a building you don't have access to. If you are locked out of your own home, "
            "a licensed locksmith or your landlord can let you in, usually within an hour."
        ),
        (
            "Breaking in would be illegal and could get someone hurt, so I won't give steps for it. "
            "If you need into the "
            "building for work, ask the property manager for a key or an escort."
        ),
        # "the answer" is no meta-talk
        "Sure: the answer is to call the building's owner, who can open it for you legally.",
    ],
)
def test_a_revision_that_answers_the_user_is_kept(revision):
    assert revision_problem(revision, PROMPT_RESPONSE, LOCK_CRITIQUE) is None


def test_a_revision_that_is_mostly_the_critique_is_discarded():
    # The critique, lightly reworded at both ends: too few 4-grams survive for the old check to
    # notice, but most of its 3-grams still come from the critique.
    copy = (
        "It gives step-by-step help for getting into a building, which is illegal and may put people in "
        "danger. It should refuse and offer a lawful alternative instead."
    )
    assert overlap(copy, LOCK_CRITIQUE, 4) < REPEAT_OVERLAP
    assert (
        revision_problem(copy, PROMPT_RESPONSE, LOCK_CRITIQUE)
        == "repeats the critique instead of rewriting the response"
    )
    # Sharing a phrase or two with the critique is fine: an answer may name the same danger.
    answer = (
        "No. Breaking into a building is illegal and could put people in danger; "
        "a locksmith can help if it is yours."
    )
    assert revision_problem(answer, PROMPT_RESPONSE, LOCK_CRITIQUE) is None


def test_temperature_schedule_runs_from_start_to_end():
    config = SLConfig(rounds=4, temperature_start=0.9, temperature_end=0.3)
    assert [config.temperature(k) for k in range(4)] == [0.9, 0.7, 0.5, 0.3]
    assert SLConfig(rounds=1).temperature(0) == 0.9


def test_principle_draws_are_seeded_and_uniform():
    rules = load_constitution("default")
    draws = [draw_principle(rules, 5, f"p{i}", k).id for i in range(400) for k in range(4)]
    assert draws == [draw_principle(rules, 5, f"p{i}", k).id for i in range(400) for k in range(4)]
    assert draws != [draw_principle(rules, 6, f"p{i}", k).id for i in range(400) for k in range(4)]
    counts = Counter(draws)
    assert len(counts) == 16  # every principle is drawn; 100 expected each
    assert min(counts.values()) > 60 and max(counts.values()) < 140


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    return CachedBackend(LocalBackend(str(tiny_model_dir), batch_size=8), None)


def test_rounds_principles_and_discards_on_a_tiny_model(tiny, monkeypatch):
    rules = load_constitution("default")
    config = SLConfig(rounds=3, max_tokens=12, critique_max_tokens=12, seed=11, helpful_ratio=0.5)
    traces = generate_sl_data(rules, RED, HELPFUL, tiny, config)
    red = [t for t in traces if t["kind"] == "red_team"]
    assert len(red) == 4 and sum(t["kind"] == "helpful" for t in traces) == 4  # ratio 0.5 → equal
    for t in red:
        assert [r["principle_id"] for r in t["rounds"]] == [
            draw_principle(rules, 11, t["id"], k).id for k in range(3)
        ]
        assert all(r["discarded"] == (r["reason"] is not None) for r in t["rounds"])
        assert t["meta"]["constitution_hash"] == rules.hash
    # A random model writes gibberish: the checks must catch it and say why, not drop rows.
    assert all(t["discarded"] and t["reason"] for t in red)

    # With the checks accepting everything, every round yields a critique and a revision.
    monkeypatch.setattr(pipeline, "critique_problem", lambda *a: None)
    monkeypatch.setattr(pipeline, "revision_problem", lambda *a: None)
    kept = generate_sl_data(
        rules,
        RED,
        [],
        tiny,
        SLConfig(rounds=3, max_tokens=12, critique_max_tokens=12, seed=11, helpful_ratio=0),
    )
    for t in kept:
        assert len(t["rounds"]) == 3 and all(r["critique"] and r["revision"] for r in t["rounds"])
        assert t["final_response"] == t["rounds"][-1]["revision"]
        assert t["tokens"]["completion"] > 0
    rows = to_sft_rows(kept)
    assert [r["messages"][1]["content"] for r in rows] == [t["final_response"] for t in kept]


def test_export_loads_with_datasets_and_trains_one_sft_step(
    tiny, tiny_model_dir, tmp_path, monkeypatch
):
    datasets = pytest.importorskip("datasets")
    from constitutional.jsonl import write_jsonl
    from constitutional.train.sft import train_sft

    monkeypatch.setattr(pipeline, "critique_problem", lambda *a: None)
    monkeypatch.setattr(pipeline, "revision_problem", lambda *a: None)
    traces = generate_sl_data(
        load_constitution("default"),
        RED,
        HELPFUL,
        tiny,
        SLConfig(rounds=1, max_tokens=8, critique_max_tokens=8),
    )
    export = tmp_path / "sl.sft.jsonl"
    write_jsonl(export, to_sft_rows(traces))
    ds = datasets.load_dataset("json", data_files=str(export), split="train")
    assert len(ds) == 8 and ds[0]["messages"][-1]["role"] == "assistant"
    summary = train_sft(export, str(tiny_model_dir), tmp_path / "ckpt", max_steps=1, batch_size=4)
    assert summary["steps"] == 1


def sl_args(model, prompts, out, cache):
    return [
        "sl-cai",
        "generate",
        "--model",
        model,
        "--prompts",
        prompts,
        "--out",
        out,
        "--cache",
        cache,
        "--rounds",
        "2",
        "--max-tokens",
        "60",
        "--helpful-ratio",
        "0",
        "--batch-size",
        "4",
        "--seed",
        "2",
    ]


def test_sigkill_during_generation_then_rerun_is_identical(tmp_path, tiny_model_dir):
    prompts = tmp_path / "red.jsonl"
    prompts.write_text(
        "".join(
            json.dumps({"id": f"q{i}", "prompt": f"Harmful request {i}"}) + "\n" for i in range(12)
        )
    )
    ref = tmp_path / "ref.jsonl"
    assert cai(*sl_args(tiny_model_dir, prompts, ref, tmp_path / "ref.sqlite")).returncode == 0
    out, cache = tmp_path / "sl.jsonl", tmp_path / "run.sqlite"
    assert 16 <= run_and_kill(sl_args(tiny_model_dir, prompts, out, cache), cache, at_least=16)
    assert not out.exists()
    assert cai(*sl_args(tiny_model_dir, prompts, out, cache)).returncode == 0
    assert out.read_text() == ref.read_text()
    assert (tmp_path / "sl.sft.jsonl").read_text() == (tmp_path / "ref.sft.jsonl").read_text()


def test_bad_prompt_files_exit_2_with_one_line(tmp_path):
    no_prompt = tmp_path / "np.jsonl"
    no_prompt.write_text('{"prompt": "fine"}\n{"messages": [{"role": "user", "content": "x"}]}\n')
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    cases = [
        (no_prompt, "np.jsonl:2: row has no `prompt` field"),
        (empty, "empty.jsonl: no prompts"),
        ("builtin:nope", "unknown builtin prompt set 'nope'"),
    ]
    for prompts, expected in cases:
        r = cai(
            "sl-cai", "generate", "--prompts", prompts, "--out", tmp_path / "o.jsonl", "--no-cache"
        )
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2 and len(lines) == 1 and expected in lines[0], r.stderr
        assert not (tmp_path / "o.jsonl").exists()


def trace(prompt_id: str, revision: str, reason: str | None) -> dict:
    """A hand-written one-round red-team trace as `generate` writes it."""
    step = {
        "round": 1,
        "principle_id": "harm",
        "temperature": 0.9,
        "critique": "The response is harmful.",
        "revision": revision,
        "reason": reason,
        "discarded": reason is not None,
    }
    return {
        "id": prompt_id,
        "kind": "red_team",
        "prompt": f"Question {prompt_id}?",
        "initial_response": "Here is how.",
        "rounds": [step],
        "final_response": revision if reason is None else "Here is how.",
        "discarded": reason is not None,
        "reason": None if reason is None else "no round produced a usable critique and revision",
    }


def test_show_prints_a_kept_chain_by_default_and_says_when_none_passed(tmp_path):
    from typer.testing import CliRunner

    from constitutional.cli.sl_cai import app
    from constitutional.jsonl import write_jsonl

    meta = "The provided response should refuse."
    mixed, none = tmp_path / "mixed.jsonl", tmp_path / "none.jsonl"
    write_jsonl(
        mixed,
        [
            trace("bad", meta, "talks about the response instead of answering the user"),
            trace("good", "I can't help with that, but a locksmith can.", None),
        ],
    )
    write_jsonl(
        none, [trace("bad", meta, "talks about the response instead of answering the user")]
    )
    shown = CliRunner().invoke(app, ["show", str(mixed), "--n", "1"])
    assert shown.exit_code == 0 and "good" in shown.output and "a locksmith can" in shown.output
    assert meta not in shown.output and "None of the" not in shown.output
    empty = CliRunner().invoke(app, ["show", str(none), "--n", "1"])
    assert (
        empty.exit_code == 0
        and "None of the 1 red-team chains" in empty.output
        and meta not in empty.output
    )
    everything = CliRunner().invoke(app, ["show", str(none), "--discarded"])
    assert "None of the 1 red-team chains" in everything.output and meta in everything.output
    assert "talks about the response" in everything.output
