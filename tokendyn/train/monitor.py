"""The regime monitor: a training callback that watches each layer's dynamical regime.

Every ``every`` steps it records, for each layer:

- the eigen-signature of the symmetric part of M = S_Cᵀ S_B (through the 2N×2N path of
  :mod:`tokendyn.dynamics.spectrum`, from ``mixer.io_parameters()``, so a variant that
  reparametrises S_B and S_C needs no special case) with the idealised regime of that signature
  (THEORY.md section 4, :func:`tokendyn.dynamics.regimes.regime_from_signature`);
- the theory's own quantity inside the layer, on one fixed held-out input (the task's
  ``probe_input``): the radial velocity of the scan input under the layer's own scan
  (:mod:`tokendyn.analysis.layer_flow`), its median over tokens and the share of positive tokens.
  A median that falls towards or below zero shows the layer drifting to the convergent side;
- at the run's last step (``final_step``), the idealised flow on the layer's parameters from the
  probe's first ``flow_tokens`` tokens: its verdict, its norm ratio at ``flow_time`` and its
  blow-up time (the flow costs up to a few hundred scans a layer, so it runs once; the analysis
  of a checkpoint, ``tokendyn analyze``, runs it at any other time);
- the residual-stream norm growth through the layer (no test of the theory: it grows whatever
  the sign of M; kept for comparison).

It warns once per layer when that layer is first seen in the convergent regime (no positive
eigenvalue), the scenario THEORY.md section 5 sets out to exclude (one warning per call, naming
every layer that entered it).
"""

from __future__ import annotations

import warnings

import torch

from ..analysis.layer_flow import layer_theory, layer_tokens
from ..analysis.layers import layer_spectrum, model_io_parameters
from ..analysis.trajectories import dynamics_from_outputs
from ..errors import TrainingDivergedError

# One call is one forward pass of a single probe sequence plus n_layer 2N×2N eigenproblems on
# the CPU, less than one training step of a batch of sequences; every 100 steps it stays under
# 2 % of the training time as long as a call costs less than two training steps.
# benchmarks/train_gpu.py measures the share at the GPU benchmark configuration.
DEFAULT_EVERY = 100
# the monitor's flow: fewer tokens, looser tolerances and fewer evaluations than the analysis (a
# verdict is all it needs; measured on a 768-channel layer: 157 evaluations instead of 301 to the
# blow-up, whose time moved by 0.3 %)
MONITOR_FLOW = {"tokens": 32, "max_evals": 600, "rtol": 1e-4, "blowup_rtol": 1e-2}


class ConvergentRegimeWarning(UserWarning):
    """A layer's S_Cᵀ S_B has no positive eigenvalue: its tokens are predicted to converge."""


class RegimeMonitor:
    """Callback for :func:`tokendyn.train.loop.train` (module docstring).

    Arguments:
        probe: the fixed input, batch of 1 ((1, L) token ids for a language model).
        every: interval in optimiser steps.
        log: where the warning goes as a line (a print function); without one it is a
            :class:`ConvergentRegimeWarning` through ``warnings.warn``.
        final_step: the run's last step, where the flow runs (None: never).
        flow_time, flow_tokens: the flow's stated time and its number of first probe tokens
            (flow_time 0: no flow).

    Each call appends one record ``{"kind": "monitor", "step", "layers": [{"layer",
    "positive", "negative", "zero", "regime", "radial_velocity", "radial_velocity_share",
    "growth", and where the flow ran "flow", "flow_ratio", "flow_blowup"}, ...]}`` and keeps it
    in :attr:`history`.
    """

    def __init__(self, probe: torch.Tensor, every: int = DEFAULT_EVERY, log=None, final_step: int | None = None,
                 flow_time: float = 5.0, flow_tokens: int = MONITOR_FLOW["tokens"]):
        self.probe = probe
        self.every = every
        self.log = log
        self.final_step = final_step
        self.flow_time, self.flow_tokens = flow_time, flow_tokens
        self.warned: set[int] = set()
        self.history: list[dict] = []

    @torch.no_grad()
    def measure(self, model, flow: bool = False) -> list[dict]:
        """One row per layer: signature, regime, radial velocity, norm growth on the probe input,
        and with ``flow`` the idealised flow's verdict."""
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        out = model(self.probe.to(device), output_internals=True)
        model.train(was_training)
        growth = dynamics_from_outputs(out.hidden_states, out.internals).layer_growth()
        rows = []
        flow = flow and self.flow_time > 0
        io_params = model_io_parameters(model)
        for i, params in enumerate(io_params):
            # weights that stopped being numbers (a diverging run) have no spectrum: say so plainly
            if not all(bool(torch.isfinite(params[k]).all()) for k in ("S_B", "S_C", "S_Delta", "A")):
                raise TrainingDivergedError(f"layer {i}'s parameters stopped being finite numbers; lower the "
                                            "learning rate.")
        for i, (params, m) in enumerate(zip(io_params, out.internals)):
            # the 2N×2N problems are tiny: solved on the CPU, not as many small GPU launches; the
            # signature and the regime are those of the parameters' form (Mamba-1's M, Mamba-2's M_g, V_k)
            sig = layer_spectrum(params.to("cpu"), i)
            th = layer_theory(params, layer_tokens(params, m), i, flow=flow,
                              **{**MONITOR_FLOW, "t_end": self.flow_time, "tokens": self.flow_tokens})
            rv = th.radial_velocity
            row = {"layer": i, "positive": sig.positive, "negative": sig.negative, "zero": sig.zero,
                   "regime": sig.predicted_regime,
                   "radial_velocity": float(rv.median()), "radial_velocity_share": float((rv > 0).double().mean()),
                   "growth": float(growth[i])}
            if th.flow is not None:
                f = th.flow.as_dict()
                row.update({"flow": f["verdict"], "flow_ratio": f["ratio_at_t_end"], "flow_blowup": f["blowup_time"],
                            "flow_time": f["t_end"]})
            rows.append(row)
        return rows

    def __call__(self, step: int, model, record) -> None:
        rows = self.measure(model, flow=step == self.final_step)
        entry = {"kind": "monitor", "step": step, "layers": rows}
        self.history.append(entry)
        record(entry)
        new = [row for row in rows if row["regime"] == "convergence" and row["layer"] not in self.warned]
        if not new:
            return
        self.warned.update(row["layer"] for row in new)
        layers = ", ".join(str(row["layer"]) for row in new)
        growth = ", ".join(f"{row['growth']:.3g}" for row in new)
        msg = (f"step {step}: layer{'s' if len(new) > 1 else ''} {layers} entered the convergent regime "
               f"(S_Cᵀ S_B has no positive eigenvalue; token-norm growth {growth}).")
        if self.log is None:
            warnings.warn(msg, ConvergentRegimeWarning, stacklevel=2)
        else:
            self.log(f"warning: {msg}")
        record({"kind": "warning", "step": step, "layers": [row["layer"] for row in new], "message": msg})


