"""Figures of token trajectories (matplotlib, Agg backend: files only, no display)."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 -- must follow matplotlib.use("Agg")
import numpy as np  # noqa: E402 -- import block below matplotlib.use
import torch  # noqa: E402 -- import block below matplotlib.use
from matplotlib.lines import Line2D  # noqa: E402 -- must follow matplotlib.use("Agg")

from ..report.axes import symlog_axis  # noqa: E402 -- import block below matplotlib.use
from .integrate import Simulation, simulate  # noqa: E402 -- import block below matplotlib.use
from .regimes import classify_trajectory  # noqa: E402 -- import block below matplotlib.use
from .vector_field import TokenSystem  # noqa: E402 -- import block below matplotlib.use


def _colors(n: int):
    cmap = plt.get_cmap("viridis")
    return [cmap(i / max(1, n - 1)) for i in range(n)]


# a token that blew up ends in a cross, one stopped with a blow-up in an open square
BLOWUP_MARK = {"marker": "x", "ms": 7}
STOPPED_MARK = {"marker": "s", "ms": 5, "mfc": "none"}


def _end_mark(sim: Simulation, index: int, l: int) -> dict:
    return BLOWUP_MARK if bool(sim.blew_up[index, l]) else STOPPED_MARK


def _end_handles(sim: Simulation, index: int) -> list:
    """Legend entries for the ends of trajectories that occur in ``sim``."""
    ended = torch.isfinite(sim.blowup_times[index])
    out = []
    if bool((ended & sim.blew_up[index]).any()):
        out.append(Line2D([], [], ls="", color="k", label="blew up", **BLOWUP_MARK))
    if bool((ended & ~sim.blew_up[index]).any()):
        out.append(Line2D([], [], ls="", color="k", label="stopped with a blow-up", **STOPPED_MARK))
    return out


def plot_trajectories(sim: Simulation, ax, index: int = 0, title: str | None = None) -> None:
    """x_l(t) for D = 1, |x_l(t)| otherwise, against log t; a cross marks each token that blew up,
    an open square each token stopped with a blow-up."""
    t = sim.t[1:].numpy()
    vals = sim.x[1:, index, :, 0] if sim.system.dim == 1 else sim.norms[1:, index]
    valid = sim.valid[1:, index]
    L = vals.shape[1]
    shown = [vals[valid].numpy()]                # every value drawn, for the axis range
    blowups = False
    for l, c in zip(range(L), _colors(L)):
        v = vals[:, l].clone()
        v[~valid[:, l]] = float("nan")          # masked for drawing only
        ax.plot(t, v.numpy(), color=c, lw=1.2, label=f"token {l + 1}" if L <= 10 else None)
        bt = float(sim.blowup_times[index, l])
        if math.isfinite(bt):
            end = sim.blowup_states[index, l]
            y = float(end[0] if sim.system.dim == 1 else end.norm())
            last = int(torch.nonzero(sim.valid[:, index, l]).max())
            y0 = float(sim.x[last, index, l, 0] if sim.system.dim == 1 else sim.norms[last, index, l])
            ax.plot([float(sim.t[last]), bt], [y0, y], color=c, lw=1.2)
            ax.plot([bt], [y], ls="", color=c, **_end_mark(sim, index, l))
            shown.append(np.array([y]))
            blowups = True
    ax.set_xscale("log")
    symlog_axis(ax, "y", np.concatenate(shown))
    ax.set_xlabel("depth t (continuous layer index, log scale)")
    ax.set_ylabel("token x_l(t) (dimensionless, symlog)" if sim.system.dim == 1 else
                  "token norm |x_l(t)| (dimensionless, symlog)")
    if title:
        ax.set_title(title, fontsize=9)
    if L <= 10:
        handles = [Line2D([], [], color=c, lw=1.2, label=f"token {l + 1}") for l, c in zip(range(L), _colors(L))]
        if blowups:
            handles += _end_handles(sim, index)
        ax.legend(handles=handles, fontsize=6, loc="best")


def phase_legend_handles(n_tokens: int) -> list:
    """Legend entries of a phase portrait: token colours, start point, blow-up."""
    handles = [Line2D([], [], color=c, lw=1.2, label=f"token {l + 1}") for l, c in zip(range(n_tokens),
                                                                                     _colors(n_tokens))]
    return handles + [Line2D([], [], ls="", marker="o", color="k", ms=4, label="start x_l(0)"),
                      Line2D([], [], ls="", marker="x", color="k", ms=6, label="blow-up")]


def plot_phase(sim: Simulation, ax, index: int = 0, title: str | None = None, legend: bool = True) -> None:
    """Phase portrait of D = 2 tokens: each token's path in the plane, start marked by a dot,
    blow-up by a cross (legend unless ``legend`` is False, e.g. for one legend per figure)."""
    x = sim.x[:, index]
    valid = sim.valid[:, index]
    L = x.shape[1]
    drawn = []
    for l, c in zip(range(L), _colors(L)):
        pts = x[valid[:, l], l]
        if math.isfinite(float(sim.blowup_times[index, l])):
            pts = torch.cat([pts, sim.blowup_states[index, l][None]])
        drawn.append(pts)
        ax.plot(pts[:, 0].numpy(), pts[:, 1].numpy(), color=c, lw=1.0)
        ax.plot([float(x[0, l, 0])], [float(x[0, l, 1])], "o", color=c, ms=3)
        if math.isfinite(float(sim.blowup_times[index, l])):
            ax.plot([float(pts[-1, 0])], [float(pts[-1, 1])], "x", color=c, ms=6)
    pts = torch.cat(drawn).numpy()
    symlog_axis(ax, "x", pts[:, 0])
    symlog_axis(ax, "y", pts[:, 1])
    ax.set_xlabel("token coordinate x¹ (dimensionless, symlog)")
    ax.set_ylabel("token coordinate x² (dimensionless, symlog)")
    if legend:
        ax.legend(handles=phase_legend_handles(L), fontsize=6, loc="best")
    ax.axhline(0, color="0.8", lw=0.5)
    ax.axvline(0, color="0.8", lw=0.5)
    if title:
        ax.set_title(title, fontsize=9)


def _save(fig, path, rect=None) -> Path:
    """Lay out (inside ``rect`` of the figure, e.g. to leave room for a shared legend), write
    as a 120-dpi PNG (making the folder) and close the figure."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout(rect=rect)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def save_simulation_plot(sim: Simulation, path: Path, title: str | None = None) -> Path:
    """One simulation to a PNG: trajectories, plus the phase portrait when D = 2."""
    if sim.system.dim == 2:
        fig, axes = plt.subplots(1, 2, figsize=(10, 4))
        plot_trajectories(sim, axes[0], title=title)
        plot_phase(sim, axes[1], title="phase portrait")
    else:
        fig, ax = plt.subplots(figsize=(6, 4))
        plot_trajectories(sim, ax, title=title)
    return _save(fig, path)


