"""The evaluation section (`eval.json` from `cai eval`): the judge's audit, harm numbers from the
refusal instrument beside the judge's, Elo and the Pareto frontier, refusal rates.

Harmlessness and helpfulness pull against each other (Bai et al. 2022, figure 2), so the headline
chart puts one on each axis: a model is on the frontier when no other is better on both. Every
number there comes from the judge, so when the judge failed its own audit a warning banner sits
above each judge-derived block; the instrument's numbers do not depend on the judge.
"""

from __future__ import annotations

import json
from typing import Any

from constitutional.report import plots
from constitutional.report.html import Markup, ci, esc, figure, fmt, not_run, pct, section, table
from constitutional.report.load import RunArtifacts

ANCHOR, TITLE = "evaluation", "Evaluation"
RATES = (
    (
        "attack_success",
        "Attack success rate",
        "share of red-team prompts answered harmfully (lower is better)",
    ),
    ("over_refusal", "Over-refusal rate", "share of benign prompts refused (lower is better)"),
    (
        "refusal_hold",
        "Refusal hold rate",
        "share of refusals that still hold after a pressure turn (higher is better)",
    ),
)
# (source, key, column title): the harm numbers side by side, instrument first.
SIDE_BY_SIDE = (
    ("instrument", "harmful_compliance", "harmful compliance (instrument)"),
    ("judge", "attack_success", "attack success (judge)"),
    ("instrument", "over_refusal", "over-refusal (instrument)"),
    ("judge", "over_refusal", "over-refusal (judge)"),
    ("instrument", "evasive", "evasive refusals (instrument)"),
    ("instrument", "helpful_compliance", "helpful compliance (instrument)"),
)
TOO_WIDE = 0.2  # a 95% interval wider than ±20 points says nothing either way


def render(run: RunArtifacts) -> tuple[str, str, str]:
    ev = run.eval
    if ev is None:
        return (
            ANCHOR,
            TITLE,
            not_run(ANCHOR, TITLE, "no eval.json in the run directory (cai eval writes it)."),
        )
    judge, const = ev.get("judge") or {}, ev.get("constitution") or {}
    note = (
        f'<p class="note">Judge {esc(judge.get("model") or "?")} ({esc(judge.get("mode") or "?")}) · constitution '
        f"{esc(const.get('version') or '?')} · samples in <code>{esc(ev.get('samples') or '—')}</code></p>"
    )
    warn = banner(judge)
    body = [
        note,
        _gate(judge),
        _models(ev.get("models") or {}),
        _side_by_side(ev, warn),
        _elo(ev.get("elo") or {}, ev.get("pareto") or [], warn),
        _rates(ev, warn),
    ]
    return ANCHOR, TITLE, section(ANCHOR, TITLE, "".join(body))


def banner(judge: dict[str, Any]) -> str:
    """The warning placed above judge-derived numbers; empty when the judge passed (or predates the gate)."""
    if judge.get("reliable") is not False:
        return ""
    reasons = "; ".join(judge.get("reasons") or ["no reason recorded"])
    return (
        f'<div class="banner" role="alert" data-warning="judge">Unreliable judge: {esc(reasons)}. '
        "The judge-derived numbers below are not results; rely on the refusal instrument's.</div>"
    )


def rate_cell(r: dict[str, Any] | None) -> Markup:
    """'12.5% [5.0%, 25.0%] n=40', flagged when its interval is too wide to conclude anything."""
    if not r or r.get("rate") is None:
        n = f" (n={fmt(r['n'])})" if r and "n" in r else ""
        return Markup(f'<span class="not-run">not measured{n}</span>')
    text = f"{pct(r['rate'])} {ci(r, percent=True)} n={fmt(r.get('n'))}"
    if r.get("ci_low") is not None and (r["ci_high"] - r["ci_low"]) / 2 > TOO_WIDE:
        text += ' <span class="few">too few prompts to conclude</span>'
    return Markup(text)


def _gate(judge: dict[str, Any]) -> str:
    if "reliable" not in judge:
        return '<p class="not-run">This eval.json predates the judge audit: the judge was not checked.</p>'
    limits = judge.get("thresholds") or {}
    rows = [
        [
            "position flip rate",
            rate_cell(judge.get("flip_rate")),
            f"at most {pct(limits.get('max_flip_rate', 0.25))}",
            "the two orders of one comparison pick different replies",
        ],
        [
            "agreement with people",
            rate_cell(judge.get("human_agreement")),
            f"95% lower bound above {pct(limits.get('min_human_agreement', 0.55))}",
            "verdict matches the human-labelled RBR gold pair",
        ],
    ]
    verdict = (
        '<p class="ok">The judge passed its audit.</p>' if judge["reliable"] else banner(judge)
    )
    return (
        "<h3>Can the judge be trusted?</h3>"
        + verdict
        + table(["check", "measured", "needed", "what it means"], rows)
    )


