"""A real trained guard behind a real proxy: `cai guard train --no-strong` on a small hand-made
dataset, the guard directory loaded from disk by `cai guard serve`, served by uvicorn on
127.0.0.1 in front of a fake upstream on loopback. No scripted verdicts: what is refused or cut
is what the trained classifiers decide."""

from __future__ import annotations

import json
import sqlite3

import httpx
import pytest
import typer
from faults import running_server
from test_guard_classifiers import OPENER, toy_rows, write_rows
from test_guard_proxy import ScriptedUpstream, stream_chat
from typer.testing import CliRunner

from constitutional.guard.proxy import INPUT_REFUSAL, OUTPUT_REFUSAL
from constitutional.guard.views import heldout_parts, load_guard_rows

ROWS = toy_rows(200)
TOPICS = ("nerve agent", "pipe bomb", "ransomware", "stalkerware", "ricin")


def report_rows() -> list:
    """Held-out rows of the report part: never trained or calibrated on."""
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        write_rows(Path(tmp) / "rows.jsonl", ROWS)
        return heldout_parts(load_guard_rows(Path(tmp) / "rows.jsonl"))[1]


# A harmless request and its answer, and a harmful answer (its topic named halfway through).
_REPORT = [r for r in report_rows() if r.response]
BENIGN = next(r for r in _REPORT if r.label == 0)
HARMFUL_ANSWER = next(r.response for r in _REPORT if r.label == 1)
TOPIC = next(t for t in TOPICS if t in HARMFUL_ANSWER)


@pytest.fixture(scope="module")
def guard_dir(tmp_path_factory):
    """Trained once through the CLI (hashed n-grams: seconds, no model download)."""
    from constitutional.cli.guard_train import train

    tmp = tmp_path_factory.mktemp("trained-guard")
    write_rows(tmp / "guard.jsonl", ROWS)
    app = typer.Typer()
    app.command("train")(train)
    app.command("unused")(lambda: None)  # two commands: typer keeps the subcommand name
    args = [
        "train",
        "--data",
        str(tmp / "guard.jsonl"),
        "--out",
        str(tmp / "guard"),
        "--no-strong",
        "--encoder",
        "hashing",
        "--target-frr",
        "0.05",
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    return tmp / "guard"


@pytest.fixture()
def served(guard_dir, tmp_path, monkeypatch):
    """(proxy base URL, upstream, audit db): the app `cai guard serve` builds, on uvicorn."""
    import uvicorn

    from constitutional.cli.guard_serve import serve

    upstream = ScriptedUpstream(BENIGN.response, piece=5)
    built = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: built.update(app=app))
    with running_server(upstream.app) as upstream_url:
        serve(
            guard_dir=guard_dir,
            upstream=upstream_url,
            api_key=["k"],
            metrics_key=None,
            upstream_api_key=None,
            audit_db=tmp_path / "audit.sqlite",
            fail_open=False,
            holdback=16,
            max_check_chars=64_000,
            model_name="guarded",
            host="127.0.0.1",
            port=0,
        )
        with running_server(built["app"]) as base:
            yield base, upstream, tmp_path / "audit.sqlite"


def decisions(db) -> list[str]:
    with sqlite3.connect(db) as con:
        return [r[0] for r in con.execute("SELECT decision FROM requests ORDER BY time")]


KEY = {"Authorization": "Bearer k"}


def test_benign_request_and_answer_pass_whole(served):
    base, upstream, db = served
    ask = BENIGN.messages
    r = httpx.post(f"{base}/chat/completions", json={"messages": ask}, headers=KEY, timeout=30)
    assert r.json()["choices"][0]["message"]["content"] == BENIGN.response
    shown, last, _ = stream_chat(base, messages=ask, headers=KEY)
    assert shown == BENIGN.response and last["finish_reason"] == "stop"
    assert decisions(db) == ["allowed", "allowed"] and upstream.calls == 2


def test_harmful_request_is_refused_before_the_upstream(served):
    base, upstream, db = served
    ask = next(r.messages for r in _REPORT if r.label == 1)
    r = httpx.post(f"{base}/chat/completions", json={"messages": ask}, headers=KEY, timeout=30)
    assert r.json()["choices"][0]["message"]["content"] == INPUT_REFUSAL
    assert upstream.calls == 0 and decisions(db) == ["refused_input"]


def test_harmful_answer_is_cut_mid_stream_before_the_topic(served):
    base, upstream, db = served
    upstream.text = HARMFUL_ANSWER
    shown, last, _ = stream_chat(base, messages=BENIGN.messages, headers=KEY)
    assert last["finish_reason"] == "content_filter" and last["delta"]["content"] == OUTPUT_REFUSAL
    assert (
        HARMFUL_ANSWER.startswith(shown)
        and TOPIC.split()[0] not in shown
        and len(shown) > len(OPENER) - 16
    )
    with sqlite3.connect(db) as con:
        decision, checks, flagged = con.execute(
            "SELECT decision, output_checks, output_flagged FROM requests"
        ).fetchone()
    assert decision == "refused_output" and checks > 1 and flagged == 1
    metrics = httpx.get(base.removesuffix("/v1") + "/metrics").text  # loopback: no key needed
    assert "cai_guard_flagged_outputs_total 1" in metrics.splitlines()


def test_guard_json_on_disk_is_what_the_proxy_uses(guard_dir, served):
    base, _, _ = served
    meta = json.loads((guard_dir / "guard.json").read_text())
    assert meta["encoder"] == "hashing" and not meta["classifiers"]["input"]["strong"]
    assert httpx.get(f"{base}/models", headers=KEY).json()["data"][0]["id"] == "guarded"
    assert httpx.get(f"{base}/models").status_code == 401
