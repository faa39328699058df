"""The sequential selective scan: exact, slow, any dtype. The ground truth.

Implements THEORY.md section 1, per channel d and step l:
    h_l = exp(Δ_l A) ⊙ h_{l-1} + Δ_l B_l u_l,   y_l = C_l · h_l + D u_l,
then out = y * silu(z) when z is given.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Accumulation dtype: float64 stays float64, everything else runs in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def prepare_delta(delta: torch.Tensor, delta_bias: torch.Tensor | None, delta_softplus: bool) -> torch.Tensor:
    """Δ after the optional bias and softplus, in the accumulation dtype.

    delta: (batch, dim, length); delta_bias: (dim,).
    """
    delta = delta.to(compute_dtype(delta.dtype))
    if delta_bias is not None:
        delta = delta + delta_bias.to(delta.dtype)[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    return delta


def finish_output(y: torch.Tensor, u: torch.Tensor, D: torch.Tensor | None, z: torch.Tensor | None) -> torch.Tensor:
    """Add the skip term D·u and apply the gate silu(z). All (batch, dim, length)."""
    if D is not None:
        y = y + u * D.to(y.dtype)[:, None]
    if z is not None:
        y = y * F.silu(z.to(y.dtype))
    return y


def selective_scan_reference(u, delta, A, B, C, D=None, z=None, delta_bias=None,
                             delta_softplus=False, return_last_state=False):
    """Sequential recurrence over the length; differentiable through autograd.

    u, delta, z: (batch, dim, length); A: (dim, state); B, C: (batch, state, length);
    D, delta_bias: (dim,). Returns out (batch, dim, length) in u's dtype, and with
    ``return_last_state`` also the final state h_L: (batch, dim, state) in the
    accumulation dtype.
    """
    ct = compute_dtype(u.dtype)
    out_dtype = u.dtype
    delta = prepare_delta(delta, delta_bias, delta_softplus)
    u = u.to(ct)
    A, B, C = A.to(ct), B.to(ct), C.to(ct)
    batch, dim, length = u.shape
    h = u.new_zeros(batch, dim, A.shape[1])
    ys = []
    for l in range(length):
        dl = delta[:, :, l, None]                                   # (b, d, 1)
        h = torch.exp(dl * A) * h + dl * B[:, None, :, l] * u[:, :, l, None]
        ys.append(torch.einsum("bdn,bn->bd", h, C[:, :, l]))
    y = torch.stack(ys, dim=-1) if ys else u.new_zeros(batch, dim, 0)
    out = finish_output(y, u, D, z).to(out_dtype)
    return (out, h) if return_last_state else out
