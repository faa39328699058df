"""Triton kernels of the mixer's one-token step (THEORY.md section 1, one step of the recurrence).

Causal-conv state update, per batch element b and channel d (state s: (batch, dim, K)):
    s[b, d, :] <- (s[b, d, 1:], x[b, d]);   out[b, d] = silu(bias[d] + Σ_k w[d, k] s[b, d, k])
Selective state update (state h: (batch, dim, N), float32; A given, or A = −exp(A_log)):
    Δ = softplus(dt + dt_bias);  h <- exp(Δ A) ⊙ h + Δ B x;  y = (C · h + D x) · silu(z)
Add -> RMSNorm of a block (one program per batch row of d values):
    r = hidden + residual (float32);  u = r rounded to w's dtype;  out = u / sqrt(mean(u²) + eps) · w

One program owns one batch element and ``BD`` channels; the state tile (BD, K or N) is loaded
whole, updated in registers and stored back in place (each program reads only the rows it
writes, so in-place is safe). Arithmetic is float32; every vector input is read with its own
batch and channel strides, so views (chunks of in_proj's output, the B/C columns of x_proj's
output) need no copy.
"""

from __future__ import annotations

import triton
import triton.language as tl

from ._triton_kernels import _softplus


@triton.jit
def _conv_update_kernel(state_ptr, x_ptr, w_ptr, bias_ptr, out_ptr, DIM, ss_b, ss_d, ss_k, sx_b, sx_d,
                        sw_d, sw_k, so_b, HAS_BIAS: tl.constexpr, K: tl.constexpr, KP: tl.constexpr,
                        BD: tl.constexpr):
    pid_b = tl.program_id(0).to(tl.int64)
    offs_d = tl.program_id(1) * BD + tl.arange(0, BD)
    dmask = offs_d < DIM
    d64 = offs_d.to(tl.int64)
    k = tl.arange(0, KP)
    row = state_ptr + pid_b * ss_b + d64 * ss_d
    # slot k receives the old slot k + 1; the last slot the new input
    shifted = tl.load(row[:, None] + (k[None, :] + 1) * ss_k, mask=dmask[:, None] & (k[None, :] + 1 < K),
                      other=0.0)
    x = tl.load(x_ptr + pid_b * sx_b + d64 * sx_d, mask=dmask, other=0.0)
    new = tl.where(k[None, :] == K - 1, x.to(shifted.dtype)[:, None], shifted)
    kmask = dmask[:, None] & (k[None, :] < K)
    tl.store(row[:, None] + k[None, :] * ss_k, new, mask=kmask)
    w = tl.load(w_ptr + d64[:, None] * sw_d + k[None, :] * sw_k, mask=kmask, other=0.0).to(tl.float32)
    pre = tl.sum(new.to(tl.float32) * w, axis=1)
    if HAS_BIAS:
        pre += tl.load(bias_ptr + offs_d, mask=dmask, other=0.0).to(tl.float32)
    out = pre * tl.sigmoid(pre)
    tl.store(out_ptr + pid_b * so_b + d64, out.to(out_ptr.dtype.element_ty), mask=dmask)


@triton.jit
def _state_update_kernel(h_ptr, x_ptr, dt_ptr, dtb_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, y_ptr, DIM, NSTATE,
                         sh_b, sh_d, sh_n, sx_b, sx_d, sdt_b, sdt_d, sA_d, sA_n, sB_b, sB_n, sC_b, sC_n,
                         sz_b, sz_d, sy_b,
                         HAS_DTB: tl.constexpr, HAS_D: tl.constexpr, HAS_Z: tl.constexpr,
                         A_LOG: tl.constexpr, NP: tl.constexpr, BD: tl.constexpr):
    pid_b = tl.program_id(0).to(tl.int64)
    offs_d = tl.program_id(1) * BD + tl.arange(0, BD)
    dmask = offs_d < DIM
    d64 = offs_d.to(tl.int64)
    n = tl.arange(0, NP)
    nmask = n < NSTATE
    m2 = dmask[:, None] & nmask[None, :]
    x = tl.load(x_ptr + pid_b * sx_b + d64 * sx_d, mask=dmask, other=0.0).to(tl.float32)
    dt = tl.load(dt_ptr + pid_b * sdt_b + d64 * sdt_d, mask=dmask, other=0.0).to(tl.float32)
    if HAS_DTB:
        dt += tl.load(dtb_ptr + offs_d, mask=dmask, other=0.0).to(tl.float32)
    delta = _softplus(dt)
    A = tl.load(A_ptr + d64[:, None] * sA_d + n[None, :] * sA_n, mask=m2, other=0.0).to(tl.float32)
    if A_LOG:
        A = -tl.exp(A)
    B = tl.load(B_ptr + pid_b * sB_b + n * sB_n, mask=nmask, other=0.0).to(tl.float32)
    C = tl.load(C_ptr + pid_b * sC_b + n * sC_n, mask=nmask, other=0.0).to(tl.float32)
    hp = h_ptr + pid_b * sh_b + d64[:, None] * sh_d + n[None, :] * sh_n
    h = tl.load(hp, mask=m2, other=0.0)
    # h = exp(Δ A) ⊙ h + Δ B x   (THEORY.md section 1)
    h = tl.exp(delta[:, None] * A) * h + (delta * x)[:, None] * B[None, :]
    tl.store(hp, h, mask=m2)
    y = tl.sum(h * C[None, :], axis=1)
    if HAS_D:
        y += tl.load(D_ptr + offs_d, mask=dmask, other=0.0).to(tl.float32) * x
    if HAS_Z:
        z = tl.load(z_ptr + pid_b * sz_b + d64 * sz_d, mask=dmask, other=0.0).to(tl.float32)
        y = y * (z * tl.sigmoid(z))
    tl.store(y_ptr + pid_b * sy_b + d64, y.to(y_ptr.dtype.element_ty), mask=dmask)


@triton.jit
def _add_rms_norm_kernel(h_ptr, r_ptr, w_ptr, out_ptr, rout_ptr, DM, eps, sh_b, sr_b,
                         HAS_RES: tl.constexpr, BLOCK: tl.constexpr):
    pid_b = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    m = offs < DM
    r = tl.load(h_ptr + pid_b * sh_b + offs, mask=m, other=0.0).to(tl.float32)
    if HAS_RES:
        r += tl.load(r_ptr + pid_b * sr_b + offs, mask=m, other=0.0)
    tl.store(rout_ptr + pid_b * DM + offs, r, mask=m)
    # the norm sees the sum in its weight's dtype, as the model's RMSNorm does
    u = r.to(w_ptr.dtype.element_ty).to(tl.float32)
    inv = 1.0 / tl.sqrt(tl.sum(u * u, axis=0) / DM + eps)
    w = tl.load(w_ptr + offs, mask=m, other=0.0).to(tl.float32)
    tl.store(out_ptr + pid_b * DM + offs, (u * inv * w).to(out_ptr.dtype.element_ty), mask=m)
