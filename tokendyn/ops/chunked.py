"""The ``chunked`` selective-scan backend: pure PyTorch, parallel over the sequence.

Same function as :func:`tokendyn.ops.reference.selective_scan_reference` (THEORY.md
section 1). Per channel d, state n and step l, with a_l = exp(Δ_l A[d, n]) ≤ 1:

    h_l = a_l h_{l-1} + Δ_l B_l[n] u_l,    y_l = Σ_n C_l[n] h_l + D_d u_l.

How it is computed
    * Layout (length, batch, state, dim): one step is contiguous and sums over the
      state run over contiguous rows of dim.
    * The sequence is cut into *groups* of at most ``group`` steps, processed one after
      the other with the state carried between them; only one group's
      (group, batch, state, dim) tensors exist at a time.
    * Inside a group, :func:`._linear_scan.linear_scan_` solves the recurrence with
      chunks of ``chunk`` steps in parallel and a carry between chunks. Only products
      of a's (each ≤ 1) are ever formed: no exp of a positive running sum, so long
      sequences cannot overflow.
    * Backward (:class:`ChunkedScanFn`): the forward saves only the inputs and the state
      at every group boundary, (n_groups, batch, state, dim). The backward walks the
      groups in reverse, recomputes that group's states from its saved start state,
      runs the reverse (adjoint) recurrence for it — on ĝ_l = a_l g_l, g_l = ∂L/∂h_l,
      so that the decay gradient is a product, not a cancelling difference — and
      accumulates the gradients; the adjoint at the group start is carried on.

Δ bias/softplus, the D skip and the z gate are O(batch·dim·length) and are left to
ordinary autograd around the core function.
"""

from __future__ import annotations

import torch

from ..errors import ConfigError
from ._linear_scan import linear_scan_, overwrites_a
from .reference import compute_dtype, finish_output, prepare_delta

# Steps per chunk inside a group, and the element budget of one group's
# (group_len, batch, state, dim) tensor. Chosen by the sweep in benchmarks/scan_cpu.py
# (results/scan_cpu.json): a group's few float32 temporaries (8 MiB each at 2^21) stay
# in a 32 MiB last-level cache; at 2^22 and above they spill and both passes slow down.
DEFAULT_CHUNK = 32
DEFAULT_GROUP_ELEMENTS = 1 << 21

_LOG2E = 1.4426950408889634


