"""`cai generate` end to end in a subprocess: resume after SIGKILL, determinism, bad input."""

from __future__ import annotations

import json
from pathlib import Path

from helpers import cai, run_and_kill, write_prompts


def gen_args(model, prompts, out, cache):
    return [
        "generate",
        "--model",
        model,
        "--prompts",
        prompts,
        "--out",
        out,
        "--cache",
        cache,
        "--batch-size",
        "2",
        "--max-tokens",
        "80",
        "--temperature",
        "0.9",
        "--seed",
        "3",
    ]


def test_sigkill_then_rerun_equals_uninterrupted_run(tmp_path, tiny_model_dir):
    prompts = write_prompts(tmp_path / "prompts.jsonl", 12)
    reference = tmp_path / "reference.jsonl"
    done = cai(*gen_args(tiny_model_dir, prompts, reference, tmp_path / "ref.sqlite"))
    assert done.returncode == 0, done.stderr

    out, cache = tmp_path / "out.jsonl", tmp_path / "run.sqlite"
    killed_at = run_and_kill(gen_args(tiny_model_dir, prompts, out, cache), cache, at_least=4)
    assert 4 <= killed_at < 12
    assert not out.exists(), "a killed run must not leave a partial output file"

    resumed = cai(*gen_args(tiny_model_dir, prompts, out, cache))
    assert resumed.returncode == 0, resumed.stderr
    assert out.read_text() == reference.read_text()
    tokens = json.loads(Path(f"{out}.manifest.json").read_text())["stages"]["generate"]["tokens"]
    assert tokens["cache_hits"] == killed_at and tokens["calls"] == 12


def test_same_seed_same_output_and_rows_keep_fields(tmp_path, tiny_model_dir):
    prompts = write_prompts(tmp_path / "p.jsonl", 3)
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    for out in (a, b):
        r = cai(
            "generate",
            "--model",
            tiny_model_dir,
            "--prompts",
            prompts,
            "--out",
            out,
            "--no-cache",
            "--max-tokens",
            "8",
            "--seed",
            "1",
        )
        assert r.returncode == 0, r.stderr
    assert a.read_text() == b.read_text()
    rows = [json.loads(line) for line in a.read_text().splitlines()]
    assert [r["id"] for r in rows] == ["p0", "p1", "p2"]
    assert all(r["completion_tokens"] == 8 and r["meta"]["artifact"] == "generations" for r in rows)


def _bad_inputs(tmp_path: Path):
    good = write_prompts(tmp_path / "good.jsonl", 2)
    bad_json = tmp_path / "bad.jsonl"
    bad_json.write_text('{"prompt": "ok"}\n{"prompt": \n')
    latin1 = tmp_path / "latin1.jsonl"
    latin1.write_bytes(b'{"prompt": "ok"}\n{"prompt": "caf\xe9"}\n')
    no_field = tmp_path / "nofield.jsonl"
    no_field.write_text('{"prompt": "ok"}\n\n{"text": "no prompt here"}\n')
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    return [
        (tmp_path / "missing.jsonl", None, "missing.jsonl: no such file"),
        (bad_json, None, "bad.jsonl:2: invalid JSON"),
        (latin1, None, "latin1.jsonl:2: not valid UTF-8"),
        (no_field, None, "nofield.jsonl:3: row has neither"),
        (empty, None, "empty.jsonl: no prompts"),
        (good, tmp_path / "no-such-model", "no-such-model: no such model"),
    ]


def test_bad_input_is_one_line_exit_2_and_no_output(tmp_path, tiny_model_dir):
    for prompts, model, expected in _bad_inputs(tmp_path):
        out = tmp_path / "out.jsonl"
        r = cai(
            "generate",
            "--prompts",
            prompts,
            "--out",
            out,
            "--no-cache",
            "--model",
            model or tiny_model_dir,
        )
        assert r.returncode == 2, (expected, r.stderr)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and expected in lines[0], (expected, r.stderr)
        assert not out.exists()
