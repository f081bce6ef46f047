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

from constitutional.atomic_dir import publish_dir, staging_dir
from constitutional.backends.base import Message
from constitutional.backends.encoders import Encoder, make_encoder
from constitutional.errors import UserError
from constitutional.guard.cascade import Cascade, calibrate_threshold, choose_band, metrics
from constitutional.guard.cheap import CheapClassifier
from constitutional.guard.protocol import Verdict
from constitutional.guard.strong import StrongClassifier, train_strong
from constitutional.guard.views import (
    VIEWS,
    GuardRow,
    check_disjoint,
    heldout_parts,
    load_guard_rows,
    per_row_max,
    stream_checkpoints,
    view_rows,
    view_text,
)
from constitutional.jsonl import write_json
from constitutional.provenance import sha256_file
from constitutional.stats import wilson
from constitutional.train.checkpoint import base_reference

SCHEMA = "cai.guard/1"


class TrainedGuard:
    """A trained guard: `check_input` runs the input cascade, `check_output` the output and
    exchange cascades on the response so far (the more alarming verdict wins)."""

    def __init__(
        self,
        cascades: dict[str, Cascade],
        constitution_hash: str,
        meta: dict[str, Any] | None = None,
    ):
        self.cascades, self.constitution_hash, self.meta = cascades, constitution_hash, meta or {}

    def check_input(self, messages: list[Message]) -> Verdict:
        return self.cascades["input"].verdicts([view_text("input", _plain(messages), None)])[0]

    def check_output(self, messages: list[Message], response_so_far: str) -> Verdict:
        turns = _plain(messages)
        output = self.cascades["output"].verdicts([view_text("output", turns, response_so_far)])[0]
        exchange = self.cascades["exchange"].verdicts(
            [view_text("exchange", turns, response_so_far)]
        )[0]
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
        write_json(
            out / "guard.json",
            {
                **self.meta,
                "schema": SCHEMA,
                "constitution_hash": self.constitution_hash,
                "classifiers": classifiers,
            },
        )

    @classmethod
    def load(
        cls, path: str | Path, *, encoder: Encoder | None = None, device: str | None = None
    ) -> TrainedGuard:
        """Load a guard directory; `encoder` overrides the one it records (e.g. one already loaded)."""
        path = Path(path).expanduser()
        meta_path = path / "guard.json"
        if not meta_path.is_file():
            raise UserError(
                "not a guard directory (no guard.json); train one with `cai guard train`", path
            )
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
        band_miss: default band: share of harmful rows the cheap stage may clear (0.005–0.1).
        constitution: the data's constitution (default: the rows' `constitution_hash`, else
            the packaged one).
        strong_options: keyword arguments for `train_strong` (epochs, max_steps, batch_size, ...).
        seed: seeds the regression and the strong stage.
        overwrite: replace an existing non-empty `out`.

    Returns {"out", "wall_seconds", "classifiers": {view: metrics on the report part of the
    held-out rows, with the threshold and band fitted on the calibration part}}.
    """
    started = time.monotonic()
    data, out = Path(data), Path(out)
    rows = _training_rows(data, out, target_frr, overwrite)
    enc = make_encoder(encoder) if isinstance(encoder, str) else encoder
    chash = _constitution_hash(data, constitution)
    calibration, held_report = heldout_parts(rows)
    tmp = staging_dir(out)
    try:
        cascades, report = {}, {}
        for view in VIEWS:
            strong_dir = tmp / view / "strong" if strong else None
            cascades[view], train_texts = _train_cascade(
                view, rows, enc, base, strong_dir, seed, strong_options
            )
            fitted = fit_threshold(
                cascades[view],
                view,
                calibration,
                held_report,
                target_frr,
                band=band,
                band_miss=band_miss,
            )
            report[view] = {**fitted, "train_texts": train_texts}
        meta = {
            "encoder": enc.name,
            "base": base_reference(base) if strong else None,
            "target_frr": target_frr,
            "data": {"path": str(data.resolve()), "sha256": sha256_file(data), "rows": len(rows)},
            "seed": seed,
            "metrics": report,
            "calibration": _calibration_meta(calibration, held_report),
        }
        TrainedGuard(cascades, chash, meta).save(tmp)
        publish_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {
        "out": str(out),
        "wall_seconds": round(time.monotonic() - started, 3),
        "classifiers": report,
    }


def _training_rows(data: Path, out: Path, target_frr: float, overwrite: bool) -> list[GuardRow]:
    """The rows of `data`, once the arguments and the rows are known to allow training into
    `out`; checked before any model is loaded, so a mistake costs nothing."""
    if not 0 <= target_frr < 1:
        raise UserError(f"target_frr must be in [0, 1), got {target_frr}")
    rows = load_guard_rows(data)
    check_guard_rows(rows, data)
    if out.exists() and (out.is_file() or any(out.iterdir())) and not overwrite:
        raise UserError("output exists and is not empty; pass --overwrite to replace it", out)
    return rows


def _train_cascade(
    view: str,
    rows: list[GuardRow],
    enc: Encoder,
    base: str,
    strong_dir: Path | None,
    seed: int,
    strong_options: dict[str, Any] | None,
) -> tuple[Cascade, int]:
    """One view's cascade fitted on the train rows, not yet calibrated (threshold and band are
    `fit_threshold`'s), and how many texts it was fitted on. Without `strong_dir` the cascade
    has no strong stage; with it, the strong stage is written there."""
    texts, labels, _ = view_rows(view, rows, "train")
    cheap = CheapClassifier(enc, seed=seed).fit(texts, labels)
    strong_clf = None
    if strong_dir is not None:
        strong_clf = train_strong(
            texts, labels, base, strong_dir, seed=seed, **(strong_options or {})
        )
    return Cascade(cheap, strong_clf), len(texts)


def _calibration_meta(calibration: list[GuardRow], report: list[GuardRow]) -> dict[str, Any]:
    """What guard.json records of the held-out cut: the keys of the rows the thresholds were
    fitted on, which `evaluate_guard` leaves out."""
    keys = sorted({r.key for r in calibration})
    return {"rows": len(calibration), "report_rows": len(report), "keys": keys}


def evaluate_guard(
    guard: TrainedGuard, rows: list[GuardRow], *, strong_only: bool = True
) -> dict[str, Any]:
    """The guard on the held-out rows, per classifier and end to end, with its compute.

    Held-out rows the guard's thresholds were calibrated on (listed in its guard.json) are left
    out: the rates are measured on the other rows only. Each remaining row is one request as
    the proxy sees it: the input classifier reads its conversation and, when it has a response,
    the output and exchange classifiers read the response at every point the proxy would check
    it as it streams (`stream_checkpoints`); the row is blocked when any of these is flagged.

    Returns:
        classifiers: {view: recall, frr, auc, strong_share, ...} as `train_guard` reports them;
            a view with no held-out texts (prompts without responses) is left out.
        end_to_end: attack success without the guard (every harmful row gets through: the rows
            are the attacks, their responses the unguarded model's answers) and with it (harmful
            rows none of whose checks flags), the false-refusal rate on harmless rows, attack
            success per category, and how many calibration rows were left out.
        compute: per request, texts scored, strong-stage calls and seconds of the cascade, and
            of strong-only (every text to the strong stage; None where a view has none, or
            with `strong_only=False`).
    """
    held, excluded = _report_rows(guard, rows)
    texts, owner = _request_texts(guard, held)
    scored, compute = _score_views(guard, texts, strong_only, len(held))
    blocked = _blocked_requests(guard, owner, scored, len(held))
    classifiers = _classifier_metrics(guard, held, texts, scored)
    end_to_end = {**_end_to_end(held, blocked), "calibration_rows_left_out": excluded}
    return {"classifiers": classifiers, "end_to_end": end_to_end, "compute": compute}


def _request_texts(
    guard: TrainedGuard, held: list[GuardRow]
) -> tuple[dict[str, list[str]], dict[str, list[int]]]:
    """Per view, every text the proxy would score for the `held` requests, and the index in
    `held` of the request each text belongs to."""
    texts: dict[str, list[str]] = {view: [] for view in guard.cascades}
    owner: dict[str, list[int]] = {view: [] for view in guard.cascades}
    for i, row in enumerate(held):
        texts["input"].append(view_text("input", row.messages, None))
        owner["input"].append(i)
        for prefix in stream_checkpoints(row.response) if row.response is not None else []:
            for view in ("output", "exchange"):
                texts[view].append(view_text(view, row.messages, prefix))
                owner[view].append(i)
    return texts, owner


def _blocked_requests(
    guard: TrainedGuard,
    owner: dict[str, list[int]],
    scored: dict[str, list[tuple[float, str]]],
    n: int,
) -> list[bool]:
    """Per request: whether any of its texts reached its classifier's threshold."""
    blocked = [False] * n
    for view, cascade in guard.cascades.items():
        for i, (p, _) in zip(owner[view], scored[view]):
            blocked[i] = blocked[i] or p >= cascade.threshold
    return blocked


