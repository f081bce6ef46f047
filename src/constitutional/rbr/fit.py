"""Fitting the weights of a rule-based reward: pairwise ranking with logistic regression.

Mu et al. 2024 (section 4) combine proposition probabilities and the probability of each rule's
class into a linear reward, with weights fitted so that better completions outscore worse ones.
Here every pair (better, worse) of replies to requests of the same class becomes one example for
scikit-learn's `LogisticRegression` on the feature difference f(better) - f(worse) (and its
mirror image, labelled 0), with no intercept: P(better ranks first) = σ(w · (f_b - f_w)), the
RankNet/Bradley-Terry loss. Weights are fitted per response class.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import numpy as np

from constitutional.errors import UserError
from constitutional.rbr.propositions import Propositions


def feature_names(props: Propositions, cls: str) -> list[str]:
    """Proposition ids, then one `rule:GRADE:i` feature per rule of the class."""
    return [*props.ids, *(f"rule:{r.grade}:{i}" for i, r in enumerate(props.rules[cls]))]


def features(props: Propositions, cls: str, probs: np.ndarray) -> np.ndarray:
    """(n, n_propositions + n_rules): P(yes) of each proposition, then the probability that each
    rule of `cls` holds, treating the propositions as independent (a product of p or 1 - p)."""
    column = {name: i for i, name in enumerate(props.ids)}
    rules = []
    for rule in props.rules[cls]:
        p = np.ones(len(probs))
        for name, want in rule.when.items():
            p = p * (probs[:, column[name]] if want else 1.0 - probs[:, column[name]])
        rules.append(p)
    return np.column_stack([probs, *rules]) if rules else probs


def ranked_pairs(ranks: Sequence[int], max_pairs: int, seed: int) -> list[tuple[int, int]]:
    """(better, worse) index pairs of every two items with different ranks (0 is best); a seeded
    sample of `max_pairs` when there are more."""
    pairs = [(i, j) for i, a in enumerate(ranks) for j, b in enumerate(ranks) if a < b]
    if len(pairs) > max_pairs:
        pairs = sorted(random.Random(seed).sample(pairs, max_pairs))
    return pairs


def fit_weights(
    x: np.ndarray, ranks: Sequence[int], *, c: float = 1.0, seed: int = 0, max_pairs: int = 20_000
) -> np.ndarray | None:
    """Weights w (one per column of `x`) so that x @ w ranks lower `ranks` higher.

    Args:
        x: (n, d) features of replies to requests of one class.
        ranks: grade rank of each reply, 0 best.
        c: inverse L2 strength of the logistic regression (scikit-learn's C); 0.01-100.
        seed: which pairs are kept when there are more than `max_pairs`.

    Returns:
        (d,) weights, or None when no two replies differ in grade (nothing to learn from).
    """
    try:
        from sklearn.linear_model import LogisticRegression
    except ImportError:
        raise UserError(
            "fitting RBR weights needs scikit-learn: pip install 'constitutional[eval]'"
        ) from None

    pairs = ranked_pairs(ranks, max_pairs, seed)
    if not pairs:
        return None
    better, worse = np.array(pairs).T
    diff = x[better] - x[worse]
    model = LogisticRegression(C=c, fit_intercept=False, max_iter=1000)
    model.fit(np.vstack([diff, -diff]), np.r_[np.ones(len(diff)), np.zeros(len(diff))])
    return model.coef_[0]


def pairwise_accuracy(
    scores: Sequence[float], ranks: Sequence[int], best_only: bool = False
) -> tuple[float, int]:
    """(fraction of pairs the scores order as the ranks do, number of pairs); a tie counts half.

    With `best_only`, only pairs of a best-grade reply (rank 0) against a worse one count: "does
    the ideal completion outscore the non-ideal ones". NaN when there is no such pair.
    """
    right, n = 0.0, 0
    for i, a in enumerate(ranks):
        if best_only and a != 0:
            continue
        for j, b in enumerate(ranks):
            if a < b:
                n += 1
                right += 1.0 if scores[i] > scores[j] else 0.5 if scores[i] == scores[j] else 0.0
    return (right / n if n else float("nan")), n
