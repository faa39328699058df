"""Per-layer spectrum of the input-output matrix M = S_Cᵀ S_B and the predicted regime.

THEORY.md sections 2 and 4: the symmetric part M_s = (M + Mᵀ)/2 decides the
idealised regime. Its eigen-signature comes from the 2N×2N problem in
:mod:`tokendyn.dynamics.spectrum` (never the D×D one); the nonzero eigenvalues of M
itself are those of S_B S_Cᵀ (N×N, complex in general).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ..dynamics.regimes import regime_from_signature
from ..dynamics.spectrum import eigen_signature, io_eigvals, symmetric_io_eigvals
from ..errors import CheckpointError
from ..model.contract import IOParameters, Mixer

IO_KEYS = IOParameters.THEORY_KEYS


def verdict(positive: int, negative: int) -> str:
    """Plain-language verdict: "convergent-prone" when M_s has no positive eigenvalue."""
    if positive > 0:
        return "divergent-prone" if negative == 0 else "divergent-prone (mixed signature)"
    return "convergent-prone" if negative > 0 else "static (M = 0)"


def _stats(t: torch.Tensor) -> dict:
    t = t.detach().to(torch.float64).flatten()
    if t.numel() == 0:
        return {"mean": 0.0, "std": 0.0, "min": 0.0, "median": 0.0, "max": 0.0}
    return {"mean": float(t.mean()), "std": float(t.std()) if t.numel() > 1 else 0.0,
            "min": float(t.min()), "median": float(t.median()), "max": float(t.max())}


@dataclass
class LayerSpectrum:
    """Spectral facts about one mixer (D = d_inner, N = d_state).

    sym_eigvals: (min(2N, D),) the eigenvalues of M_s that can be nonzero, ascending;
    io_eigvals: (min(N, D),) complex nonzero eigenvalues of M, by real part.
    """

    index: int
    d_inner: int
    d_state: int
    positive: int
    negative: int
    zero: int
    largest: float
    smallest: float
    sym_eigvals: torch.Tensor
    io_eigvals: torch.Tensor
    predicted_regime: str
    verdict: str
    S_Delta: dict = field(default_factory=dict)
    b_Delta: dict = field(default_factory=dict)
    delta_at_zero: dict = field(default_factory=dict)
    decay: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        """JSON-able fields (see docs/analysis.md)."""
        return {
            "index": self.index,
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
        }


def check_io_parameters(params: dict, index: int = 0) -> None:
    """Raise :class:`CheckpointError` when the io-parameters of layer ``index`` are unusable."""
    missing = [k for k in IO_KEYS if k not in params]
    if missing:
        raise CheckpointError(f"layer {index} lacks the S6 parameters {', '.join(missing)}.")
    S_B, S_C, S_Delta, b_Delta, A = (params[k] for k in IO_KEYS)
    n, d = S_B.shape
    shapes = {"S_C": (S_C, (n, d)), "S_Delta": (S_Delta, (d, d)), "b_Delta": (b_Delta, (d,)), "A": (A, (d, n))}
    for name, (t, shape) in shapes.items():
        if tuple(t.shape) != shape:
            raise CheckpointError(f"layer {index}: {name} has shape {tuple(t.shape)}, expected {shape}.")
    for name in IO_KEYS:
        if not torch.isfinite(params[name]).all():
            raise CheckpointError(f"layer {index}: {name} contains NaN or infinite values.")


def layer_spectrum(params: dict, index: int = 0, rtol: float = 1e-8) -> LayerSpectrum:
    """Spectrum and parameter statistics of one layer.

    params: a mixer's ``io_parameters()`` (:class:`~tokendyn.model.contract.IOParameters`, or a dict
    with its keys): S_B, S_C (N, D), S_Delta (D, D), b_Delta (D,), A (D, N).
    """
    check_io_parameters(params, index)
    S_B, S_C = params["S_B"], params["S_C"]
    n, d = S_B.shape
    sig = eigen_signature(S_B, S_C, rtol=rtol)
    regime = regime_from_signature(sig.positive, sig.negative)
    b = params["b_Delta"].detach().to(torch.float64)
    S_Delta = params["S_Delta"].detach().to(torch.float64)
    return LayerSpectrum(
        index=index, d_inner=d, d_state=n,
        positive=sig.positive, negative=sig.negative, zero=sig.zero,
        largest=sig.largest, smallest=sig.smallest,
        sym_eigvals=symmetric_io_eigvals(S_B, S_C).cpu(),
        io_eigvals=io_eigvals(S_B, S_C).cpu(),
        predicted_regime=regime, verdict=verdict(sig.positive, sig.negative),
        S_Delta={"frobenius": float(torch.linalg.matrix_norm(S_Delta)), "abs_max": float(S_Delta.abs().max()),
                 "diag_mean": float(S_Delta.diagonal().mean())},
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
