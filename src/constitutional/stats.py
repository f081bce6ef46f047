"""Rates with honest error bars: every metric in an eval reports its sample size and a 95% interval.

The Wilson score interval (Wilson 1927) stays inside [0, 1] and behaves at small n and at rates
near 0 or 1, where the textbook p ± z·sqrt(p(1-p)/n) collapses to a zero-width interval.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

Z95 = 1.959963984540054  # two-sided 95% normal quantile


def wilson(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval for `successes` out of `n`; (0, 1) when n = 0.

    centre = (k + z²/2) / (n + z²), half = z / (n + z²) · sqrt(k(n-k)/n + z²/4).
    Example: wilson(0, 10) = (0.0, 0.2775): zero failures in ten still leaves room for 28%.
    """
    if n == 0:
        return 0.0, 1.0
    if not 0 <= successes <= n:
        raise ValueError(f"successes must be in [0, {n}], got {successes}")
    z2 = z * z
    centre = (successes + z2 / 2) / (n + z2)
    half = z / (n + z2) * math.sqrt(successes * (n - successes) / n + z2 / 4)
    # At k = 0 or k = n the bound is exactly 0 or 1; rounding would leave 1e-17 or 0.9999...
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == n else min(1.0, centre + half)
    return low, high


def rate(outcomes: Iterable[bool]) -> dict[str, Any]:
    """{"rate", "ci_low", "ci_high", "n"} of a list of yes/no outcomes; rate is None when n = 0."""
    values = [bool(o) for o in outcomes]
    k, n = sum(values), len(values)
    low, high = wilson(k, n)
    return {"rate": k / n if n else None, "ci_low": low, "ci_high": high, "n": n}