def _classifier_metrics(
    guard: TrainedGuard,
    held: list[GuardRow],
    texts: dict[str, list[str]],
    scored: dict[str, list[tuple[float, str]]],
) -> dict[str, Any]:
    """Each classifier's `metrics` over the `held` rows, reusing the scores already computed
    for the requests' texts (a row's score is its highest over the prefixes checked)."""
    classifiers = {}
    for view, cascade in guard.cascades.items():
        view_texts, labels, groups = view_rows(view, held, None, stream=True)
        if not view_texts:  # e.g. prompts without responses: nothing for the output views
            continue
        looked_up = dict(zip(texts[view], scored[view]))
        found = [looked_up[t] for t in view_texts]
        row_scores, picked = per_row_max([p for p, _ in found], groups)
        classifiers[view] = metrics(
            row_scores,
            [labels[i] for i in picked],
            cascade.threshold,
            [stage for _, stage in found],
        )
    return classifiers


def _report_rows(guard: TrainedGuard, rows: list[GuardRow]) -> tuple[list[GuardRow], int]:
    """The held-out rows the guard was not calibrated on, and how many were left out."""
    held = [r for r in rows if r.split == "heldout"]
    if not held:
        raise UserError("no held-out rows (split: heldout) to evaluate on")
    calibrated = set(guard.meta.get("calibration", {}).get("keys", ()))
    kept = [r for r in held if r.key not in calibrated]
    if not kept:
        raise UserError(
            "every held-out row was used to calibrate this guard's thresholds; "
            "evaluate on rows it has not seen"
        )
    return kept, len(held) - len(kept)


