"""A fitted rule-based reward: the propositions it grades and one weight vector per class.

Saved as JSON by `cai rbr fit`; `cai rbr score` and `--reward pm+rbr` load it. The file records
the propositions file (path and content hash) so a changed YAML cannot silently pair with stale
weights.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from constitutional.errors import UserError
from constitutional.jsonl import write_json
from constitutional.rbr.fit import feature_names, features
from constitutional.rbr.propositions import Propositions, load_propositions

KIND = "constitutional.rbr"


@dataclass
class RbrModel:
    """Weights per response class over `fit.features`; score = w · f (higher is better).

    A class with no weights (its training replies all had one grade) scores by the probability
    that its best rule holds, the rules' own verdict.
    """

    propositions: Propositions
    source: str
    weights: dict[str, list[float]]
    metrics: dict[str, Any] = field(default_factory=dict)

    def score(self, cls: str, probs: np.ndarray) -> np.ndarray:
        """(n,) rewards for replies to `cls` requests, from their (n, n_propositions) P(yes)."""
        x = features(self.propositions, cls, probs)
        w = self.weights.get(cls)
        if w is None:
            return x[:, len(self.propositions.ids)]  # the first rule: the best grade's conditions
        return x @ np.asarray(w)

    def to_dict(self) -> dict[str, Any]:
        p = self.propositions
        return {
            "kind": KIND,
            "propositions": self.source,
            "propositions_hash": p.hash,
            "grades": p.grades,
            "features": {cls: feature_names(p, cls) for cls in self.weights},
            "weights": self.weights,
            "metrics": self.metrics,
        }

    def save(self, path: str | Path) -> None:
        write_json(path, self.to_dict())


def load_rbr(path: str | Path) -> RbrModel:
    """Read weights written by `cai rbr fit`, with their propositions file (checked by hash)."""
    path = Path(path)
    if not path.is_file():
        raise UserError("no such file", path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"not a fitted RBR (invalid JSON: {e})", path) from None
    if not isinstance(data, dict) or data.get("kind") != KIND:
        raise UserError("not a fitted RBR from `cai rbr fit`", path)
    props = load_propositions(data["propositions"])
    if props.hash != data["propositions_hash"]:
        raise UserError(
            f"{data['propositions']} changed since these weights were fitted; refit them", path
        )
    for cls, w in data["weights"].items():
        if cls not in props.rules or len(w) != len(feature_names(props, cls)):
            raise UserError(f"weights for {cls!r} do not match the propositions file", path)
    return RbrModel(props, data["propositions"], data["weights"], data.get("metrics", {}))
