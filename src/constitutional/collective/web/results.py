"""The results page's content: `analyze` on the live votes, and its two charts as inline SVG.

The analysis is exactly `cai collective analyze` on the conversation's export (same matrix, same
config), so the page and an offline run agree. Charts go through `constitutional.svg.to_svg`, so they
need no font or script and label statements and groups by id only: their texts, which users
wrote, appear only in the (escaped) tables.

Anyone may load the page, and one analysis costs about half a second of CPU at a few hundred
participants, so `ResultsCache` keeps each conversation's last result until its votes change.
"""

from __future__ import annotations

import string
import threading
from typing import Any

from constitutional.collective.analysis import AnalysisConfig, analyze
from constitutional.collective.web.store import Store
from constitutional.errors import UserError

# Okabe–Ito, as the report uses: distinct for the common forms of colour blindness.
GROUP_COLOURS = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#D55E00", "#56B4E9"]


def group_name(g: int) -> str:
    return string.ascii_uppercase[g % 26]


def results(store: Store, cid: int, min_votes: int, invited_only: bool = False) -> dict[str, Any]:
    """The analysis and its charts, or {"error": why} while there are too few votes.

    A participant who voted on every statement always counts, even when fewer statements exist
    than `min_votes` (early in a conversation). `invited_only`: only invited participants' votes.
    """
    votes = store.votes(cid, invited_only)
    if votes.n_votes == 0:
        return {"error": "no votes yet"}
    config = AnalysisConfig(
        min_votes=min(min_votes, len(votes.statements)), seed=store.conversation(cid).seed
    )
    try:
        result = analyze(votes, config)
    except UserError as e:
        return {"error": str(e)}
    result["map_svg"] = opinion_map(result["points"], result["k"], result["explained_variance"])
    result["agreement_svg"] = agreement(result["statement_stats"], result["k"])
    return result


class ResultsCache:
    """`results` per conversation, recomputed only when `Store.votes_version` changes.

    One lock: when many requests arrive after a vote, one computes and the rest wait for its
    result instead of each running the analysis.
    """

    def __init__(self, store: Store, min_votes: int, invited_only: bool = False, most: int = 64):
        self.store, self.min_votes, self.invited_only, self.most = (
            store,
            min_votes,
            invited_only,
            most,
        )
        self._cached: dict[int, tuple[tuple, dict[str, Any]]] = {}  # cid -> (votes version, result)
        self._lock = threading.Lock()
        self.computed = 0  # analyses run, for tests and curious admins

    def get(self, cid: int) -> dict[str, Any]:
        with self._lock:
            version = self.store.votes_version(cid, self.invited_only)
            hit = self._cached.pop(cid, None)
            if hit is None or hit[0] != version:
                hit = (version, results(self.store, cid, self.min_votes, self.invited_only))
                self.computed += 1
            self._cached[cid] = hit  # (re)inserted last: the dict is in least-recently-used order
            while len(self._cached) > self.most:
                self._cached.pop(next(iter(self._cached)))
            return hit[1]


def opinion_map(points: list[dict[str, Any]], k: int, explained: list[float]) -> str:
    """Participants on the first two principal components, coloured by opinion group."""
    from matplotlib.figure import Figure

    from constitutional.svg import to_svg

    fig = Figure(figsize=(5.6, 4.2), layout="constrained")
    ax = fig.add_subplot()
    for g in range(k):
        # Rounded: a component with no variance would otherwise plot float noise on a 1e-16 axis.
        xs = [round(p["x"], 9) for p in points if p["group"] == g]
        ys = [round(p["y"], 9) for p in points if p["group"] == g]
        ax.scatter(
            xs,
            ys,
            s=36,
            color=GROUP_COLOURS[g % len(GROUP_COLOURS)],
            alpha=0.8,
            edgecolors="white",
            linewidths=0.6,
            label=f"group {group_name(g)} ({len(xs)})",
        )
    share = [*explained, 0.0, 0.0]
    ax.set_xlabel(f"first principal component ({share[0]:.0%} of variance)")
    ax.set_ylabel(f"second principal component ({share[1]:.0%})")
    ax.legend(loc="best", frameon=False, fontsize=9)
    ax.grid(True, color="#e5e5e5", linewidth=0.8)
    ax.set_axisbelow(True)
    return to_svg(fig, "opinion-map")


def agreement(stats: list[dict[str, Any]], k: int) -> str:
    """Heat map of each group's smoothed p(agree) on each statement (rows groups, columns statements)."""
    import numpy as np
    from matplotlib.figure import Figure

    from constitutional.svg import to_svg

    grid = np.array(
        [[s["groups"][g]["p_agree"] for s in stats] for g in range(k)]
    )  # (k, n_statements)
    fig = Figure(figsize=(min(1.6 + 0.45 * len(stats), 12), 0.9 + 0.45 * k), layout="constrained")
    ax = fig.add_subplot()
    image = ax.imshow(grid, cmap="RdBu", vmin=0, vmax=1, aspect="auto")
    ax.set_xticks(
        range(len(stats)),
        [f"#{s['statement']}" for s in stats],
        rotation=90 if len(stats) > 12 else 0,
    )
    ax.set_yticks(range(k), [f"group {group_name(g)}" for g in range(k)])
    if len(stats) <= 30:
        for (g, j), p in np.ndenumerate(grid):
            ax.text(
                j,
                g,
                f"{p:.0%}",
                ha="center",
                va="center",
                fontsize=7,
                color="white" if abs(p - 0.5) > 0.3 else "black",
            )
    fig.colorbar(image, ax=ax, label="p(agree)", shrink=0.9)
    return to_svg(fig, "agreement")
