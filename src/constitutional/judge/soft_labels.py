"""Bradley–Terry with soft labels: the preference model's loss and its held-out metrics.

A preference model gives each (prompt, response) a scalar reward r. Bradley–Terry reads the
reward gap Δ = r_A - r_B as a logit: P(A preferred) = σ(Δ). RL-CAI labels are soft, p_A in
[0, 1] (the feedback model's normalised probability), so the loss is the binary cross-entropy
of σ(Δ) against p_A rather than TRL's hard-label -log σ(r_chosen - r_rejected):

    loss(Δ, p) = -(p log σ(Δ) + (1 - p) log σ(-Δ)) = p softplus(-Δ) + (1 - p) softplus(Δ)

Its gradient is σ(Δ) - p: zero exactly when the model's probability matches the label, so a
0.5 label pulls the two rewards together instead of apart. With p = 1 it is TRL's loss.

`soft_bce` is the torch loss used in training; the metrics below are plain Python over lists,
so they can be checked by hand.
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def soft_bce(delta, p_a):
    """Mean BCE-with-logits of reward gaps `delta` against soft labels `p_a` (torch tensors)."""
    import torch.nn.functional as F

    return F.binary_cross_entropy_with_logits(delta.float(), p_a.float())


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


def softplus(x: float) -> float:
    """log(1 + e^x) without overflow."""
    return max(x, 0.0) + math.log1p(math.exp(-abs(x)))


def bce(delta: float, p: float) -> float:
    """loss(Δ, p) for one pair. bce(0, p) = log 2 for every p; bce(log 3, 1) = log(4/3)."""
    return p * softplus(-delta) + (1.0 - p) * softplus(delta)


def preference_metrics(deltas: Sequence[float], p_a: Sequence[float], bins: int = 10) -> dict:
    """Held-out quality of reward gaps against soft labels.

    accuracy: share of pairs with a majority side (p_a != 0.5) where Δ > 0 exactly when
        p_a > 0.5; None if every label is a tie.
    mean_bce: mean of `bce(Δ, p_a)` over all pairs (ties included).
    ece: expected calibration error of σ(Δ): pairs are binned by σ(Δ) into `bins` equal-width
        bins, and each bin contributes |mean σ(Δ) - mean p_a| weighted by its share of pairs.
    calibration: the non-empty bins as {lo, hi, n, mean_pred, mean_label} (a reliability table).
    """
    if len(deltas) != len(p_a):
        raise ValueError("deltas and p_a differ in length")
    n = len(deltas)
    if n == 0:
        return {
            "pairs": 0,
            "decisive": 0,
            "accuracy": None,
            "mean_bce": None,
            "ece": None,
            "calibration": [],
        }
    decisive = [(d, p) for d, p in zip(deltas, p_a) if p != 0.5]
    correct = sum((d > 0) == (p > 0.5) for d, p in decisive)
    preds = [sigmoid(d) for d in deltas]
    table, ece = [], 0.0
    for b in range(bins):
        lo, hi = b / bins, (b + 1) / bins
        members = [
            (q, p) for q, p in zip(preds, p_a) if lo <= q < hi or (b == bins - 1 and q == 1.0)
        ]
        if not members:
            continue
        mean_pred = sum(q for q, _ in members) / len(members)
        mean_label = sum(p for _, p in members) / len(members)
        ece += len(members) / n * abs(mean_pred - mean_label)
        table.append(
            {
                "lo": lo,
                "hi": hi,
                "n": len(members),
                "mean_pred": mean_pred,
                "mean_label": mean_label,
            }
        )
    return {
        "pairs": n,
        "decisive": len(decisive),
        "accuracy": correct / len(decisive) if decisive else None,
        "mean_bce": sum(bce(d, p) for d, p in zip(deltas, p_a)) / n,
        "ece": ece,
        "calibration": table,
    }
