"""The regime monitor: a training callback that watches each layer's dynamical regime.

Every ``every`` steps it records, for each layer, the eigen-signature of the symmetric part
of M = S_Cᵀ S_B (through the 2N×2N path of :mod:`tokendyn.dynamics.spectrum`, from
``mixer.io_parameters()``, so a variant that reparametrises S_B and S_C needs no special
case) with the idealised regime of that signature (THEORY.md section 4,
:func:`tokendyn.dynamics.regimes.regime_from_signature`), and the measured token-norm growth
through each layer on one fixed held-out input (the task's ``probe_input``). It warns once
per layer when that layer is first seen in the convergent regime (no positive eigenvalue),
the scenario THEORY.md section 5 sets out to exclude (one warning per call, naming every layer
that entered it).
"""

from __future__ import annotations

import warnings

import torch

from ..analysis.layers import model_io_parameters
from ..analysis.trajectories import dynamics_from_outputs
from ..dynamics.regimes import regime_from_signature
from ..dynamics.spectrum import eigen_signature

# One call is one forward pass of a single probe sequence plus n_layer 2N×2N eigenproblems on
# the CPU, less than one training step of a batch of sequences; every 100 steps it stays under
# 2 % of the training time as long as a call costs less than two training steps.
# benchmarks/train_gpu.py measures the share at the GPU benchmark configuration.
DEFAULT_EVERY = 100


class ConvergentRegimeWarning(UserWarning):
    """A layer's S_Cᵀ S_B has no positive eigenvalue: its tokens are predicted to converge."""


class RegimeMonitor:
    """Callback for :func:`tokendyn.train.loop.train` (module docstring).

    Arguments:
        probe: the fixed input, batch of 1 ((1, L) token ids for a language model).
        every: interval in optimiser steps.
        log: where the warning goes as a line (a print function); without one it is a
            :class:`ConvergentRegimeWarning` through ``warnings.warn``.

    Each call appends one record ``{"kind": "monitor", "step", "layers": [{"layer",
    "positive", "negative", "zero", "regime", "growth"}, ...]}`` and keeps it in
    :attr:`history`.
    """

    def __init__(self, probe: torch.Tensor, every: int = DEFAULT_EVERY, log=None):
        self.probe = probe
        self.every = every
        self.log = log
        self.warned: set[int] = set()
        self.history: list[dict] = []

    @torch.no_grad()
    def measure(self, model) -> list[dict]:
        """One row per layer: signature, regime, norm growth on the probe input."""
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        out = model(self.probe.to(device), output_internals=True)
        model.train(was_training)
        growth = dynamics_from_outputs(out.hidden_states, out.internals).layer_growth()
        rows = []
        for i, params in enumerate(model_io_parameters(model)):
            # the 2N×2N problem is tiny: solved on the CPU, not as many small GPU launches
            sig = eigen_signature(params["S_B"].cpu(), params["S_C"].cpu())
            rows.append({"layer": i, "positive": sig.positive, "negative": sig.negative, "zero": sig.zero,
                         "regime": regime_from_signature(sig.positive, sig.negative),
                         "growth": float(growth[i])})
        return rows

    def __call__(self, step: int, model, record) -> None:
        rows = self.measure(model)
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


def plot_monitor(records: list[dict], title: str = ""):
    """Signature counts per layer over steps: positive (left) and negative (right) eigenvalue
    counts of M_s, layers on the y axis, monitor steps on the x axis. Returns a Figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    entries = monitor_records(records)
    steps = [e["step"] for e in entries]
    n_layer = max((len(e["layers"]) for e in entries), default=0)
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(1, 3, figsize=(15, 3.8))
    mats = {key: (np.array([[row[key] for row in e["layers"]] for e in entries], dtype=float).T
                  if entries else np.zeros((1, 1))) for key in ("positive", "negative")}
    top = max(1.0, max(float(m.max()) for m in mats.values()))     # one colour scale for both counts
    for ax, key, cmap in ((axes[0], "positive", "Reds"), (axes[1], "negative", "Blues")):
        im = ax.imshow(mats[key], aspect="auto", origin="lower", cmap=cmap, interpolation="nearest", vmin=0,
                       vmax=top, extent=(-0.5, len(steps) - 0.5, -0.5, n_layer - 0.5))
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xticks(range(len(steps)))
        ax.set_xticklabels([str(s) for s in steps], rotation=90, fontsize=7)
        ax.set_xlabel("step")
        ax.set_ylabel("layer")
        ax.set_title(f"{key} eigenvalues of M_s")
        fig.colorbar(im, ax=ax)
    ax = axes[2]
    for layer in range(n_layer):
        ax.plot(steps, [e["layers"][layer]["growth"] for e in entries], lw=1, label=f"layer {layer}")
    ax.axhline(1.0, color="k", lw=0.6)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("token-norm growth")
    ax.set_title("growth per layer on the probe input")
    if n_layer <= 8:
        ax.legend(fontsize=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig
