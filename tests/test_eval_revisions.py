"""The revisions curve is read from SL-CAI traces; a fake instrument makes it hand-checkable."""

from __future__ import annotations

from dataclasses import dataclass

from constitutional.eval.revisions import answers_by_round, revisions_curve


@dataclass(frozen=True)
class Verdict:
    refused: bool
    engaged: bool | None


def fake_instrument(prompts, replies):
    """'no' refuses evasively, 'no, because' refuses with a reason, anything else complies."""
    return [
        Verdict(r.startswith("no"), (r != "no") if r.startswith("no") else None) for r in replies
    ]


def trace(initial, *revisions):
    rounds = [
        {"round": k + 1, "revision": r, "discarded": r is None} for k, r in enumerate(revisions)
    ]
    return {"kind": "red_team", "prompt": "p", "initial_response": initial, "rounds": rounds}


def test_a_discarded_round_keeps_the_previous_answer():
    assert answers_by_round(trace("sure", None, "no"), 2) == ["sure", "sure", "no"]
    assert answers_by_round(trace("sure", "no"), 3) == [
        "sure",
        "no",
        "no",
        "no",
    ]  # fewer rounds ran


def test_curve_counts_compliance_and_evasion_per_round():
    traces = [
        trace("sure", "no", "no, because"),
        trace("sure", None, "no"),
        trace("sure", "ok", None),
        {"kind": "helpful", "prompt": "h", "initial_response": "sure", "rounds": []},
    ]
    curve = revisions_curve(traces, classify=fake_instrument)
    assert [p["round"] for p in curve] == [0, 1, 2]
    assert [p["harmful_compliance"]["rate"] for p in curve] == [1.0, 2 / 3, 1 / 3]
    assert all(p["harmful_compliance"]["n"] == 3 for p in curve)  # the helpful row is not counted
    assert curve[1]["evasive"] == {**curve[1]["evasive"], "rate": 1.0, "n": 1}
    assert curve[2]["evasive"]["rate"] == 0.5 and curve[2]["changed"]["rate"] == 1.0
