"""Figures of the experiments: validation curves over seeds, and writing a figure atomically."""

from __future__ import annotations

import statistics
from pathlib import Path

from ..outputs import write_file

# line style and marker of the k-th setting's mean curve (beside its colour)
SETTING_STYLES = (("-", "o"), ("--", "s"), ("-.", "^"), (":", "D"), ((0, (5, 1, 1, 1)), "v"), ((0, (1, 2)), "P"))


def plot_seed_curves(curves: dict[str, list[list]], colours: dict[str, str], *, xlabel: str, ylabel: str,
                     title: str, log_y: bool = False, target: float | None = None):
    """One line per seed (thin) and their mean (thick) for every setting.

    curves: setting -> per-seed curves, each a list of (x, y) points; the mean is taken over the
    points every seed has. ``target``: a dotted horizontal line (e.g. a stated accuracy).
    A setting's line style and marker follow its place among ``colours``' keys (every setting of
    the experiment), so it is drawn alike in every figure, also in one that leaves settings out.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(6.4, 4.8), layout="constrained")
    places = {name: i for i, name in enumerate(colours)}
    for k, (s, seeds) in enumerate(curves.items()):
        colour = colours.get(s, f"C{k}")
        k = places.get(s, k)
        style = SETTING_STYLES[k % len(SETTING_STYLES)]      # close curves stay told apart
        for curve in seeds:
            ax.plot([p[0] for p in curve], [p[1] for p in curve], color=colour, alpha=0.3, lw=0.8, ls=style[0])
        n = min(len(c) for c in seeds)
        mean = [statistics.fmean(c[i][1] for c in seeds) for i in range(n)]
        ax.plot([p[0] for p in seeds[0][:n]], mean, color=colour, lw=1.8, ls=style[0], marker=style[1], ms=6,
                mfc="none" if k % 2 else colour, label=f"{s} (mean of {len(seeds)})")
    if target is not None:
        ax.axhline(target, color="grey", ls=":", lw=1)
    if log_y:
        from ..report.axes import plain_log_ticks

        ax.set_yscale("log")
        plain_log_ticks(ax, "y")
    # epochs and optimiser steps are whole numbers, ticked at 1, 2 or 5 times a power of ten
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, steps=[1, 2, 5, 10]))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=11)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2, frameon=False)
    return fig


def save_figure(fig, path: Path, dpi: int = 110) -> None:
    """Save a figure atomically (a temporary file beside ``path``, then a rename) and close it."""
    import matplotlib.pyplot as plt

    try:
        write_file(path, lambda tmp: fig.savefig(tmp, dpi=dpi))
    finally:
        plt.close(fig)


def plot_val_curves(exp, doc: dict, *, xlabel: str, title: str, log_y: bool = False, target_key: str | None = None):
    """An experiment's validation curves (:func:`plot_seed_curves` of every setting's per-seed curves).

    title: may hold ``{scale}``; target_key: a ``config`` entry drawn as a dotted line.
    """
    return plot_seed_curves({s: v["val_curves"] for s, v in doc["settings"].items()}, exp.colours,
                            xlabel=xlabel, ylabel=exp.metric.curve_label,
                            title=title.format(scale=doc["config"]["scale"]), log_y=log_y,
                            target=doc["config"].get(target_key) if target_key else None)
