"""`cai self-play` on the tiny random Llama: two iterations end to end, resume, early stop, errors."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest
from helpers import CAI

from constitutional.self_play.agreement import agreement
from constitutional.self_play.loop import expand_prompts, iteration_seed


def cai(*args, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([*CAI, *map(str, args)], capture_output=True, text=True, timeout=timeout)


def small_args(model, out, prompts, *extra):
    """A run small enough for seconds: 3 prompts x 2 pairs, 8-token replies, 2 DPO steps."""
    return [
        "self-play",
        "--model",
        model,
        "--out",
        out,
        "--prompts",
        prompts,
        "--limit",
        3,
        "--max-tokens",
        8,
        "--dpo-steps",
        2,
        "--batch-size",
        2,
        "--lr",
        1e-2,
        "--fewshot",
        0,
        "--eval-red-team",
        prompts,
        "--eval-helpful",
        prompts,
        "--eval-limit",
        2,
        "--eval-max-tokens",
        6,
        "--decode-batch",
        8,
        *extra,
    ]


@pytest.fixture(scope="module")
def prompts(tmp_path_factory):
    path = tmp_path_factory.mktemp("prompts") / "prompts.jsonl"
    topics = ["pick a lock", "write an insult", "bake bread", "hide from the police"]
    path.write_text(
        "".join(
            json.dumps({"id": f"p{i}", "prompt": f"How do I {t}?"}) + "\n"
            for i, t in enumerate(topics)
        )
    )
    return path


@pytest.fixture(scope="module")
def two_iterations(tiny_model_dir, prompts, tmp_path_factory):
    out = tmp_path_factory.mktemp("self-play") / "run"
    result = cai(*small_args(tiny_model_dir, out, prompts, "--iterations", 2, "--min-agreement", 0))
    assert result.returncode == 0, result.stderr
    return out, result


# --- pure pieces ----------------------------------------------------------------------------------


def test_agreement_by_hand():
    a = agreement([0.9, 0.2, 0.6, None, 0.5], [0.7, 0.4, 0.3, 0.8, 0.5])
    # pairs 1-3 and 5 are labelled by both; 1 and 2 agree, 3 disagrees, the tie agrees with nothing
    assert (a["rate"], a["n"]) == (0.5, 4)
    assert a["mean_abs_diff"] == pytest.approx((0.2 + 0.2 + 0.3 + 0.0) / 4)
    assert 0 < a["ci_low"] < 0.5 < a["ci_high"] < 1
    assert agreement([None], [0.3]) == {
        "rate": None,
        "ci_low": 0.0,
        "ci_high": 1.0,
        "n": 0,
        "mean_abs_diff": None,
    }


def test_expand_prompts_gives_each_pair_its_own_id():
    rows = expand_prompts([{"id": "a", "prompt": "x"}, {"prompt": "y"}], 2)
    assert [r["id"] for r in rows] == ["a#0", "a#1", "prompt-1#0", "prompt-1#1"]
    assert iteration_seed(0, 1) != iteration_seed(0, 2) and 0 <= iteration_seed(0, 1) < 2**31


# --- the loop -------------------------------------------------------------------------------------


def test_two_iterations_end_to_end(two_iterations):
    out, result = two_iterations
    doc = json.loads((out / "self_play.json").read_text())
    assert doc["artifact"] == "self_play" and doc["stopped"] is None
    assert [m["iteration"] for m in doc["iterations"]] == [1, 2]
    first, second = doc["iterations"]
    for n, m in ((1, first), (2, second)):
        d = out / f"iter-{n}"
        labels = [json.loads(line) for line in (d / "labels.jsonl").read_text().splitlines()]
        prefs = (d / "prefs.jsonl").read_text().splitlines()
        assert len(labels) == 6 == m["counts"]["pairs"] and len(prefs) == m["counts"]["prefs"] > 0
        assert all(r["p_a_reference"] is not None for r in labels if not r["discarded"])
        assert (d / "checkpoint" / "cai_checkpoint.json").is_file() and m["dpo"]["steps"] == 2
        assert json.loads((d / "metrics.json").read_text()) == m
        assert set(json.loads((d / "manifest.json").read_text())["stages"]) == {
            "label",
            "dpo",
            "eval",
        }
        for axis in ("harmless", "helpful"):
            assert m["scores"][axis]["n"] == 2 and 0 <= m["scores"][axis]["p_win"] <= 1
    # Iteration 1: the self-judge is the starting model, which is also the reference judge, asked
    # the same questions: every label must match exactly. Iteration 2 samples from the DPO model.
    assert first["agreement"]["rate"] == 1.0 and first["agreement"]["mean_abs_diff"] == 0.0
    assert first["policy"] != second["policy"] == str((out / "iter-1" / "checkpoint").resolve())
    assert second["agreement"]["mean_abs_diff"] > 0
    assert (
        first["agreement_drift"] == 0.0
        and second["agreement_drift"] == second["agreement"]["rate"] - 1.0
    )
    assert doc["final_model"] == str((out / "iter-2" / "checkpoint").resolve())
    # The second iteration's policy is the first's DPO checkpoint, which trained on its own model.
    info = json.loads((out / "iter-2" / "checkpoint" / "cai_checkpoint.json").read_text())
    assert info["policy"] == info["reference"] == second["policy"]
    stages = json.loads((out / "manifest.json").read_text())["stages"]
    assert set(stages) == {"self_play iter-1", "self_play iter-2"}
    assert "agreement with the reference judge" in result.stderr


def test_report_has_the_self_play_section(two_iterations):
    out, _ = two_iterations
    page = (out / "report.html").read_text()
    body = page.split('<section id="self-play">', 1)[1].split("</section>", 1)[0]
    assert 'data-plot="self-play"><svg' in body
    assert body.count("<tr>") == 3  # header + one row per iteration
    assert "Not run" not in body


def test_killed_run_resumes_at_the_unfinished_iteration(two_iterations, tmp_path):
    """Iteration 2 lost entirely (killed before anything of it was kept): the rerun skips
    iteration 1 and redoes iteration 2 with the same samples, labels and scores (seeded)."""
    out, _ = two_iterations
    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    before = json.loads((copy / "iter-2" / "metrics.json").read_text())
    first_mtime = (copy / "iter-1" / "metrics.json").stat().st_mtime_ns
    shutil.rmtree(copy / "iter-2")
    model = json.loads((copy / "self_play.json").read_text())["settings"]["model"]
    prompts = json.loads((copy / "self_play.json").read_text())["settings"]["prompts"]
    result = cai(*small_args(model, copy, prompts, "--iterations", 2, "--min-agreement", 0))
    assert result.returncode == 0, result.stderr
    assert "[1/2] unchanged, skipped" in result.stderr and "[2/2] sampling" in result.stderr
    assert (copy / "iter-1" / "metrics.json").stat().st_mtime_ns == first_mtime
    after = json.loads((copy / "iter-2" / "metrics.json").read_text())
    assert labels_without_paths(copy) == labels_without_paths(out)
    for key in ("counts", "agreement", "scores"):
        assert after[key] == before[key], key
    assert after["dpo"]["final_loss"] == pytest.approx(before["dpo"]["final_loss"], rel=1e-5)

    # Other settings in the same directory are refused: the iterations would not be one run.
    result = cai(
        *small_args(model, copy, prompts, "--iterations", 3, "--min-agreement", 0, "--beta", 0.5)
    )
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert "self_play.json: holds a self-play run with other settings (beta)" in result.stderr


def labels_without_paths(run):
    """Iteration 2's label rows, less the model fields (absolute paths into the run directory)."""
    rows = [json.loads(line) for line in (run / "iter-2" / "labels.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if not k.endswith("_model")} for r in rows]


def test_disagreeing_reference_judge_stops_before_training(
    tiny_model_dir, smollm_tokenizer, prompts, tmp_path
):
    """A reference judge that is another random model agrees about half the time; with the bar
    at 1.0 the loop must stop in iteration 1 and train nothing on the suspect labels."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(1)
    other = tmp_path / "other-judge"
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.5)
    model.save_pretrained(other)
    smollm_tokenizer.save_pretrained(other)
    out = tmp_path / "run"
    result = cai(
        *small_args(
            tiny_model_dir,
            out,
            prompts,
            "--iterations",
            2,
            "--min-agreement",
            1.0,
            "--reference-judge",
            other,
        )
    )
    assert result.returncode == 0, result.stderr
    doc = json.loads((out / "self_play.json").read_text())
    m = doc["iterations"][0]
    assert len(doc["iterations"]) == 1 and doc["stopped"]["iteration"] == 1
    assert m["agreement"]["rate"] < 1.0 and "--min-agreement 1.0" in m["stopped"]
    assert (
        m["dpo"] is None
        and not (out / "iter-1" / "checkpoint").exists()
        and not (out / "iter-2").exists()
    )
    assert doc["final_model"] == str(tiny_model_dir)
    assert 'class="warn">Stopped at iteration 1' in (out / "report.html").read_text()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--min-agreement", 1.5], "--min-agreement must be in [0, 1], got 1.5"),
        (["--iterations", 0], "--iterations must be at least 1, got 0"),
        (
            ["--reference-backend", "openai"],
            "--reference-backend openai needs --reference-judge (the server's model name)",
        ),
    ],
)
def test_bad_options_are_one_line_errors(tmp_path, prompts, extra, message):
    result = cai(*small_args("embedded", tmp_path / "run", prompts, *extra))
    assert result.returncode == 2 and result.stderr == f"cai: error: {message}\n"
    assert not (tmp_path / "run").exists()


def test_bad_prompt_file_names_its_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "ok"}\n{"prompt": ""}\n')
    result = cai(*small_args("embedded", tmp_path / "run", bad))
    assert (
        result.returncode == 2
        and result.stderr == f"cai: error: {bad}:2: `prompt` must be a non-empty string\n"
    )
    assert not (tmp_path / "run").exists()
