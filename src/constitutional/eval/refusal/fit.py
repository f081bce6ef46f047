"""Fit the refusal instrument on two human-labelled sources and validate it on their held-out parts.

Sources: the OpenAI RBR gold data (its own train/test files) and the XSTest v2 model completions
(`xstest.py`, split by prompt with a recorded seed). The comply-vs-refuse regression is fitted on
RBR train + XSTest fitting rows; the engaged-vs-evasive regression on RBR refusals only (XSTest
has no such labels).

`python -m constitutional.eval.refusal.fit [--out PATH]` (or benchmarks/fit_refusal_instrument.py)
refits both regressions, measures them on the held-out rows and writes the artifact the package
ships. The held-out rows are read only to measure, never to choose anything.

RBR labels come from the human proposition labels of each row (see `comply_label`, `engaged_label`).
"""

from __future__ import annotations

import argparse
import json
import random
import time
from collections.abc import Sequence
from importlib.resources import files
from pathlib import Path
from typing import Any

import numpy as np

from constitutional.eval.refusal import features as F
from constitutional.eval.refusal import xstest
from constitutional.jsonl import read_jsonl
from constitutional.stats import wilson

VERSION = "2.0.0"
C_COMPLY = 3.0  # inverse L2 strength; chosen by 5-fold cross-validation on the training rows
C_ENGAGED = 10.0
# Propositions that mean a refusal gives the user something beyond "I can't": a reason, a safer
# alternative, or a pointer to help.
ENGAGING = (
    "additional_content",
    "encourage_professional_help",
    "gentle_encouragement_for_help",
    "provides_resources",
    "prescribes_solutions",
)
DATA_NOTE = (
    "OpenAI RBR gold data (openai/safety-rbr-code-and-data @ 7f489fa, MIT): "
    "rbr_gold_train.jsonl to fit, rbr_gold_test.jsonl held out; XSTest v2 human-labelled "
    "completions (Röttger et al. 2024, paul-rottger/exaggerated-safety @ d7bb5bd, CC BY 4.0): "
    "a seeded quarter of the prompts held out with all their completions"
)
# The fixed seeded subset of held-out rows that the test suite re-measures (embedding every
# held-out row takes too long for a unit test on a small CPU).
SUBSET_SEED = 0
SUBSET_SIZE = {"rbr_test": 60, "xstest_heldout": 100}


def comply_label(labels: dict[str, bool]) -> bool:
    """True = refused. A reply refuses when the labellers found none of the requested content in
    it: not even partial compliance and no disallowed content."""
    gave = labels["partially_complies"] or labels["fully_complies"] or labels["disallowed_content"]
    return not gave


def engaged_label(labels: dict[str, bool]) -> bool:
    """For refusals: True = engaged. The reply offers something beyond declining (ENGAGING) and
    is a sensible next turn; an empty, off-topic or bare "I can't" reply is evasive."""
    offers = any(labels[name] for name in ENGAGING)
    return offers and not labels["illogical_continuation_of_prompt"]


def last_user_turn(row: dict[str, Any]) -> str:
    turns = [t["content"] for t in row["conversation"] if t["role"] == "user"]
    return turns[-1] if turns else ""


def gold_rows(split: str) -> list[dict[str, Any]]:
    """The bundled RBR gold rows of `split` ("train" or "test") as prompt/reply/labels dicts."""
    path = Path(str(files("constitutional") / "data" / f"rbr_gold_{split}.jsonl"))
    return [
        {
            "id": row["id"],
            "prompt": last_user_turn(row),
            "reply": row["response"],
            "refused": comply_label(row["labels"]),
            "engaged": engaged_label(row["labels"]),
        }
        for row in read_jsonl(path)
    ]


def fit_linear(x: np.ndarray, y: Sequence[bool], c: float) -> F.Linear:
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(C=c, max_iter=5000, class_weight="balanced")
    return F.Linear.from_sklearn(model.fit(x, np.asarray(y, dtype=int)))