# The 1-D examples of the three regimes (THEORY.md section 3): μ, s, a, x(0), t_end.
REGIME_EXAMPLES_1D = {
    "convergence": (-1.0, 1.0, 1.0, [1.5, -1.0, 0.5, -0.25, 2.0], 1e4),
    "slow_divergence": (1.0, 1.0, 1.0, [-1.5, -1.0, -0.5, -0.25, -2.0], 1e6),
    "fast_divergence": (1.0, 1.0, 1.0, [-1.5, -1.0, 0.5, -0.25, -2.0], 1e2),
}


def figure_regimes_1d(path: Path, n_points: int = 120) -> dict:
    """Three panels, one per regime, of 1-D trajectories. Returns the measured regimes."""
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    measured = {}
    for ax, (name, (mu, s, a, x0, t_end)) in zip(axes, REGIME_EXAMPLES_1D.items()):
        sim = simulate(TokenSystem.one_dim(mu, s, a), torch.tensor(x0, dtype=torch.float64), t_end,
                       n_points=n_points, rtol=1e-7, atol=1e-9)
        measured[name] = classify_trajectory(sim).regime
        plot_trajectories(sim, ax, title=f"{name.replace('_', ' ')}: μ={mu}, s={s}, a={a}")
    _save(fig, path)
    return measured


FIG6_CASES = {"two positive": (1.0, 0.5), "one positive": (1.0, -0.5), "two negative": (-1.0, -0.5)}


def figure_fig6(path: Path, n_tokens: int = 6, seed: int = 0, t_end: float = 1e3, n_points: int = 120) -> dict:
    """The paper's Figure-6 experiment (D = 2): phase portraits for three eigen-signatures
    of M. Returns {case: measured regime}."""
    from .experiments import figure6_system
    from .regimes import predict_regime

    fig, axes = plt.subplots(1, 3, figsize=(14, 4.8))
    out = {}
    g = torch.Generator().manual_seed(seed + 1)
    x0 = torch.randn(n_tokens, 2, generator=g, dtype=torch.float64)
    for ax, (name, eigs) in zip(axes, FIG6_CASES.items()):
        system = figure6_system(eigs, seed)
        sim = simulate(system, x0, t_end, n_points=n_points, rtol=1e-7, atol=1e-9)
        measured = classify_trajectory(sim).regime
        predicted = predict_regime(system, x0).regime
        out[name] = {"eigenvalues": list(eigs), "predicted": predicted, "simulated": measured}
        plot_phase(sim, ax, title=f"{name}: M eigenvalues {eigs}\nsimulated: {measured.replace('_', ' ')}",
                   legend=False)
    fig.legend(handles=phase_legend_handles(n_tokens), loc="lower center", ncol=n_tokens + 2, fontsize=8,
               frameon=False)
    _save(fig, path, rect=(0, 0.07, 1, 1))
    return out
