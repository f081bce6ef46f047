"""`cai run`: recipes validate with FILE:LINE errors, run every stage, and skip unchanged ones."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from helpers import cai

from constitutional.recipe import builtin_recipes, load_recipe
from constitutional.recipe.runner import run_recipe
from constitutional.report import render_report


def test_bundled_tiny_recipe_names_every_stage():
    tiny = load_recipe("tiny")
    assert [name for name, section in tiny.stages if section] == [
        "sl_cai",
        "sft",
        "label",
        "preference_model",
        "policy",
        "eval",
    ]
    assert set(builtin_recipes()) >= {"tiny", "full"}


GOOD = """\
name: t
seed: 1
model: embedded
stages:
  sl_cai:
    limit: 2
  sft:
    max_steps: 1
"""


@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        (GOOD + "  judge_everything: {}\n", 9, "unknown key 'judge_everything' in stages"),
        (GOOD.replace("seed: 1", "seed: one"), 2, "seed"),
        (GOOD.replace("model: embedded", "model: no/such/dir"), 3, "no such model"),
        (GOOD.replace("  sl_cai:\n    limit: 2\n", ""), 5, "sft trains on SL-CAI data"),
        (GOOD.replace("limit: 2", "limit: -3"), 6, "limit"),
        (
            GOOD.replace("stages:", "stages: [sl_cai]\nx:").split("\n  sl_cai")[0] + "\n",
            4,
            "stages",
        ),
    ],
    ids=[
        "unknown-stage",
        "wrong-type",
        "missing-model",
        "missing-upstream",
        "out-of-range",
        "not-a-mapping",
    ],
)
def test_bad_recipe_is_one_line_with_file_and_line(tmp_path, text, line, words):
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    result = cai("run", str(path), "--check")
    assert result.returncode == 2, result.stderr
    message = result.stderr.strip()
    assert message.startswith(f"cai: error: {path}:{line}:"), message
    assert words in message and len(message.splitlines()) == 1


def test_check_lists_the_stages_without_running(tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text(GOOD)
    result = cai("run", str(path), "--check", "--out", str(tmp_path / "run"))
    assert result.returncode == 0, result.stderr
    assert "sl_cai → sft" in result.stderr and not (tmp_path / "run").exists()


def _tiny_recipe(model_dir: Path, label_limit: int = 4) -> dict:
    return {
        "name": "unit",
        "seed": 3,
        "model": str(model_dir),
        "backend": {"name": "local", "batch_size": 8},
        "stages": {
            "sl_cai": {
                "prompts": "builtin:red_team_train",
                "limit": 2,
                "rounds": 1,
                "max_tokens": 8,
                "fewshot": 0,
                "helpful_ratio": 0.5,
            },
            "sft": {"max_steps": 1, "batch_size": 2},
            "label": {
                "prompts": "builtin:red_team_train",
                "limit": label_limit,
                "max_tokens": 8,
                "fewshot": 0,
            },
            "preference_model": {"max_steps": 1, "batch_size": 2, "eval_fraction": 0.0},
            "policy": {"method": "dpo", "max_steps": 1, "batch_size": 2},
            "eval": {"limit": 2, "max_tokens": 8, "judge_pairs": 4},
        },
    }


def _load(tmp_path: Path, data: dict):
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(data))
    return load_recipe(path)


def _mtimes(run_dir: Path) -> dict[str, int]:
    return {
        p.name: p.stat().st_mtime_ns
        for p in run_dir.iterdir()
        if p.name not in ("manifest.json", "report.html")
    }


def test_run_writes_every_artifact_then_skips_what_is_unchanged(tmp_path, tiny_model_dir):
    run_dir, said = tmp_path / "run", []
    data = run_recipe(_load(tmp_path, _tiny_recipe(tiny_model_dir)), run_dir, say=said.append)

    for name in ("sl.jsonl", "sl.sft.jsonl", "labels.jsonl", "labels.dpo.jsonl"):
        assert (run_dir / name).stat().st_size > 0, name
    page = render_report(run_dir).read_text()  # `cai run` renders it after the stages
    assert "SL-CAI critiques and revisions" in page and "Pareto" in page and "Not run" not in page
    for ckpt in ("sl-ckpt", "pm", "rl-ckpt"):
        assert (run_dir / ckpt / "cai_checkpoint.json").is_file(), ckpt
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest == data
    assert list(manifest["stages"]) == [
        "sl_cai",
        "sft",
        "label",
        "preference_model",
        "policy",
        "eval",
    ]
    # Every model the run made is evaluated, beside the base model told the constitution (the
    # system-prompt baseline); the judge and the principles are audited.
    results = json.loads((run_dir / "eval.json").read_text())
    assert results["models"]["base+constitution"] == f"{tiny_model_dir}+constitution"
    assert (
        set(results["models"]) == {"base", "base+constitution", "sl", "rl"}
        and results["attack_success"]["rl"]["n"] == 2
    )
    assert (run_dir / "revisions.json").is_file()  # the revisions curve, read from the traces
    assert (
        results["instrument"]["harmful_compliance"]["rl"]["n"] == 2
        and results["judge"]["human_agreement"]["n"] == 4
    )
    gate = manifest["stages"]["eval"]["judge"]
    assert gate == {
        "reliable": results["judge"]["reliable"],
        "reasons": results["judge"]["reasons"],
    }
    audit = json.loads((run_dir / "audit.json").read_text())
    assert audit["injection_flip_rate"]["n"] > 0 and audit["self_preference"] is not None
    drawn = {
        p["id"]
        for p in json.loads((run_dir / "principles.json").read_text())["principles"]
        if p["draws"]
    }
    assert drawn >= {
        r["principle_id"]
        for t in map(json.loads, (run_dir / "sl.jsonl").open())
        for r in t["rounds"]
    }
    assert manifest["recipe"]["seed"] == 3 and len(manifest["recipe"]["constitution"]["hash"]) > 8
    stages = manifest["stages"]
    assert stages["sl_cai"]["tokens"]["completion_tokens"] > 0
    # Tokens are per stage: the label stage's feedback reads are its own, the samples are the SL model's.
    assert (
        stages["label"]["tokens"]["calls"] > 0
        and stages["label"]["tokens"]["completion_tokens"] == 0
    )
    assert stages["label"]["policy"]["tokens"]["completion_tokens"] > 0
    assert all("inputs_key" in s and s["wall_seconds"] >= 0 for s in manifest["stages"].values())
    # The policy trained from the SFT checkpoint, not the base model.
    rl = json.loads((run_dir / "rl-ckpt" / "cai_checkpoint.json").read_text())
    assert "sl-ckpt" in json.dumps(rl)

    # Same recipe again: nothing reruns, nothing is rewritten.
    before, said = _mtimes(run_dir), []
    run_recipe(_load(tmp_path, _tiny_recipe(tiny_model_dir)), run_dir, say=said.append)
    assert (
        all("skipped" in line for line in said) and len(said) == 6
    )  # `cai run` renders the report
    assert _mtimes(run_dir) == before

    # A changed label stage reruns it and what depends on it; earlier stages stay.
    said = []
    run_recipe(
        _load(tmp_path, _tiny_recipe(tiny_model_dir, label_limit=3)), run_dir, say=said.append
    )
    skipped = [line.split()[1].rstrip(":") for line in said if "skipped" in line]
    assert skipped == ["sl_cai", "sft"]
    assert _mtimes(run_dir)["sl.jsonl"] == before["sl.jsonl"]
    assert _mtimes(run_dir)["labels.jsonl"] != before["labels.jsonl"]
    assert sum(1 for _ in (run_dir / "labels.jsonl").open()) == 3


def test_eval_section_gate_defaults_are_the_eval_settings():
    """The recipe's judge-gate knobs take their defaults from `cai eval`'s one declaration."""
    from constitutional.eval.run import EvalRunConfig
    from constitutional.recipe.schema import EvalSection

    section, settings = EvalSection(), EvalRunConfig()
    # (red_team differs on purpose: a recipe evaluates on builtin:red_team_eval, held out from training.)
    for name in ("judge_pairs", "max_flip_rate", "min_human_agreement", "helpful", "over_refusal"):
        assert getattr(section, name) == getattr(settings, name), name
