"""Grade gold replies, fit the weights, and measure both against the human labels.

Two numbers matter (Mu et al. 2024, section 6.1): how often the grader's P(yes) > 0.5 agrees with
the human label of each proposition, and how often the fitted reward orders two held-out replies
as their gold grades do. The gold grade of a reply is the rules applied to its human labels.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import numpy as np

from constitutional.rbr.fit import features, fit_weights, pairwise_accuracy
from constitutional.rbr.gold import Reply
from constitutional.rbr.grader import Grader
from constitutional.rbr.model import RbrModel
from constitutional.rbr.propositions import Propositions


def grade(grader: Grader, replies: Sequence[Reply]) -> np.ndarray:
    """(n, n_propositions) P(yes) of every proposition about every reply, in one backend call."""
    return grader([r.conversation for r in replies], [r.response for r in replies])


def gold_ranks(props: Propositions, replies: Sequence[Reply]) -> list[int]:
    return [props.rank(props.grade(r.response_class, r.labels)) for r in replies]


def split(replies: list[Reply], held_out: float, seed: int) -> tuple[list[int], list[int]]:
    """Seeded (train, held-out) index lists; each class keeps about `held_out` of its replies out."""
    train, test = [], []
    rng = random.Random(seed)
    for cls in dict.fromkeys(r.response_class for r in replies):
        idx = [i for i, r in enumerate(replies) if r.response_class == cls]
        rng.shuffle(idx)
        cut = round(len(idx) * held_out)
        test += idx[:cut]
        train += idx[cut:]
    return sorted(train), sorted(test)


def fit_model(
    props: Propositions,
    source: str,
    replies: Sequence[Reply],
    probs: np.ndarray,
    *,
    c: float = 1.0,
    seed: int = 0,
) -> RbrModel:
    """Per-class pairwise-ranking weights on the graded features of gold replies."""
    ranks = np.array(gold_ranks(props, replies))
    weights = {}
    for cls in props.classes:
        rows = [i for i, r in enumerate(replies) if r.response_class == cls]
        w = (
            fit_weights(features(props, cls, probs[rows]), ranks[rows], c=c, seed=seed)
            if rows
            else None
        )
        if w is not None:
            weights[cls] = [round(float(v), 6) for v in w]
    return RbrModel(props, source, weights)


def proposition_accuracy(
    props: Propositions, replies: Sequence[Reply], probs: np.ndarray
) -> dict[str, Any]:
    """Per proposition: agreement of P(yes) > 0.5 with the human label, over labelled replies;
    `majority` is the agreement of always answering the more common label, for scale, and `auc`
    the ROC AUC of P(yes) (threshold-free: a grader can separate well yet sit on the wrong side
    of 0.5; None when only one label occurs)."""
    from sklearn.metrics import roc_auc_score

    out = {}
    for k, name in enumerate(props.ids):
        rows = [i for i, r in enumerate(replies) if name in r.labels]
        if not rows:
            continue
        truth = np.array([replies[i].labels[name] for i in rows])
        said = probs[rows, k] > 0.5
        auc = float(roc_auc_score(truth, probs[rows, k])) if 0 < truth.sum() < len(truth) else None
        out[name] = {
            "accuracy": float((said == truth).mean()),
            "n": len(rows),
            "positives": int(truth.sum()),
            "majority": float(max(truth.mean(), 1 - truth.mean())),
            "auc": auc,
        }
    return out


def ranking_accuracy(
    model: RbrModel, replies: Sequence[Reply], probs: np.ndarray
) -> dict[str, Any]:
    """Per class and pooled: pairwise ordering accuracy of the reward against gold grades, over
    all pairs with different grades and over (best grade, worse) pairs only."""
    ranks = np.array(gold_ranks(model.propositions, replies))
    out: dict[str, Any] = {}
    totals = {"pairs": [0.0, 0], "ideal_pairs": [0.0, 0]}
    for cls in model.propositions.classes:
        rows = [i for i, r in enumerate(replies) if r.response_class == cls]
        if not rows:
            continue
        scores = model.score(cls, probs[rows])
        entry = {"replies": len(rows)}
        for key, best_only in (("pairs", False), ("ideal_pairs", True)):
            acc, n = pairwise_accuracy(scores, ranks[rows], best_only)
            entry[key] = {"accuracy": acc if n else None, "n": n}
            totals[key][0] += acc * n if n else 0.0
            totals[key][1] += n
        out[cls] = entry
    out["all"] = {k: {"accuracy": (s / n if n else None), "n": n} for k, (s, n) in totals.items()}
    return out


def gold_probs(props: Propositions, replies: Sequence[Reply]) -> np.ndarray:
    """The human labels as 0/1 'probabilities' (0.5 where unlabelled): a perfect grader."""
    return np.array(
        [[float(r.labels[n]) if n in r.labels else 0.5 for n in props.ids] for r in replies]
    )


def evaluate(
    props: Propositions,
    source: str,
    train: Sequence[Reply],
    test: Sequence[Reply],
    train_probs: np.ndarray,
    test_probs: np.ndarray,
    *,
    c: float = 1.0,
    seed: int = 0,
    model: RbrModel | None = None,
) -> tuple[RbrModel, dict[str, Any]]:
    """Fit on `train` (unless a fitted `model` is given) and report on `test`.

    Also reports the same fit on the human labels themselves (`with_gold_labels`): how well the
    rules and a linear reward can rank at all, the ceiling for a perfect grader.
    """
    if model is None:
        model = fit_model(props, source, train, train_probs, c=c, seed=seed)
    oracle = (
        fit_model(props, source, train, gold_probs(props, train), c=c, seed=seed) if train else None
    )
    metrics = {
        "replies": {"train": len(train), "test": len(test)},
        "propositions": proposition_accuracy(props, test, test_probs),
        "ranking": ranking_accuracy(model, test, test_probs),
    }
    for key in ("accuracy", "majority", "auc"):
        values = [v[key] for v in metrics["propositions"].values() if v[key] is not None]
        metrics[f"proposition_{key}_mean"] = float(np.mean(values)) if values else None
    if oracle is not None:
        metrics["ranking_with_gold_labels"] = ranking_accuracy(
            oracle, test, gold_probs(props, test)
        )["all"]
    return model, metrics
