"""The self-play section (`self_play.json` from `cai self-play`): did each iteration help, and
could its self-judge still be trusted?

Win rates against the starting model say whether the loop moved the model the right way; the
self-judge's agreement with the frozen reference judge says whether its labels still meant what
they did at the start. Agreement falling while the win rates climb is the signature of a model
that learned to please itself.
"""

from __future__ import annotations

from typing import Any

from constitutional.report import plots
from constitutional.report.html import Markup, ci, esc, figure, pct, section, table
from constitutional.report.load import RunArtifacts

ANCHOR, TITLE = "self-play", "Self-play"


def render(run: RunArtifacts) -> tuple[str, str, str] | None:
    """The self-play section, or None for a run directory `cai self-play` did not write."""
    doc = run.self_play
    if doc is None:
        return None
    iterations = doc.get("iterations") or []
    settings = doc.get("settings") or {}
    threshold = settings.get("min_agreement")
    reference = settings.get("reference_judge") or settings.get("model") or "?"
    note = (
        f'<p class="note">Start {esc(settings.get("model") or "?")} · reference judge {esc(reference)} · '
        f"{len(iterations)} of {esc(settings.get('iterations', '?'))} iterations · "
        f"final model <code>{esc(doc.get('final_model') or '—')}</code></p>"
    )
    body = [note]
    stopped = doc.get("stopped")
    if stopped:
        body.append(
            f'<p class="warn">Stopped at iteration {esc(stopped.get("iteration"))}: {esc(stopped.get("reason"))}</p>'
        )
    if not iterations:
        body.append('<p class="not-run">No iteration has finished yet.</p>')
        return ANCHOR, TITLE, section(ANCHOR, TITLE, "".join(body))
    series = {
        "harmless win rate vs start": _points(iterations, "harmless"),
        "helpful win rate vs start": _points(iterations, "helpful"),
        "agreement with reference judge": [
            (m["iteration"], m["agreement"]["rate"])
            for m in iterations
            if m["agreement"].get("rate") is not None
        ],
    }
    caption = (
        "Per iteration: mean p(new model's reply is better than the starting model's), judged by the "
        "reference judge; and the share of training pairs where self and reference judge prefer the same reply."
    )
    body.append(figure(plots.per_iteration(series, threshold, "self-play"), caption, "self-play"))
    body.append(_table(iterations))
    return ANCHOR, TITLE, section(ANCHOR, TITLE, "".join(body))


def _points(iterations: list[dict[str, Any]], axis: str) -> list[tuple[int, float]]:
    out = []
    for m in iterations:
        score = (m.get("scores") or {}).get(axis) or {}
        if score.get("p_win") is not None:
            out.append((m["iteration"], score["p_win"]))
    return out


def _table(iterations: list[dict[str, Any]]) -> str:
    rows = []
    for m in iterations:
        a, counts, dpo, scores = (
            m["agreement"],
            m.get("counts") or {},
            m.get("dpo") or {},
            m.get("scores") or {},
        )
        rows.append(
            [
                m["iteration"],
                counts.get("kept"),
                counts.get("prefs"),
                pct(a["rate"]) if a.get("rate") is not None else None,
                ci(a, percent=True),
                _drift(m.get("agreement_drift")),
                a.get("mean_abs_diff"),
                dpo.get("final_loss"),
                *(_win(scores.get(axis)) for axis in ("harmless", "helpful")),
                Markup('<span class="warn">stopped</span>') if m.get("stopped") else "trained",
            ]
        )
    headers = [
        "iteration",
        "pairs kept",
        "preference pairs",
        "judge agreement",
        "95% CI",
        "drift since iteration 1",
        "mean |Δp|",
        "DPO final loss",
        "harmless win rate",
        "helpful win rate",
        "status",
    ]
    return table(headers, rows, numeric=[True] * 10 + [False])


def _drift(d: float | None) -> Markup | None:
    """Agreement change in percentage points, signed: '-12.5 pp'."""
    return None if d is None else Markup(f"{100 * d:+.1f} pp")


def _win(score: dict[str, Any] | None) -> Markup | None:
    """Mean p(win) with the share of prompts won and its n, e.g. '0.58 (4/6 won)'."""
    if not score or score.get("p_win") is None:
        return None
    won = round(score["rate"] * score["n"]) if score.get("rate") is not None else 0
    return Markup(f"{score['p_win']:.2f} ({won}/{score['n']} won)")
