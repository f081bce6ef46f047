"""`cai rbr fit / eval / score` as Python functions: load and check everything, grade, write.

Inputs are checked before the grader model loads (`backend` is a zero-argument factory), and
outputs are written atomically at the end.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from constitutional.backends.base import Backend
from constitutional.errors import UserError
from constitutional.jsonl import write_json, write_jsonl
from constitutional.rbr.evaluate import evaluate, grade, split
from constitutional.rbr.gold import load_replies
from constitutional.rbr.grader import Grader
from constitutional.rbr.model import load_rbr
from constitutional.rbr.propositions import load_propositions

BackendFactory = Callable[[], Backend]


def run_fit(
    gold: str,
    out: str | Path,
    backend: BackendFactory,
    *,
    propositions: str = "default",
    held_out: float = 0.2,
    limit: int | None = None,
    c: float = 1.0,
    seed: int = 0,
) -> dict[str, Any]:
    """Grade the gold replies, fit weights on all but a seeded `held_out` share, report on that share."""
    if not 0 <= held_out < 1:
        raise UserError(f"--held-out must be in [0, 1), got {held_out}")
    props = load_propositions(propositions)
    replies = load_replies(gold, props, gold=True, limit=limit, seed=seed)
    started = time.monotonic()
    grader = Grader(backend(), props)
    probs = grade(grader, replies)
    train, test = split(replies, held_out, seed)
    model, metrics = evaluate(
        props,
        str(propositions),
        [replies[i] for i in train],
        [replies[i] for i in test],
        probs[train],
        probs[test],
        c=c,
        seed=seed,
    )
    metrics.update(
        gold=str(gold),
        held_out=held_out,
        seed=seed,
        c=c,
        unscored=grader.unscored,
        grader=_describe(grader.backend),
        wall_seconds=round(time.monotonic() - started, 1),
    )
    model.metrics = metrics
    model.save(out)
    return metrics


def run_eval(
    train: str,
    test: str,
    backend: BackendFactory,
    *,
    propositions: str = "default",
    rbr: str | Path | None = None,
    limit: int | None = None,
    c: float = 1.0,
    seed: int = 0,
    out: str | Path | None = None,
) -> dict[str, Any]:
    """Grade held-out gold replies; fit on `train` (or use the fitted `rbr`) and report both the
    grader's proposition accuracy and the reward's ranking accuracy on `test`."""
    model = load_rbr(rbr) if rbr is not None else None
    props = model.propositions if model is not None else load_propositions(propositions)
    fit_on = load_replies(train, props, gold=True, limit=limit, seed=seed) if model is None else []
    held = load_replies(test, props, gold=True, limit=limit, seed=seed)
    started = time.monotonic()
    grader = Grader(backend(), props)
    probs = grade(grader, [*fit_on, *held])
    _, metrics = evaluate(
        props,
        str(propositions),
        fit_on,
        held,
        probs[: len(fit_on)],
        probs[len(fit_on) :],
        c=c,
        seed=seed,
        model=model,
    )
    metrics.update(
        train=None if model else str(train),
        test=str(test),
        rbr=str(rbr) if rbr else None,
        unscored=grader.unscored,
        grader=_describe(grader.backend),
        wall_seconds=round(time.monotonic() - started, 1),
    )
    if out is not None:
        write_json(out, metrics)
    return metrics


def run_score(
    data: str | Path,
    rbr: str | Path,
    out: str | Path,
    backend: BackendFactory,
    *,
    response_class: str | None = None,
) -> dict[str, Any]:
    """Add `rbr` {score, grade, propositions: P(yes)} to every row of `data`, written to `out`."""
    model = load_rbr(rbr)
    props = model.propositions
    if response_class is not None and response_class not in props.rules:
        raise UserError(
            f"--response-class must be one of {', '.join(props.classes)}, got {response_class!r}"
        )
    replies = load_replies(data, props, gold=False, default_class=response_class)
    grader = Grader(backend(), props)
    probs = grade(grader, replies)
    rows = []
    for i, reply in enumerate(replies):
        [score] = model.score(reply.response_class, probs[i : i + 1])
        truth = {name: bool(p > 0.5) for name, p in zip(props.ids, probs[i])}
        rows.append(
            {
                **reply.row,
                "rbr": {
                    "score": round(float(score), 6),
                    "grade": props.grade(reply.response_class, truth),
                    "propositions": {
                        name: round(float(p), 6) for name, p in zip(props.ids, probs[i])
                    },
                },
            }
        )
    write_jsonl(out, rows)
    return {"rows": len(rows), "unscored": grader.unscored}


def _describe(backend: Backend) -> dict[str, str]:
    return {"backend": backend.name, "model": backend.model, "fingerprint": backend.fingerprint()}
