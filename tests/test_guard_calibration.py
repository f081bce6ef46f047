"""Calibration and measurement: thresholds are fitted on one part of the held-out rows and rates
reported on the other, and streamed responses are measured at the proxy's own check cadence."""

from __future__ import annotations

import json

import pytest
from fastapi import FastAPI
from fastapi.responses import StreamingResponse
from faults import running_server
from test_guard_classifiers import toy_rows, write_rows
from test_guard_proxy import ScriptedGuard, stream_chat

from constitutional.backends.encoders import HashingEncoder
from constitutional.errors import UserError
from constitutional.guard.cascade import Cascade
from constitutional.guard.cheap import CheapClassifier
from constitutional.guard.classifiers import (
    TrainedGuard,
    evaluate_guard,
    fit_threshold,
    train_guard,
)
from constitutional.guard.proxy import create_guard_app
from constitutional.guard.views import (
    check_disjoint,
    heldout_parts,
    load_guard_rows,
    stream_checkpoints,
    stream_pieces,
    view_rows,
)


@pytest.fixture(scope="module")
def rows(tmp_path_factory):
    path = tmp_path_factory.mktemp("cal") / "guard.jsonl"
    write_rows(path, toy_rows(200))
    return path, load_guard_rows(path)


def test_heldout_parts_split_whole_groups_into_two_disjoint_halves(rows):
    _, data = rows
    calibration, report = heldout_parts(data)
    held = [r for r in data if r.split == "heldout"]
    assert sorted(map(id, calibration + report)) == sorted(map(id, held))
    assert {r.group for r in calibration}.isdisjoint({r.group for r in report})
    for part in (calibration, report):
        assert {r.label for r in part} == {0, 1} and abs(len(part) - len(held) / 2) <= 4
    check_disjoint(calibration, report)  # does not raise
    assert heldout_parts(data) == (calibration, report)  # deterministic


def test_a_report_row_repeating_a_calibration_text_joins_the_calibration_part(rows):
    _, data = rows
    calibration, _ = heldout_parts(data)
    # A copy of a calibration conversation under another group id, in the report's half.
    copies = [
        type(r)(r.messages, r.response, r.label, "heldout", r.category, f"copy{i}")
        for i, r in enumerate(calibration)
    ]
    cal2, rep2 = heldout_parts(data + copies)
    seen = {json.dumps(r.messages) for r in cal2}
    assert not any(json.dumps(r.messages) in seen for r in rep2)
    assert len(cal2) >= len(calibration) + len(copies) // 2


def test_same_rows_for_calibration_and_report_are_refused(rows):
    _, data = rows
    calibration, report = heldout_parts(data)
    cheap = CheapClassifier(HashingEncoder()).fit(*view_rows("input", data, "train")[:2])
    for view in ("input", "output"):
        with pytest.raises(ValueError, match="calibrate on one part and report on another"):
            fit_threshold(Cascade(cheap), view, calibration, calibration, 0.05)
        with pytest.raises(ValueError, match="1 report rows share"):
            fit_threshold(Cascade(cheap), view, calibration, [*report, calibration[1]], 0.05)
    fitted = fit_threshold(Cascade(cheap), "input", calibration, report, 0.05)
    texts = view_rows("input", report, None)[0]
    assert fitted["harmful"] + fitted["harmless"] == len(texts)


def test_train_reports_on_rows_it_did_not_calibrate_on_and_eval_leaves_those_out(rows, tmp_path):
    path, data = rows
    summary = train_guard(path, tmp_path / "g", strong=False, encoder="hashing", target_frr=0.05)
    guard = TrainedGuard.load(tmp_path / "g")
    calibration, report = heldout_parts(data)
    meta = guard.meta["calibration"]
    assert meta["keys"] == sorted({r.key for r in calibration}) and meta["report_rows"] == len(
        report
    )
    reported = summary["classifiers"]["input"]
    assert reported["harmful"] + reported["harmless"] == len(view_rows("input", report, None)[0])
    result = evaluate_guard(guard, data)
    assert result["end_to_end"]["requests"] == len(report)
    assert result["end_to_end"]["calibration_rows_left_out"] == len(calibration)
    assert result["classifiers"]["input"] == {
        k: reported[k] for k in result["classifiers"]["input"]
    }
    with pytest.raises(UserError, match="every held-out row was used to calibrate"):
        evaluate_guard(guard, calibration)


def test_too_few_heldout_rows_to_split_is_refused(tmp_path):
    data = toy_rows(40)
    held = [r for r in data if r["split"] == "heldout"]
    keep = {held[0]["source_id"], next(r["source_id"] for r in held if r["label"] == 0)}
    rows = [r for r in data if r["split"] == "train" or r["source_id"] in keep]
    path = tmp_path / "few.jsonl"
    write_rows(path, [r for r in rows if r["label"] == 0 or r["split"] == "train"])
    with pytest.raises(UserError, match="too few held-out rows for the input classifier"):
        train_guard(path, tmp_path / "out", strong=False, encoder="hashing")


def test_stream_checkpoints_are_exactly_what_the_proxy_checks(tmp_path):
    """Evaluation scores the prefixes the proxy checks: stream a response in `stream_pieces`
    through a real proxy and compare the texts its guard was shown."""
    text = "Sure, here is a plan you can follow. " * 6 + "It ends here."
    app = FastAPI()

    @app.post("/v1/chat/completions")
    async def chat(body: dict):
        chunks = [{"choices": [{"index": 0, "delta": {"content": p}}]} for p in stream_pieces(text)]
        events = [f"data: {json.dumps(c)}\n\n" for c in chunks] + ["data: [DONE]\n\n"]
        return StreamingResponse(iter(events), media_type="text/event-stream")

    with running_server(app) as upstream:
        for holdback in (0, 16, 64):
            guard = ScriptedGuard(marker=None)
            proxy = create_guard_app(
                guard, upstream, audit_db=tmp_path / "a.db", holdback_chars=holdback
            )
            with running_server(proxy) as base:
                shown, _, _ = stream_chat(base)
            assert shown == text
            assert guard.outputs == stream_checkpoints(text, holdback)


def test_eval_says_when_the_calibrated_frr_does_not_transfer():
    from constitutional.cli.guard_train import transfer_warnings

    report = {"input": {"frr": 0.15}, "output": {"frr": 0.06}, "exchange": {"frr": None}}
    [line] = transfer_warnings(report, 0.05)
    assert line.startswith(
        "warning: input FRR 15.0% is more than 2 points from the calibration target 5.0%"
    )
    assert transfer_warnings(report, None) == []
