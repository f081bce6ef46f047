"""The static HTML report: every section from a synthetic run, escaping, and a real browser.

The run directory is made up here with tiny numbers; the page is checked twice: as text (each
section, chart and table present, hostile strings escaped) and in headless Chromium (charts and
tables visible, no console or page error, no request but the file itself).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
from helpers import headless_chromium

from constitutional.errors import UserError
from constitutional.report import render_report

HOSTILE = '<script>window.__pwned = 1</script><img src=x onerror="window.__pwned = 2">'
MODELS = ("base", "sl-cai", "rl-cai")


def rate(value: float, n: int = 40) -> dict:
    return {
        "rate": value,
        "ci_low": max(0.0, value - 0.1),
        "ci_high": min(1.0, value + 0.1),
        "n": n,
    }


def wide(k: int, n: int) -> dict:
    """A real Wilson rate of k in n; with n this small its interval is wider than ±20 points."""
    from constitutional.stats import rate as wilson_rate

    return wilson_rate([True] * k + [False] * (n - k))


def elo(value: float) -> dict:
    return {"elo": value, "ci_low": value - 30, "ci_high": value + 30}


def manifest() -> dict:
    stage = {
        "finished": 1.0,
        "wall_seconds": 82.5,
        "backend": {"name": "local", "model": "embedded"},
        "tokens": {"calls": 16, "cache_hits": 2, "prompt_tokens": 8065, "completion_tokens": 1420},
        "seed": 7,
        "constitution": {"hash": "ab" * 32, "version": "1.0.0"},
    }
    label = {**stage, "wall_seconds": 3725.0, "seed": 11}
    return {
        "schema": "cai.manifest/1",
        "created": 0.0,
        "stages": {"sl_cai_generate": stage, "rl_cai_label": label},
        "packages": {"constitutional": "0.1.0", "torch": "2.13.0"},
    }


def eval_results() -> dict:
    return {
        "artifact": "eval_results",
        "schema_version": 1,
        "constitution": {"hash": "ab" * 32, "version": "1.0.0"},
        "judge": {
            "model": "judge-model",
            "mode": "logprob",
            "reliable": False,
            "reasons": ["position flip rate 83% (n=6) is above 25%"],
            "flip_rate": wide(5, 6),
            "human_agreement": rate(0.9, 64),
            "thresholds": {"max_flip_rate": 0.25, "min_human_agreement": 0.55},
        },
        "models": {"base": "embedded", "sl-cai": {"path": "sl-ckpt"}, "rl-cai": "rl-ckpt"},
        "elo": {
            "harmless": {
                "ratings": {"base": elo(940), "sl-cai": elo(1010), "rl-cai": elo(1050)},
                "comparisons": 120,
            },
            "helpful": {
                "ratings": {"base": elo(1040), "sl-cai": elo(990), "rl-cai": elo(1000)},
                "comparisons": 120,
            },
        },
        "pareto": ["base", "rl-cai"],
        "attack_success": {"base": rate(0.6), "sl-cai": rate(0.3), "rl-cai": rate(0.15)},
        "over_refusal": {"base": rate(0.05), "sl-cai": rate(0.2), "rl-cai": rate(0.1)},
        "refusal_hold": {
            "base": {"rate": None, "ci_low": 0.0, "ci_high": 1.0, "n": 0},  # nothing to hold
            "sl-cai": rate(0.7, 20),
            "rl-cai": rate(0.9, 20),
        },
        "instrument": {
            "card": {
                "name": "refusal-instrument",
                "version": "1",
                "heldout": {"n": 100, "accuracy": 0.93},
            },
            "harmful_compliance": {"base": wide(4, 6), "sl-cai": rate(0.35), "rl-cai": rate(0.2)},
            "refusal": {"base": wide(2, 6), "sl-cai": rate(0.65), "rl-cai": rate(0.8)},
            "evasive": {"base": wide(1, 2), "sl-cai": rate(0.5), "rl-cai": rate(0.25)},
            "over_refusal": {"base": rate(0.1), "sl-cai": rate(0.25), "rl-cai": rate(0.15)},
            "helpful_compliance": {"base": rate(0.95), "sl-cai": rate(0.9), "rl-cai": rate(0.9)},
        },
        "samples": "eval.samples.jsonl",
    }


def judge_audit() -> dict:
    points = [[d, 0.5 + 0.002 * d] for d in range(-100, 101, 20)]
    bins = [
        {"p_mean": p, "frac_positive": p * 0.9, "count": 5 + i}
        for i, p in enumerate((0.1, 0.3, 0.5, 0.7, 0.9))
    ]
    return {
        "artifact": "judge_audit",
        "judge": {"model": "judge-model", "mode": "logprob"},
        "flip_rate": rate(0.125, 80),
        "length_bias": {"slope": 0.002, "correlation": 0.83, "points": points},
        "self_preference": rate(0.55, 60),
        "calibration": {"ece": 0.042, "bins": bins},
        "human_agreement": None,
        "injection_flip_rate": 0.031,
    }


def principle_audit() -> dict:
    rows = [
        ("harm", "critique_revision", 12, 0.41, 0.8, 0.25),
        ("honesty", "comparison", 9, 0.05, 0.55, 0.0),
    ]
    keys = ("id", "kind", "draws", "mean_change", "agreement_with_ensemble", "ablation_changed")
    return {"artifact": "principle_audit", "principles": [dict(zip(keys, r)) for r in rows]}


def traces() -> list[dict]:
    def trace(i: int, prompt: str, discarded: bool) -> dict:
        rounds = [
            {
                "round": 1,
                "principle_id": "harm",
                "temperature": 0.9,
                "critique": f"critique {i} of {prompt}",
                "revision": f"revision {i}",
                "reason": None,
                "discarded": False,
            },
            {
                "round": 2,
                "principle_id": "honesty",
                "temperature": 0.4,
                "critique": "The answer is fine.",
                "revision": None,
                "reason": "critique repeats the answer",
                "discarded": True,
            },
        ]
        return {
            "id": f"red-{i}",
            "kind": "red_team",
            "prompt": prompt,
            "initial_response": f"answer {i}",
            "rounds": rounds,
            "final_response": f"revision {i}",
            "discarded": discarded,
            "reason": "no round produced a usable critique and revision" if discarded else None,
        }

    helpful = {
        "id": "help-0",
        "kind": "helpful",
        "prompt": "Name a prime.",
        "initial_response": "7",
        "final_response": "7",
        "rounds": [],
        "discarded": False,
        "reason": None,
    }
    return [
        trace(0, HOSTILE, False),
        trace(1, "How do I pick a lock?", True),
        trace(2, "Say hi & bye", False),
        helpful,
    ]


def write_run(root: Path, *, complete: bool = True) -> Path:
    """A run directory with every artifact the report reads (or only the manifest)."""
    run = root / "run"
    run.mkdir()
    (run / "manifest.json").write_text(json.dumps(manifest()))
    if not complete:
        return run
    (run / "eval.json").write_text(json.dumps(eval_results()))
    (run / "audit.json").write_text(json.dumps(judge_audit()))
    (run / "principles.json").write_text(json.dumps(principle_audit()))
    (run / "sl.jsonl").write_text("".join(json.dumps(t) + "\n" for t in traces()))
    for name, log in {
        "sl-ckpt": [
            {"step": s, "loss": 2.0 / s, "learning_rate": 2e-4, "epoch": s / 4} for s in range(1, 5)
        ],
        "ppo": [
            {
                "step": s,
                "reward": 0.1 * s,
                "kl": 0.01 * s,
                "policy_loss": -0.1,
                "value_loss": 0.5 / s,
            }
            for s in range(1, 5)
        ],
    }.items():
        (run / name).mkdir()
        (run / name / "train_log.json").write_text(json.dumps(log))
    (run / "sl-ckpt" / "cai_checkpoint.json").write_text(
        json.dumps({"stage": "sl-cai-sft", "steps": 4, "final_loss": 0.5})
    )
    return run


@pytest.fixture()
def report(tmp_path) -> tuple[Path, str]:
    path = render_report(write_run(tmp_path))
    return path, path.read_text(encoding="utf-8")


def section_of(page: str, anchor: str) -> str:
    match = re.search(rf'<section id="{anchor}">(.*?)</section>', page, re.DOTALL)
    assert match, f"no section #{anchor}"
    return match.group(1)


def test_every_section_table_and_chart_is_rendered(report):
    path, page = report
    assert path.name == "report.html" and page.startswith("<!DOCTYPE html>")
    run = section_of(page, "run")
    assert (
        "sl_cai_generate" in run and "rl_cai_label" in run and "8,065" in run and "1 h 2 min" in run
    )
    assert (
        "ab" * 32 in run and "2.13.0" in run and ">11<" in run
    )  # constitution hash, packages, seed
    ev = section_of(page, "evaluation")
    for plot in ("pareto", "attack_success", "over_refusal", "refusal_hold"):
        assert re.search(rf'data-plot="{plot}"><svg', ev), plot
    assert (
        "[1,020, 1,080]" in ev and "120 comparisons" in ev
    )  # rl-cai harmless CI, comparison count
    assert "15.0%" in ev and "[5.0%, 25.0%]" in ev  # rl-cai attack success and its CI
    assert "[0.0%, 100.0%]" not in ev  # base's refusal hold has n = 0: no rate, no interval
    assert "harmful compliance (instrument)" in ev and "attack success (judge)" in ev
    assert (
        "66.7% [30.0%, 90.3%] n=6" in ev
    )  # the instrument's base harmful compliance, 4 of 6, beside the judge's
    assert (
        ev.count("too few prompts to conclude") == 3
    )  # judge flips (n=6), base's compliance (n=6) and evasive (n=2)
    assert re.search(
        r"66\.7% \[30\.0%, 90\.3%\] n=6 <span class=\"few\">too few prompts to conclude", ev
    )
    # The unreliable judge: a banner with the reason above each judge-derived block.
    assert ev.count('class="banner"') == 4 and "position flip rate 83% (n=6) is above 25%" in ev
    assert ev.index('class="banner"', ev.index("Helpfulness against harmlessness")) < ev.index(
        'data-plot="pareto"'
    )
    audit = section_of(page, "judge-audit")
    assert 'data-plot="reliability"><svg' in audit and 'data-plot="length-bias"><svg' in audit
    assert (
        "12.5%" in audit and "[2.5%, 22.5%]" in audit and "3.1%" in audit
    )  # flip rate, CI, injection
    assert "not measured" in audit and "0.042" in audit  # human agreement is null; ECE
    principles = section_of(page, "principles")
    assert (
        "<code>harm</code>" in principles
        and "critique_revision" in principles
        and "0.41" in principles
    )
    sl = section_of(page, "sl-cai")
    assert sl.count("<details") == 3 and "critique repeats the answer" in sl and "help-0" not in sl
    training = section_of(page, "training")
    assert training.count('data-plot="training"><svg') == 2 and "sl-cai-sft" in training
    assert "Not run" not in page


def test_model_text_is_escaped_and_the_page_loads_nothing(report):
    _, page = report
    assert HOSTILE not in page and "<img src=x" not in page
    assert "&lt;script&gt;window.__pwned = 1&lt;/script&gt;" in page
    assert "Say hi &amp; bye" in page
    assert page.count("<script") == 0 and "<link" not in page
    # No URL that a browser would fetch: no src attributes, no http(s) outside SVG namespaces.
    assert not re.search(r'\ssrc="', page)
    urls = set(re.findall(r'https?://[^\s"\'<>)]+', page))
    assert urls <= {"http://www.w3.org/2000/svg", "http://www.w3.org/1999/xlink"}, (
        urls
    )  # XML namespaces only


def test_svg_ids_do_not_collide_between_charts(report):
    _, page = report
    ids = re.findall(r'\sid="([^"]+)"', page)
    assert len(ids) == len(set(ids)), [i for i in ids if ids.count(i) > 1][:5]


def test_model_names_are_labels_not_tex_or_markup():
    from constitutional.report import plots

    name = "odd $\\frac{1$ <b>name</b>"  # unbalanced mathtext would raise if parsed as TeX
    svg = plots.pareto({name: {"helpful": elo(1000), "harmless": elo(990)}}, [name])
    assert svg.startswith("<svg") and "<b>" not in svg  # text is drawn as paths, not markup
    assert plots.rate_bars({name: rate(0.5)}, "t", "k").startswith("<svg")


def test_a_judge_that_passed_gets_no_banner(tmp_path):
    run = write_run(tmp_path)
    doc = json.loads((run / "eval.json").read_text())
    doc["judge"].update(reliable=True, reasons=[], flip_rate=rate(0.1, 200))
    (run / "eval.json").write_text(json.dumps(doc))
    ev = section_of(render_report(run).read_text(), "evaluation")
    assert 'class="banner"' not in ev and "The judge passed its audit." in ev
    del doc["judge"]["reliable"]  # an eval.json from before the gate
    (run / "eval.json").write_text(json.dumps(doc))
    ev = section_of(render_report(run).read_text(), "evaluation")
    assert 'class="banner"' not in ev and "the judge was not checked" in ev


def test_only_a_manifest_gives_not_run_notes(tmp_path):
    out = tmp_path / "elsewhere" / "r.html"
    assert render_report(write_run(tmp_path, complete=False), out) == out
    page = out.read_text()
    assert "sl_cai_generate" in section_of(page, "run")
    for anchor in ("evaluation", "judge-audit", "principles", "sl-cai", "training"):
        assert "Not run:" in section_of(page, anchor), anchor
    assert "<svg" not in page


def test_rendering_is_deterministic(tmp_path):
    run = write_run(tmp_path)
    first = render_report(run, tmp_path / "a.html").read_bytes()
    assert render_report(run, tmp_path / "b.html").read_bytes() == first


def test_bad_inputs_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="not a run directory"):
        render_report(tmp_path / "missing")
    run = write_run(tmp_path, complete=False)
    (run / "eval.json").write_text("{not json")
    with pytest.raises(UserError, match="eval.json"):
        render_report(run)
    (run / "eval.json").write_text(json.dumps({"artifact": "judge_audit"}))
    with pytest.raises(UserError, match="expected artifact 'eval_results'"):
        render_report(run)
    assert not (run / "report.html").exists()


def test_manifests_beside_outputs_are_merged(tmp_path):
    run = write_run(tmp_path, complete=False)
    (run / "manifest.json").unlink()
    other = manifest()
    other["stages"] = {
        "rl_cai_dpo": {
            **other["stages"]["sl_cai_generate"],
            "constitution": {"hash": "cd" * 32, "version": "2.0.0"},
        }
    }
    (run / "sl.jsonl.manifest.json").write_text(json.dumps(manifest()))
    (run / "prefs.jsonl.manifest.json").write_text(json.dumps(other))
    page = render_report(run).read_text()
    assert "rl_cai_dpo" in page and "sl_cai_generate" in page
    assert "different constitutions" in page  # two hashes across stages is worth a warning


def test_cli_writes_the_report(tmp_path):
    import typer
    from typer.testing import CliRunner

    from constitutional.cli.report import report as report_command

    app = typer.Typer()
    app.command()(report_command)
    app.command("noop")(lambda: None)  # two commands, so typer keeps the subcommand name
    run = write_run(tmp_path, complete=False)
    result = CliRunner().invoke(app, ["report", str(run), "--out", str(tmp_path / "x.html")])
    assert result.exit_code == 0, result.output
    assert "Constitutional AI report" in (tmp_path / "x.html").read_text()


def test_page_in_headless_chromium(report):
    path, _ = report
    url = path.resolve().as_uri()
    requests, errors = [], []
    with headless_chromium() as browser:
        page = browser.new_page()
        page.on("request", lambda r: requests.append(r.url))
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(url, wait_until="load")
        plots = page.locator("figure[data-plot] > svg")
        assert plots.count() == 8  # pareto, 3 rate bars, reliability, length bias, 2 training
        for i in range(plots.count()):
            box = plots.nth(i).bounding_box()
            assert box and box["width"] > 100 and box["height"] > 50, i
        assert page.locator("table").count() >= 8
        assert all(
            page.locator("table").nth(i).is_visible() for i in range(page.locator("table").count())
        )
        assert page.locator("details.trace[open]").count() == 1
        banners = page.locator("#evaluation .banner")
        assert banners.count() == 4 and all(banners.nth(i).is_visible() for i in range(4))
        assert "Unreliable judge: position flip rate 83%" in banners.nth(0).inner_text()
        pareto = page.locator('figure[data-plot="pareto"]').bounding_box()
        above = [banners.nth(i).bounding_box() for i in range(4)]
        assert any(
            b["y"] + b["height"] <= pareto["y"] and b["height"] > 10 for b in above
        )  # drawn above the chart
        assert page.evaluate("window.__pwned") is None  # the hostile prompt stayed text
        assert HOSTILE in page.locator("#sl-cai").inner_text()
        page.locator("#sl-cai summary").nth(1).click()
        assert page.locator("details.trace").nth(1).evaluate("d => d.open")
        if os.environ.get("CAI_REPORT_SCREENSHOT"):  # for a human to look at the page
            page.screenshot(path=os.environ["CAI_REPORT_SCREENSHOT"], full_page=True)
    assert errors == []
    assert requests == [url]
