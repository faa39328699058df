"""The Mamba-2 (SSD) scan as its plain recurrence — exact, slow, any dtype, the ground truth —
with its one-token step and its unrolled matrix ("hidden attention") form.

docs/scan.md, "The Mamba-2 (SSD) scan". Per batch, head h (in group g(h) = h // (heads/n_groups))
and step t, with a scalar decay per head:

    S_t = exp(Δ_t A_h) · S_{t-1} + Δ_t · x_t ⊗ B_t,      S_t: (head_dim, state)
    y_t = S_t · C_t + D_h · x_t

Unrolled: y_t = Σ_{s≤t} M[t, s] x_s (+ D_h x_t) with
M[t, s] = (C_t · B_s) · exp(A_h Σ_{r=s+1..t} Δ_r) · Δ_s.
Half inputs are computed in float32, float64 stays float64 (:func:`compute_dtype`).
"""

from __future__ import annotations

import torch

from ._ssd_checks import check_ssd_inputs, check_step_inputs
from .reference import compute_dtype


def expand_groups(t: torch.Tensor, heads: int, axis: int) -> torch.Tensor:
    """Repeat each of the n_groups entries of ``axis`` heads/n_groups times, so that head h
    reads group h // (heads/n_groups) (the grouping of Mamba-2's B and C)."""
    groups = t.shape[axis]
    return t if groups == heads else t.repeat_interleave(heads // groups, dim=axis)


def segsum(a: torch.Tensor) -> torch.Tensor:
    """Segment sums of ``a`` along its last axis: (..., T) -> (..., T, T) with
    out[..., t, s] = Σ_{r=s+1..t} a_r for s ≤ t (0 on the diagonal) and -inf for s > t,
    so that exp(out) is the causal decay matrix.

    Each entry is a cumulative sum of the masked inputs, never a difference of two running
    sums: cs_t - cs_s cancels (float32 loses the small segments next to a large prefix) and,
    above the diagonal, is positive and can overflow exp before the mask is applied.
    """
    T = a.shape[-1]
    # the masks from an index comparison: torch's tril of a small bool matrix costs hundreds of
    # microseconds under several CPU threads, on every call of the chunked scan
    idx = torch.arange(T, device=a.device)
    below = idx[:, None] > idx[None, :]                                       # r > s
    terms = a.unsqueeze(-1).expand(*a.shape, T).masked_fill(~below, 0.0)      # [..., r, s] = a_r if r > s
    out = terms.cumsum(-2)                                                    # [..., t, s] = Σ_{s<r≤t} a_r
    return out.masked_fill(idx[:, None] < idx[None, :], float("-inf"))        # above the diagonal


def _advance(state, x, dt, A, B, C):
    """One step of the recurrence, all in one dtype, B and C already per head.

    state: (batch, heads, head_dim, state); x: (batch, heads, head_dim); dt: (batch, heads);
    A: (heads,); B, C: (batch, heads, state). Returns y (batch, heads, head_dim) without the
    D term, and the new state.
    """
    decay = torch.exp(dt * A)[..., None, None]                               # (b, h, 1, 1)
    state = decay * state + (dt[..., None] * x)[..., None] * B[:, :, None, :]
    y = torch.einsum("bhpn,bhn->bhp", state, C)
    return y, state


def ssd_reference(x, dt, A, B, C, D=None, initial_state=None, return_final_state=False):
    """The recurrence one step at a time; differentiable through autograd. No input checks
    (:func:`tokendyn.ops.ssd_scan` checks, then calls this).

    Arguments:
        x: (batch, length, heads, head_dim).
        dt: (batch, length, heads), Δ after bias and softplus (positive).
        A: (heads,), negative. B, C: (batch, length, n_groups, state). D: (heads,) or None.
        initial_state: (batch, heads, head_dim, state) or None (zeros).
    Returns y: (batch, length, heads, head_dim) in x's dtype; with ``return_final_state`` also
    S_L: (batch, heads, head_dim, state) in the compute dtype (float32, or float64).
    """
    ct = compute_dtype(x.dtype)
    batch, length, heads, hdim = x.shape
    xc, dtc, Ac = x.to(ct), dt.to(ct), A.to(ct)
    Bh, Ch = expand_groups(B.to(ct), heads, 2), expand_groups(C.to(ct), heads, 2)   # (b, l, h, n)
    if initial_state is None:
        state = xc.new_zeros(batch, heads, hdim, B.shape[-1])
    else:
        state = initial_state.to(ct).clone()     # never hand back the caller's own tensor
    ys = []
    for t in range(length):
        y_t, state = _advance(state, xc[:, t], dtc[:, t], Ac, Bh[:, t], Ch[:, t])
        ys.append(y_t)
    y = torch.stack(ys, dim=1) if ys else xc.new_zeros(batch, 0, heads, hdim)
    if D is not None:
        y = y + xc * D.to(ct)[:, None]
    y = y.to(x.dtype)
    return (y, state) if return_final_state else y


def ssd_step(state, x, dt, A, B, C, D=None):
    """One token of the SSD recurrence, for generation: (y, new state); ``state`` is not modified.

    Arguments:
        state: (batch, heads, head_dim, state_size), S_{t-1}.
        x: (batch, heads, head_dim); dt: (batch, heads), Δ_t after bias and softplus;
        A: (heads,); B, C: (batch, n_groups, state_size); D: (heads,) or None.
    Returns y: (batch, heads, head_dim) in x's dtype and S_t: (batch, heads, head_dim, state_size)
    in state's dtype (the caller's buffer keeps its dtype from step to step). Computed in the
    wider of the two compute dtypes of x and state.
    Raises :class:`~tokendyn.errors.ScanInputError` for tensors of the wrong shape.
    """
    check_step_inputs(state, x, dt, A, B, C, D)
    ct = torch.promote_types(compute_dtype(x.dtype), compute_dtype(state.dtype))
    heads = x.shape[1]
    y, new = _advance(state.to(ct), x.to(ct), dt.to(ct), A.to(ct),
                      expand_groups(B.to(ct), heads, 1), expand_groups(C.to(ct), heads, 1))
    if D is not None:
        y = y + x.to(ct) * D.to(ct)[:, None]
    return y.to(x.dtype), new.to(state.dtype)


def ssd_matrix(dt, A, B, C):
    """The exact L×L "hidden attention" matrix of every head: y = M @ x (+ D x), per head.

    M[b, h, t, s] = (C_t · B_s) · exp(A_h Σ_{r=s+1..t} Δ_r) · Δ_s for s ≤ t, 0 above the diagonal.

    Arguments:
        dt: (batch, length, heads); A: (heads,); B, C: (batch, length, n_groups, state).
    Returns M: (batch, heads, length, length) in the compute dtype of dt (float32, or float64).
    O(length²) memory per head: for analysis, not for long sequences.
    Raises :class:`~tokendyn.errors.ScanInputError` for tensors of the wrong shape.
    """
    check_ssd_inputs(None, dt, A, B, C, where="ssd_matrix")
    ct = compute_dtype(dt.dtype)
    heads = dt.shape[2]
    dth = dt.to(ct).transpose(1, 2)                                           # (b, h, l)
    decay = torch.exp(segsum(dth * A.to(ct)[:, None]))                        # (b, h, t, s)
    CB = torch.einsum("btgn,bsgn->bgts", C.to(ct), B.to(ct))                  # (b, g, t, s)
    return expand_groups(CB, heads, 1) * decay * dth[:, :, None, :]
