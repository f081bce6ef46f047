"""SIGKILL mid-stage, then rerun: `rl-cai label`, `eval`, `guard synth` and `cai run`.

Each test runs the command once uninterrupted (in this process, with its own cache) as the
reference; then starts it in a subprocess, kills it with SIGKILL once the response cache holds
some results, checks that no output (or temp file) was left behind, reruns it to completion and
checks that the artifacts equal the reference byte for byte and that the cache was reused.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers import CAI, cached_rows, cai, run_and_kill
from typer.testing import CliRunner

# One torch thread: a tiny model gains nothing from a second one on a shared machine, and the
# in-process reference and the subprocesses then compute under the same settings.
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True)
def single_thread_children(monkeypatch):
    """`cai --threads 1` for the subprocesses and the in-process reference alike."""
    monkeypatch.setenv("CAI_THREADS", "1")


def reference(*args) -> None:
    """Run `cai ARGS` to completion in this process (saves a subprocess's ~4 s of imports)."""
    from constitutional.cli import app

    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output


def finish(*args) -> None:
    done = cai(*args, timeout=300)
    assert done.returncode == 0, done.stderr


def assert_nothing_written(directory: Path, *outputs: Path) -> None:
    """After a kill: no output file at its final name and no temp file of an atomic write."""
    assert [p.name for p in outputs if p.exists()] == []
    assert list(directory.glob(".*.tmp")) == []


def assert_same_files(directory: Path, ref_directory: Path, *names: str) -> None:
    for name in names:
        assert (directory / name).read_bytes() == (ref_directory / name).read_bytes(), name


def tokens(manifest: Path, stage: str) -> dict:
    return json.loads(manifest.read_text())["stages"][stage]["tokens"]


def write_prompts(path: Path, n: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "".join(
            json.dumps({"id": f"q{i}", "prompt": f"How would someone do bad thing {i}?"}) + "\n"
            for i in range(n)
        )
    )
    return path


def label_args(model: Path, prompts: Path, out: Path) -> list:
    return [
        "rl-cai",
        "label",
        "--policy",
        model,
        "--feedback",
        model,
        "--prompts",
        prompts,
        "--out",
        out,
        "--cache",
        out.parent / "cache.sqlite",
        "--max-tokens",
        "24",
        "--batch-size",
        "4",
        "--fewshot",
        "0",
        "--swap-average",
        "--seed",
        "5",
    ]


def test_rl_cai_label_resumes_after_sigkill(tmp_path, tiny_model_dir):
    prompts = write_prompts(tmp_path / "prompts.jsonl", 10)
    ref, run = tmp_path / "ref", tmp_path / "run"
    reference(*label_args(tiny_model_dir, prompts, ref / "labels.jsonl"))

    out, cache = run / "labels.jsonl", run / "cache.sqlite"
    killed_at = run_and_kill(label_args(tiny_model_dir, prompts, out), cache, at_least=4)
    assert 4 <= killed_at < cached_rows(ref / "cache.sqlite")  # 20 samples, then 20 judgements
    assert_nothing_written(run, out, run / "labels.dpo.jsonl", run / "labels.jsonl.manifest.json")

    finish(*label_args(tiny_model_dir, prompts, out))
    assert_same_files(run, ref, "labels.jsonl", "labels.dpo.jsonl")
    used, clean = (
        tokens(run / "labels.jsonl.manifest.json", "rl_cai_label"),
        tokens(ref / "labels.jsonl.manifest.json", "rl_cai_label"),
    )
    assert used["calls"] == clean["calls"] and clean["cache_hits"] == 0
    assert used["cache_hits"] == killed_at  # every result stored before the kill, and only those


def eval_args(model: Path, out: Path) -> list:
    return [
        "eval",
        "--models",
        f"base={model}",
        "--judge",
        model,
        "--limit",
        "4",
        "--max-tokens",
        "16",
        "--bootstrap",
        "20",
        "--batch-size",
        "2",
        "--seed",
        "5",
        "--out",
        out,
        "--cache",
        out.parent / "cache.sqlite",
    ]


def test_eval_resumes_after_sigkill(tmp_path, tiny_model_dir):
    ref, run = tmp_path / "ref", tmp_path / "run"
    reference(*eval_args(tiny_model_dir, ref / "eval.json"))

    out, cache = run / "eval.json", run / "cache.sqlite"
    killed_at = run_and_kill(eval_args(tiny_model_dir, out), cache, at_least=3)
    assert killed_at >= 3 and killed_at < cached_rows(ref / "cache.sqlite")
    assert_nothing_written(run, out, run / "eval.samples.jsonl", run / "eval.json.manifest.json")

    finish(*eval_args(tiny_model_dir, out))
    # eval.json names its samples file by path: compare it with that one field set aside.
    doc, ref_doc = (json.loads((d / "eval.json").read_text()) for d in (run, ref))
    assert doc.pop("samples") == str(run / "eval.samples.jsonl") and ref_doc.pop("samples") == str(
        ref / "eval.samples.jsonl"
    )
    assert doc == ref_doc
    assert_same_files(run, ref, "eval.samples.jsonl")
    used, clean = (
        tokens(run / "eval.json.manifest.json", "eval"),
        tokens(ref / "eval.json.manifest.json", "eval"),
    )
    # The clean run may hit its own cache (the same greedy question asked twice); the resumed run
    # hits it once more for each result stored before the kill.
    assert used["calls"] == clean["calls"] and used["cache_hits"] == clean["cache_hits"] + killed_at


def synth_args(model: Path, out: Path) -> list:
    return [
        "guard",
        "synth",
        "--model",
        model,
        "--out",
        out,
        "--cache",
        out.parent / "cache.sqlite",
        "--per-category",
        "1",
        "--augment",
        "roleplay,obfuscate",
        "--batch-size",
        "7",
        "--seed",
        "5",
    ]


def test_guard_synth_resumes_after_sigkill(tmp_path, tiny_model_dir):
    ref, run = tmp_path / "ref", tmp_path / "run"
    reference(*synth_args(tiny_model_dir, ref / "guard.jsonl"))
    asked = cached_rows(ref / "cache.sqlite")

    out, cache = run / "guard.jsonl", run / "cache.sqlite"
    killed_at = run_and_kill(synth_args(tiny_model_dir, out), cache, at_least=4)
    assert 4 <= killed_at < asked
    assert_nothing_written(
        run, out, run / "guard.discards.jsonl", run / "guard.jsonl.manifest.json"
    )

    finish(*synth_args(tiny_model_dir, out))
    assert_same_files(run, ref, "guard.jsonl", "guard.discards.jsonl")
    # Both files have rows, so the comparison covers kept queries (and their augmentations) too.
    assert all((run / name).stat().st_size > 0 for name in ("guard.jsonl", "guard.discards.jsonl"))
    used = tokens(run / "guard.jsonl.manifest.json", "guard_synth")
    assert used["calls"] == asked and used["cache_hits"] == killed_at


def kill_when(args: list, ready: Callable[[], bool], timeout: float = 300) -> None:
    """Start `cai ARGS` and SIGKILL it as soon as `ready()` holds (polled every 10 ms)."""
    proc = subprocess.Popen(
        [*CAI, *map(str, args)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + timeout
        while not ready() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert proc.poll() is None, "the run finished before it could be killed halfway"
        assert ready(), f"not ready after {timeout} s"
    finally:
        proc.kill()  # SIGKILL
        proc.wait()


def recipe(tmp_path: Path, model: Path) -> Path:
    import yaml

    prompts = write_prompts(tmp_path / "label-prompts.jsonl", 8)
    path = tmp_path / "recipe.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "name": "kill",
                "seed": 5,
                "model": str(model),
                "backend": {"name": "local", "batch_size": 4},
                "stages": {
                    "sl_cai": {
                        "prompts": "builtin:advbench",
                        "limit": 3,
                        "rounds": 1,
                        "max_tokens": 12,
                        "fewshot": 0,
                        "helpful_ratio": 0,
                    },
                    "label": {
                        "prompts": str(prompts),
                        "max_tokens": 16,
                        "fewshot": 0,
                        "swap_average": False,
                    },
                },
            }
        )
    )
    return path


