"""Comparing settings across seeds: the one place the experiments' statistics live.

A setting is trained with several seeds; its metric is reported as mean ± std (the sample
standard deviation, None for fewer than two seeds), and two settings are compared by the
difference of their means against the seed spread √(s_a²/n_a + s_b²/n_b) (the standard error of
the difference, as in Welch's t test), and their ratio t.
"""

from __future__ import annotations

import math
import statistics


def mean_std(values: list[float]) -> tuple[float, float | None]:
    """(mean, sample standard deviation) of per-seed values; the std is None for fewer than two."""
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def format_mean_std(mean: float, std: float | None, digits: int) -> str:
    """``mean ± std`` with ``digits`` decimals; ``n/a`` for a missing std."""
    return f"{mean:.{digits}f} ± " + ("n/a" if std is None else f"{std:.{digits}f}")


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


def seeds_to_resolve(a: list[float], b: list[float], min_t: float) -> int | None:
    """Seeds per setting at which the measured difference of a and b would reach |t| = ``min_t``,
    were the means and standard deviations to hold: with n seeds on each side the spread is
    √((s_a² + s_b²)/n), so n = ⌈min_t² (s_a² + s_b²) / (mean(a) − mean(b))²⌉. None with fewer than
    two seeds on either side or no difference; a planning figure, not a test."""
    if len(a) < 2 or len(b) < 2:
        return None
    diff = statistics.fmean(a) - statistics.fmean(b)
    if diff == 0:
        return None
    # the spread from the standard deviations: a sum of variances can fall into the subnormal range
    # (and lose its digits) where the deviations themselves are still ordinary floats
    ratio = min_t * math.hypot(statistics.stdev(a), statistics.stdev(b)) / abs(diff)
    # the relative slack keeps an n that lands on min_t exactly from rounding up past it
    return max(2, math.ceil(ratio * ratio * (1 - 1e-12))) if math.isfinite(ratio * ratio) else None


# seeds_to_resolve beyond this reads as out of reach, not as a count to plan with
RESOLVE_CAP = 100


def resolve_words(n: int, min_t: float) -> str:
    """The planning note of a comparison within ``min_t`` spreads that ``n`` seeds per setting would
    resolve (:func:`seeds_to_resolve`)."""
    if n > RESOLVE_CAP:
        return (f"within {min_t:g} spreads: a difference this small would need more than {RESOLVE_CAP} seeds "
                "per setting at this spread")
    return f"within {min_t:g} spreads: about {n} seeds per setting would resolve a difference of this size"


def mean_curve(curves: list[list]) -> list[list]:
    """[[x, mean of y over the curves], ...] at the points every curve has (the same x, in order)."""
    if not curves:
        return []
    xs = [p[0] for p in curves[0]]
    return [[x, statistics.fmean(c[i][1] for c in curves)] for i, x in enumerate(xs)
            if all(len(c) > i and c[i][0] == x for c in curves)]