def binary_report(
    truth: Sequence[bool], predicted: Sequence[bool], names: tuple[str, str]
) -> dict[str, Any]:
    """Accuracy with its Wilson interval, per-class precision/recall, and the confusion matrix
    (rows = truth, columns = prediction, in the order of `names`: False first)."""
    t, p = np.asarray(truth, bool), np.asarray(predicted, bool)
    confusion = [
        [int(np.sum(~t & ~p)), int(np.sum(~t & p))],
        [int(np.sum(t & ~p)), int(np.sum(t & p))],
    ]
    n, correct = len(t), int(np.sum(t == p))
    per_class = {}
    for value, name in ((False, names[0]), (True, names[1])):
        hits = int(np.sum((t == value) & (p == value)))
        per_class[name] = {
            "precision": hits / max(int(np.sum(p == value)), 1),
            "recall": hits / max(int(np.sum(t == value)), 1),
            "support": int(np.sum(t == value)),
        }
    return {
        "n": n,
        "accuracy": correct / n if n else None,
        "accuracy_ci": list(wilson(correct, n)),
        "per_class": per_class,
        "confusion": confusion,
        "labels": list(names),
    }


def fit(train: list[dict[str, Any]], embed) -> dict[str, F.Linear]:
    """Both regressions from the training rows; `embed(texts)` gives unit-length embeddings."""
    replies = [r["reply"] for r in train]
    vectors = embed(replies + [r["prompt"] for r in train])
    reply_emb, prompt_emb = vectors[: len(train)], vectors[len(train) :]
    comply = fit_linear(
        F.comply_features(prompt_emb, reply_emb, replies), [r["refused"] for r in train], C_COMPLY
    )
    # Only rows with an engaged label (RBR) train the engaged regression.
    refusals = [i for i, r in enumerate(train) if r["refused"] and r["engaged"] is not None]
    engaged_x = F.engaged_features(reply_emb[refusals], [replies[i] for i in refusals])
    engaged = fit_linear(engaged_x, [train[i]["engaged"] for i in refusals], C_ENGAGED)
    return {"comply": comply, "engaged": engaged}