def _group_len(length: int, per_step: int, chunk: int, budget: int) -> int:
    """Steps per group: a multiple of ``chunk`` whose tensors fit in ``budget`` elements
    (at least 1, so that a length-0 sequence makes an empty loop rather than a zero step)."""
    steps = max(chunk, (budget // max(per_step, 1)) // chunk * chunk)
    return max(1, min(length, steps))


def _decay(delta_t: torch.Tensor, A2T: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """exp(Δ ⊗ A) as 2^(Δ ⊗ A·log2 e) (exp2 is the faster kernel on CPU).

    delta_t (l, b, d), A2T (n, d) = (A·log2 e)ᵀ -> (l, b, n, d), every entry in (0, 1];
    written into ``out`` when given.
    """
    return torch.mul(delta_t.unsqueeze(-2), A2T, out=out).exp2_()


def _drive(delta_t, u_t, B_t, out: torch.Tensor | None = None) -> torch.Tensor:
    """Δ u B: (l, b, d), (l, b, d), (l, b, n) -> (l, b, n, d), into ``out`` when given."""
    return torch.mul(B_t.unsqueeze(-1), (delta_t * u_t).unsqueeze(-2), out=out)


def _group_states(delta_t, u_t, B_t, A2T, h0, chunk, bufs=None):
    """All states of one group, (l, b, n, d), starting from h0 (b, n, d) or None.

    bufs: two (≥ l, b, n, d) scratch tensors to write into. Reusing them across groups
    matters on CPU: a fresh multi-MiB tensor per group costs page faults on first touch.
    """
    n_l = delta_t.shape[0]
    dec_out, drv_out = (None, None) if bufs is None else (bufs[0][:n_l], bufs[1][:n_l])
    H = _drive(delta_t, u_t, B_t, out=drv_out)
    return linear_scan_(_decay(delta_t, A2T, out=dec_out), H, h0, reverse=False, chunk=chunk)


def _adjoint_contractions(B, C, dy, du, Ghat, ghat_next):
    """The contractions of the adjoint g_l = C_l dy_l + ĝ_{l+1} over one group of steps, the C dy
    part in closed form:

        q_l[d]  = Σ_n B g    = dy (B·C) + Σ_n B ĝ_{l+1},
        dB_l[n] = Σ_d g Δu   = C (dy·Δu) + Σ_d ĝ_{l+1} Δu.

    B, C: (l, b, n); dy, du (Δ u): (l, b, d); Ghat: the group's ĝ, (l, b, n, d); ghat_next: ĝ of
    the step after the group, (b, n, d), or None past the sequence end. Returns q (l, b, d) and
    dB (l, b, n).
    """
    n_l, batch, state = B.shape
    dim = dy.shape[-1]
    q = dy * (B * C).sum(-1, keepdim=True)
    dB = C * (dy * du).sum(-1, keepdim=True)
    if n_l > 1:
        m = (n_l - 1) * batch
        q[:-1] += torch.bmm(B[:-1].reshape(m, 1, state), Ghat[1:].view(m, state, dim)).view(n_l - 1, batch, dim)
        dB[:-1] += torch.linalg.vecdot(Ghat[1:], du[:-1].unsqueeze(-2))
    if ghat_next is not None:
        q[-1] += torch.bmm(B[-1].unsqueeze(1), ghat_next).squeeze(1)
        dB[-1] += torch.linalg.vecdot(ghat_next, du[-1].unsqueeze(-2))
    return q, dB


class ChunkedScanFn(torch.autograd.Function):
    """Core scan y = C·h (no D, no gate) with a group-by-group recomputing backward.

    Inputs (one floating dtype): u, delta: (batch, dim, length), delta already biased
    and softplus-ed; A: (dim, state); B, C: (batch, state, length).
    Outputs: y (batch, dim, length) and the last state h_L (batch, dim, state).
    Internally states are (length, batch, state, dim): time outermost so that a step
    is one contiguous block, dim innermost so that sums over the state are cheap.
    """

    @staticmethod
    def forward(ctx, u, delta, A, B, C, chunk: int, group_elements: int):
        ctx.set_materialize_grads(False)   # unused outputs arrive as None: skip their work
        batch, dim, length = u.shape
        state = A.shape[1]
        u_t = u.permute(2, 0, 1).contiguous()          # (l, b, d)
        d_t = delta.permute(2, 0, 1).contiguous()      # (l, b, d)
        B_t = B.permute(2, 0, 1).contiguous()          # (l, b, n)
        C_t = C.permute(2, 0, 1).contiguous()          # (l, b, n)
        A2T = (A * _LOG2E).t().contiguous()            # (n, d)
        glen = _group_len(length, batch * dim * state, chunk, group_elements)
        y_t = u_t.new_empty(length, batch, dim)
        h = None
        starts = []                                    # state entering each group
        bufs = [u_t.new_empty(min(glen, length), batch, state, dim) for _ in range(2)]
        for s in range(0, length, glen):
            e = min(s + glen, length)
            starts.append(h)
            H = _group_states(d_t[s:e], u_t[s:e], B_t[s:e], A2T, h, chunk, bufs)
            lb = (e - s) * batch
            torch.bmm(C_t[s:e].reshape(lb, 1, state), H.view(lb, state, dim),
                      out=y_t[s:e].view(lb, 1, dim))
            h = H[-1].clone()
            del H
        del bufs
        if h is None:                                  # length 0
            h = u.new_zeros(batch, state, dim)
        zero = u.new_zeros(batch, state, dim)
        saved_starts = torch.stack([zero if t is None else t for t in starts]) if starts else zero[None]
        ctx.save_for_backward(u_t, d_t, A, B_t, C_t, saved_starts)
        ctx.glen, ctx.chunk = glen, chunk
        return y_t.permute(1, 2, 0), h.transpose(1, 2).contiguous()

    @staticmethod
    def backward(ctx, dy, dh_last):
        # Adjoint g_l = dL/dh_l obeys g_l = C_l dy_l + a_{l+1} g_{l+1}. We scan for
        # ĝ_l = a_l g_l instead: ĝ_l = a_l C_l dy_l + a_l ĝ_{l+1} (unshifted decays), and
        #   g_l = C_l dy_l + ĝ_{l+1},   a_l h_{l-1} g_l = h_{l-1} ĝ_l,
        # so the decay gradient W_l = ĝ_l ⊙ h_{l-1} is a product (no cancellation).
        # Past the sequence end ĝ_L = dL/dh_L (the last-state gradient).
        u_t, d_t, A, B_t, C_t, starts = ctx.saved_tensors
        glen, chunk = ctx.glen, ctx.chunk
        length, batch, dim = u_t.shape
        state = A.shape[1]
        A2T = (A * _LOG2E).t().contiguous()            # (n, d)
        AT = A.t()
        dy_t = (dy.permute(2, 0, 1).contiguous() if dy is not None
                else u_t.new_zeros(length, batch, dim))
        du = torch.empty_like(u_t)
        ddelta = torch.empty_like(d_t)
        dB = torch.empty_like(B_t)
        dC = torch.empty_like(C_t)
        dAT = A.new_zeros(state, dim)
        ghat_next = dh_last.transpose(1, 2).contiguous() if dh_last is not None else None   # (b, n, d)
        bounds = list(range(0, length, glen))
        # scratch for a_l, its scan copy, the states and the adjoint, reused by every group
        buf_dec, buf_scr, buf_H, buf_G = (u_t.new_empty(min(glen, length), batch, state, dim) for _ in range(4))
        for gi in range(len(bounds) - 1, -1, -1):
            s = bounds[gi]
            e = min(s + glen, length)
            n_l = e - s
            dg, ug, Bg, Cg, dyg = d_t[s:e], u_t[s:e], B_t[s:e], C_t[s:e], dy_t[s:e]
            dug = dg * ug                                             # Δ u, (l, b, d)
            h0 = starts[gi] if gi > 0 else None
            decay = _decay(dg, A2T, out=buf_dec[:n_l])                # a_l, (l, b, n, d)
            scratch = buf_scr[:n_l].copy_(decay) if overwrites_a(n_l, chunk) else decay
            H = linear_scan_(scratch, torch.mul(Bg.unsqueeze(-1), dug.unsqueeze(-2), out=buf_H[:n_l]), h0,
                             chunk=chunk)
            del scratch
            # dC[l, b, n] = Σ_d H dy
            dC[s:e] = torch.linalg.vecdot(H, dyg.unsqueeze(-2))
            Ghat = torch.mul(Cg.unsqueeze(-1), dyg.unsqueeze(-2), out=buf_G[:n_l]).mul_(decay)
            linear_scan_(decay, Ghat, ghat_next, reverse=True, chunk=chunk)
            del decay
            q, dB[s:e] = _adjoint_contractions(Bg, Cg, dyg, dug, Ghat, ghat_next)
            torch.mul(dg, q, out=du[s:e])
            dd = ug * q
            ghat_next = Ghat[0].clone()
            # W_l = ĝ_l ⊙ h_{l-1}: dΔ += Σ_n A W, dA += Σ_{b,l} Δ W.
            W = Ghat
            W[1:].mul_(H[:-1])
            if h0 is None:
                W[0].zero_()
            else:
                W[0].mul_(h0)
            del H
            dAT += torch.mul(W, dg.unsqueeze(-2)).sum((0, 1))
            dd += W.mul_(AT).sum(-2)
            ddelta[s:e] = dd
            del W, Ghat
        return (du.permute(1, 2, 0), ddelta.permute(1, 2, 0), dAT.t(),
                dB.permute(1, 2, 0), dC.permute(1, 2, 0), None, None)


def selective_scan_chunked(u, delta, A, B, C, D=None, z=None, delta_bias=None,
                           delta_softplus=False, return_last_state=False,
                           chunk: int = DEFAULT_CHUNK, group_elements: int = DEFAULT_GROUP_ELEMENTS):
    """Chunk-parallel selective scan; same contract as the reference.

    u, delta, z: (batch, dim, length); A: (dim, state); B, C: (batch, state, length);
    D, delta_bias: (dim,). Returns out (batch, dim, length) in u's dtype, and with
    ``return_last_state`` also h_L: (batch, dim, state) in the accumulation dtype
    (float32 for float16/bfloat16/float32 inputs, float64 for float64).

    chunk: steps per parallel chunk; group_elements: element budget of the largest
    temporary, (group_len, batch, state, dim) — memory stays O(budget), not O(length).
    """
    if chunk < 1:
        raise ConfigError(f"selective_scan_chunked: chunk must be a positive number of steps, got {chunk}.")
    ct = compute_dtype(u.dtype)
    out_dtype = u.dtype
    delta = prepare_delta(delta, delta_bias, delta_softplus)
    u_c = u.to(ct)
    y, h = ChunkedScanFn.apply(u_c, delta, A.to(ct), B.to(ct), C.to(ct), int(chunk), int(group_elements))
    out = finish_output(y, u_c, D, z).to(out_dtype)
    return (out, h) if return_last_state else out
