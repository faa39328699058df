"""Per-layer spectrum of the input-output matrix M = S_Cᵀ S_B and the predicted regime.

THEORY.md sections 2 and 4: the symmetric part M_s = (M + Mᵀ)/2 decides the
idealised regime. Its eigen-signature comes from the 2N×2N problem in
:mod:`tokendyn.dynamics.spectrum` (never the D×D one); the nonzero eigenvalues of M
itself are those of S_B S_Cᵀ (N×N, complex in general). A Mamba-2 layer (parameters of form
``"ssd"``) has one M_g per group and one V_k per head instead (docs/THEORY.md section 4a); which
picture a layer gets is its form's business (:mod:`tokendyn.analysis.forms`).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

import torch
import torch.nn.functional as F

from ..dynamics.regimes import regime_from_signature  # noqa: F401 -- re-exported (tokendyn.analysis)
from ..errors import CheckpointError
from ..model.contract import IOParameters, Mixer
from .forms import Signature, form_of
from .forms import s6_verdict as verdict  # noqa: F401 -- re-exported (tokendyn.analysis)

IO_KEYS = IOParameters.THEORY_KEYS


def _stats(t: torch.Tensor) -> dict:
    t = t.detach().to(torch.float64).flatten()
    if t.numel() == 0:
        return {"mean": 0.0, "std": 0.0, "min": 0.0, "median": 0.0, "max": 0.0}
    return {"mean": float(t.mean()), "std": float(t.std()) if t.numel() > 1 else 0.0,
            "min": float(t.min()), "median": float(t.median()), "max": float(t.max())}


@dataclass(kw_only=True)
class LayerSpectrum(Signature):
    """Spectral facts about one mixer (D = d_inner, N = d_state): its form's
    :class:`~tokendyn.analysis.forms.Signature` and the layer's own statistics.

    sym_eigvals: (min(2N, D),) the eigenvalues of M_s that can be nonzero, ascending;
    io_eigvals: (min(N, D),) complex nonzero eigenvalues of M, by real part.
    form: the form of the layer's parameters (``s6``, ``ssd``); for ``ssd`` the counts and
    eigenvalues pool every group's M_g (d_inner is H·P, d_state is N), and ``extra["ssd"]`` holds
    the groups' and heads' signatures with the rule's per-head predictions.
    S_Delta, b_Delta, delta_at_zero, decay: statistics of the Δ projection, its bias, Δ at a zero
    input and the decays -A.
    """

    index: int
    d_inner: int
    d_state: int
    S_Delta: dict = field(default_factory=dict)
    b_Delta: dict = field(default_factory=dict)
    delta_at_zero: dict = field(default_factory=dict)
    decay: dict = field(default_factory=dict)
    form: str = "s6"

    def as_dict(self) -> dict:
        """JSON-able fields (see docs/analysis.md)."""
        return {
            "index": self.index,
            "form": self.form,
            "io_eigs_positive": self.positive,
            "io_eigs_negative": self.negative,
            "io_eigs_zero": self.zero,
            "io_sym_largest": self.largest,
            "io_sym_smallest": self.smallest,
            "io_sym_eigvals": [float(v) for v in self.sym_eigvals],
            "io_eigvals_real": [float(v) for v in self.io_eigvals.real],
            "io_eigvals_imag": [float(v) for v in self.io_eigvals.imag],
            "predicted_regime": self.predicted_regime,
            "verdict": self.verdict,
            "S_Delta": self.S_Delta,
            "b_Delta": self.b_Delta,
            "delta_at_zero": self.delta_at_zero,
            "decay": self.decay,
            **self.extra,
        }


def check_io_parameters(params: dict, index: int = 0) -> None:
    """Raise :class:`CheckpointError` when the io-parameters of layer ``index`` are unusable."""
    missing = [k for k in IO_KEYS if k not in params]
    if missing:
        raise CheckpointError(f"layer {index} lacks the S6 parameters {', '.join(missing)}.")
    if isinstance(params, IOParameters):
        expected = params.expected_shapes()
    else:
        n, d = params["S_B"].shape
        expected = {"S_C": (n, d), "S_Delta": (d, d), "b_Delta": (d,), "A": (d, n)}
    for name, shape in expected.items():
        t = params[name] if name in params else None
        if t is not None and tuple(t.shape) != shape:
            raise CheckpointError(f"layer {index}: {name} has shape {tuple(t.shape)}, expected {shape}.")
    for name in IO_KEYS:
        if not torch.isfinite(params[name]).all():
            raise CheckpointError(f"layer {index}: {name} contains NaN or infinite values.")


def layer_spectrum(params: dict, index: int = 0, rtol: float = 1e-8) -> LayerSpectrum:
    """Spectrum and parameter statistics of one layer.

    params: a mixer's ``io_parameters()`` (:class:`~tokendyn.model.contract.IOParameters`, or a dict
    with its keys): S_B, S_C (N, D), S_Delta (D, D), b_Delta (D,), A (D, N) — or the ``ssd`` form's
    per-group and per-head shapes, whose signatures come from :mod:`tokendyn.analysis.forms`.
    """
    check_io_parameters(params, index)
    form = form_of(params)
    sig = form.signature(params, rtol)
    n = params["S_B"].shape[-2]
    d = params.sizes[1] if isinstance(params, IOParameters) else params["S_B"].shape[1]
    b = params["b_Delta"].detach().to(torch.float64)
    S_Delta = params["S_Delta"].detach().to(torch.float64)
    return LayerSpectrum(
        **{f.name: getattr(sig, f.name) for f in fields(Signature)}, index=index, d_inner=d, d_state=n,
        form=form.name,
        S_Delta={"frobenius": float(torch.linalg.matrix_norm(S_Delta)), "abs_max": float(S_Delta.abs().max()),
                 "diag_mean": float(S_Delta.diagonal().mean())},     # ssd: W_dt (H, d), its leading diagonal
        b_Delta=_stats(b),
        delta_at_zero=_stats(F.softplus(b)),     # Δ for a zero input: the layer's resting step size
        decay=_stats(-params["A"]),
    )


def model_io_parameters(model) -> list[IOParameters]:
    """``io_parameters()`` of every mixer of a MambaLM-like model (``backbone.layers[i].mixer``, each
    satisfying the mixer contract, :class:`~tokendyn.model.contract.Mixer`)."""
    layers = getattr(getattr(model, "backbone", None), "layers", None)
    if layers is None:
        raise CheckpointError("the model has no backbone.layers; it is not a Mamba language model.")
    out = []
    for i, layer in enumerate(layers):
        mixer = getattr(layer, "mixer", None)
        if not isinstance(mixer, Mixer):
            raise CheckpointError(f"layer {i} has no mixer that satisfies tokendyn's mixer contract; it is not a "
                                  "model tokendyn can analyse.")
        with torch.no_grad():
            out.append(mixer.io_parameters())
    return out


def model_spectra(model, rtol: float = 1e-8) -> list[LayerSpectrum]:
    """:func:`layer_spectrum` of every layer of a MambaLM-like model."""
    return [layer_spectrum(p, i, rtol=rtol) for i, p in enumerate(model_io_parameters(model))]