def _score_views(
    guard: TrainedGuard, texts: dict[str, list[str]], strong_only: bool, n: int
) -> tuple[dict[str, list[tuple[float, str]]], dict[str, Any]]:
    """Each view's texts through its cascade ((score, stage) per text), and the compute per
    request of the cascade and, with `strong_only`, of sending every text to the strong stage."""
    scored: dict[str, list[tuple[float, str]]] = {}
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
        scored[view] = list(zip(scores, stages))
    compute = {
        "texts_per_request": texts_scored / n,
        "cascade": {
            "strong_calls_per_request": strong_calls / n,
            "seconds_per_request": cascade_s / n,
        },
        "strong_only": {
            "strong_calls_per_request": texts_scored / n,
            "seconds_per_request": strong_s / n,
        }
        if strong_only_ok
        else None,
    }
    if strong_only_ok and strong_s > 0:
        compute["cascade_over_strong_only_seconds"] = cascade_s / strong_s
    return scored, compute


def _end_to_end(held: list[GuardRow], blocked: list[bool]) -> dict[str, Any]:
    harmful = [i for i, r in enumerate(held) if r.label == 1]
    harmless = [i for i, r in enumerate(held) if r.label == 0]
    by_category: dict[str, list[int]] = {}
    for i in harmful:
        by_category.setdefault(held[i].category or "(none)", []).append(i)

    def passed(ids: list[int]) -> float | None:
        return sum(not blocked[i] for i in ids) / len(ids) if ids else None

    refused = sum(blocked[i] for i in harmless)
    return {
        "requests": len(held),
        "harmful": len(harmful),
        "harmless": len(harmless),
        "with_response": sum(r.response is not None for r in held),
        "attack_success_without_guard": 1.0 if harmful else None,
        "attack_success_with_guard": passed(harmful),
        "attack_success_with_guard_ci": list(
            wilson(sum(not blocked[i] for i in harmful), len(harmful))
        ),
        "false_refusal_rate": (1 - passed(harmless)) if harmless else None,
        "false_refusal_rate_ci": list(wilson(refused, len(harmless))),
        "attack_success_by_category": {c: passed(ids) for c, ids in sorted(by_category.items())},
    }


