"""How the analysis reads one layer, chosen by the form of its parameters, never by its family.

A mixer hands the analysis its parameters as :class:`~tokendyn.model.contract.IOParameters`, whose
``form`` says which token flow they define (the mixer contract). Each form registered here says:

- ``system``: the idealised token system of the layer (float64, CPU), a
  :class:`~tokendyn.dynamics.integrate.FlowSystem`: THEORY.md section 2's
  :class:`~tokendyn.dynamics.TokenSystem` for ``"s6"``, section 4a's
  :class:`~tokendyn.dynamics.ssd_system.SSDSystem` for ``"ssd"``;
- ``tokens``: the tokens that flow moves, from the forward's :class:`MixerInternals` (batch
  element 0, (L, dim)): the scan input x for ``"s6"``, the mixer's input h for ``"ssd"``;
- ``signature``: the spectral picture and the predicted regime (:class:`Signature`);
- ``attention``: the exact hidden attention (L, L) of chosen channels, without D and the gate;
- ``scope``: one paragraph saying where the theory stops for this form (the page and the JSON
  show it).

A family whose parameters come in a form already registered needs nothing here; a new form
registers its handlers with :func:`register_form`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ..dynamics.regimes import regime_from_signature
from ..dynamics.spectrum import eigen_signature, io_eigvals, symmetric_io_eigvals
from ..dynamics.ssd_regimes import ssd_signatures
from ..dynamics.ssd_system import SSDSystem
from ..dynamics.vector_field import TokenSystem
from ..errors import CheckpointError
from ..ops.ssd_reference import ssd_matrix
from .hidden_attention import hidden_attention


@dataclass
class Signature:
    """The spectral facts of a layer and the regime they predict.

    positive, negative, zero: eigenvalue counts of the symmetric io-matrix (``ssd``: of every
    group's M_s, added up); largest, smallest: its extreme eigenvalues; sym_eigvals: those that can
    be nonzero, ascending; io_eigvals: complex eigenvalues of the io-matrix itself;
    predicted_regime: ``divergence``, ``convergence``, ``static`` (s6) or ``indefinite`` (ssd);
    verdict: the same in words; extra: the form's own fields for the JSON (``ssd``: the groups'
    and heads' signatures and the per-head predictions).
    """

    positive: int
    negative: int
    zero: int
    largest: float
    smallest: float
    sym_eigvals: torch.Tensor
    io_eigvals: torch.Tensor
    predicted_regime: str
    verdict: str
    extra: dict = field(default_factory=dict)


@dataclass(frozen=True)
class LayerForm:
    """The analysis' handlers for one form of :class:`IOParameters` (see the module docstring)."""

    name: str
    system: Callable[[Any], Any]
    tokens: Callable[[Any], torch.Tensor]
    signature: Callable[[Any, float], Signature]
    attention: Callable[[Any, Any, Sequence[int]], torch.Tensor]
    scope: str


_FORMS: dict[str, LayerForm] = {}


def register_form(form: LayerForm) -> LayerForm:
    """Make the analysis read parameters of ``form.name``."""
    _FORMS[form.name] = form
    return form


def form_of(params) -> LayerForm:
    """The handlers for ``params`` (an IOParameters, or a plain dict of the ``"s6"`` form)."""
    name = getattr(params, "form", "s6")
    if name not in _FORMS:
        raise CheckpointError(f"the layer's parameters come in form {name!r}, which tokendyn cannot analyse; it "
                              f"reads {', '.join(_FORMS)}.")
    return _FORMS[name]


def form_named(name: str) -> LayerForm:
    """The registered form ``name``."""
    return _FORMS[name]


def _f64(t: torch.Tensor) -> torch.Tensor:
    return t.detach().to("cpu", torch.float64)


# ---- "s6": Mamba-1 (THEORY.md sections 1-4) -----------------------------------------------------

def s6_verdict(positive: int, negative: int) -> str:
    """Plain-language verdict: "convergent-prone" when M_s has no positive eigenvalue."""
    if positive > 0:
        return "divergent-prone" if negative == 0 else "divergent-prone (mixed signature)"
    return "convergent-prone" if negative > 0 else "static (M = 0)"


def _s6_signature(params, rtol: float) -> Signature:
    S_B, S_C = params["S_B"], params["S_C"]
    sig = eigen_signature(S_B, S_C, rtol=rtol)
    return Signature(sig.positive, sig.negative, sig.zero, sig.largest, sig.smallest,
                     symmetric_io_eigvals(S_B, S_C).cpu(), io_eigvals(S_B, S_C).cpu(),
                     regime_from_signature(sig.positive, sig.negative), s6_verdict(sig.positive, sig.negative))


def _s6_attention(params, internals, channels: Sequence[int]) -> torch.Tensor:
    m = internals
    return hidden_attention(m.delta[:1].detach(), params["A"].detach(), m.B[:1].detach(), m.C[:1].detach(),
                            channels=channels)[0].cpu()


S6 = register_form(LayerForm(
    name="s6",
    system=lambda p: TokenSystem(*(_f64(p[k]) for k in ("S_B", "S_C", "S_Delta", "b_Delta", "A"))),
    tokens=lambda m: m.x[0].transpose(0, 1),
    signature=_s6_signature,
    attention=_s6_attention,
    scope=("Mamba-1 (THEORY.md sections 2-4): the idealised flow drops the convolution, the gate, D and the "
           "residual stream and shares the parameters across depth. Its regime follows the signature of "
           "M_s = sym(S_C^T S_B) exactly only in one dimension; for D > 1 the signature is a prediction checked "
           "by simulation, and a semi-definite M (rank N < D) is not covered by the theorems."),
))


# ---- "ssd": Mamba-2 (docs/THEORY.md section 4a) -------------------------------------------------

def ssd_system(params) -> SSDSystem:
    """The idealised Mamba-2 layer from ``io_parameters()`` of form ``"ssd"`` (float64, CPU)."""
    return SSDSystem(W_x=_f64(params["W_x"]), W_B=_f64(params["S_B"]), W_C=_f64(params["S_C"]),
                     W_dt=_f64(params["S_Delta"]), b_dt=_f64(params["b_Delta"]), a=-_f64(params["A"]),
                     W_out=_f64(params["W_out"]))


_SSD_VERDICTS = {"divergence": "divergent-prone (every head pushes outward)",
                 "convergence": "convergent-prone (every head pushes inward)",
                 "indefinite": "indefinite (outside the rule)"}


def _ssd_signature(params, rtol: float) -> Signature:
    system = ssd_system(params)
    sig = ssd_signatures(system, rtol=rtol)
    W_B, W_C = system.W_B, system.W_C
    sym = torch.cat([symmetric_io_eigvals(W_B[g], W_C[g]) for g in range(system.groups)]).sort().values
    ev = torch.cat([io_eigvals(W_B[g], W_C[g]) for g in range(system.groups)])
    return Signature(positive=sum(s.positive for s in sig.groups), negative=sum(s.negative for s in sig.groups),
                     zero=sum(s.zero for s in sig.groups), largest=max(s.largest for s in sig.groups),
                     smallest=min(s.smallest for s in sig.groups), sym_eigvals=sym, io_eigvals=ev,
                     predicted_regime=sig.prediction, verdict=_SSD_VERDICTS[sig.prediction],
                     extra={"ssd": sig.as_dict()})


def _ssd_attention(params, internals, channels: Sequence[int]) -> torch.Tensor:
    """The SSD matrix of the head of each channel (every channel of a head shares it): (c, L, L).
    Only the heads asked for are formed (each is L×L float64), each with its own group's B and C."""
    m = internals
    heads, d = params["A"].shape[0], m.delta.shape[1]
    P = d // heads
    groups, n = params["S_B"].shape[:2]
    L = m.B.shape[-1]
    wanted = sorted({c // P for c in channels})
    idx = torch.as_tensor(wanted, dtype=torch.long, device=m.delta.device)
    group_idx = torch.as_tensor([h // (heads // groups) for h in wanted], dtype=torch.long, device=m.B.device)
    dt = m.delta[:1, ::P].detach().transpose(1, 2).to(torch.float64)[..., idx]          # (1, L, k)
    B = m.B[:1].detach().transpose(1, 2).reshape(1, L, groups, n).to(torch.float64)[:, :, group_idx]
    C = m.C[:1].detach().transpose(1, 2).reshape(1, L, groups, n).to(torch.float64)[:, :, group_idx]
    A = params["A"].detach().to(dt)[idx]
    M = ssd_matrix(dt, A, B, C)[0]                                                      # (k, L, L)
    return M[[wanted.index(c // P) for c in channels]].cpu()


SSD = register_form(LayerForm(
    name="ssd",
    system=ssd_system,
    tokens=lambda m: m.h[0],
    signature=_ssd_signature,
    attention=_ssd_attention,
    scope=("Mamba-2 (docs/THEORY.md section 4a, [derived]): the flow moves the mixer's input h in the residual "
           "stream's width, through one M_g = W_C^T W_B per group and one V_k = W_out W_x per head. The rule is "
           "exact for the first token only and a checked prediction for the others; it needs every M_s and V_s "
           "definite, which requires N >= d_model and head_dim >= d_model, so a real layer (N and head_dim far "
           "below d_model) is always 'indefinite': its signatures describe it and predict nothing. The flow drops "
           "the convolution, the gate, the gated RMSNorm, D and the shared parameters across depth."),
))
