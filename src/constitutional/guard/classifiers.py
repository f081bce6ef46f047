"""Constitutional classifiers: three cascades (input, output, exchange) behind the `Guard` protocol.

    cai guard train --data guard.jsonl --out guard/ [--base embedded] [--no-strong] [--target-frr 0.01]
    cai guard eval --model guard/ --data guard.jsonl

Each classifier is the same machinery (`guard/cascade.py`) on one text view (`guard/views.py`):
a MiniLM + logistic-regression cheap stage, a LoRA-tuned small LM strong stage for the cases the
cheap stage is unsure of, and a threshold calibrated on held-out harmless rows to a target
false-refusal rate. `out/` holds guard.json (thresholds, bands, constitution hash, held-out
metrics), `{view}/cheap.pkl` and, with the strong stage, `{view}/strong/` (adapter + head).
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

from constitutional.backends.base import Message
from constitutional.errors import UserError
from constitutional.guard.cascade import Cascade, calibrate_threshold, choose_band, metrics
from constitutional.guard.cheap import CheapClassifier, Encoder, make_encoder
from constitutional.guard.protocol import Verdict
from constitutional.guard.strong import StrongClassifier, train_strong
from constitutional.guard.views import (
    VIEWS,
    GuardRow,
    load_guard_rows,
    per_row_max,
    prefixes,
    view_rows,
    view_text,
)
from constitutional.jsonl import write_json
from constitutional.train.sft import base_reference, publish_dir, sha256_file, staging_dir

SCHEMA = "cai.guard/1"


class TrainedGuard:
    """A trained guard: `check_input` runs the input cascade, `check_output` the output and
    exchange cascades on the response so far (the more alarming verdict wins)."""

    def __init__(self, cascades: dict[str, Cascade], constitution_hash: str, meta: dict[str, Any] | None = None):
        self.cascades, self.constitution_hash, self.meta = cascades, constitution_hash, meta or {}

    def check_input(self, messages: list[Message]) -> Verdict:
        return self.cascades["input"].verdicts([view_text("input", _plain(messages), None)])[0]

    def check_output(self, messages: list[Message], response_so_far: str) -> Verdict:
        turns = _plain(messages)
        output = self.cascades["output"].verdicts([view_text("output", turns, response_so_far)])[0]
        exchange = self.cascades["exchange"].verdicts([view_text("exchange", turns, response_so_far)])[0]
        if output.flagged and not exchange.flagged:
            return output
        if output.flagged and exchange.flagged:
            return max(output, exchange, key=lambda v: v.score)
        return exchange

    def save(self, out: Path) -> None:
        """Write guard.json and each view's cheap stage into `out` (the strong stages are
        written by training, straight into `out/{view}/strong`)."""
        out.mkdir(parents=True, exist_ok=True)
        for view, cascade in self.cascades.items():
            (out / view).mkdir(exist_ok=True)
            cascade.cheap.save(out / view / "cheap.pkl")
        classifiers = {
            view: {"threshold": c.threshold, "band": list(c.band), "strong": c.strong is not None}
            for view, c in self.cascades.items()
        }
        write_json(out / "guard.json", {**self.meta, "schema": SCHEMA,
                                        "constitution_hash": self.constitution_hash,
                                        "classifiers": classifiers})  # fmt: skip

    @classmethod
    def load(cls, path: str | Path, *, encoder: Encoder | None = None, device: str | None = None) -> TrainedGuard:
        """Load a guard directory; `encoder` overrides the one it records (e.g. one already loaded)."""
        path = Path(path).expanduser()
        meta_path = path / "guard.json"
        if not meta_path.is_file():
            raise UserError("not a guard directory (no guard.json); train one with `cai guard train`", path)
        meta = json.loads(meta_path.read_text())
        if meta.get("schema") != SCHEMA:
            raise UserError(f"unsupported guard schema {meta.get('schema')!r}", meta_path)
        encoder = encoder or make_encoder(meta["encoder"])
        cascades = {}
        for view, c in meta["classifiers"].items():
            cheap = CheapClassifier.load(path / view / "cheap.pkl", encoder)
            strong = StrongClassifier.load(path / view / "strong", device) if c["strong"] else None
            cascades[view] = Cascade(cheap, strong, tuple(c["band"]), c["threshold"])
        return cls(cascades, meta["constitution_hash"], meta)


def train_guard(
    data: str | Path,
    out: str | Path,
    *,
    base: str = "embedded",
    strong: bool = True,
    target_frr: float = 0.01,
    encoder: str | Encoder = "minilm",
    band: tuple[float, float] | None = None,
    band_miss: float = 0.02,
    constitution: str | Path | None = None,
    strong_options: dict[str, Any] | None = None,
    seed: int = 0,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Train the input, output and exchange classifiers; writes a guard directory atomically.

    Args:
        data: `cai guard synth` rows (label 1 harmful / 0 harmless, split train / heldout).
        out: guard directory to create (refused if it exists and is not empty).
        base: the strong stage's base model: "embedded", a .gguf file or an HF model directory.
        strong: train the strong stage; without it the cheap stage decides everything.
        target_frr: share of held-out harmless rows each classifier may flag (0.001–0.1).
        encoder: the cheap stage's encoder, by name ("minilm", "hashing") or an `Encoder`.
        band: the cheap stage's uncertainty band [lo, hi]; default chosen by `choose_band`.
        band_miss: for the default band, the share of held-out harmful rows the cheap stage
            may clear on its own (0.005–0.1).
        constitution: the constitution the data came from (default: the packaged one, unless
            the rows carry `constitution_hash`).
        strong_options: keyword arguments for `train_strong` (epochs, max_steps, batch_size, ...).
        seed: seeds the regression and the strong stage.
        overwrite: replace an existing non-empty `out`.

    Returns:
        {"out", "wall_seconds", "classifiers": {view: held-out metrics + threshold + band}}.
    """
    started = time.monotonic()
    data, out = Path(data), Path(out)
    if not 0 <= target_frr < 1:
        raise UserError(f"target_frr must be in [0, 1), got {target_frr}")
    rows = load_guard_rows(data)
    check_guard_rows(rows, data)
    if out.exists() and (out.is_file() or any(out.iterdir())) and not overwrite:
        raise UserError("output exists and is not empty; pass --overwrite to replace it", out)
    enc = make_encoder(encoder) if isinstance(encoder, str) else encoder
    chash = _constitution_hash(data, constitution)

    tmp = staging_dir(out)
    try:
        cascades, report = {}, {}
        for view in VIEWS:
            texts, labels, _ = view_rows(view, rows, "train")
            cheap = CheapClassifier(enc, seed=seed).fit(texts, labels)
            strong_clf = None
            if strong:
                strong_clf = train_strong(texts, labels, base, tmp / view / "strong", seed=seed,
                                          **(strong_options or {}))  # fmt: skip
            cascade = Cascade(cheap, strong_clf)
            if strong_clf is not None:
                held_texts, held_labels, _ = view_rows(view, rows, "heldout")
                cheap_scores = cheap.scores(held_texts)
                harmful = [p for p, y in zip(cheap_scores, held_labels) if y == 1]
                harmless = [p for p, y in zip(cheap_scores, held_labels) if y == 0]
                cascade.band = band or choose_band(harmful, harmless, target_frr, band_miss)
            scores, held_labels, stages = heldout_scores(cascade, view, rows)
            cascade.threshold = calibrate_threshold([p for p, y in zip(scores, held_labels) if y == 0], target_frr)
            cascades[view] = cascade
            report[view] = {**metrics(scores, held_labels, cascade.threshold, stages),
                            "threshold": cascade.threshold, "band": list(cascade.band),
                            "train_texts": len(texts), "heldout_texts": len(stages)}  # fmt: skip
        meta = {
            "encoder": enc.name,
            "base": base_reference(base) if strong else None,
            "target_frr": target_frr,
            "data": {"path": str(data.resolve()), "sha256": sha256_file(data), "rows": len(rows)},
            "seed": seed,
            "metrics": report,
        }
        TrainedGuard(cascades, chash, meta).save(tmp)
        publish_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {"out": str(out), "wall_seconds": round(time.monotonic() - started, 3), "classifiers": report}