def heldout_scores(
    cascade: Cascade, view: str, rows: list[GuardRow]
) -> tuple[list[float], list[int], list[str]]:
    """Per row of `rows` (one part of the held-out split): its score (for output and exchange
    the maximum over the prefixes the proxy would check as it streams) and label; plus the
    deciding stage of every text scored."""
    texts, labels, groups = view_rows(view, rows, None, stream=True)
    scores, stages = cascade.score(texts)
    row_scores, picked = per_row_max(scores, groups)
    return row_scores, [labels[i] for i in picked], stages


def fit_threshold(
    cascade: Cascade,
    view: str,
    calibration: list[GuardRow],
    report: list[GuardRow],
    target_frr: float,
    *,
    band: tuple[float, float] | None = None,
    band_miss: float = 0.02,
) -> dict[str, Any]:
    """Set the cascade's band (with a strong stage) and threshold on the `calibration` rows, and
    measure it on the `report` rows; refuses rows shared by both (`check_disjoint`).

    Returns the report part's metrics (`metrics`), with the threshold, band and text counts.
    """
    check_disjoint(calibration, report)
    if cascade.strong is not None:
        texts, labels, groups = view_rows(view, calibration, None, stream=True)
        cheap, picked = per_row_max(cascade.cheap_scores(texts), groups)
        harmful = [p for p, i in zip(cheap, picked) if labels[i] == 1]
        harmless = [p for p, i in zip(cheap, picked) if labels[i] == 0]
        cascade.band = band or choose_band(harmful, harmless, target_frr, band_miss)
    scores, labels, cal_stages = heldout_scores(cascade, view, calibration)
    cascade.threshold = calibrate_threshold(
        [p for p, y in zip(scores, labels) if y == 0], target_frr
    )
    scores, labels, stages = heldout_scores(cascade, view, report)
    return {
        **metrics(scores, labels, cascade.threshold, stages),
        "threshold": cascade.threshold,
        "band": list(cascade.band),
        "calibration_texts": len(cal_stages),
        "heldout_texts": len(stages),
    }


def check_guard_rows(rows: list[GuardRow], path: Path) -> None:
    """Refuse data that cannot train, calibrate and measure all three classifiers."""
    calibration, report = heldout_parts(rows)
    for view in VIEWS:
        train = set(view_rows(view, rows, "train")[1])
        if train != {0, 1}:
            raise UserError(
                f"the {view} classifier needs harmful and harmless train rows"
                + ("" if view == "input" else " with a response"),
                path,
            )
        with_response = ")" if view == "input" else ", with a response)"
        if 0 not in view_rows(view, calibration, None)[1]:
            raise UserError(
                f"no held-out harmless rows for the {view} classifier: its threshold "
                f"is calibrated on them (split: heldout, label: 0{with_response}",
                path,
            )
        if not view_rows(view, report, None)[0]:
            raise UserError(
                f"too few held-out rows for the {view} classifier: half of them "
                "calibrate its threshold, the other half measure it (split: heldout"
                f"{with_response}",
                path,
            )


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
