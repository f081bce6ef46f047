"""The judge-audit section (`audit.json`): can the AI judge behind the labels and Elo be trusted?

Four failure modes are measured: position bias (the verdict flips when A and B swap), length
bias (longer answers win), self-preference (the judge favours its own model's answers) and
miscalibration (p(A) = 0.8 should mean A wins 80% of the time).
"""

from __future__ import annotations

from typing import Any

from constitutional.report import plots
from constitutional.report.html import Markup, ci, esc, figure, fmt, not_run, pct, section, table
from constitutional.report.load import RunArtifacts

ANCHOR, TITLE = "judge-audit", "Judge audit"
RATES = (
    ("flip_rate", "position flip rate", "verdict changes when A and B are swapped"),
    ("self_preference", "self-preference", "judge prefers answers from its own model"),
    ("human_agreement", "human agreement", "verdict matches a human label"),
    (
        "injection_flip_rate",
        "injection flip rate",
        "verdict changes when an answer tells the judge what to say",
    ),
)


def render(run: RunArtifacts) -> tuple[str, str, str]:
    audit = run.audit
    if audit is None:
        return ANCHOR, TITLE, not_run(ANCHOR, TITLE, "no audit.json in the run directory.")
    judge = audit.get("judge")
    judge = judge if isinstance(judge, dict) else {"model": judge}
    who = f"{judge.get('model') or '?'}" + (f" ({judge['mode']})" if judge.get("mode") else "")
    body = [f'<p class="note">Judge {esc(who)}</p>', "<h3>Rates</h3>", _rate_table(audit)]
    charts = []
    calibration = audit.get("calibration")
    if calibration and calibration.get("bins"):
        caption = "Reliability diagram: points on the diagonal "
        "mean the judge's probabilities can be taken at face value."
        charts.append(
            figure(
                plots.reliability(calibration["bins"], calibration.get("ece")),
                caption,
                "reliability",
            )
        )
    bias = audit.get("length_bias")
    if bias and bias.get("points"):
        caption = (
            "Length bias: each point is one judged pair; a rising line means longer answers win."
        )
        charts.append(
            figure(
                plots.length_bias(bias["points"], bias.get("slope"), bias.get("correlation")),
                caption,
                "length-bias",
            )
        )
    if charts:
        body.append(
            f'<h3>Calibration and length bias</h3><div class="grid">{"".join(charts)}</div>'
        )
    return ANCHOR, TITLE, section(ANCHOR, TITLE, "".join(body))


def _rate_table(audit: dict[str, Any]) -> str:
    rows = []
    for key, label, meaning in RATES:
        r = _as_rate(audit.get(key))
        rate = pct(r["rate"]) if r else Markup('<span class="not-run">not measured</span>')
        rows.append([label, rate, ci(r, percent=True), (r or {}).get("n"), meaning])
    calibration = audit.get("calibration") or {}
    rows.append(
        [
            "expected calibration error",
            calibration.get("ece"),
            None,
            None,
            "mean gap between confidence and accuracy",
        ]
    )
    bias = audit.get("length_bias") or {}
    rows.append(
        [
            "length-bias slope",
            bias.get("slope"),
            None,
            len(bias.get("points") or []) or None,
            f"change in p(A) per character A is longer than B (r = {fmt(bias.get('correlation'), 2)})",
        ]
    )
    return table(
        ["measure", "value", "95% CI", "n", "what it means"],
        rows,
        numeric=[False, True, True, True, False],
    )


def _as_rate(value: Any) -> dict[str, Any] | None:
    """A rate record {rate, ci_low, ci_high, n}; a bare number is a rate without interval."""
    if value is None:
        return None
    if isinstance(value, int | float):
        return {"rate": float(value)}
    return value if value.get("rate") is not None else None
