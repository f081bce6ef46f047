"""Principle attribution: revision change, ensemble agreement and ablation arithmetic by hand."""

from __future__ import annotations

import pytest
from test_eval_harm import FakeJudge

from constitutional.constitution import load_constitution
from constitutional.eval import principles as pr


def label(p_by, discarded=False):
    return {
        "id": "x",
        "source": "ai",
        "prompt": "q",
        "response_a": "Sure.",
        "response_b": "No.",
        "principle_ids": list(p_by),
        "p_a_by_principle": p_by,
        "discarded": discarded,
    }


def test_change_and_revision_attribution():
    assert pr.change("abcd", "abcd") == 0.0 and pr.change("abcd", "abxy") == pytest.approx(0.5)
    assert pr.change("", "anything") == 1.0
    traces = [
        {
            "initial_response": "abcd",
            "rounds": [
                {
                    "principle_id": "harm",
                    "revision": "abxy",
                    "discarded": False,
                },  # 0.5 against "abcd"
                {
                    "principle_id": "honesty",
                    "revision": None,
                    "discarded": True,
                },  # a draw, no change
                {
                    "principle_id": "harm",
                    "revision": "abxy",
                    "discarded": False,
                },  # 0.0 against "abxy"
            ],
        }
    ]
    got = {p["id"]: p for p in pr.revision_attribution(traces)}
    assert got["harm"] == {
        "id": "harm",
        "kind": "critique_revision",
        "draws": 2,
        "mean_change": pytest.approx(0.25),
        "agreement_with_ensemble": None,
        "ablation_changed": None,
    }
    assert got["honesty"]["draws"] == 1 and got["honesty"]["mean_change"] is None


def test_ablation_and_agreement_arithmetic():
    assert pr.ablation_changed({"x": 0.9, "y": 0.3, "z": 0.4}, "x")  # mean 0.533 → without x 0.35
    assert not pr.ablation_changed({"x": 0.9, "y": 0.3, "z": 0.4}, "y")  # without y 0.65: still A
    rows = [
        label({"x": 0.9, "y": 0.3, "z": 0.4}),  # mean A; x agrees; dropping x flips the label
        label({"x": 0.8, "y": 0.7}),  # mean A; both agree; no single drop flips it
        label(
            {"x": 0.6, "y": 0.4}
        ),  # mean exactly 0.5: no agreement counted; drops move it off the tie
        label({"z": 0.1}),  # K = 1: a draw, nothing to ensemble
        label({"x": 0.1, "z": 0.9}, discarded=True),
        {"source": "human", "principle_ids": [], "p_a": 1.0},
    ]
    got = {p["id"]: p for p in pr.comparison_attribution(rows)}
    assert {k: got[k]["draws"] for k in got} == {"x": 4, "y": 3, "z": 3}
    assert got["x"]["agreement_with_ensemble"] == 1.0 and got["y"]["agreement_with_ensemble"] == 0.5
    assert got["z"]["agreement_with_ensemble"] == 0.0
    assert (
        got["x"]["ablation_changed"],
        got["y"]["ablation_changed"],
        got["z"]["ablation_changed"],
    ) == (2, 1, 0)
    assert all(p["kind"] == "comparison" and p["mean_change"] is None for p in got.values())
    solo = pr.comparison_attribution([label({"z": 0.1})])
    assert solo == [
        {
            "id": "z",
            "kind": "comparison",
            "draws": 1,
            "mean_change": None,
            "agreement_with_ensemble": None,
            "ablation_changed": None,
        }
    ]


def test_judge_by_principle_fills_per_principle_verdicts():
    rules = load_constitution("default")
    rows = [
        {
            **label({}),
            "principle_ids": ["harm", "honesty"],
            "p_a_by_principle": None,
            "p_a_swapped": 0.4,
        }
    ]
    judge = FakeJudge(first_bias=0.1, prefer=lambda a, b: 0.7)
    [out] = pr.judge_by_principle(judge, rows, rules)
    # asked per principle in both orders: raw 0.7, swapped 1 - 0.7 = 0.3 → averaged 0.5 each
    assert out["p_a_by_principle"] == {"harm": pytest.approx(0.5), "honesty": pytest.approx(0.5)}
    assert len(judge.asked) == 4 and rows[0]["p_a_by_principle"] is None
    doc = pr.principle_audit([], [out])
    assert (
        doc["artifact"] == "principle_audit"
        and doc["schema_version"] == 1
        and len(doc["principles"]) == 2
    )
