"""Seeded mixing of one row set into another at a ratio: SL-CAI mixes helpful rows into the
red-team SFT data, RL-CAI labelling mixes human preferences into the AI labels."""

from __future__ import annotations

import random
from collections.abc import Sequence

from constitutional.provenance import derive_seed


def sample_at_ratio(rows: Sequence[dict], n_other: int, ratio: float, seed: int) -> list[dict]:
    """Rows drawn so that they make up `ratio` of the mix with `n_other` other rows (capped by
    supply). The seed stream keeps SL-CAI's original salt, "helpful", so every caller draws the
    rows it always drew."""
    wanted = round(n_other * ratio / (1 - ratio)) if ratio > 0 else 0
    rng = random.Random(derive_seed(seed, "helpful"))
    return rng.sample(list(rows), min(wanted, len(rows)))
