"""Figures of token trajectories (matplotlib, Agg backend: files only, no display)."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 -- must follow matplotlib.use("Agg")
import torch  # noqa: E402 -- import block below matplotlib.use
from matplotlib.lines import Line2D  # noqa: E402 -- must follow matplotlib.use("Agg")

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


def _signs(sim: Simulation, index: int) -> list[float]:
    """Per token, the sign of x_l(0) for D = 1 (it never changes: THEORY.md section 3), else 1."""
    if sim.system.dim != 1:
        return [1.0] * sim.x.shape[2]
    return [1.0 if float(v) >= 0 else -1.0 for v in sim.x[0, index, :, 0]]


def token_handles(sim: Simulation, index: int = 0) -> list:
    """Legend entries of the token colours (with the sign of x_l for D = 1: solid +, dashed −)."""
    L = sim.x.shape[2]
    signs = _signs(sim, index)
    one_d = sim.system.dim == 1
    return [Line2D([], [], color=c, lw=1.4, ls="-" if sg > 0 else "--",
                   label=f"token {l + 1}" + ((" (x > 0)" if sg > 0 else " (x < 0)") if one_d else ""))
            for l, c, sg in zip(range(L), _colors(L), signs)]


def plot_trajectories(sim: Simulation, ax, index: int = 0, title: str | None = None, legend: bool = True) -> None:
    """|x_l(t)| against t, both on log scales, so that convergence to 0 shows as a straight decline
    and a blow-up as a vertical rise. For D = 1, where the sign of x_l never changes, a dashed line
    is a negative token. A cross marks each token that blew up, an open square each token stopped
    with a blow-up. Tokens at exactly 0 (which stay there) have no place on the log axis."""
    t = sim.t[1:].numpy()
    vals = sim.norms[1:, index]
    valid = sim.valid[1:, index]
    L = vals.shape[1]
    signs = _signs(sim, index)
    for l, c in zip(range(L), _colors(L)):
        v = vals[:, l].clone()
        v[~valid[:, l]] = float("nan")          # masked for drawing only
        ls = "-" if signs[l] > 0 else "--"
        ax.plot(t, v.numpy(), color=c, lw=1.4, ls=ls)
        bt = float(sim.blowup_times[index, l])
        if math.isfinite(bt):
            y = float(sim.blowup_states[index, l].norm())
            last = int(torch.nonzero(sim.valid[:, index, l]).max())
            ax.plot([float(sim.t[last]), bt], [float(sim.norms[last, index, l]), y], color=c, lw=1.4, ls=ls)
            ax.plot([bt], [y], ls="", color=c, **_end_mark(sim, index, l))
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("depth t (continuous layer index, log)")
    ax.set_ylabel("token norm |x_l(t)| (log)")
    if title:
        ax.set_title(title, fontsize=10)
    if legend and L <= 10:
        ax.legend(handles=token_handles(sim, index) + _end_handles(sim, index), fontsize=8, loc="upper center",
                  bbox_to_anchor=(0.5, -0.2), ncol=3, frameon=False)


def phase_legend_handles(n_tokens: int) -> list:
    """Legend entries of a phase portrait: token colours, start point, the two ends of a trajectory."""
    handles = [Line2D([], [], color=c, lw=1.4, label=f"token {l + 1}") for l, c in zip(range(n_tokens),
                                                                                     _colors(n_tokens))]
    return handles + [Line2D([], [], ls="", marker="o", color="k", ms=4, label="start x_l(0)"),
                      Line2D([], [], ls="", color="k", label="blew up", **BLOWUP_MARK),
                      Line2D([], [], ls="", color="k", label="stopped with a blow-up", **STOPPED_MARK)]


def plot_phase(sim: Simulation, ax, index: int = 0, title: str | None = None, legend: bool = True) -> None:
    """Phase portrait of D = 2 tokens on linear axes framed around the starting points (a token
    converging to the origin is seen to reach it; a diverging one leaves the frame): each token's
    path, its start marked by a dot, its end by a cross (blew up) or an open square (stopped with a
    blow-up) where that lies inside the frame. Legend unless ``legend`` is False."""
    x = sim.x[:, index]
    valid = sim.valid[:, index]
    L = x.shape[1]
    for l, c in zip(range(L), _colors(L)):
        pts = x[valid[:, l], l]
        ended = math.isfinite(float(sim.blowup_times[index, l]))
        if ended:
            pts = torch.cat([pts, sim.blowup_states[index, l][None]])
        ax.plot(pts[:, 0].numpy(), pts[:, 1].numpy(), color=c, lw=1.2)
        ax.plot([float(x[0, l, 0])], [float(x[0, l, 1])], "o", color=c, ms=4)
        if ended:
            ax.plot([float(pts[-1, 0])], [float(pts[-1, 1])], ls="", color=c, **_end_mark(sim, index, l))
    r = 1.4 * max(float(x[0].abs().max()), 1e-12)
    ax.set_xlim(-r, r)
    ax.set_ylim(-r, r)
    ax.set_aspect("equal")
    ax.set_xlabel("token coordinate x¹ (linear)")
    ax.set_ylabel("token coordinate x² (linear)")
    if legend:
        ax.legend(handles=phase_legend_handles(L), fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.2),
                  ncol=3, frameon=False)
    ax.axhline(0, color="0.8", lw=0.5)
    ax.axvline(0, color="0.8", lw=0.5)
    if title:
        ax.set_title(title, fontsize=10)


def _save(fig, path, rect=None) -> Path:
    """Write as a 120-dpi PNG (making the folder) and close the figure; a figure without constrained
    layout is laid out first (inside ``rect``, e.g. to leave room for a shared legend)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not fig.get_constrained_layout():
        fig.tight_layout(rect=rect)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def save_simulation_plot(sim: Simulation, path: Path, title: str | None = None) -> Path:
    """One simulation to a figure: token norms against t, plus the phase portrait below when D = 2."""
    if sim.system.dim == 2:
        fig, axes = plt.subplots(2, 1, figsize=(6.4, 10), layout="constrained")
        plot_trajectories(sim, axes[0], title=title)
        plot_phase(sim, axes[1], title="phase portrait", legend=False)
    else:
        fig, ax = plt.subplots(figsize=(6.4, 5.2), layout="constrained")
        plot_trajectories(sim, ax, title=title)
    return _save(fig, path)


