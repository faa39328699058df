"""The regime rule of the Mamba-2 (SSD) flow for d > 1, **[derived]** (docs/THEORY.md, "Mamba-2 (SSD)").

The first token sees only itself, so its update is dh_1/dt = Σ_k dt_{1,k} (h_1ᵀ M_g(k) h_1) V_k h_1,
and its radial velocity is

    d ln|h_1|/dt = Σ_k dt_{1,k} (h_1ᵀ M_g(k) h_1)(h_1ᵀ V_k h_1) / |h_1|²,   dt > 0,

a sum over heads of products of two quadratic forms, which see only the symmetric parts
M_s = (M + Mᵀ)/2 and V_s = (V + Vᵀ)/2. A head whose M_s and V_s are both definite pushes every
first token outward when their signs agree and inward when they differ; a layer whose heads all
push one way is predicted to diverge or converge. Anything else (a semi-definite or indefinite
form, heads pushing opposite ways) is ``indefinite``: the sign then depends on the direction of
the token, and no prediction is made. Later tokens add cross terms j < l of no fixed sign: for
them the rule is a prediction, checked by simulation (:mod:`.ssd_trials`).

The signatures come from small eigenproblems (:func:`tokendyn.dynamics.spectrum.eigen_signature`):
M_g = W_C^{(g)ᵀ} W_B^{(g)} has rank ≤ N and V_k = W_out^{(k)} W_x^{(k)} rank ≤ P, so their
symmetric parts cost a 2N×2N and a 2P×2P problem when that is smaller than d×d.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .spectrum import EigenSignature, eigen_signature
from .ssd_system import SSDSystem, aligned, step_sizes

# the three predictions of a head or a layer
SSD_PREDICTIONS = ("convergence", "divergence", "indefinite")


def definite_sign(sig: EigenSignature, dim: int) -> int:
    """+1 when all ``dim`` eigenvalues are positive, −1 when all are negative, else 0."""
    if sig.positive == dim:
        return 1
    if sig.negative == dim:
        return -1
    return 0


def head_prediction(m_sign: int, v_sign: int) -> str:
    """The push of one head from the definite signs of its M_s and V_s (0: not definite)."""
    if m_sign == 0 or v_sign == 0:
        return "indefinite"
    return "divergence" if m_sign == v_sign else "convergence"


def layer_prediction(per_head: list[str]) -> str:
    """All heads push the same way: that way; otherwise indefinite."""
    first = per_head[0]
    return first if all(p == first for p in per_head) else "indefinite"


@dataclass
class SSDSignatures:
    """Eigen-signatures of an SSD layer and the [derived] rule's predictions.

    groups: per group g, the signature of M_s^{(g)}; heads: per head k, that of V_s^{(k)};
    head_predictions: per head, ``convergence``/``divergence``/``indefinite``; prediction: the layer's.
    """

    groups: list[EigenSignature]
    heads: list[EigenSignature]
    head_predictions: list[str]
    prediction: str

    def as_dict(self) -> dict:
        return {"groups": [s.as_dict() for s in self.groups], "heads": [s.as_dict() for s in self.heads],
                "head_predictions": list(self.head_predictions), "prediction": self.prediction}


def ssd_signatures(system: SSDSystem, rtol: float = 1e-8) -> SSDSignatures:
    """Signatures of every M_s^{(g)} and V_s^{(k)} and the rule's per-head and layer predictions.

    An eigenvalue counts as zero when |λ| ≤ rtol · max|λ| of its matrix.
    """
    d = system.dim
    # M_g = S_Cᵀ S_B with S_B = W_B^{(g)}, S_C = W_C^{(g)}: (N, d) each
    groups = [eigen_signature(system.W_B[g], system.W_C[g], rtol) for g in range(system.groups)]
    # V_k = W_out^{(k)} W_x^{(k)} = S_Cᵀ S_B with S_B = W_x^{(k)}, S_C = W_out^{(k)ᵀ}: (P, d) each
    heads = [eigen_signature(system.W_x[k], system.W_out[:, k, :].T, rtol) for k in range(system.heads)]
    per_head = [head_prediction(definite_sign(groups[system.group_of(k)], d), definite_sign(heads[k], d))
                for k in range(system.heads)]
    return SSDSignatures(groups, heads, per_head, layer_prediction(per_head))


def radial_velocity(system, h: torch.Tensor, backend: str = "auto") -> torch.Tensor:
    """⟨h_l, dh_l/dt⟩ / |h_l|² = d ln|h_l|/dt from the flow itself, for any system with a
    ``vector_field`` (0 for a zero token). h: (batch, L, d) -> (batch, L)."""
    f = system.vector_field(h, backend)
    sq = (h * h).sum(-1)
    return torch.where(sq > 0, (h * f).sum(-1) / sq.clamp_min(torch.finfo(h.dtype).tiny), torch.zeros_like(sq))


def first_token_radial_velocity(system: SSDSystem, h1: torch.Tensor) -> torch.Tensor:
    """The [derived] formula Σ_k dt_{1,k} (h_1ᵀ M_g(k) h_1)(h_1ᵀ V_k h_1) / |h_1|².

    h1: (batch, d), first tokens -> (batch,). Equals :func:`radial_velocity` of token 1.
    """
    p = aligned(system, h1[:, None, :])
    dt = step_sizes(p, h1[:, None, :])[:, 0]                                 # (batch, H)
    qm = torch.einsum("bd,gde,be->bg", h1, p.io_matrices, h1)                # (batch, G)
    qv = torch.einsum("bd,kde,be->bk", h1, p.head_matrices, h1)              # (batch, H)
    groups = torch.tensor([p.group_of(k) for k in range(p.heads)], device=h1.device)
    return (dt * qm[:, groups] * qv).sum(-1) / (h1 * h1).sum(-1)