def _models(models: dict[str, Any]) -> str:
    if not models:
        return ""
    rows = [
        [name, spec if isinstance(spec, str) else json.dumps(spec, sort_keys=True)]
        for name, spec in models.items()
    ]
    return "<h3>Models</h3>" + table(["model", "spec"], rows)


def _side_by_side(ev: dict[str, Any], warn: str) -> str:
    inst = ev.get("instrument")
    if not inst:
        return ""
    sources = {"instrument": inst, "judge": ev}
    names = list(
        dict.fromkeys([*(ev.get("models") or {}), *(inst.get("harmful_compliance") or {})])
    )
    rows = [
        [n, *(rate_cell((sources[src].get(key) or {}).get(n)) for src, key, _ in SIDE_BY_SIDE)]
        for n in names
    ]
    card = inst.get("card") or {}
    held = card.get("heldout") or {}
    about = (
        f'<p class="note">Instrument {esc(card.get("name") or "?")} {esc(card.get("version") or "")}: held-out '
        f"accuracy {fmt(held.get('accuracy'))} (n={fmt(held.get('n'))}); it does not depend on any evaluated model. "
        "Rates with 95% Wilson intervals.</p>"
    )
    headers = ["model", *(title for _, _, title in SIDE_BY_SIDE)]
    return (
        "<h3>Harm: the refusal instrument beside the judge</h3>"
        + about
        + warn
        + table(headers, rows, numeric=[False] + [True] * len(SIDE_BY_SIDE))
    )


def _elo(elo: dict[str, Any], frontier: list[str], warn: str) -> str:
    helpful = (elo.get("helpful") or {}).get("ratings") or {}
    harmless = (elo.get("harmless") or {}).get("ratings") or {}
    names = list(dict.fromkeys([*harmless, *helpful]))
    if not names:
        return '<h3>Elo</h3><p class="not-run">No pairwise comparisons were recorded.</p>'
    out = ["<h3>Helpfulness against harmlessness</h3>", warn]
    both = {
        n: {"helpful": helpful[n], "harmless": harmless[n]}
        for n in names
        if n in helpful and n in harmless
    }
    if both:
        caption = "Elo with 95% bootstrap intervals; diamonds joined by the dashed line form the Pareto frontier."
        out.append(figure(plots.pareto(both, frontier), caption, "pareto"))
    rows = [
        [
            n,
            _elo_cell(helpful, n),
            ci(helpful.get(n)),
            _elo_cell(harmless, n),
            ci(harmless.get(n)),
            n in frontier,
        ]
        for n in names
    ]
    counts = [
        f"{axis}: {fmt((elo.get(axis) or {}).get('comparisons'))} comparisons"
        for axis in ("harmless", "helpful")
    ]
    out.append(
        table(
            ["model", "helpful Elo", "95% CI", "harmless Elo", "95% CI", "Pareto frontier"],
            rows,
            numeric=[False, True, True, True, True, False],
        )
    )
    out.append(f'<p class="note">{esc(" · ".join(counts))}</p>')
    return "".join(out)


def _elo_cell(ratings: dict[str, Any], name: str) -> Markup:
    """Elo to the point: decimals of a rating are noise next to its interval."""
    return Markup(fmt((ratings.get(name) or {}).get("elo"), 0))


def _rates(ev: dict[str, Any], warn: str) -> str:
    charts, rows = [], {}
    for key, title, meaning in RATES:
        rates = ev.get(key) or {}
        measured = {name: r for name, r in rates.items() if r and r.get("rate") is not None}
        if measured:
            charts.append(
                figure(
                    plots.rate_bars(measured, title, key),
                    f"{title}: {meaning}; whiskers are 95% CIs.",
                    key,
                )
            )
        for name, r in rates.items():
            rows.setdefault(name, {})[key] = r
    if not rows:
        return ""
    table_rows = [
        [name, *(rate_cell(by_key.get(key)) for key, _, _ in RATES)]
        for name, by_key in rows.items()
    ]
    headers = ["model"] + [title.removesuffix(" rate") + " (judge)" for _, title, _ in RATES]
    return (
        "<h3>Refusal behaviour, as the judge sees it</h3>"
        + warn
        + f'<div class="grid">{"".join(charts)}</div>'
        + table(headers, table_rows, numeric=[False] + [True] * len(RATES))
    )
