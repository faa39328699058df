"""Comparing settings across seeds: the one place the experiments' statistics live.

A setting is trained with several seeds; two settings are compared by the difference of their
means against the seed spread √(s_a²/n_a + s_b²/n_b) (the standard error of the difference, as in
Welch's t test), and their ratio t.
"""

from __future__ import annotations

import math
import statistics


def seed_comparison(a: list[float], b: list[float]) -> tuple[float, float | None, float | None]:
    """(mean(a) − mean(b), seed spread, t) for per-seed values a and b.

    The spread needs two or more seeds on each side (None otherwise); t is None where the
    spread is None or 0.
    """
    diff = statistics.fmean(a) - statistics.fmean(b)
    if len(a) < 2 or len(b) < 2:
        return diff, None, None
    spread = math.sqrt(statistics.variance(a) / len(a) + statistics.variance(b) / len(b))
    return diff, spread, (diff / spread if spread > 0 else None)
