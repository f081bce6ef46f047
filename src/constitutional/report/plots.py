"""The report's charts: matplotlib figures rendered to SVG strings that the page embeds inline.

Figures are built with `matplotlib.figure.Figure` rather than pyplot, so no global backend is
chosen and nothing is shown: the SVG printer needs no display (the Agg-style, headless path).
`constitutional.svg.to_svg` prints them (the collective web page uses it too).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from matplotlib.figure import Figure

from constitutional.svg import to_svg

# Colours that stay distinct for the common forms of colour blindness (Okabe–Ito).
BLUE, ORANGE, GREEN, GREY = "#0072B2", "#E69F00", "#009E73", "#7f7f7f"


def _figure(width: float = 6.4, height: float = 4.0) -> tuple[Figure, object]:
    fig = Figure(figsize=(width, height), layout="constrained")
    ax = fig.add_subplot()
    ax.grid(True, color="#e5e5e5", linewidth=0.8)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    return fig, ax


def pareto(points: Mapping[str, dict], frontier: Sequence[str]) -> str:
    """Helpful Elo (x) against harmless Elo (y), 95% CIs as error bars, the frontier joined.

    `points` maps model name → {"helpful": {elo, ci_low, ci_high}, "harmless": {...}}.
    """
    fig, ax = _figure(6.4, 4.6)
    for name, p in points.items():
        h, s = p["helpful"], p["harmless"]
        on = name in frontier
        ax.errorbar(
            h["elo"],
            s["elo"],
            xerr=[[h["elo"] - h["ci_low"]], [h["ci_high"] - h["elo"]]],
            yerr=[[s["elo"] - s["ci_low"]], [s["ci_high"] - s["elo"]]],
            fmt="D" if on else "o",
            color=ORANGE if on else BLUE,
            ecolor="#9a9a9a",
            markersize=8 if on else 6,
            capsize=3,
            zorder=3,
        )
        ax.annotate(
            name,
            (h["elo"], s["elo"]),
            xytext=(6, 6),
            textcoords="offset points",
            fontsize=9,
            parse_math=False,
        )
    front = sorted(
        (points[n]["helpful"]["elo"], points[n]["harmless"]["elo"]) for n in frontier if n in points
    )
    if len(front) > 1:
        ax.plot(
            *zip(*front),
            color=ORANGE,
            linestyle="--",
            linewidth=1.2,
            zorder=2,
            label="Pareto frontier",
        )
        ax.legend(loc="best", frameon=False)
    ax.set_xlabel("helpfulness Elo (higher is more helpful)")
    ax.set_ylabel("harmlessness Elo (higher is more harmless)")
    return to_svg(fig, "pareto")


def rate_bars(rates: Mapping[str, dict], title: str, key: str) -> str:
    """One horizontal bar per model: the rate with its 95% CI as a whisker, and n beside it."""
    names = list(rates)
    fig, ax = _figure(4.8, 0.9 + 0.4 * len(names))
    values = [rates[n]["rate"] for n in names]
    low = [rates[n]["rate"] - rates[n]["ci_low"] for n in names]
    high = [rates[n]["ci_high"] - rates[n]["rate"] for n in names]
    rows = range(len(names))
    ax.barh(rows, values, xerr=[low, high], color=BLUE, ecolor="#333333", capsize=3, height=0.6)
    for y, n in zip(rows, names):
        ax.text(
            rates[n]["ci_high"] + 0.01,
            y,
            f"{rates[n]['rate']:.0%}  (n={rates[n]['n']})",
            va="center",
            fontsize=8,
        )
    ax.set_yticks(list(rows), names, parse_math=False)  # a "$" in a model name is not TeX
    ax.invert_yaxis()  # first model on top, as in the tables
    ax.set_xlim(0, 1.25)  # room for the labels right of a whisker that reaches 1
    ax.set_xticks([0, 0.25, 0.5, 0.75, 1.0], ["0%", "25%", "50%", "75%", "100%"])
    ax.set_title(title, fontsize=10, loc="left")
    return to_svg(fig, key)


def reliability(bins: Sequence[dict], ece: float | None) -> str:
    """Reliability diagram: mean predicted p(A) per bin against the observed share of A wins."""
    fig, ax = _figure(4.6, 4.4)
    ax.plot([0, 1], [0, 1], color=GREY, linestyle="--", linewidth=1, label="perfectly calibrated")
    xs = [b["p_mean"] for b in bins]
    ys = [b["frac_positive"] for b in bins]
    counts = [b["count"] for b in bins]
    biggest = max(counts, default=1) or 1
    ax.plot(xs, ys, color=BLUE, linewidth=1.2)
    ax.scatter(
        xs,
        ys,
        s=[20 + 180 * c / biggest for c in counts],
        color=BLUE,
        zorder=3,
        label="bins (area ∝ count)",
    )
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("mean predicted probability")
    ax.set_ylabel("observed frequency")
    if ece is not None:
        ax.set_title(f"ECE = {ece:.3f}", fontsize=10, loc="left")
    ax.legend(loc="upper left", frameon=False, fontsize=8)
    return to_svg(fig, "reliability")


def length_bias(
    points: Sequence[Sequence[float]], slope: float | None, correlation: float | None
) -> str:
    """Judge p(A) against the length difference of A and B; a flat cloud means no length bias."""
    fig, ax = _figure(5.2, 4.0)
    xs = [p[0] for p in points]
    ys = [p[1] for p in points]
    ax.scatter(xs, ys, s=14, color=BLUE, alpha=0.6, edgecolors="none")
    ax.axhline(0.5, color=GREY, linestyle="--", linewidth=1)
    if slope is not None and xs:
        # An ordinary least-squares line passes through the means, so the recorded slope and the
        # point cloud fix it without storing an intercept.
        mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
        lo, hi = min(xs), max(xs)
        ax.plot(
            [lo, hi], [my + slope * (lo - mx), my + slope * (hi - mx)], color=ORANGE, linewidth=1.5
        )
    ax.set_xlabel("length(A) − length(B)")
    ax.set_ylabel("judge p(A)")
    ax.set_ylim(-0.02, 1.02)
    parts = [
        f"slope = {slope:.3g}" if slope is not None else "",
        f"r = {correlation:.2f}" if correlation is not None else "",
    ]
    ax.set_title("   ".join(p for p in parts if p), fontsize=10, loc="left")
    return to_svg(fig, "length-bias")


def curves(log: Sequence[dict], metrics: Sequence[str], key: str) -> str:
    """Small multiples, one panel per metric, of a training log against its step."""
    cols = min(2, len(metrics))  # two panels a row keep the tick labels legible on the page
    rows = -(-len(metrics) // cols)
    fig = Figure(figsize=(3.6 * cols, 2.5 * rows), layout="constrained")
    for i, metric in enumerate(metrics):
        ax = fig.add_subplot(rows, cols, i + 1)
        pts = [
            (e.get("step", i), e[metric])
            for i, e in enumerate(log, 1)
            if isinstance(e.get(metric), int | float)
        ]
        ax.plot(
            [s for s, _ in pts],
            [v for _, v in pts],
            color=(BLUE, ORANGE, GREEN, GREY)[i % 4],
            marker="." if len(pts) < 30 else None,
        )
        ax.set_title(metric, fontsize=10, loc="left")
        ax.set_xlabel("step")
        ax.grid(True, color="#e5e5e5", linewidth=0.8)
        for side in ("top", "right"):
            ax.spines[side].set_visible(False)
    return to_svg(fig, key)


def per_iteration(
    series: Mapping[str, Sequence[tuple[int, float]]], threshold: float | None, key: str
) -> str:
    """Lines of (iteration, value in [0, 1]) per named series; `threshold` as a dashed red rule.

    Self-play draws its win rates against the starting model and its judge agreement here: the
    rule is the agreement below which the loop stops.
    """
    fig, ax = _figure(5.6, 3.6)
    for (name, points), color in zip(series.items(), (BLUE, ORANGE, GREEN, GREY)):
        if points:
            ax.plot(
                [x for x, _ in points], [y for _, y in points], color=color, marker="o", label=name
            )
    if threshold is not None:
        ax.axhline(threshold, color="#D55E00", linestyle="--", linewidth=1, label="stop threshold")
    ax.axhline(0.5, color=GREY, linestyle=":", linewidth=0.8)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("iteration")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.legend(loc="best", frameon=False, fontsize=8)
    return to_svg(fig, key)


def rounds_curve(series: Mapping[str, Sequence[dict]], key: str) -> str:
    """Harmful compliance (with its 95% interval) after each revision round, one line per series."""
    fig, ax = _figure(5.6, 3.6)
    for (name, points), color in zip(series.items(), (BLUE, ORANGE, GREEN, GREY)):
        rates = [p["harmful_compliance"] for p in points]
        xs = [p["round"] for p in points]
        ys = [r["rate"] if r["rate"] is not None else float("nan") for r in rates]
        err = [
            [y - r["ci_low"] for y, r in zip(ys, rates)],
            [r["ci_high"] - y for y, r in zip(ys, rates)],
        ]
        ax.errorbar(xs, ys, yerr=err, color=color, marker="o", capsize=3, label=name)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("revision rounds (0 = the first answer)")
    ax.set_ylabel("harmful compliance (refusal instrument)")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.legend(loc="best", frameon=False, fontsize=8)
    return to_svg(fig, key)
