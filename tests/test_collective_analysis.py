"""Polis-style analysis: planted opinion groups are recovered, planted consensus ranks top."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from helpers import cai

from constitutional.collective import AnalysisConfig, analyze, load_votes, smoothed
from constitutional.errors import UserError

pytest.importorskip("sklearn")
from sklearn.metrics import adjusted_rand_score


def electorate(seed: int = 0, per_group: int = 20, missing: float = 0.25, noise: float = 0.05):
    """Two planted groups: A agrees 0-9 and disagrees 10-14, B the reverse; both agree 15-19.

    Returns (rows of participant,statement,vote, planted group per participant).
    """
    rng = np.random.default_rng(seed)
    stance = {"A": [1] * 10 + [-1] * 5 + [1] * 5, "B": [-1] * 10 + [1] * 5 + [1] * 5}
    rows, planted = [], []
    for g, name in enumerate("AB"):
        for i in range(per_group):
            person = f"{name}{i}"
            planted.append(g)
            for s, vote in enumerate(stance[name]):
                if rng.random() < missing:
                    continue
                if rng.random() < noise:
                    vote = int(rng.choice([0, -vote]))
                rows.append((person, f"s{s}", vote))
    return rows, planted


def write_simple(path: Path, rows) -> Path:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["participant", "statement", "vote"])
        w.writerows(rows)
    return path


def test_planted_groups_and_consensus_are_recovered(tmp_path):
    rows, planted = electorate()
    votes = load_votes(write_simple(tmp_path / "votes.csv", rows))
    assert votes.matrix.shape == (40, 20) and np.isnan(votes.matrix).any()
    result = analyze(votes, AnalysisConfig(seed=0))

    assert result["k"] == 2
    assert max(result["silhouette"], key=result["silhouette"].get) == "2"
    assert set(result["silhouette"]) == {"2", "3", "4", "5"}
    labels = {p["participant"]: p["group"] for p in result["points"]}
    found = [labels[p] for p in votes.participants]
    assert adjusted_rand_score(planted, found) == 1.0

    top = [row["statement"] for row in result["consensus"][:5]]
    assert set(top) == {f"s{i}" for i in range(15, 20)}
    assert all(row["statement"] in {f"s{i}" for i in range(15)} for row in result["divisive"])
    assert len(result["divisive"]) == 10  # --top caps it; all 15 planted divisions exceed 0.3

    # Group A's representative statements are the ones it agrees with and B rejects (or vice versa).
    group_of_a = labels["A0"]
    rep = result["groups"][group_of_a]["representative"]
    assert rep and all(int(r["statement"][1:]) < 15 for r in rep)
    assert {r["direction"] for r in rep} == {"agree", "disagree"}


def test_scaling_pushes_sparse_voters_out_of_the_centre(tmp_path):
    rows, _ = electorate(missing=0.0, noise=0.0)
    sparse = [r for r in rows if r[0] != "A0"] + [r for r in rows if r[0] == "A0"][:8]
    result = analyze(load_votes(write_simple(tmp_path / "v.csv", sparse)))
    points = {p["participant"]: p for p in result["points"]}
    # A0 voted on 8 of 20 statements: imputation drags it towards the origin, the scaling undoes part of that.
    a0, a1 = points["A0"], points["A1"]
    assert a0["group"] == a1["group"] and a0["votes"] == 8
    assert np.hypot(a0["x"], a0["y"]) > 0.5 * np.hypot(a1["x"], a1["y"])


def test_smoothing_arithmetic_by_hand(tmp_path):
    # 3 agrees in 4 votes (one pass): (3 + 1) / (4 + 2) = 2/3; no votes at all: 1/2.
    assert smoothed(np.array([3, 0]), np.array([4, 0])).tolist() == pytest.approx([2 / 3, 1 / 2])
    rows, _ = electorate(missing=0.0, noise=0.0)
    result = analyze(load_votes(write_simple(tmp_path / "v.csv", rows)))
    s0 = result["statement_stats"][0]
    a, b = s0["groups"]
    # Each group of 20 is unanimous on s0, one for, one against: 21/22 and 1/22.
    assert sorted([a["p_agree"], b["p_agree"]]) == pytest.approx([1 / 22, 21 / 22])
    assert s0["consensus"] == pytest.approx(21 / 22 / 22)
    assert s0["spread"] == pytest.approx(20 / 22)
    s15 = result["statement_stats"][15]
    assert s15["consensus"] == pytest.approx((21 / 22) ** 2)
    assert s15["agree"] == 40 and s15["votes"] == 40


def test_min_votes_drops_participants(tmp_path):
    rows, _ = electorate(missing=0.0)
    rows = [r for r in rows if not (r[0] == "B3" and int(r[1][1:]) >= 5)]  # B3 votes on 5 only
    result = analyze(
        load_votes(write_simple(tmp_path / "v.csv", rows)), AnalysisConfig(min_votes=7)
    )
    assert result["participants"] == {"total": 40, "kept": 39, "min_votes": 7}
    assert "B3" not in {p["participant"] for p in result["points"]}


def test_polis_layout_parses_like_the_simple_one(tmp_path):
    rows, _ = electorate()
    simple = load_votes(write_simple(tmp_path / "simple.csv", rows))
    people = {p: i for i, p in enumerate(dict.fromkeys(r[0] for r in rows))}
    with (tmp_path / "votes.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["timestamp", "datetime", "comment-id", "voter-id", "vote"])
        w.writerow(
            [1, "Mon Jan 01 2024", 0, people[rows[0][0]], -rows[0][2] or 1]
        )  # superseded below
        for t, (person, statement, vote) in enumerate(rows, start=2):
            w.writerow([t, "Mon Jan 01 2024", statement[1:], people[person], vote])
    with (tmp_path / "comments.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(
            [
                "timestamp",
                "datetime",
                "comment-id",
                "author-id",
                "agrees",
                "disagrees",
                "moderated",
                "comment-body",
            ]
        )
        for s in range(20):
            w.writerow([s, "Mon Jan 01 2024", s, 0, 0, 0, 1, f"Statement {s}, with a comma"])
    polis = load_votes(tmp_path / "votes.csv", tmp_path / "comments.csv")
    assert polis.statements == [str(s) for s in range(20)]
    assert polis.participants == [str(i) for i in people.values()]
    columns = [simple.statements.index(f"s{s}") for s in range(20)]
    np.testing.assert_array_equal(polis.matrix, simple.matrix[:, columns])
    assert polis.texts["3"] == "Statement 3, with a comma"
    result = analyze(polis)
    assert result["consensus"][0]["text"].startswith("Statement 1")


def test_analyze_command_writes_json(tmp_path):
    rows, _ = electorate()
    votes = write_simple(tmp_path / "votes.csv", rows)
    out = tmp_path / "analysis.json"
    done = cai("collective", "analyze", votes, "--out", out, "--k", "2..3", timeout=300)
    assert done.returncode == 0, done.stderr
    result = json.loads(out.read_text())
    assert result["k"] == 2 and set(result["silhouette"]) == {"2", "3"}
    assert "k=2" in done.stderr


@pytest.mark.parametrize(
    "body, line, message",
    [
        ("participant,statement,vote\np1,s1,1\np1,s2,yes\n", 3, "vote must be 1, -1 or 0"),
        ("participant,statement,vote\np1,s1,1\n\np1,s2\n", 4, "expected 3 fields"),
        ("participant,statement,vote\n,s1,1\n", 2, "empty participant"),
        ("who,what,vote\np1,s1,1\n", 1, "header must have the columns"),
    ],
)
def test_bad_row_names_file_and_line(tmp_path, body, line, message):
    path = tmp_path / "votes.csv"
    path.write_text(body)
    with pytest.raises(UserError, match=message) as e:
        load_votes(path)
    assert e.value.line == line
    done = cai("collective", "analyze", path, timeout=300)
    assert done.returncode == 2
    assert done.stderr.startswith(f"cai: error: {path}:{line}: {message}")


def test_too_few_participants_is_a_user_error(tmp_path):
    path = write_simple(tmp_path / "v.csv", [("p1", f"s{i}", 1) for i in range(8)])
    with pytest.raises(UserError, match="lower --min-votes"):
        analyze(load_votes(path))