def manifest_has(path: Path, stage: str) -> bool:
    try:
        return stage in json.loads(path.read_text())["stages"]
    except (OSError, json.JSONDecodeError):  # not written yet (written atomically, so never torn)
        return False


def test_cai_run_resumes_the_killed_stage_and_skips_the_finished_one(tmp_path, tiny_model_dir):
    plan = recipe(tmp_path, tiny_model_dir)
    ref, run = tmp_path / "ref", tmp_path / "run"
    reference("run", plan, "--out", ref)

    cache, manifest = run / "responses.sqlite", run / "manifest.json"
    state = {"sl_rows": None}

    def label_started() -> bool:
        # Kill inside the label stage: once sl_cai is recorded, wait for 3 of label's results.
        if state["sl_rows"] is None and manifest_has(manifest, "sl_cai"):
            state["sl_rows"] = cached_rows(cache)
        return state["sl_rows"] is not None and cached_rows(cache) >= state["sl_rows"] + 3

    kill_when(["run", plan, "--out", run], label_started)
    killed_at, stages = cached_rows(cache), json.loads(manifest.read_text())["stages"]
    assert list(stages) == ["sl_cai"]
    assert_nothing_written(run, run / "labels.jsonl", run / "labels.dpo.jsonl", run / "report.html")

    rerun = cai("run", plan, "--out", run, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert "sl_cai: unchanged, skipped" in rerun.stderr
    assert_same_files(run, ref, "sl.jsonl", "sl.sft.jsonl", "labels.jsonl", "labels.dpo.jsonl")
    resumed, clean = (json.loads((d / "manifest.json").read_text())["stages"] for d in (run, ref))
    assert resumed["sl_cai"] == stages["sl_cai"]  # not rerun: its record is the killed run's
    used, sl = resumed["label"]["tokens"], clean["sl_cai"]["tokens"]
    sl_fresh = sl["calls"] - sl["cache_hits"]
    assert used["calls"] == clean["label"]["tokens"]["calls"]
    assert used["cache_hits"] == killed_at - sl_fresh  # the label results stored before the kill
