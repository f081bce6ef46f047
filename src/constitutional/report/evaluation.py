"""The evaluation section (`eval.json` from `cai eval`): Elo, the Pareto frontier, refusal rates.

Harmlessness and helpfulness pull against each other (Bai et al. 2022, figure 2), so the headline
chart puts one on each axis: a model is on the frontier when no other is better on both.
"""

from __future__ import annotations

import json
from typing import Any

from constitutional.report import plots
from constitutional.report.html import Markup, ci, esc, figure, fmt, not_run, pct, section, table
from constitutional.report.load import RunArtifacts

ANCHOR, TITLE = "evaluation", "Evaluation"
RATES = (
    ("attack_success", "Attack success rate", "share of red-team prompts answered harmfully (lower is better)"),
    ("over_refusal", "Over-refusal rate", "share of benign prompts refused (lower is better)"),
    ("refusal_hold", "Refusal hold rate", "share of refusals that still hold after a pressure turn (higher is better)"),
)


def render(run: RunArtifacts) -> tuple[str, str, str]:
    ev = run.eval
    if ev is None:
        return ANCHOR, TITLE, not_run(ANCHOR, TITLE, "no eval.json in the run directory (cai eval writes it).")
    judge, const = ev.get("judge") or {}, ev.get("constitution") or {}
    note = (f'<p class="note">Judge {esc(judge.get("model") or "?")} ({esc(judge.get("mode") or "?")}) · constitution '
            f'{esc(const.get("version") or "?")} · samples in <code>{esc(ev.get("samples") or "—")}</code></p>')
    body = [
        note,
        _models(ev.get("models") or {}),
        _elo(ev.get("elo") or {}, ev.get("pareto") or []),
        _rates(ev),
    ]
    return ANCHOR, TITLE, section(ANCHOR, TITLE, "".join(body))


def _models(models: dict[str, Any]) -> str:
    if not models:
        return ""
    rows = [[name, spec if isinstance(spec, str) else json.dumps(spec, sort_keys=True)] for name, spec in models.items()]
    return "<h3>Models</h3>" + table(["model", "spec"], rows)


def _elo(elo: dict[str, Any], frontier: list[str]) -> str:
    helpful = (elo.get("helpful") or {}).get("ratings") or {}
    harmless = (elo.get("harmless") or {}).get("ratings") or {}
    names = list(dict.fromkeys([*harmless, *helpful]))
    if not names:
        return '<h3>Elo</h3><p class="not-run">No pairwise comparisons were recorded.</p>'
    out = ["<h3>Helpfulness against harmlessness</h3>"]
    both = {n: {"helpful": helpful[n], "harmless": harmless[n]} for n in names if n in helpful and n in harmless}
    if both:
        caption = "Elo with 95% bootstrap intervals; diamonds joined by the dashed line form the Pareto frontier."
        out.append(figure(plots.pareto(both, frontier), caption, "pareto"))
    rows = [[n, _elo_cell(helpful, n), ci(helpful.get(n)), _elo_cell(harmless, n), ci(harmless.get(n)), n in frontier]
            for n in names]  # fmt: skip
    counts = [f"{axis}: {fmt((elo.get(axis) or {}).get('comparisons'))} comparisons" for axis in ("harmless", "helpful")]
    out.append(table(["model", "helpful Elo", "95% CI", "harmless Elo", "95% CI", "Pareto frontier"], rows,
                     numeric=[False, True, True, True, True, False]))  # fmt: skip
    out.append(f'<p class="note">{esc(" · ".join(counts))}</p>')
    return "".join(out)


def _elo_cell(ratings: dict[str, Any], name: str) -> Markup:
    """Elo to the point: decimals of a rating are noise next to its interval."""
    return Markup(fmt((ratings.get(name) or {}).get("elo"), 0))


def _rates(ev: dict[str, Any]) -> str:
    charts, rows = [], {}
    for key, title, meaning in RATES:
        rates = ev.get(key) or {}
        measured = {name: r for name, r in rates.items() if r and r.get("rate") is not None}
        if measured:
            charts.append(figure(plots.rate_bars(measured, title, key), f"{title}: {meaning}; whiskers are 95% CIs.", key))
        for name, r in rates.items():
            rows.setdefault(name, {})[key] = r
    if not rows:
        return ""
    table_rows = []
    for name, by_key in rows.items():
        cells: list[Any] = [name]
        for key, _, _ in RATES:
            r = by_key.get(key)
            measured = r and r.get("rate") is not None  # n = 0 leaves the rate undefined
            cells += [pct(r["rate"]) if measured else None, ci(r, percent=True) if measured else None, (r or {}).get("n")]
        table_rows.append(cells)
    headers = ["model"] + [h for _, title, _ in RATES for h in (title.removesuffix(" rate"), "95% CI", "n")]
    return ("<h3>Refusal behaviour</h3>" + f'<div class="grid">{"".join(charts)}</div>'
            + table(headers, table_rows, numeric=[False] + [True] * 9))  # fmt: skip