def monitor_records(records: list[dict]) -> list[dict]:
    """The monitor entries of a metrics list, in step order."""
    return sorted((r for r in records if r.get("kind") == "monitor"), key=lambda r: r["step"])


def _flow_label(entries: list[dict], layer: int) -> str:
    """"blows up → decays": the flow verdicts of one layer at the monitor calls that ran it."""
    verdicts = [e["layers"][layer]["flow"] for e in entries if "flow" in e["layers"][layer]]
    return " → ".join(verdicts)


def plot_monitor(records: list[dict], title: str = ""):
    """The monitor's records of one run. Top: the positive (left) and negative (right) eigenvalue
    counts of M_s per layer over the steps. Bottom: each layer's median radial velocity on the
    probe input over the steps (below zero: the convergent side), its legend giving the flow's
    verdicts where it ran. Returns a Figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.ticker import MaxNLocator

    entries = monitor_records(records)
    steps = np.array([e["step"] for e in entries], dtype=float)
    n_layer = max((len(e["layers"]) for e in entries), default=0)
    # sized for a phone's width as well as a page: 7 inches wide, fonts at 9-11 points, nothing rotated
    fig = plt.figure(figsize=(7, 9), layout="constrained")
    grid = fig.add_gridspec(2, 2, height_ratios=(1, 1.6))
    half = (steps[1] - steps[0]) / 2 if steps.size > 1 else 0.5
    extent = (steps[0] - half if steps.size else -0.5, steps[-1] + half if steps.size else 0.5, -0.5, n_layer - 0.5)
    mats = {key: (np.array([[row[key] for row in e["layers"]] for e in entries], dtype=float).T
                  if entries else np.zeros((1, 1))) for key in ("positive", "negative")}
    top = max(1.0, max(float(m.max()) for m in mats.values()))     # one colour scale for both counts
    for col, key, cmap in ((0, "positive", "Reds"), (1, "negative", "Blues")):
        ax = fig.add_subplot(grid[0, col])
        im = ax.imshow(mats[key], aspect="auto", origin="lower", cmap=cmap, interpolation="nearest", vmin=0,
                       vmax=top, extent=extent)
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.xaxis.set_major_locator(MaxNLocator(nbins=4, integer=True))
        ax.set_xlabel("optimiser step")
        ax.set_ylabel("layer")
        ax.set_title(f"{key} eigenvalues\nof M_s (count)", fontsize=10)
        fig.colorbar(im, ax=ax, shrink=0.9)
    ax = fig.add_subplot(grid[1, :])
    cmap = plt.get_cmap("viridis")
    for layer in range(n_layer):
        rv = [e["layers"][layer].get("radial_velocity", np.nan) for e in entries]
        flow = _flow_label(entries, layer)
        ax.plot(steps, rv, lw=1.2, marker="o", ms=3, color=cmap(layer / max(n_layer - 1, 1)),
                label=f"layer {layer}" + (f": flow {flow}" if flow else ""))
    ax.axhline(0.0, color="k", lw=0.8)
    ax.xaxis.set_major_locator(MaxNLocator(nbins=6, integer=True))
    ax.set_xlabel("optimiser step")
    ax.set_ylabel("median ⟨u_l, y_l⟩ / |u_l|²")
    ax.set_title("radial velocity of the scan input on the probe\n(below 0: the convergent side)", fontsize=10)
    if n_layer <= 12:
        ax.legend(fontsize=8.5, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=2, frameon=False)
    if title:
        fig.suptitle(title, fontsize=11)
    return fig
