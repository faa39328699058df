"""Triton kernels of the mixer's causal depthwise convolution with SiLU.

    pre[b, d, t] = bias[d] + Σ_k w[d, k] x[b, d, t − (K − 1) + k]     (x = 0 before t = 0)
    out = silu(pre)

Layout: x (batch, dim, length) with unit stride along length (batch and channel strides are
free, so a channel slice of in_proj's output is read in place); w (dim, K); out, dx
(batch, dim, length) contiguous. One program owns one batch element, ``BD`` channels and
``BT`` steps; the K shifted tiles of x are separate (cached) loads, so no halo is staged.

Backward, with g = ∂loss/∂out and p = g · silu'(pre):
    dx[t] = Σ_j w[K − 1 − j] p[t + j],   dw[k] = Σ_{b,t} p[t] x[t − (K − 1) + k],   dbias = Σ_{b,t} p[t].
p at the K shifted positions is recomputed from x (K² multiply-adds and K sigmoids per
element) instead of being written and read back. dw and dbias are per-program partial sums
that the caller adds up.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _pre_activation(x_row, w_row, bias, t, dmask, L, K: tl.constexpr, BD: tl.constexpr, BT: tl.constexpr):
    """pre (BD, BT) float32 at steps t (BT,); x_row, w_row: (BD,) row pointers."""
    acc = tl.zeros([BD, BT], dtype=tl.float32) + bias[:, None]
    for k in tl.static_range(K):
        src = t - (K - 1) + k
        m = dmask[:, None] & ((src >= 0) & (src < L))[None, :]
        xv = tl.load(x_row[:, None] + src[None, :], mask=m, other=0.0).to(tl.float32)
        wk = tl.load(w_row + k, mask=dmask, other=0.0).to(tl.float32)
        acc += wk[:, None] * xv
    return acc


@triton.jit
def _conv_program(bias_ptr, DIM, HAS_BIAS: tl.constexpr, BD: tl.constexpr, BT: tl.constexpr):
    """This program's batch element (int64), channels, channel mask, steps and float32 bias."""
    pid_b = tl.program_id(2).to(tl.int64)
    offs_d = tl.program_id(1) * BD + tl.arange(0, BD)
    dmask = offs_d < DIM
    t = tl.program_id(0) * BT + tl.arange(0, BT)
    bias = tl.zeros([BD], dtype=tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_d, mask=dmask, other=0.0).to(tl.float32)
    return pid_b, offs_d, dmask, offs_d.to(tl.int64), t, bias


@triton.jit
def _conv_silu_fwd_kernel(x_ptr, w_ptr, bias_ptr, out_ptr, L, DIM, sx_b, sx_d, sw_d,
                          HAS_BIAS: tl.constexpr, K: tl.constexpr, BD: tl.constexpr, BT: tl.constexpr):
    pid_b, offs_d, dmask, d64, t, bias = _conv_program(bias_ptr, DIM, HAS_BIAS, BD, BT)
    pre = _pre_activation(x_ptr + pid_b * sx_b + d64 * sx_d, w_ptr + d64 * sw_d, bias, t, dmask, L, K, BD, BT)
    out = pre * tl.sigmoid(pre)
    m = dmask[:, None] & (t < L)[None, :]
    tl.store(out_ptr + ((pid_b * DIM + d64) * L)[:, None] + t[None, :], out, mask=m)


@triton.jit
def _conv_silu_bwd_kernel(x_ptr, w_ptr, bias_ptr, g_ptr, dx_ptr, dw_ptr, dbias_ptr, L, DIM, sx_b, sx_d, sw_d,
                          HAS_BIAS: tl.constexpr, K: tl.constexpr, BD: tl.constexpr, BT: tl.constexpr):
    """g: (batch, dim, length) contiguous; dx like g; dw: (batch, n_tblocks, dim, K) and
    dbias: (batch, n_tblocks, dim) float32 partial sums, one slot per program."""
    pid_b, offs_d, dmask, d64, t, bias = _conv_program(bias_ptr, DIM, HAS_BIAS, BD, BT)
    x_row = x_ptr + pid_b * sx_b + d64 * sx_d
    w_row = w_ptr + d64 * sw_d
    g_row = g_ptr + (pid_b * DIM + d64) * L
    slot = (pid_b * tl.num_programs(0) + tl.program_id(0)) * DIM + d64
    dx = tl.zeros([BD, BT], dtype=tl.float32)
    for j in tl.static_range(K):
        s = t + j
        ms = dmask[:, None] & (s < L)[None, :]
        pre = _pre_activation(x_row, w_row, bias, s, dmask, L, K, BD, BT)
        sig = tl.sigmoid(pre)
        g = tl.load(g_row[:, None] + s[None, :], mask=ms, other=0.0).to(tl.float32)
        p = tl.where(ms, g * sig * (1.0 + pre * (1.0 - sig)), 0.0)
        wj = tl.load(w_row + (K - 1 - j), mask=dmask, other=0.0).to(tl.float32)
        dx += wj[:, None] * p
        if j == 0:
            # the program's own steps: its share of dw and dbias
            for k in tl.static_range(K):
                src = t - (K - 1) + k
                m = dmask[:, None] & ((src >= 0) & (src < L))[None, :]
                xv = tl.load(x_row[:, None] + src[None, :], mask=m, other=0.0).to(tl.float32)
                tl.store(dw_ptr + slot * K + k, tl.sum(p * xv, axis=1), mask=dmask)
            if HAS_BIAS:
                tl.store(dbias_ptr + slot, tl.sum(p, axis=1), mask=dmask)
    m = dmask[:, None] & (t < L)[None, :]
    tl.store(dx_ptr + ((pid_b * DIM + d64) * L)[:, None] + t[None, :], dx, mask=m)