def evaluate_guard(guard: TrainedGuard, rows: list[GuardRow], *, strong_only: bool = True) -> dict[str, Any]:
    """The guard on the held-out rows, per classifier and end to end, with its compute.

    Each held-out row is one request as the proxy sees it: the input classifier reads its
    conversation and, when it has a response, the output and exchange classifiers read each
    prefix of the response (`PREFIX_CUTS`); the row is blocked when any of these is flagged.

    Returns:
        classifiers: {view: recall, frr, auc, strong_share, ...} as `train_guard` reports them;
            a view with no held-out texts (prompts without responses) is left out.
        end_to_end: attack success without the guard (every harmful row gets through: the rows
            are the attacks, their responses the unguarded model's answers) and with it (harmful
            rows none of whose checks flags), the false-refusal rate on harmless rows, and
            attack success per category.
        compute: per request, texts scored, strong-stage calls and seconds of the cascade, and
            of strong-only (every text to the strong stage; None where a view has none, or
            with `strong_only=False`).
    """
    held = [r for r in rows if r.split == "heldout"]
    if not held:
        raise UserError("no held-out rows (split: heldout) to evaluate on")
    texts: dict[str, list[str]] = {view: [] for view in guard.cascades}
    owner: dict[str, list[int]] = {view: [] for view in guard.cascades}
    for i, row in enumerate(held):
        texts["input"].append(view_text("input", row.messages, None))
        owner["input"].append(i)
        for prefix in prefixes(row.response) if row.response is not None else []:
            for view in ("output", "exchange"):
                texts[view].append(view_text(view, row.messages, prefix))
                owner[view].append(i)

    blocked = [False] * len(held)
    scored: dict[str, dict[str, tuple[float, str]]] = {}
    cascade_s = strong_s = 0.0
    strong_calls = texts_scored = 0
    strong_only_ok = strong_only
    for view, cascade in guard.cascades.items():
        started = time.perf_counter()
        scores, stages = cascade.score(texts[view]) if texts[view] else ([], [])
        cascade_s += time.perf_counter() - started
        if cascade.strong is None or not strong_only:
            strong_only_ok = False
        elif texts[view]:
            started = time.perf_counter()
            cascade.strong.scores(texts[view])
            strong_s += time.perf_counter() - started
        texts_scored += len(texts[view])
        strong_calls += sum(stage == "strong" for stage in stages)
        scored[view] = dict(zip(texts[view], zip(scores, stages)))
        for i, p in zip(owner[view], scores):
            blocked[i] = blocked[i] or p >= cascade.threshold

    classifiers = {}
    for view, cascade in guard.cascades.items():
        view_texts, labels, groups = view_rows(view, rows, "heldout")
        if not view_texts:  # e.g. prompts without responses: nothing for the output views
            continue
        looked_up = [scored[view].get(t) or _score_one(cascade, t) for t in view_texts]
        row_scores, picked = per_row_max([p for p, _ in looked_up], groups)
        classifiers[view] = metrics(row_scores, [labels[i] for i in picked], cascade.threshold,
                                    [stage for _, stage in looked_up])  # fmt: skip

    n = len(held)
    harmful = [i for i, r in enumerate(held) if r.label == 1]
    harmless = [i for i, r in enumerate(held) if r.label == 0]
    by_category: dict[str, list[int]] = {}
    for i in harmful:
        by_category.setdefault(held[i].category or "(none)", []).append(i)

    def passed(ids: list[int]) -> float | None:
        return sum(not blocked[i] for i in ids) / len(ids) if ids else None

    end_to_end = {
        "requests": n,
        "harmful": len(harmful),
        "harmless": len(harmless),
        "with_response": sum(r.response is not None for r in held),
        "attack_success_without_guard": 1.0 if harmful else None,
        "attack_success_with_guard": passed(harmful),
        "false_refusal_rate": (1 - passed(harmless)) if harmless else None,
        "attack_success_by_category": {c: passed(ids) for c, ids in sorted(by_category.items())},
    }
    compute = {
        "texts_per_request": texts_scored / n,
        "cascade": {"strong_calls_per_request": strong_calls / n, "seconds_per_request": cascade_s / n},
        "strong_only": {"strong_calls_per_request": texts_scored / n, "seconds_per_request": strong_s / n}
        if strong_only_ok else None,
    }  # fmt: skip
    if strong_only_ok and strong_s > 0:
        compute["cascade_over_strong_only_seconds"] = cascade_s / strong_s
    return {"classifiers": classifiers, "end_to_end": end_to_end, "compute": compute}


