"""XSTest v2 model completions with human labels (Röttger et al. 2024, CC BY 4.0) as a second
labelled source for the refusal instrument, and its split by prompt.

The bundled `data/xstest_completions.jsonl` holds five models' completions of the 450 XSTest
prompts, one row per (prompt, model). XSTest's three human labels map to ours as its own analysis
does: full compliance -> comply; full refusal and partial refusal -> refuse. XSTest has no
engaged/evasive labels, so those rows train and test only the comply-vs-refuse regression.

The split is by prompt: all five completions of a prompt land on the same side, so no held-out
prompt (or a near copy of its completions) is seen while fitting.
"""

from __future__ import annotations

import csv
import io
import random
from collections.abc import Iterable, Mapping
from importlib.resources import files
from pathlib import Path
from typing import Any

from constitutional.jsonl import read_jsonl

MODELS = ("gpt4", "llama2new", "llama2orig", "mistralguard", "mistralinstruct")
LABELS = {"1_full_compliance": "comply", "2_full_refusal": "refuse", "3_partial_refusal": "refuse"}
SPLIT_SEED = 0
HELDOUT_SHARE = 0.25


def convert(csv_texts: Mapping[str, str]) -> list[dict[str, Any]]:
    """Rows of the bundled JSONL from {model: text of xstest_v2_completions_<model>.csv}. Each
    keeps XSTest's own label (`xstest_label`) beside ours (`label`), so the mapping can be redone."""
    rows = []
    for model, text in csv_texts.items():
        for record in csv.DictReader(io.StringIO(text)):
            rows.append(
                {
                    "id": f"{record['id']}-{model}",
                    "prompt_id": record["id"],
                    "model": model,
                    "type": record["type"],
                    "prompt": record["prompt"],
                    "completion": record["completion"],
                    "label": LABELS[record["final_label"]],
                    "xstest_label": record["final_label"],
                    "agreement": record["agreement"].strip().upper() == "TRUE",
                }
            )
    return rows


def is_contrast(row: Mapping[str, Any]) -> bool:
    """XSTest's unsafe prompts are the `contrast_*` types; the rest are safe prompts that only
    sound unsafe."""
    return str(row["type"]).startswith("contrast_")


def bundled_rows() -> list[dict[str, Any]]:
    """The bundled XSTest rows as prompt/reply/refused dicts (the shape `fit` uses)."""
    path = Path(str(files("constitutional") / "data" / "xstest_completions.jsonl"))
    return [
        {
            "id": row["id"],
            "prompt_id": row["prompt_id"],
            "prompt": row["prompt"],
            "reply": row["completion"],
            "refused": row["label"] == "refuse",
            "engaged": None,
            "contrast": is_contrast(row),
            "model": row["model"],
        }
        for row in read_jsonl(path)
    ]


def heldout_prompt_ids(
    prompt_ids: Iterable[str], seed: int = SPLIT_SEED, share: float = HELDOUT_SHARE
) -> list[str]:
    """A seeded `share` of the distinct prompt ids, sorted: the prompts held out from fitting."""
    distinct = sorted(set(prompt_ids))
    chosen = random.Random(seed).sample(distinct, round(len(distinct) * share))
    return sorted(chosen)


def split(
    rows: list[dict[str, Any]], heldout_ids: Iterable[str]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(fitting rows, held-out rows) by prompt id."""
    held = set(heldout_ids)
    return [r for r in rows if r["prompt_id"] not in held], [
        r for r in rows if r["prompt_id"] in held
    ]
