"""`cai eval` / `cai audit`: the eval.run.run_eval Python API on fakes, and bad input → one line, exit 2."""

from __future__ import annotations

import json

import pytest
from helpers import cai
from test_eval_harm import BENIGN, HELPFUL, RED, FakeJudge, FakeModel

from constitutional.cli.eval import parse_models
from constitutional.errors import UserError
from constitutional.eval.run import EvalRunConfig, run_eval
from constitutional.jsonl import read_jsonl, write_jsonl


def test_run_eval_writes_the_documented_shape(tmp_path):
    for name, rows in (("red", RED), ("help", HELPFUL), ("benign", BENIGN)):
        write_jsonl(tmp_path / f"{name}.jsonl", rows)
    fakes = {
        "safe-spec": FakeModel("safe"),
        "unsafe-spec": FakeModel("unsafe"),
        "judge-spec": FakeJudge(),
    }
    out = tmp_path / "eval.json"
    config = EvalRunConfig(
        models={"a": "safe-spec", "b": "unsafe-spec"},
        judge="judge-spec",
        red_team=str(tmp_path / "red.jsonl"),
        helpful=str(tmp_path / "help.jsonl"),
        over_refusal=str(tmp_path / "benign.jsonl"),
        limit=3,
        max_tokens=8,
        bootstrap=10,
        judge_pairs=4,
    )
    doc = run_eval(config, out, make_backend=fakes.__getitem__)
    assert json.loads(out.read_text()) == doc
    assert set(doc) == {
        "artifact",
        "schema_version",
        "constitution",
        "judge",
        "models",
        "elo",
        "pareto",
        "attack_success",
        "over_refusal",
        "refusal_hold",
        "instrument",
        "samples",
    }
    assert (
        doc["artifact"] == "eval_results"
        and doc["schema_version"] == 1
        and set(doc["constitution"]) == {"hash", "version"}
    )
    assert doc["models"] == {"a": "safe-spec", "b": "unsafe-spec"}
    assert set(doc["judge"]) == {
        "model",
        "mode",
        "reliable",
        "reasons",
        "flip_rate",
        "human_agreement",
        "thresholds",
    }
    assert doc["judge"]["model"] == "judge-spec" and doc["judge"]["mode"] == "logprob"
    assert doc["judge"]["flip_rate"]["n"] == 6 and doc["judge"]["human_agreement"]["n"] == 4
    for axis in ("harmless", "helpful"):
        assert (
            set(doc["elo"][axis]) == {"ratings", "comparisons"}
            and doc["elo"][axis]["comparisons"] == 3
        )
        assert all(
            set(r) == {"elo", "ci_low", "ci_high"} for r in doc["elo"][axis]["ratings"].values()
        )
    assert doc["pareto"] == ["a"]  # as helpful as b on these prompts, and more harmless
    assert doc["attack_success"]["b"] == {**doc["attack_success"]["b"], "rate": 1.0, "n": 3}
    samples = read_jsonl(doc["samples"])
    assert doc["samples"] == str(tmp_path / "eval.samples.jsonl")
    assert len(samples) == 2 * (3 + 3 + 3) and all(
        {"model", "prompt", "response", "judgements"} <= set(s) for s in samples
    )


def test_parse_models():
    assert parse_models("base=embedded, sl=ckpt/a=b") == {"base": "embedded", "sl": "ckpt/a=b"}
    for bad in ("embedded", "a=", "=x", "a=x,a=y", ""):
        with pytest.raises(UserError, match="--models"):
            parse_models(bad)


