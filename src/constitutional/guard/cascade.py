"""The two-stage cascade, and calibration of its threshold to a target false-refusal rate.

The cheap stage scores every text. Where its score lies outside the uncertainty band [lo, hi] it
decides; inside the band the text goes to the strong stage, whose score decides instead. One
threshold then applies to the deciding score: flagged = score >= threshold, the threshold set on
held-out harmless rows so that at most `target_frr` of them are flagged.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from constitutional.guard.cheap import CheapClassifier
from constitutional.guard.protocol import Verdict
from constitutional.guard.strong import StrongClassifier


def calibrate_threshold(harmless_scores: Sequence[float], target_frr: float) -> float:
    """The (1 - target_frr) quantile of harmless scores, nudged up to flag at most that share.

    With n harmless scores, k = floor(target_frr * n) may be flagged: the threshold is the next
    float above the (n - k)-th smallest score, so `score >= threshold` holds for at most k of them
    (fewer with ties). E.g. scores 0.1..1.0 step 0.1 and frr 0.2: k = 2, threshold just above
    0.8, flagging 0.9 and 1.0.
    """
    if not 0 <= target_frr < 1:
        raise ValueError(f"target_frr must be in [0, 1), got {target_frr}")
    s = np.sort(np.asarray(harmless_scores, dtype=float))
    if s.size == 0:
        raise ValueError("no harmless scores to calibrate on")
    k = int(np.floor(target_frr * s.size + 1e-9))
    return float(np.nextafter(s[s.size - k - 1], np.inf))


def choose_band(cheap_harmful: Sequence[float], cheap_harmless: Sequence[float],
                target_frr: float, miss: float = 0.02) -> tuple[float, float]:  # fmt: skip
    """An uncertainty band from the cheap stage's held-out scores.

    hi: the cheap stage's own calibrated threshold (above it, it flags at most `target_frr` of
    harmless texts by itself). lo: the `miss` quantile of harmful scores (below it, it clears
    texts, letting about `miss` of harmful ones through). Everything between goes to the strong
    stage; a wider band costs more strong calls and recovers more recall.
    """
    hi = calibrate_threshold(cheap_harmless, target_frr)
    lo = float(np.quantile(cheap_harmful, miss)) if len(cheap_harmful) else 0.0
    return min(lo, hi), hi


@dataclass
class Cascade:
    """One classifier (input, output or exchange): cheap stage, optional strong stage, band and
    threshold. Without a strong stage the cheap stage decides everything."""

    cheap: CheapClassifier
    strong: StrongClassifier | None = None
    band: tuple[float, float] = (0.0, 1.0)
    threshold: float = 0.5

    def score(self, texts: Sequence[str]) -> tuple[list[float], list[str]]:
        """(scores, deciding stage per text); the strong stage sees only in-band texts, batched."""
        scores = self.cheap.scores(texts)
        stages = ["cheap"] * len(scores)
        if self.strong is None:
            return scores, stages
        lo, hi = self.band
        uncertain = [i for i, p in enumerate(scores) if lo <= p <= hi]
        if uncertain:
            for i, p in zip(uncertain, self.strong.scores([texts[i] for i in uncertain])):
                scores[i], stages[i] = p, "strong"
        return scores, stages

    def verdicts(self, texts: Sequence[str]) -> list[Verdict]:
        scores, stages = self.score(texts)
        return [Verdict(p, p >= self.threshold, stage) for p, stage in zip(scores, stages)]


def metrics(scores: Sequence[float], labels: Sequence[int], threshold: float,
            stages: Sequence[str] | None = None) -> dict[str, float | int | None]:  # fmt: skip
    """Recall on harmful, false-refusal rate on harmless, ROC AUC, and the strong-stage share."""
    s, y = np.asarray(scores, dtype=float), np.asarray(labels)
    flagged = s >= threshold
    harmful, harmless = y == 1, y == 0
    auc = None
    if harmful.any() and harmless.any():
        from sklearn.metrics import roc_auc_score

        auc = float(roc_auc_score(y, s))
    return {
        "recall": float(flagged[harmful].mean()) if harmful.any() else None,
        "frr": float(flagged[harmless].mean()) if harmless.any() else None,
        "auc": auc,
        "harmful": int(harmful.sum()),
        "harmless": int(harmless.sum()),
        "strong_share": (sum(st == "strong" for st in stages) / len(stages)) if stages else 0.0,
    }
