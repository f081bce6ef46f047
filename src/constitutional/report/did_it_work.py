""" "Did it work?": the run's models side by side on the refusal instrument's numbers, the three
checks of `eval.did_it_work`, and harmful compliance against revision rounds (with the
critique ablation when the run made one)."""

from __future__ import annotations

from typing import Any

from constitutional.eval.did_it_work import did_it_work
from constitutional.report import plots
from constitutional.report.evaluation import rate_cell
from constitutional.report.html import Markup, esc, figure, not_run, section, table
from constitutional.report.load import RunArtifacts

ANCHOR, TITLE = "did-it-work", "Did it work?"
COLUMNS = (
    ("harmful_compliance", "harmful compliance ↓"),
    ("over_refusal", "benign over-refusal ↓"),
    ("evasive", "evasive share of refusals ↓"),
    ("helpful_compliance", "helpful prompts answered ↑"),
)


def render(run: RunArtifacts) -> tuple[str, str, str] | None:
    ev = run.eval
    if ev is None or "instrument" not in ev or "base" not in (ev.get("models") or {}):
        return (
            ANCHOR,
            TITLE,
            not_run(
                ANCHOR,
                TITLE,
                "needs an eval.json with the instrument's numbers and a model named base.",
            ),
        )
    card = (ev["instrument"].get("card") or {}).get("heldout") or {}
    note = (
        '<p class="note">Every number here is the refusal instrument\'s, on held-out prompts no training stage '
        f"saw (instrument accuracy on its own held-out labels: {esc(_acc(card))}).</p>"
    )
    body = [note, _table(ev), _checks(did_it_work(ev)), _curves(run.revisions)]
    return ANCHOR, TITLE, section(ANCHOR, TITLE, "".join(body))


def _acc(card: dict[str, Any]) -> str:
    if card.get("accuracy") is None:
        return "not recorded"
    low, high = card.get("accuracy_ci") or (None, None)
    return (
        f"{card['accuracy']:.1%}"
        + (f" [{low:.1%}, {high:.1%}]" if low is not None else "")
        + f", n={card.get('n')}"
    )


def _table(ev: dict[str, Any]) -> str:
    inst = ev["instrument"]
    rows = [
        [name, *(rate_cell((inst.get(key) or {}).get(name)) for key, _ in COLUMNS)]
        for name in ev["models"]
    ]
    return table(["model", *(title for _, title in COLUMNS)], rows, [False] + [True] * len(COLUMNS))


def _checks(verdict: dict[str, Any]) -> str:
    mark = {
        True: '<span class="ok">met</span>',
        False: '<span class="warn">not met</span>',
        None: "no data",
    }
    rows = [[c["name"], Markup(mark[c["passed"]]), c["detail"]] for c in verdict["checks"]]
    head = f"<h3>Targets: {esc(verdict['final'])} against {esc(verdict['base'])}</h3>"
    return head + table(["target", "", "measured"], rows)


def _curves(revisions: dict[str, Any] | None) -> str:
    if not revisions:
        return '<p class="not-run">No revisions curve: the run has no SL-CAI traces.</p>'
    series = {"critique → revision": revisions["critique"]}
    caption = (
        "Harmful compliance of the SL-CAI answers after each round of revision (95% intervals)."
    )
    if "ablation" in revisions:
        ab = revisions["ablation"]
        series = {
            f"critique → revision ({ab['prompts']} prompts)": ab["critique"],
            "direct revision (no critique)": ab["direct"],
        }
        caption += " The ablation revises the same prompts without writing a critique first."
    return "<h3>Harmlessness against revision rounds</h3>" + figure(
        plots.rounds_curve(series, "rounds"), caption, "rounds"
    )