def _score_one(cascade: Cascade, text: str) -> tuple[float, str]:
    scores, stages = cascade.score([text])
    return scores[0], stages[0]


def heldout_scores(cascade: Cascade, view: str, rows: list[GuardRow]) -> tuple[list[float], list[int], list[str]]:
    """Per held-out row: its score (the maximum over its response prefixes for output and
    exchange) and label; plus the deciding stage of every text scored."""
    texts, labels, groups = view_rows(view, rows, "heldout")
    scores, stages = cascade.score(texts)
    row_scores, picked = per_row_max(scores, groups)
    return row_scores, [labels[i] for i in picked], stages


def check_guard_rows(rows: list[GuardRow], path: Path) -> None:
    """Refuse data that cannot train and calibrate all three classifiers."""
    for view in VIEWS:
        train = set(view_rows(view, rows, "train")[1])
        if train != {0, 1}:
            raise UserError(f"the {view} classifier needs harmful and harmless train rows"
                            + ("" if view == "input" else " with a response"), path)  # fmt: skip
        if 0 not in view_rows(view, rows, "heldout")[1]:
            raise UserError(f"no held-out harmless rows for the {view} classifier: its threshold "
                            "is calibrated on them (split: heldout, label: 0"
                            + (")" if view == "input" else ", with a response)"), path)  # fmt: skip


def _constitution_hash(data: Path, constitution: str | Path | None) -> str:
    from constitutional.constitution import load_constitution
    from constitutional.jsonl import iter_jsonl

    if constitution is not None:
        return load_constitution(constitution).hash
    for _, row in iter_jsonl(data):
        if isinstance(row.get("constitution_hash"), str):
            return row["constitution_hash"]
        break
    return load_constitution().hash


def _plain(messages: list[Message]) -> list[dict[str, str]]:
    """Only role and content count: extra keys (names, ids) must not change the text scored."""
    return [{"role": m["role"], "content": m["content"]} for m in messages]
