"""The cheap stage: a sentence encoder + scikit-learn logistic regression.

The encoders live in `backends.encoders` (the refusal instrument of eval uses them too). A saved
classifier records its encoder's name, and `make_encoder` rebuilds it on load.
"""

from __future__ import annotations

import pickle
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from constitutional.backends.encoders import Encoder, make_encoder
from constitutional.errors import UserError


class CheapClassifier:
    """Logistic regression on encoder features; `scores` are P(harmful) in [0, 1].

    Args:
        encoder: turns texts into features (shared across the three views of a guard).
        c: inverse L2 strength of the regression (sklearn's `C`; 0.1–100, larger fits harder).
    """

    def __init__(self, encoder: Encoder, c: float = 10.0, seed: int = 0):
        from sklearn.linear_model import LogisticRegression

        self.encoder = encoder
        self.model = LogisticRegression(
            C=c, max_iter=2000, class_weight="balanced", random_state=seed
        )

    def fit(self, texts: Sequence[str], labels: Sequence[int]) -> CheapClassifier:
        if len(set(labels)) < 2:
            raise UserError("the training split needs both harmful (1) and harmless (0) rows")
        self.model.fit(self.encoder.encode(texts), np.asarray(labels))
        return self

    def scores(self, texts: Sequence[str]) -> list[float]:
        if not texts:
            return []
        return self.model.predict_proba(self.encoder.encode(texts))[:, 1].tolist()

    def save(self, path: Path) -> None:
        # Only the fitted regression (a few arrays) is pickled; the encoder is recorded by name.
        path.write_bytes(pickle.dumps({"encoder": self.encoder.name, "model": self.model}))

    @classmethod
    def load(cls, path: Path, encoder: Encoder | None = None) -> CheapClassifier:
        """Load a saved classifier; pass `encoder` to share one already loaded across views.
        The file is a pickle: load only guard directories you trust."""
        state = pickle.loads(path.read_bytes())
        encoder = encoder or make_encoder(state["encoder"])
        if encoder.name != state["encoder"]:
            raise UserError(
                f"classifier was trained on {state['encoder']!r} features, not {encoder.name!r}",
                path,
            )
        clf = cls.__new__(cls)
        clf.encoder, clf.model = encoder, state["model"]
        return clf
