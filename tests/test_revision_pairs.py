"""Revision pairs: the kept revision is chosen over the first answer, on a seeded side."""

from __future__ import annotations

from constitutional.judge.labels import to_dpo_rows
from constitutional.rl_cai.revision_pairs import revision_pairs


def trace(i, initial, final, discarded=False, kind="red_team"):
    return {
        "id": f"t{i}",
        "kind": kind,
        "prompt": f"p{i}",
        "initial_response": initial,
        "final_response": final,
        "discarded": discarded,
        "rounds": [{"principle_id": "harm", "discarded": discarded}],
    }


def test_only_changed_kept_red_team_traces_become_pairs():
    traces = [trace(i, f"harmful {i}", f"refusal {i}") for i in range(40)]
    traces += [
        trace(40, "same", "same"),
        trace(41, "a", "b", discarded=True),
        trace(42, "a", "b", kind="helpful"),
    ]
    rows = revision_pairs(traces, seed=1)
    assert [r["id"] for r in rows] == [f"t{i}" for i in range(40)]
    dpo = to_dpo_rows(rows)
    assert all(
        d["chosen"][0]["content"].startswith("refusal") and d["p_chosen"] == 1.0 for d in dpo
    )
    sides = [r["p_a"] for r in rows]
    assert 0 < sum(sides) < 40, "the revision must not always sit on the same side"
    assert sides == [r["p_a"] for r in revision_pairs(traces, seed=1)]
