"""Preference pairs from SL-CAI revisions, with no judge: the revision wins, the first answer loses.

The HuggingFace CAI recipe ("Constitutional AI with Open LLMs", 2024) builds its DPO data this
way: the constitution still drives every pair, through the critique and revision that made it,
but no feedback model has to tell A from B. That matters when the only feedback model at hand
is the embedded 135M one, whose A/B verdicts follow position, not preference (see
`cai audit judge`). Rows have the label file's layout, so `to_dpo_rows`, the preference model
and the report read them unchanged; `source: "revision"` says where each came from.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

from constitutional.judge.labels import hard_label
from constitutional.provenance import derive_seed, row_meta

ARTIFACT = "rl_cai_labels"
SCHEMA_VERSION = 1


def revision_pairs(traces: Sequence[dict], seed: int, constitution=None) -> list[dict[str, Any]]:
    """One hard-labelled pair per red-team trace whose kept revision differs from its first answer.

    A seeded coin puts the revision on side A (p_a = 1.0) or B (p_a = 0.0), so side carries no
    signal a model could learn instead of the content.
    """
    rng, meta = (
        random.Random(derive_seed(seed, "revision-side")),
        row_meta(ARTIFACT, SCHEMA_VERSION, constitution),
    )
    rows = []
    for t in traces:
        if (
            t["kind"] != "red_team"
            or t["discarded"]
            or t["final_response"].strip() == t["initial_response"].strip()
        ):
            continue
        revision_is_a = rng.random() < 0.5
        kept = [s["principle_id"] for s in t["rounds"] if not s["discarded"]]
        rows.append(
            hard_label(
                t["id"],
                "revision",
                t["prompt"],
                t["final_response"],
                t["initial_response"],
                revision_is_a,
                seed,
                meta,
                principle_ids=kept,
                mode="revision",
                policy_model=t.get("model"),
            )
        )
    return rows
