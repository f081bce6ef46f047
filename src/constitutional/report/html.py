"""Building blocks of the report page, with the standard library only.

Every string that came from a file (model output, prompts, model names, principle ids) goes
through `esc`; only markup built here, and matplotlib's own SVG, is inserted raw. The page is one
self-contained file: inline CSS, inline SVG, no script, and a Content-Security-Policy that forbids
any fetch, so even a string that escaped escaping could neither run nor call home.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence
from typing import Any

# No script at all, no fetch of any kind; inline styles only (ours and matplotlib's SVG ones).
CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; base-uri 'none'; form-action 'none'"

CSS = """
:root { --ink: #1d1d1f; --muted: #6e6e73; --rule: #e3e3e6; --accent: #0072B2; --bg: #fafafa; }
* { box-sizing: border-box; }
body { margin: 0; background: var(--bg); color: var(--ink);
  font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
main { max-width: 1040px; margin: 0 auto; padding: 24px 20px 64px; }
header h1 { margin: 0 0 4px; font-size: 26px; }
header p { margin: 0; color: var(--muted); }
nav { margin: 16px 0 8px; display: flex; flex-wrap: wrap; gap: 6px 14px; font-size: 14px; }
nav a { color: var(--accent); text-decoration: none; }
section { background: #fff; border: 1px solid var(--rule); border-radius: 8px; padding: 8px 22px 18px;
  margin: 18px 0; }
h2 { font-size: 20px; margin: 14px 0 8px; }
h3 { font-size: 16px; margin: 18px 0 6px; }
.note { color: var(--muted); margin: 4px 0 10px; }
.not-run { color: var(--muted); font-style: italic; }
.warn { color: #a4370e; }
.banner { background: #fdecea; border: 1px solid #e3a59b; color: #8a1f11; border-radius: 6px; padding: 8px 12px;
  margin: 10px 0; font-weight: 600; }
.few { color: #a4370e; font-size: 12px; white-space: normal; }
.ok { color: #1b6e3a; }
.figure { margin: 10px 0; overflow-x: auto; }
.figure svg { max-width: 100%; height: auto; }
.figure figcaption { color: var(--muted); font-size: 13px; }
.grid { display: flex; flex-wrap: wrap; gap: 8px 24px; align-items: flex-start; }
.grid .figure { flex: 1 1 420px; min-width: 0; }  /* two charts a row on a wide screen, one on a narrow */
table { border-collapse: collapse; margin: 8px 0 12px; font-size: 14px; }
th, td { padding: 5px 12px 5px 0; border-bottom: 1px solid var(--rule); text-align: left; vertical-align: top; }
th { font-weight: 600; border-bottom: 2px solid var(--rule); }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
.table-wrap { overflow-x: auto; }
code { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: 13px; }
details { border: 1px solid var(--rule); border-radius: 6px; margin: 10px 0; padding: 6px 12px; }
summary { cursor: pointer; font-weight: 600; }
.turn { margin: 10px 0; }
.turn .who { font-size: 12px; text-transform: uppercase; letter-spacing: .04em; color: var(--muted); }
.turn pre { white-space: pre-wrap; word-wrap: break-word; margin: 2px 0; padding: 8px 10px;
  background: #f4f5f7; border-radius: 4px; font: 13.5px/1.45 ui-monospace, SFMono-Regular, Menlo, monospace; }
.round { border-left: 3px solid var(--accent); padding-left: 12px; margin: 12px 0; }
.round.discarded { border-left-color: #c8c8cc; opacity: .75; }
.tag { display: inline-block; font-size: 12px; padding: 0 6px; border-radius: 8px; background: #eef3f8; }
.tag.bad { background: #fbeaea; }
"""


class Markup(str):
    """A string that is already safe HTML (built here from escaped parts); tables insert it as is."""


def esc(value: Any) -> str:
    """Any value as HTML text, quotes included (safe in attributes too)."""
    return html.escape(str(value), quote=True)


def fmt(value: Any, digits: int = 3) -> str:
    """A cell value as escaped text: floats rounded, missing values as an em dash."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if value and abs(value) < 10**-digits:  # tiny but not zero: keep significant digits
            return f"{value:.{digits}g}"
        text = f"{value:,.{digits}f}"
        return text.rstrip("0").rstrip(".") if "." in text else text
    if isinstance(value, int):
        return f"{value:,}"
    return esc(value)


def pct(value: float) -> Markup:
    """A rate in [0, 1] as a percentage with one decimal."""
    return Markup(f"{value:.1%}")


def ci(r: dict[str, Any] | None, digits: int = 0, percent: bool = False) -> Markup:
    """'[low, high]' of an Elo record (or of a rate, in percent), or an em dash."""
    if not r or r.get("ci_low") is None:
        return Markup("—")
    if percent:
        return Markup(f"[{pct(r['ci_low'])}, {pct(r['ci_high'])}]")
    return Markup(f"[{fmt(float(r['ci_low']), digits)}, {fmt(float(r['ci_high']), digits)}]")


def table(
    headers: Sequence[str], rows: Iterable[Sequence[Any]], numeric: Sequence[bool] = ()
) -> str:
    """A table of escaped cells. `numeric[i]` right-aligns column i. Cells already rendered as
    markup are passed as `Markup`."""
    head = "".join(f"<th{_num(numeric, i)}>{esc(h)}</th>" for i, h in enumerate(headers))
    body = []
    for row in rows:
        cells = []
        for i, cell in enumerate(row):
            text = str(cell) if isinstance(cell, Markup) else fmt(cell)
            cells.append(f"<td{_num(numeric, i)}>{text}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f'<div class="table-wrap"><table><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table></div>'


def _num(numeric: Sequence[bool], i: int) -> str:
    return ' class="num"' if i < len(numeric) and numeric[i] else ""


def figure(svg: str, caption: str, name: str) -> str:
    """An inline SVG chart with an escaped caption; `name` lets tests and readers find it."""
    return f'<figure class="figure" data-plot="{esc(name)}">{svg}<figcaption>{esc(caption)}</figcaption></figure>'


def section(anchor: str, title: str, body: str) -> str:
    return f'<section id="{esc(anchor)}"><h2>{esc(title)}</h2>{body}</section>'


def not_run(anchor: str, title: str, why: str) -> str:
    """The section of a stage whose artifact is absent: its title and one line saying so."""
    return section(anchor, title, f'<p class="not-run">Not run: {esc(why)}</p>')


def page(title: str, subtitle: str, sections: Sequence[tuple[str, str, str]]) -> str:
    """The whole document. `sections` are (anchor, title, html) in page order."""
    nav = "".join(f'<a href="#{esc(a)}">{esc(t)}</a>' for a, t, _ in sections)
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{esc(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n<main>\n"
        f"<header><h1>{esc(title)}</h1><p>{esc(subtitle)}</p></header>\n"
        f"<nav>{nav}</nav>\n"
        + "\n".join(body for _, _, body in sections)
        + "\n</main>\n</body>\n</html>\n"
    )
