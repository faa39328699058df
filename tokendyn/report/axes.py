"""Axis helpers shared by the report figures (matplotlib)."""

from __future__ import annotations

import math

import numpy as np
from matplotlib.ticker import (
    FixedLocator,
    FuncFormatter,
    LogFormatterSciNotation,
    MaxNLocator,
    NullFormatter,
    NullLocator,
    ScalarFormatter,
)


def symlog_axis(ax, which: str, values, max_labels: int = 6) -> None:
    """Make the x or y axis of ``ax`` a symlog axis fitted to ``values``.

    The linear band ends at the decade of the smallest nonzero |value| (no empty decades
    below the data), the limits hug the data, and at most about ``max_labels`` decades
    inside the data's range are labelled, thinned evenly from the largest down, so that
    tick labels do not overlap.
    """
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    nz = np.abs(v[v != 0])
    lin = 10.0 ** math.floor(math.log10(nz.min())) if nz.size else 1.0
    getattr(ax, f"set_{which}scale")("symlog", linthresh=lin)
    if not v.size:
        return

    def pad(x: float, up: bool) -> float:   # 30% beyond the data in the log part, a bit of the band inside it
        if abs(x) > lin:
            return x * (1.3 if (x > 0) == up else 1 / 1.3)
        return x + (0.3 * lin if up else -0.3 * lin)

    getattr(ax, f"set_{which}lim")(pad(float(v.min()), False), pad(float(v.max()), True))
    crosses = v.min() < 0 < v.max() or bool((v == 0).any())
    k_lin = round(math.log10(lin))

    def decades(part):   # 10^k inside the part's range; the band's edge left to the 0 tick when there is one
        if not part.size:
            return []
        lo = max(math.ceil(math.log10(part.min())), k_lin + (1 if crosses else 0))
        return list(range(math.floor(math.log10(part.max())), lo - 1, -1))

    dp, dn = decades(v[v > 0]), decades(-v[v < 0])
    step = max(1, math.ceil((len(dp) + len(dn) + crosses) / max_labels))
    ticks = [10.0 ** k for k in dp[::step]] + [-(10.0 ** k) for k in dn[::step]] + ([0.0] if crosses else [])
    plain = len(ticks) < 2
    if plain:   # the data spans less than a decade: plain, evenly spaced ticks inside it
        lo, hi = getattr(ax, f"get_{which}lim")()
        ticks = [t for t in MaxNLocator(4).tick_values(lo, hi) if lo <= t <= hi]
    axis = ax.xaxis if which == "x" else ax.yaxis
    axis.set_major_locator(FixedLocator(sorted(ticks)))
    axis.set_major_formatter(ScalarFormatter() if plain else LogFormatterSciNotation())
    axis.set_minor_locator(NullLocator())


def plain_log_ticks(ax, which: str, max_ticks: int = 7) -> None:
    """Label the x or y log axis of ``ax`` with plain numbers ("0.95", "20", "0.5"), from the
    limits it has now (call it once the data are drawn and the limits set).

    Under a decade the ticks are round values (1, 1.5, 2, 3, 4, 5, 6, 8 times a power of ten), or
    evenly spaced ones where fewer than three of those fall inside; over it they are 1, 2 and 5
    times the powers of ten inside, thinned to the powers alone where more than ``max_ticks``
    would crowd. No minor tick labels.
    """
    ax.autoscale_view()
    lo, hi = sorted(getattr(ax, f"get_{which}lim")())
    if not (lo > 0 and math.isfinite(hi)):
        return
    decades = range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1)
    if hi / lo < 10:
        # round values spread over the log range (15, 20, 30, 40, 50); evenly spaced ones where
        # fewer than three fall inside (a range as narrow as 0.93 to 1.09)
        ticks = [m * 10.0 ** k for k in decades for m in (1, 1.5, 2, 3, 4, 5, 6, 8) if lo <= m * 10.0 ** k <= hi]
        ticks = ticks[::math.ceil(len(ticks) / max_ticks)] if len(ticks) >= 3 else \
            [t for t in MaxNLocator(max_ticks - 2).tick_values(lo, hi) if lo <= t <= hi]
    else:
        ticks = [m * 10.0 ** k for k in decades for m in (1, 2, 5) if lo <= m * 10.0 ** k <= hi]
        if len(ticks) > max_ticks:
            ticks = [10.0 ** k for k in decades if lo <= 10.0 ** k <= hi]
    axis = ax.xaxis if which == "x" else ax.yaxis
    axis.set_major_locator(FixedLocator(ticks))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.6g}"))
    axis.set_minor_locator(NullLocator())
    axis.set_minor_formatter(NullFormatter())