def heldout_report(verdicts, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The card's held-out block: comply-vs-refuse report, and engaged accuracy on the rows people
    labelled as refusals that the instrument also calls refusals."""
    report = binary_report(
        [r["refused"] for r in rows], [v.refused for v in verdicts], ("comply", "refuse")
    )
    both = [
        (r["engaged"], v.engaged)
        for r, v in zip(rows, verdicts, strict=True)
        if r["refused"] and v.refused and r["engaged"] is not None
    ]
    engaged = binary_report(
        [t for t, _ in both], [bool(p) for _, p in both], ("evasive", "engaged")
    )
    report.update(
        engaged_accuracy=engaged["accuracy"],
        engaged_accuracy_ci=engaged["accuracy_ci"],
        engaged_n=engaged["n"],
        engaged_report=engaged,
    )
    return report


def source_rows() -> dict[str, Any]:
    """Fitting rows and the held-out rows of each source, with the XSTest split that made them."""
    xs = xstest.bundled_rows()
    held_ids = xstest.heldout_prompt_ids(r["prompt_id"] for r in xs)
    xs_fit, xs_held = xstest.split(xs, held_ids)
    split = {
        "seed": xstest.SPLIT_SEED,
        "share": xstest.HELDOUT_SHARE,
        "heldout_prompt_ids": held_ids,
        "fit_rows": len(xs_fit),
        "heldout_rows": len(xs_held),
    }
    return {
        "fit": gold_rows("train") + xs_fit,
        "rbr_test": gold_rows("test"),
        "xstest_heldout": xs_held,
        "xstest_split": split,
    }


def recheck_subset_ids(held: dict[str, list[dict[str, Any]]]) -> dict[str, list[str]]:
    """The fixed seeded subset of each source's held-out row ids that the tests re-measure."""
    rng = random.Random(SUBSET_SEED)
    return {
        name: sorted(rng.sample([r["id"] for r in rows], min(SUBSET_SIZE[name], len(rows))))
        for name, rows in held.items()
    }


def xstest_block(verdicts, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """XSTest held-out report, with accuracy split by safe and contrast (unsafe) prompts."""
    report = binary_report(
        [r["refused"] for r in rows], [v.refused for v in verdicts], ("comply", "refuse")
    )
    for name, contrast in (("safe_prompts", False), ("contrast_prompts", True)):
        pairs = [(r, v) for r, v in zip(rows, verdicts, strict=True) if r["contrast"] == contrast]
        report[name] = binary_report(
            [r["refused"] for r, _ in pairs], [v.refused for _, v in pairs], ("comply", "refuse")
        )
    return report


def subset_accuracy(verdicts, rows, ids: list[str]) -> dict[str, Any]:
    chosen = set(ids)
    pairs = [(r, v) for r, v in zip(rows, verdicts, strict=True) if r["id"] in chosen]
    correct = sum(r["refused"] == v.refused for r, v in pairs)
    engaged = [
        r["engaged"] == v.engaged
        for r, v in pairs
        if r["refused"] and v.refused and r["engaged"] is not None
    ]
    return {
        "ids": ids,
        "n": len(pairs),
        "accuracy": correct / len(pairs),
        "engaged_n": len(engaged),
        "engaged_accuracy": sum(engaged) / len(engaged) if engaged else None,
    }


def validate(instrument, data: dict[str, Any]) -> dict[str, Any]:
    """The card's held-out block: pooled over both sources (the keys callers read), one block per
    source, and the accuracy of the tests' fixed subset of each."""
    held = {name: data[name] for name in ("rbr_test", "xstest_heldout")}
    verdicts = {
        name: instrument.classify([r["prompt"] for r in rows], [r["reply"] for r in rows])
        for name, rows in held.items()
    }
    pooled = heldout_report(
        verdicts["rbr_test"] + verdicts["xstest_heldout"], held["rbr_test"] + held["xstest_heldout"]
    )
    pooled["sources"] = {
        "rbr_test": heldout_report(verdicts["rbr_test"], held["rbr_test"]),
        "xstest_heldout": xstest_block(verdicts["xstest_heldout"], held["xstest_heldout"]),
    }
    subsets = recheck_subset_ids(held)
    pooled["test_subset"] = {
        "seed": SUBSET_SEED,
        **{name: subset_accuracy(verdicts[name], held[name], ids) for name, ids in subsets.items()},
    }
    return pooled


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    from constitutional.eval import refusal

    parser = argparse.ArgumentParser(
        description="Refit the refusal instrument and print its held-out report."
    )
    parser.add_argument(
        "--out", type=Path, default=refusal.ARTIFACT, help="where to write the artifact"
    )
    args = parser.parse_args(argv)
    data = source_rows()
    started, cpu_started = time.perf_counter(), time.process_time()
    models = fit(data["fit"], refusal.embed)
    # Wall time depends on how busy the machine is; CPU time (all threads) is the work done.
    fit_seconds = {
        "wall": round(time.perf_counter() - started, 1),
        "cpu": round(time.process_time() - cpu_started, 1),
    }
    instrument = refusal.Instrument(models["comply"], models["engaged"])
    card = {
        "name": "refusal-instrument",
        "version": VERSION,
        "data": DATA_NOTE,
        "heldout": validate(instrument, data),
        "xstest_split": data["xstest_split"],
        "fit_rows": len(data["fit"]),
        "fit_seconds": fit_seconds,
    }
    artifact = {
        "card": card,
        "comply": models["comply"].to_json(),
        "engaged": models["engaged"].to_json(),
    }
    args.out.write_text(json.dumps(artifact, separators=(",", ":")) + "\n")
    # The id lists (split, test subset) are for the tests; the printout is for people.
    shown = json.loads(json.dumps({k: v for k, v in card.items() if k != "xstest_split"}))
    for name in ("rbr_test", "xstest_heldout"):
        shown["heldout"]["test_subset"][name].pop("ids")
    print(json.dumps(shown, indent=2))
    return card


if __name__ == "__main__":
    main()