# The 1-D examples of the three regimes (THEORY.md section 3): μ, s, a, x(0), t_end.
REGIME_EXAMPLES_1D = {
    "convergence": (-1.0, 1.0, 1.0, [1.5, -1.0, 0.5, -0.25, 2.0], 1e4),
    "slow_divergence": (1.0, 1.0, 1.0, [-1.5, -1.0, -0.5, -0.25, -2.0], 1e6),
    "fast_divergence": (1.0, 1.0, 1.0, [-1.5, -1.0, 0.5, -0.25, -2.0], 1e2),
}


def figure_regimes_1d(path: Path, n_points: int = 120) -> dict:
    """The three regimes of 1-D trajectories, as a 2 × 2 grid (the fourth cell holds the legend).
    Returns the measured regimes."""
    fig, axes = plt.subplots(2, 2, figsize=(8, 7.2), layout="constrained")
    measured = {}
    sims = []
    for ax, (name, (mu, s, a, x0, t_end)) in zip(axes.flat, REGIME_EXAMPLES_1D.items()):
        sim = simulate(TokenSystem.one_dim(mu, s, a), torch.tensor(x0, dtype=torch.float64), t_end,
                       n_points=n_points, rtol=1e-7, atol=1e-9)
        measured[name] = classify_trajectory(sim).regime
        plot_trajectories(sim, ax, title=f"{name.replace('_', ' ')}: μ={mu}, s={s}, a={a}", legend=False)
        sims.append(sim)
    key = axes.flat[3]
    key.axis("off")
    L = sims[0].x.shape[2]
    handles = [Line2D([], [], color=c, lw=1.4, label=f"token {l + 1}") for l, c in zip(range(L), _colors(L))]
    handles += [Line2D([], [], color="k", lw=1.4, ls="-", label="x_l > 0"),
                Line2D([], [], color="k", lw=1.4, ls="--", label="x_l < 0 (signs never change)")]
    ends = {h.get_label(): h for sim in sims for h in _end_handles(sim, 0)}
    key.legend(handles=handles + list(ends.values()), loc="center", fontsize=9, frameon=False)
    _save(fig, path)
    return measured


FIG6_CASES = {"two positive": (1.0, 0.5), "one positive": (1.0, -0.5), "two negative": (-1.0, -0.5)}


def figure_fig6(path: Path, n_tokens: int = 6, seed: int = 0, t_end: float = 1e3, n_points: int = 120) -> dict:
    """The paper's Figure-6 experiment (D = 2) for three eigen-signatures of M, one row each: the
    phase portrait on linear axes (left) and |x_l(t)| on log-log axes (right), where convergence to
    the origin shows as a steady decline. Returns {case: measured regime}."""
    from .regimes import predict_regime
    from .trials import figure6_system

    fig, axes = plt.subplots(3, 2, figsize=(8, 11.5), layout="constrained")
    out = {}
    g = torch.Generator().manual_seed(seed + 1)
    x0 = torch.randn(n_tokens, 2, generator=g, dtype=torch.float64)
    for row, (name, eigs) in zip(axes, FIG6_CASES.items()):
        system = figure6_system(eigs, seed)
        sim = simulate(system, x0, t_end, n_points=n_points, rtol=1e-7, atol=1e-9)
        measured = classify_trajectory(sim).regime
        predicted = predict_regime(system, x0).regime
        out[name] = {"eigenvalues": list(eigs), "predicted": predicted, "simulated": measured}
        plot_phase(sim, row[0], title=f"{name}: eigenvalues of M {eigs}", legend=False)
        plot_trajectories(sim, row[1], title=f"simulated: {measured.replace('_', ' ')}", legend=False)
    fig.legend(handles=phase_legend_handles(n_tokens), loc="outside lower center", ncol=4, fontsize=9,
               frameon=False)
    _save(fig, path)
    return out
