"""The Pareto frontier: the models no other model beats on both axes at once.

With (helpful Elo, harmless Elo) per model this is the set the paper's figures trace: moving
along it trades one for the other, and anything off it is worse than some model on it.
"""

from __future__ import annotations

from collections.abc import Mapping


def dominates(p: tuple[float, float], q: tuple[float, float]) -> bool:
    """p is at least as good as q on both axes and strictly better on one (higher is better)."""
    return p[0] >= q[0] and p[1] >= q[1] and (p[0] > q[0] or p[1] > q[1])


def pareto_frontier(points: Mapping[str, tuple[float, float]]) -> list[str]:
    """Names of the non-dominated points, ordered by the first axis, best first.

    Ties (identical points) are all kept: neither dominates the other.
    Example: {"a": (1, 5), "b": (3, 3), "c": (2, 2), "d": (0, 5)} → ["b", "a"]
    (c is beaten by b on both axes; d is beaten by a on the first and tied on the second).
    """
    front = [n for n, p in points.items() if not any(dominates(q, p) for q in points.values())]
    return sorted(front, key=lambda n: (-points[n][0], -points[n][1], n))
