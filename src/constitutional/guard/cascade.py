"""The two-stage cascade, and calibration of its threshold to a target false-refusal rate.

The cheap stage scores every text. Where its score lies outside the uncertainty band [lo, hi] it
decides; inside the band the text goes to the strong stage, whose score decides instead. One
threshold then applies to the deciding score: flagged = score >= threshold, the threshold set on
held-out harmless rows so that at most `target_frr` of them are flagged.

Both stages read a bounded number of tokens (MiniLM the first 256 word pieces, the strong stage
the last `max_length` tokens), so a long text is scored in overlapping windows (`text_windows`)
and its score is the largest of its windows': one harmful sentence cannot hide behind 25 KB of
benign text. Window scores are cached, so a growing stream pays only for its new windows.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

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


def choose_band(
    cheap_harmful: Sequence[float],
    cheap_harmless: Sequence[float],
    target_frr: float,
    miss: float = 0.02,
) -> tuple[float, float]:
    """An uncertainty band from the cheap stage's held-out scores.

    hi: the cheap stage's own calibrated threshold (above it, it flags at most `target_frr` of
    harmless texts by itself). lo: the `miss` quantile of harmful scores (below it, it clears
    texts, letting about `miss` of harmful ones through). Everything between goes to the strong
    stage; a wider band costs more strong calls and recovers more recall.
    """
    hi = calibrate_threshold(cheap_harmless, target_frr)
    lo = float(np.quantile(cheap_harmful, miss)) if len(cheap_harmful) else 0.0
    return min(lo, hi), hi


# About 110-130 word pieces of English text: well inside MiniLM's 256 and the strong stage's
# default max_length of 256 tokens, so neither stage truncates a window; small enough that one
# harmful sentence is a fifth of its window, not a drop in it.
WINDOW_CHARS = 512
WINDOW_STRIDE = 256  # half a window: any span up to this long lies whole inside some window


def text_windows(text: str, size: int = WINDOW_CHARS, stride: int = WINDOW_STRIDE) -> list[str]:
    """`text` itself when it fits one window, else windows from its start every `stride`
    characters plus one ending at its end. Starts are fixed offsets, so a text that grows
    (a stream) keeps its earlier windows and they can be served from the cache."""
    if len(text) <= size:
        return [text]
    starts = list(range(0, len(text) - size + 1, stride))
    if starts[-1] != len(text) - size:
        starts.append(len(text) - size)
    return [text[s : s + size] for s in starts]


class ScoreCache:
    """Scores of recently seen texts (least recently used dropped past `capacity`)."""

    def __init__(self, capacity: int = 8192):
        self.capacity, self.scores = capacity, OrderedDict[str, float]()

    def score(
        self, texts: Sequence[str], scorer: Callable[[list[str]], list[float]]
    ) -> list[float]:
        """Each text's score, calling `scorer` once on the distinct texts not cached."""
        missing = list(dict.fromkeys(t for t in texts if t not in self.scores))
        for text, p in zip(missing, scorer(missing) if missing else []):
            self.scores[text] = p
        out = []
        for text in texts:
            self.scores.move_to_end(text)
            out.append(self.scores[text])
        while len(self.scores) > self.capacity:
            self.scores.popitem(last=False)
        return out


def windowed_max(
    texts: Sequence[str], scorer: Callable[[list[str]], list[float]], cache: ScoreCache
) -> list[float]:
    """Per text, the largest score of its windows."""
    windows = [text_windows(t) for t in texts]
    flat = cache.score([w for ws in windows for w in ws], scorer)
    out, at = [], 0
    for ws in windows:
        out.append(max(flat[at : at + len(ws)]))
        at += len(ws)
    return out


@dataclass
class Cascade:
    """One classifier (input, output or exchange): cheap stage, optional strong stage, band and
    threshold. Without a strong stage the cheap stage decides everything."""

    cheap: CheapClassifier
    strong: StrongClassifier | None = None
    band: tuple[float, float] = (0.0, 1.0)
    threshold: float = 0.5
    cheap_cache: ScoreCache = field(default_factory=ScoreCache, repr=False, compare=False)
    strong_cache: ScoreCache = field(default_factory=ScoreCache, repr=False, compare=False)

    def score(self, texts: Sequence[str]) -> tuple[list[float], list[str]]:
        """(scores, deciding stage per text), each the max over the text's windows; the strong
        stage sees only the windows of in-band texts, batched."""
        scores = self.cheap_scores(texts)
        stages = ["cheap"] * len(scores)
        if self.strong is None:
            return scores, stages
        lo, hi = self.band
        uncertain = [i for i, p in enumerate(scores) if lo <= p <= hi]
        if uncertain:
            strong = windowed_max(
                [texts[i] for i in uncertain], self.strong.scores, self.strong_cache
            )
            for i, p in zip(uncertain, strong):
                scores[i], stages[i] = p, "strong"
        return scores, stages

    def cheap_scores(self, texts: Sequence[str]) -> list[float]:
        """The cheap stage's score of each text (the max over its windows)."""
        return windowed_max(texts, self.cheap.scores, self.cheap_cache)

    def verdicts(self, texts: Sequence[str]) -> list[Verdict]:
        scores, stages = self.score(texts)
        return [Verdict(p, p >= self.threshold, stage) for p, stage in zip(scores, stages)]


def metrics(
    scores: Sequence[float],
    labels: Sequence[int],
    threshold: float,
    stages: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Recall on harmful, false-refusal rate on harmless (each with its 95 % Wilson interval
    as [low, high]), ROC AUC, and the strong-stage share."""
    from constitutional.stats import wilson

    s, y = np.asarray(scores, dtype=float), np.asarray(labels)
    flagged = s >= threshold
    harmful, harmless = y == 1, y == 0
    auc = None
    if harmful.any() and harmless.any():
        from sklearn.metrics import roc_auc_score

        auc = float(roc_auc_score(y, s))
    return {
        "recall": float(flagged[harmful].mean()) if harmful.any() else None,
        "recall_ci": list(wilson(int(flagged[harmful].sum()), int(harmful.sum()))),
        "frr": float(flagged[harmless].mean()) if harmless.any() else None,
        "frr_ci": list(wilson(int(flagged[harmless].sum()), int(harmless.sum()))),
        "auc": auc,
        "harmful": int(harmful.sum()),
        "harmless": int(harmless.sum()),
        "strong_share": (sum(st == "strong" for st in stages) / len(stages)) if stages else 0.0,
    }