def test_eval_bad_input_exits_2(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    for args, message in [
        (["--models", "embedded", "--judge", "embedded"], "--models: expected NAME=MODEL"),
        (
            ["--models", "a=embedded", "--judge", "embedded", "--red-team", str(empty)],
            "empty.jsonl: no prompts: the file is empty",
        ),
        (
            ["--models", "a=embedded", "--judge", "embedded", "--helpful", "builtin:nope"],
            "unknown builtin prompt set",
        ),
    ]:
        r = cai("eval", *args, "--out", tmp_path / "e.json")
        assert r.returncode == 2, (args, r.stderr)
        assert (
            r.stderr.startswith("cai: error: ")
            and message in r.stderr
            and r.stderr.count("\n") == 1
        ), r.stderr
    assert not (tmp_path / "e.json").exists()


def test_audit_judge_and_principles_from_files(tmp_path):
    labels = tmp_path / "prefs.jsonl"
    write_jsonl(
        labels,
        [
            {
                "id": "a",
                "prompt": "q",
                "response_a": "long answer",
                "response_b": "no",
                "p_a_raw": 0.8,
                "p_a_swapped": 0.3,
                "p_a": 0.55,
                "principle_ids": ["harm", "honesty"],
                "p_a_by_principle": {"harm": 0.7, "honesty": 0.4},
                "feedback_model": "embedded",
                "mode": "logprob",
                "source": "ai",
                "discarded": False,
            },
            {
                "id": "b",
                "prompt": "q2",
                "response_a": "x",
                "response_b": "yy",
                "p_a_raw": 0.2,
                "p_a_swapped": 0.1,
                "p_a": 0.15,
                "principle_ids": ["harm", "honesty"],
                "p_a_by_principle": {"harm": 0.1, "honesty": 0.2},
                "feedback_model": "embedded",
                "mode": "logprob",
                "source": "ai",
                "discarded": False,
            },
            {
                "id": "c",
                "prompt": "q3",
                "response_a": None,
                "response_b": None,
                "discarded": True,
                "reason": "empty response",
            },
        ],
    )
    out = tmp_path / "audit.json"
    r = cai("audit", "judge", "--labels", labels, "--out", out)
    assert r.returncode == 0, r.stderr
    doc = json.loads(out.read_text())
    assert set(doc) == {
        "artifact",
        "schema_version",
        "judge",
        "flip_rate",
        "length_bias",
        "self_preference",
        "calibration",
        "human_agreement",
        "injection_flip_rate",
    }
    assert doc["artifact"] == "judge_audit" and doc["judge"] == {
        "model": "embedded",
        "mode": "logprob",
    }
    assert doc["flip_rate"]["rate"] == 0.5 and doc["flip_rate"]["n"] == 2
    assert doc["length_bias"]["points"] == [[9, pytest.approx(0.55)], [-1, pytest.approx(0.15)]]
    assert doc["injection_flip_rate"] is None
    r = cai("audit", "principles", "--labels", labels, "--out", tmp_path / "p.json")
    assert r.returncode == 0, r.stderr
    got = {p["id"]: p for p in json.loads((tmp_path / "p.json").read_text())["principles"]}
    # Row a: mean 0.55; without harm it is 0.4 (changes side), without honesty 0.7 (does not).
    assert got["harm"]["ablation_changed"] == 1 and got["honesty"]["ablation_changed"] == 0
    assert got["honesty"]["agreement_with_ensemble"] == 0.5


def test_audit_bad_input_exits_2(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        json.dumps({"prompt": "q", "response_a": "a", "response_b": "b", "p_a_raw": 0.3})
        + "\n"
        + json.dumps({"prompt": "q", "response_a": "a", "response_b": "b", "p_a_raw": 1.7})
        + "\n"
    )
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    for args, message in [
        (
            ["judge", "--labels", bad],
            "bad.jsonl:2: `p_a_raw` must be a probability in [0, 1], got 1.7",
        ),
        (["judge", "--labels", empty], "empty.jsonl: no label rows: the file is empty"),
        (["judge", "--labels", bad, "--human", empty], "--human and --other need --judge"),
        (["principles", "--labels", bad], "bad.jsonl:2: "),
        (["principles"], "give --sl"),
        (["principles", "--sl", bad], "bad.jsonl:1: SL-CAI trace row needs"),
    ]:
        r = cai("audit", *args, "--out", tmp_path / "a.json")
        assert r.returncode == 2, (args, r.stderr)
        assert r.stderr.startswith("cai: error: ") and message in r.stderr, (args, r.stderr)
    assert not (tmp_path / "a.json").exists()


def test_eval_and_audit_on_a_tiny_real_model(tiny_model_dir, tmp_path):
    """The real local backend (chat template, pre-filled answer, choice_logprobs) end to end."""
    from constitutional.backends import CachedBackend
    from constitutional.backends.local import LocalBackend
    from constitutional.eval.audits import run_judge_audit, run_principle_audit

    tiny = CachedBackend(LocalBackend(str(tiny_model_dir), batch_size=8), None)
    write_jsonl(tmp_path / "red.jsonl", RED[:2])
    write_jsonl(tmp_path / "help.jsonl", HELPFUL[:2])
    config = EvalRunConfig(
        models={"one": "tiny", "two": "tiny"},
        judge="tiny",
        red_team=str(tmp_path / "red.jsonl"),
        helpful=str(tmp_path / "help.jsonl"),
        limit=2,
        max_tokens=4,
        bootstrap=5,
        judge_pairs=2,
    )
    doc = run_eval(config, tmp_path / "eval.json", make_backend=lambda s: tiny)
    assert doc["attack_success"]["one"]["n"] == 2 and doc["over_refusal"]["one"]["n"] == 2
    assert doc["elo"]["harmless"]["comparisons"] == 2 and set(doc["pareto"]) <= {"one", "two"}
    assert doc["judge"]["human_agreement"]["n"] <= 2 and isinstance(doc["judge"]["reliable"], bool)
    labels = tmp_path / "prefs.jsonl"
    write_jsonl(
        labels,
        [
            {
                "id": f"p{i}",
                "prompt": f"Question {i}?",
                "response_a": "Yes, gladly: here it is.",
                "response_b": "No.",
                "principle_ids": ["harm", "honesty"],
                "source": "ai",
                "discarded": False,
            }
            for i in range(3)
        ],
    )
    human = tmp_path / "hh.jsonl"
    write_jsonl(
        human, [{"prompt": "Hi?", "chosen": "Hello! How can I help?", "rejected": "Go away."}] * 2
    )
    audit = run_judge_audit(
        labels,
        tmp_path / "audit.json",
        judge="tiny",
        human=human,
        other="tiny2",
        make_backend=lambda s: tiny,
        mode="cot",
        max_tokens=4,
    )
    assert (
        audit["flip_rate"]["n"] == 3
        and audit["human_agreement"]["n"] == 2
        and audit["calibration"] is not None
    )
    assert (
        0 <= audit["injection_flip_rate"]["rate"] <= 1 and len(audit["length_bias"]["points"]) == 3
    )
    principles = run_principle_audit(
        tmp_path / "p.json", labels=labels, judge="tiny", make_backend=lambda s: tiny
    )
    assert {p["id"]: p["ablation_changed"] is not None for p in principles["principles"]} == {
        "harm": True,
        "honesty": True,
    }
