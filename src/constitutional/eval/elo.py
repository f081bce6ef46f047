"""Bradley–Terry ratings from pairwise comparisons, on the Elo scale, with bootstrap intervals.

Bradley–Terry (1952) gives each model a strength s and reads P(A beats B) = σ(s_A - s_B). That is
a logistic regression with no intercept on a design row holding +1 in A's column and -1 in B's,
so scikit-learn fits it. Soft outcomes (a judge's p(A) in [0, 1]) enter as two weighted rows:
"A won" with weight p and "B won" with weight 1 - p, whose summed log-loss is exactly the
cross-entropy against p. A weak L2 prior (`c`) keeps strengths finite when one model wins
every comparison, and fixes the free constant: the fitted strengths have mean zero.

Elo reports 400 / ln 10 ≈ 173.7 points per logit (a 400-point gap is 10:1 odds), anchored so the
mean rating is 1000. Intervals come from refitting on comparisons resampled with replacement.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

ELO_PER_LOGIT = 400.0 / math.log(10.0)
ANCHOR = 1000.0
Comparison = tuple[str, str, float]  # (model A, model B, p(A beats B) in [0, 1])


def fit_strengths(
    comparisons: Sequence[Comparison], names: Sequence[str], c: float = 1.0
) -> np.ndarray:
    """Bradley–Terry strengths (logits, mean zero) of `names`, one per name.

    Args:
        comparisons: (a, b, p_a) with p_a the probability or share with which a beat b.
        names: every model to rate; a model in no comparison gets strength 0.
        c: inverse L2 strength of scikit-learn's LogisticRegression; larger is a weaker prior.
    """
    from sklearn.linear_model import LogisticRegression

    column = {n: i for i, n in enumerate(names)}
    x = np.zeros((2 * len(comparisons), len(names)))  # (rows, models): +1 for A, -1 for B
    y = np.tile([1, 0], len(comparisons))
    weight = np.empty(2 * len(comparisons))
    for k, (a, b, p) in enumerate(comparisons):
        x[2 * k : 2 * k + 2, column[a]] = 1.0
        x[2 * k : 2 * k + 2, column[b]] = -1.0
        weight[2 * k], weight[2 * k + 1] = p, 1.0 - p
    model = LogisticRegression(C=c, fit_intercept=False, max_iter=1000)
    model.fit(x, y, sample_weight=weight)
    strengths = model.coef_[0]
    return strengths - strengths.mean()  # the prior already centres them; remove rounding drift


def to_elo(strengths: np.ndarray) -> np.ndarray:
    """Logit strengths → Elo points with mean 1000."""
    return ANCHOR + ELO_PER_LOGIT * (strengths - strengths.mean())


def elo_ratings(
    comparisons: Sequence[Comparison],
    names: Sequence[str] | None = None,
    *,
    bootstrap: int = 200,
    seed: int = 0,
    c: float = 1.0,
    level: float = 0.95,
) -> dict[str, Any]:
    """Elo ratings with percentile-bootstrap intervals, in the eval.json shape.

    Args:
        comparisons: (a, b, p_a) triples; p_a must lie in [0, 1].
        names: models to rate (default: every model named in a comparison).
        bootstrap: resamples of the comparisons for the interval (0 for none: ci = the estimate).
        seed: seeds the resampling.
        c: L2 prior, see `fit_strengths`.
        level: interval coverage.

    Returns:
        {"ratings": {name: {"elo", "ci_low", "ci_high"}}, "comparisons": n}.
    """
    names = (
        list(names) if names is not None else sorted({m for a, b, _ in comparisons for m in (a, b)})
    )
    for a, b, p in comparisons:
        if not 0.0 <= p <= 1.0 or a == b:
            raise ValueError(
                f"bad comparison ({a!r}, {b!r}, {p!r}): p must be in [0, 1], models distinct"
            )
    if len(names) < 2 or not comparisons:  # nothing to compare: everyone sits at the anchor
        return {
            "ratings": {n: {"elo": ANCHOR, "ci_low": ANCHOR, "ci_high": ANCHOR} for n in names},
            "comparisons": len(comparisons),
        }
    elo = to_elo(fit_strengths(comparisons, names, c))
    rng, draws = np.random.default_rng(seed), []
    for _ in range(bootstrap):
        picked = rng.integers(0, len(comparisons), len(comparisons))
        draws.append(to_elo(fit_strengths([comparisons[i] for i in picked], names, c)))
    tail = (1.0 - level) / 2 * 100
    low, high = np.percentile(draws, [tail, 100 - tail], axis=0) if draws else (elo, elo)
    ratings = {
        n: {"elo": float(elo[i]), "ci_low": float(low[i]), "ci_high": float(high[i])}
        for i, n in enumerate(names)
    }
    return {"ratings": ratings, "comparisons": len(comparisons)}
