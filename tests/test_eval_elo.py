"""Bradley–Terry/Elo fit, Wilson intervals and the Pareto frontier: arithmetic on synthetic data."""

from __future__ import annotations

import math

import numpy as np
import pytest

from constitutional.eval.elo import ELO_PER_LOGIT, elo_ratings, fit_strengths
from constitutional.eval.pareto import pareto_frontier
from constitutional.stats import rate, wilson

TRUE = {"weak": -1.0, "mid": 0.0, "good": 0.5, "best": 1.5}  # logits


def true_elo():
    mean = sum(TRUE.values()) / len(TRUE)
    return {n: 1000 + ELO_PER_LOGIT * (s - mean) for n, s in TRUE.items()}


def synthetic(n: int, soft: bool, seed: int = 0):
    rng, names = np.random.default_rng(seed), list(TRUE)
    out = []
    for _ in range(n):
        a, b = rng.choice(names, 2, replace=False)
        p = 1 / (1 + math.exp(-(TRUE[a] - TRUE[b])))
        # Soft: the share of three independent judges preferring A, an unbiased noisy p(A).
        outcome = (rng.random(3) < p).mean() if soft else float(rng.random() < p)
        out.append((str(a), str(b), float(outcome)))
    return out


@pytest.mark.parametrize("soft", [False, True])
def test_bradley_terry_recovers_known_strengths(soft):
    result = elo_ratings(synthetic(3000, soft), bootstrap=60, seed=1)
    ratings, truth = result["ratings"], true_elo()
    assert result["comparisons"] == 3000
    assert sorted(ratings, key=lambda n: ratings[n]["elo"]) == ["weak", "mid", "good", "best"]
    assert sum(r["elo"] for r in ratings.values()) / 4 == pytest.approx(1000)
    for name, r in ratings.items():
        assert abs(r["elo"] - truth[name]) < 40, (name, r, truth[name])
        assert r["ci_low"] <= truth[name] <= r["ci_high"], (name, r, truth[name])
        assert r["ci_low"] < r["elo"] < r["ci_high"]
    gap = ratings["best"]["elo"] - ratings["weak"]["elo"]
    assert gap == pytest.approx(2.5 * ELO_PER_LOGIT, rel=0.05)  # 2.5 logits ≈ 434 Elo


def test_soft_label_is_cross_entropy_against_p():
    # One pair judged p = 0.75 many times: the fit must give s_a - s_b = logit(0.75) = ln 3.
    s = fit_strengths([("a", "b", 0.75)] * 500, ["a", "b"], c=1e6)
    assert s[0] - s[1] == pytest.approx(math.log(3), rel=1e-3) and s.sum() == pytest.approx(0)


def test_elo_edge_cases_and_determinism():
    data = synthetic(200, soft=False)
    assert elo_ratings(data, seed=3) == elo_ratings(data, seed=3)
    # A model that wins every comparison stays finite thanks to the prior.
    sweep = elo_ratings([("a", "b", 1.0)] * 20, bootstrap=20)["ratings"]
    assert math.isfinite(sweep["a"]["elo"]) and sweep["a"]["elo"] > sweep["b"]["elo"]
    lone = elo_ratings([], ["only"])
    assert lone == {
        "ratings": {"only": {"elo": 1000.0, "ci_low": 1000.0, "ci_high": 1000.0}},
        "comparisons": 0,
    }
    with pytest.raises(ValueError, match="must be in"):
        elo_ratings([("a", "b", 1.2)])


def test_wilson_and_rate_by_hand():
    low, high = wilson(0, 10)
    assert low == 0.0 and high == pytest.approx(0.2775, abs=1e-4)
    assert (
        wilson(0, 3)[0] == 0.0 and wilson(3, 3)[1] == 1.0
    )  # exact at the ends, no rounding residue
    low, high = wilson(5, 10)  # symmetric around 0.5
    assert low == pytest.approx(0.2366, abs=1e-4) and high == pytest.approx(0.7634, abs=1e-4)
    assert rate([True, False, True, True]) == {
        "rate": 0.75,
        **dict(zip(("ci_low", "ci_high"), wilson(3, 4))),
        "n": 4,
    }
    assert rate([]) == {"rate": None, "ci_low": 0.0, "ci_high": 1.0, "n": 0}


def test_pareto_frontier():
    points = {"a": (1, 5), "b": (3, 3), "c": (2, 2), "d": (0, 5), "e": (3, 3)}
    assert pareto_frontier(points) == ["b", "e", "a"]
    assert pareto_frontier({"x": (1.0, 1.0)}) == ["x"] and pareto_frontier({}) == []
    assert pareto_frontier({"lo": (0, 0), "hi": (1, 1)}) == ["hi"]
