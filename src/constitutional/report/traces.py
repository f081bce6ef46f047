"""The SL-CAI section (`sl.jsonl`): how much survived the checks, and a few chains to read.

Numbers alone hide what the model actually wrote; a handful of prompt → critique → revision
chains, shown verbatim (escaped), is the quickest check that revisions really follow the
principles. Kept chains come first, since those are what fine-tuning learns from.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from constitutional.report.html import esc, not_run, section, table
from constitutional.report.load import RunArtifacts

ANCHOR, TITLE = "sl-cai", "SL-CAI critiques and revisions"
EXAMPLES = 3
SUMMARY_CHARS = 90


def render(run: RunArtifacts) -> tuple[str, str, str]:
    traces = run.traces
    if traces is None:
        return (
            ANCHOR,
            TITLE,
            not_run(
                ANCHOR, TITLE, "no sl.jsonl in the run directory (cai sl-cai generate writes it)."
            ),
        )
    red = [t for t in traces if t.get("kind") == "red_team"]
    body = [_summary(traces, red)]
    chosen = sorted(red, key=lambda t: bool(t.get("discarded")))[:EXAMPLES]
    if chosen:
        body.append(f"<h3>Example chains ({len(chosen)} of {len(red)})</h3>")
        body += [_chain(t, open_=i == 0) for i, t in enumerate(chosen)]
    return ANCHOR, TITLE, section(ANCHOR, TITLE, "".join(body))


def _summary(traces: list[dict[str, Any]], red: list[dict[str, Any]]) -> str:
    rounds = [r for t in red for r in t.get("rounds", [])]
    dropped = [r for r in rounds if r.get("discarded")]
    kept = sum(not t.get("discarded") for t in red)
    rows = [
        ["red-team prompts", len(red)],
        ["kept (at least one usable revision)", kept],
        ["helpful prompts mixed in", len(traces) - len(red)],
        ["critique/revision rounds", len(rounds)],
        ["rounds discarded by the checks", len(dropped)],
    ]
    out = "<h3>Summary</h3>" + table(["", "count"], rows, numeric=[False, True])
    reasons = Counter(r.get("reason") or "unknown" for r in dropped)
    if reasons:
        out += "<h3>Why rounds were discarded</h3>" + table(
            ["reason", "rounds"], reasons.most_common(), numeric=[False, True]
        )
    return out


def _chain(t: dict[str, Any], open_: bool) -> str:
    """One trace as a collapsible block: prompt, first answer, every round, final answer."""
    prompt = str(t.get("prompt", ""))
    short = prompt if len(prompt) <= SUMMARY_CHARS else prompt[: SUMMARY_CHARS - 1] + "…"
    status = (
        f'<span class="tag bad">discarded: {esc(t.get("reason"))}</span>'
        if t.get("discarded")
        else '<span class="tag">kept</span>'
    )
    parts = [_turn("prompt", prompt), _turn("initial response", t.get("initial_response", ""))]
    for r in t.get("rounds", []):
        parts.append(_round(r))
    parts.append(_turn("final response (the SFT target)", t.get("final_response", "")))
    summary = f"<summary>{esc(t.get('id', '?'))} · {esc(short)} {status}</summary>"
    return f'<details class="trace"{" open" if open_ else ""}>{summary}{"".join(parts)}</details>'


def _round(r: dict[str, Any]) -> str:
    head = f"Round {esc(r.get('round', '?'))} · principle <code>{esc(r.get('principle_id', '?'))}</code>"
    if r.get("temperature") is not None:
        head += f" · T = {esc(r['temperature'])}"
    if r.get("discarded"):
        head += f' <span class="tag bad">discarded: {esc(r.get("reason"))}</span>'
    parts = [f"<div><strong>{head}</strong></div>", _turn("critique", r.get("critique", ""))]
    if r.get("revision") is not None:
        parts.append(_turn("revision", r["revision"]))
    cls = "round discarded" if r.get("discarded") else "round"
    return f'<div class="{cls}">{"".join(parts)}</div>'


def _turn(who: str, text: Any) -> str:
    return f'<div class="turn"><div class="who">{esc(who)}</div><pre>{esc(text)}</pre></div>'
