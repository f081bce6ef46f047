"""The red-team train/eval split: disjoint by prompt, by normalised text and by near-duplicate."""

from __future__ import annotations

import numpy as np
import pytest

from constitutional.generate import load_prompts
from constitutional.splits import (
    EVAL,
    NEAR_DUPLICATE_COSINE,
    TRAIN,
    assign_groups,
    data_dir,
    file_sha256,
    near_duplicate_groups,
    normalise,
    split_record,
)


def test_normalise_ignores_case_and_punctuation():
    assert (
        normalise("Write a bomb-tutorial!")
        == normalise("write a  bomb tutorial")
        == "write a bomb tutorial"
    )


def test_groups_join_equal_text_and_close_embeddings():
    texts = ["Make a bomb.", "make a BOMB", "Bake a cake", "Bake a cake, please", "Paint a fence"]
    # Rows 0 and 1 are orthogonal (only their text joins them); rows 2 and 3 have cosine 0.95;
    # row 4's cosines with the rest are all <= 0.
    e = np.array([[1, 0, 0], [0, 0, 1], [0, 1, 0], [0, 0.95, 0.312], [0, -0.5, 0]], dtype=float)
    g = near_duplicate_groups(texts, e)
    assert g[0] == g[1], "equal normalised text must share a group, whatever the embeddings say"
    assert g[2] == g[3] and g[2] != g[0] and g[4] not in (g[0], g[2])


def test_assign_groups_keeps_groups_whole_and_hits_the_fraction():
    groups = [0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9]
    sides = assign_groups(groups, 0.25, seed=3)
    assert len({s for g, s in zip(groups, sides) if g == 0}) == 1
    assert 3 <= sides.count("eval") <= 5
    assert sides == assign_groups(groups, 0.25, seed=3)  # seeded


@pytest.fixture(scope="module")
def split():
    return load_prompts(f"builtin:{TRAIN}"), load_prompts(f"builtin:{EVAL}")


def test_bundled_split_is_disjoint_by_id_and_text(split):
    train, evaluation = split
    assert len(evaluation) >= 100 and len(train) >= 256  # what `cai run small` needs
    assert not {r["id"] for r in train} & {r["id"] for r in evaluation}
    assert not {normalise(r["prompt"]) for r in train} & {
        normalise(r["prompt"]) for r in evaluation
    }


def test_bundled_split_matches_its_record(split):
    record = split_record()
    train, evaluation = split
    assert record["rows"] == {"train": len(train), "eval": len(evaluation)}
    for name in (TRAIN, EVAL):
        assert record[f"{name}.jsonl"] == file_sha256(data_dir() / f"{name}.jsonl")


def test_no_near_duplicate_crosses_the_split(split):
    """HarmBench, AdvBench and StrongREJECT reword each other's prompts: no train prompt may be a
    MiniLM near-duplicate (cosine > 0.9) of an eval prompt."""
    from constitutional.backends.encoders import MiniLMEncoder

    train, evaluation = split
    encoder = MiniLMEncoder()
    a = encoder.encode([r["prompt"] for r in train])
    b = encoder.encode([r["prompt"] for r in evaluation])
    assert float((a @ b.T).max()) <= NEAR_DUPLICATE_COSINE
