"""The principle-audit section (`principles.json`): which principles do the work, which are dead weight.

A principle that is drawn often but rarely changes a revision, disagrees with the ensemble of the
others, or whose removal changes nothing, is a candidate for rewording or deletion.
"""

from __future__ import annotations

from constitutional.report.html import Markup, esc, not_run, section, table
from constitutional.report.load import RunArtifacts

ANCHOR, TITLE = "principles", "Principles"
COLUMNS = (
    ("id", "principle"),
    ("kind", "kind"),
    ("draws", "draws"),
    ("mean_change", "mean change"),
    ("agreement_with_ensemble", "agreement with ensemble"),
    ("ablation_changed", "changed when ablated"),
)


def render(run: RunArtifacts) -> tuple[str, str, str]:
    audit = run.principles
    if audit is None:
        return ANCHOR, TITLE, not_run(ANCHOR, TITLE, "no principles.json in the run directory.")
    principles = audit.get("principles") or []
    if not principles:
        return (
            ANCHOR,
            TITLE,
            section(ANCHOR, TITLE, '<p class="not-run">The audit lists no principles.</p>'),
        )
    rows = [
        [Markup(f"<code>{esc(p.get('id'))}</code>"), *(p.get(key) for key, _ in COLUMNS[1:])]
        for p in principles
    ]
    note = (
        '<p class="note">A principle that is drawn often yet rarely changes an outcome, or that '
        "disagrees with the ensemble of the others, is a candidate for rewording or removal.</p>"
    )
    body = note + table(
        [label for _, label in COLUMNS], rows, numeric=[False, False, True, True, True, True]
    )
    return ANCHOR, TITLE, section(ANCHOR, TITLE, body)
