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
that the caller adds up. Two backward kernels: ``_conv_silu_bwd_kernel`` reads x once per tap
of each shifted pre-activation (K² shifted tiles, any K); ``_conv_silu_bwd_taps_kernel`` (K ≤ 4)
reads the 2K − 1 distinct shifted tiles of x once and builds every pre-activation from them.
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
                          HAS_BIAS: tl.constexpr, K: tl.constexpr, BD: tl.constexpr, BT: tl.constexpr,
                          DXM: tl.constexpr):
    """g: (batch, dim, length) contiguous; dx (batch, dim, length) with strides
    (DXM·dim·length, length, 1) (DXM = 2: the x half of xz's gradient); dw: (batch, n_tblocks,
    dim, K) and dbias: (batch, n_tblocks, dim) float32 partial sums, one slot per program."""
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
    tl.store(dx_ptr + ((pid_b * (DXM * DIM) + d64) * L)[:, None] + t[None, :], dx, mask=m)


@triton.jit
def _x_at(x_row, t, shift, dmask, L):
    """x (BD, BT) float32 at steps t + shift, zero outside 0 .. L − 1."""
    src = t + shift
    m = dmask[:, None] & ((src >= 0) & (src < L))[None, :]
    return tl.load(x_row[:, None] + src[None, :], mask=m, other=0.0).to(tl.float32)


@triton.jit
def _tap(w_row, k, dmask):
    """Tap k of every channel's filter as a (BD, 1) float32 column."""
    return tl.load(w_row + k, mask=dmask, other=0.0).to(tl.float32)[:, None]


@triton.jit
def _silu_grad(pre, g_row, s, dmask, L):
    """p = g · silu'(pre) at steps s (BT,), zero at and beyond L."""
    ms = dmask[:, None] & (s < L)[None, :]
    g = tl.load(g_row[:, None] + s[None, :], mask=ms, other=0.0).to(tl.float32)
    sig = tl.sigmoid(pre)
    return tl.where(ms, g * sig * (1.0 + pre * (1.0 - sig)), 0.0)


@triton.jit
def _conv_silu_bwd_taps_kernel(x_ptr, w_ptr, bias_ptr, g_ptr, dx_ptr, dw_ptr, dbias_ptr, L, DIM, sx_b, sx_d, sw_d,
                               HAS_BIAS: tl.constexpr, K: tl.constexpr, BD: tl.constexpr, BT: tl.constexpr,
                               DXM: tl.constexpr):
    """The backward for K ≤ 4 with each shifted tile of x and g read once: the pre-activations
    pre_j at steps t + j (j < K) are built together from the 2K − 1 tiles x[t − (K − 1)] …
    x[t + K − 1] (not K² reads), and dw pairs p at t + j with x at the program's own steps t,
    dw[K − 1 − j] += Σ_t p[t + j] x[t], so dw needs no read of x beyond those. Arguments and
    outputs as :func:`_conv_silu_bwd_kernel`'s."""
    pid_b, offs_d, dmask, d64, t, bias = _conv_program(bias_ptr, DIM, HAS_BIAS, BD, BT)
    x_row = x_ptr + pid_b * sx_b + d64 * sx_d
    w_row = w_ptr + d64 * sw_d
    g_row = g_ptr + (pid_b * DIM + d64) * L
    slot = (pid_b * tl.num_programs(0) + tl.program_id(0)) * DIM + d64
    pre0 = tl.zeros([BD, BT], dtype=tl.float32) + bias[:, None]
    pre1 = pre0
    pre2 = pre0
    pre3 = pre0
    x0 = tl.zeros([BD, BT], dtype=tl.float32)
    for s in tl.static_range(2 * K - 1):     # x at step t + s − (K − 1) feeds pre_j with tap s − j
        xs = _x_at(x_row, t, s - (K - 1), dmask, L)
        if s < K:
            pre0 += _tap(w_row, s, dmask) * xs
        if K > 1:
            if s >= 1:
                if s < K + 1:
                    pre1 += _tap(w_row, s - 1, dmask) * xs
        if K > 2:
            if s >= 2:
                if s < K + 2:
                    pre2 += _tap(w_row, s - 2, dmask) * xs
        if K > 3:
            if s >= 3:
                pre3 += _tap(w_row, s - 3, dmask) * xs
        if s == K - 1:
            x0 = xs
    p = _silu_grad(pre0, g_row, t, dmask, L)
    dx = _tap(w_row, K - 1, dmask) * p
    tl.store(dw_ptr + slot * K + (K - 1), tl.sum(p * x0, axis=1), mask=dmask)
    if HAS_BIAS:
        tl.store(dbias_ptr + slot, tl.sum(p, axis=1), mask=dmask)
    if K > 1:
        p = _silu_grad(pre1, g_row, t + 1, dmask, L)
        dx += _tap(w_row, K - 2, dmask) * p
        tl.store(dw_ptr + slot * K + (K - 2), tl.sum(p * x0, axis=1), mask=dmask)
    if K > 2:
        p = _silu_grad(pre2, g_row, t + 2, dmask, L)
        dx += _tap(w_row, K - 3, dmask) * p
        tl.store(dw_ptr + slot * K + (K - 3), tl.sum(p * x0, axis=1), mask=dmask)
    if K > 3:
        p = _silu_grad(pre3, g_row, t + 3, dmask, L)
        dx += _tap(w_row, K - 4, dmask) * p
        tl.store(dw_ptr + slot * K + (K - 4), tl.sum(p * x0, axis=1), mask=dmask)
    m = dmask[:, None] & (t < L)[None, :]
    tl.store(dx_ptr + ((pid_b * (DXM * DIM) + d64) * L)[:, None] + t[None, :], dx, mask=m)


# ---- "cols": every tile read at a multiple of 8 steps --------------------------------------
# A tile read at a shift of 1-3 steps cannot use 16-byte loads (eight 2-byte loads per thread in
# bf16, results/scan_kernel_resources.json). These kernels read x and g only at t0 - 8, t0 and
# t0 + 8, as (BD, BT / 8, 8) tiles split into their 8 columns (steps t0 + 8i + r), and take the
# value at shift s of column r from column r + s of the tile before, the same or the next.


@triton.jit
def _columns(row, t0, shift, dmask, L, BD: tl.constexpr, NI: tl.constexpr):
    """x at steps t0 + shift + 8i + r (zero outside 0 .. L − 1) as 8 float32 (BD, NI) columns,
    r = 0 .. 7, read as one (BD, NI, 8) tile."""
    i = tl.arange(0, NI)
    r = tl.arange(0, 8)
    src = t0 + shift + 8 * i[:, None] + r[None, :]                       # (NI, 8)
    m = dmask[:, None, None] & ((src >= 0) & (src < L))[None, :, :]
    v = tl.load(row[:, None, None] + src[None, :, :], mask=m, other=0.0).to(tl.float32)
    even, odd = tl.split(tl.reshape(v, (BD, NI, 4, 2)))                # r = 2j, 2j + 1
    e0, e1 = tl.split(tl.reshape(even, (BD, NI, 2, 2)))                # r = 0, 4 and 2, 6
    o0, o1 = tl.split(tl.reshape(odd, (BD, NI, 2, 2)))                 # r = 1, 5 and 3, 7
    c0, c4 = tl.split(e0)
    c2, c6 = tl.split(e1)
    c1, c5 = tl.split(o0)
    c3, c7 = tl.split(o1)
    return c0, c1, c2, c3, c4, c5, c6, c7


@triton.jit
def _join_columns(c0, c1, c2, c3, c4, c5, c6, c7, BD: tl.constexpr, NI: tl.constexpr):
    """The inverse of :func:`_columns`' split: 8 (BD, NI) columns -> (BD, NI, 8)."""
    even = tl.reshape(tl.join(tl.join(c0, c4), tl.join(c2, c6)), (BD, NI, 4))
    odd = tl.reshape(tl.join(tl.join(c1, c5), tl.join(c3, c7)), (BD, NI, 4))
    return tl.reshape(tl.join(even, odd), (BD, NI, 8))


@triton.jit
def _column_at(prev, cur, nxt, s: tl.constexpr):
    """Column s of three consecutive tiles' columns: s in −8 .. −1 from prev, 0 .. 7 from cur,
    8 .. 15 from nxt."""
    if s < 0:
        v = prev[s + 8]
    elif s < 8:
        v = cur[s]
    else:
        v = nxt[s - 8]
    return v


@triton.jit
def _pre_column(prev, cur, nxt, w_row, bias, dmask, s: tl.constexpr, K: tl.constexpr):
    """pre (BD, NI) at steps t0 + 8i + s: bias + Σ_k w_k x[· − (K − 1) + k]."""
    acc = _column_at(prev, cur, nxt, s) * 0.0 + bias[:, None]
    for k in tl.static_range(K):
        acc += _tap(w_row, k, dmask) * _column_at(prev, cur, nxt, s - (K - 1) + k)
    return acc


@triton.jit
def _conv_silu_fwd_cols_kernel(x_ptr, w_ptr, bias_ptr, out_ptr, L, DIM, sx_b, sx_d, sw_d,
                               HAS_BIAS: tl.constexpr, K: tl.constexpr, BD: tl.constexpr, BT: tl.constexpr):
    """The forward of :func:`_conv_silu_fwd_kernel` from two aligned tiles of x (K ≤ 9)."""
    pid_b, offs_d, dmask, d64, t, bias = _conv_program(bias_ptr, DIM, HAS_BIAS, BD, BT)
    NI: tl.constexpr = BT // 8
    t0 = tl.program_id(0) * BT
    x_row = x_ptr + pid_b * sx_b + d64 * sx_d
    w_row = w_ptr + d64 * sw_d
    prev = _columns(x_row, t0, -8, dmask, L, BD, NI)
    cur = _columns(x_row, t0, 0, dmask, L, BD, NI)
    p0 = _pre_column(prev, cur, cur, w_row, bias, dmask, 0, K)
    p1 = _pre_column(prev, cur, cur, w_row, bias, dmask, 1, K)
    p2 = _pre_column(prev, cur, cur, w_row, bias, dmask, 2, K)
    p3 = _pre_column(prev, cur, cur, w_row, bias, dmask, 3, K)
    p4 = _pre_column(prev, cur, cur, w_row, bias, dmask, 4, K)
    p5 = _pre_column(prev, cur, cur, w_row, bias, dmask, 5, K)
    p6 = _pre_column(prev, cur, cur, w_row, bias, dmask, 6, K)
    p7 = _pre_column(prev, cur, cur, w_row, bias, dmask, 7, K)
    pre = _join_columns(p0, p1, p2, p3, p4, p5, p6, p7, BD, NI)
    out = pre * tl.sigmoid(pre)
    i = tl.arange(0, NI)
    r = tl.arange(0, 8)
    tt = t0 + 8 * i[:, None] + r[None, :]
    m = dmask[:, None, None] & (tt < L)[None, :, :]
    tl.store(out_ptr + ((pid_b * DIM + d64) * L)[:, None, None] + tt[None, :, :], out, mask=m)


@triton.jit
def _grad_column(prev, cur, nxt, gcur, gnxt, w_row, bias, dmask, q0, q1, q2, q3, db, r: tl.constexpr,
                 K: tl.constexpr):
    """Column r's dx (BD, NI), and the running dw and dbias terms with this column's added:
    q_j += p_j x (BD, NI) for the p at steps t + j (tap K − 1 − j of dw; unchanged for j ≥ K),
    db += p_0; the caller sums them over the steps once, after the last column."""
    x0 = cur[r]
    dx = tl.zeros_like(x0)
    for j in tl.static_range(K):
        pre = _pre_column(prev, cur, nxt, w_row, bias, dmask, r + j, K)
        g = _column_at(gcur, gcur, gnxt, r + j)
        sig = tl.sigmoid(pre)
        p = g * sig * (1.0 + pre * (1.0 - sig))
        dx += _tap(w_row, K - 1 - j, dmask) * p
        q = p * x0
        if j == 0:
            q0 += q
            db += p
        elif j == 1:
            q1 += q
        elif j == 2:
            q2 += q
        else:
            q3 += q
    return dx, q0, q1, q2, q3, db


@triton.jit
def _conv_silu_bwd_cols_kernel(x_ptr, w_ptr, bias_ptr, g_ptr, dx_ptr, dw_ptr, dbias_ptr, L, DIM, sx_b, sx_d, sw_d,
                               HAS_BIAS: tl.constexpr, K: tl.constexpr, BD: tl.constexpr, BT: tl.constexpr,
                               DXM: tl.constexpr):
    """The backward of :func:`_conv_silu_bwd_taps_kernel` (K ≤ 4, same arguments and outputs)
    from aligned tiles: x at t0 − 8, t0, t0 + 8 and g at t0, t0 + 8."""
    pid_b, offs_d, dmask, d64, t, bias = _conv_program(bias_ptr, DIM, HAS_BIAS, BD, BT)
    NI: tl.constexpr = BT // 8
    t0 = tl.program_id(0) * BT
    x_row = x_ptr + pid_b * sx_b + d64 * sx_d
    w_row = w_ptr + d64 * sw_d
    g_row = g_ptr + (pid_b * DIM + d64) * L
    slot = (pid_b * tl.num_programs(0) + tl.program_id(0)) * DIM + d64
    prev = _columns(x_row, t0, -8, dmask, L, BD, NI)
    cur = _columns(x_row, t0, 0, dmask, L, BD, NI)
    nxt = _columns(x_row, t0, 8, dmask, L, BD, NI)
    gcur = _columns(g_row, t0, 0, dmask, L, BD, NI)
    gnxt = _columns(g_row, t0, 8, dmask, L, BD, NI)
    q0 = tl.zeros_like(cur[0])
    q1 = q0
    q2 = q0
    q3 = q0
    db = q0
    d0, q0, q1, q2, q3, db = _grad_column(prev, cur, nxt, gcur, gnxt, w_row, bias, dmask, q0, q1, q2, q3, db, 0, K)
    d1, q0, q1, q2, q3, db = _grad_column(prev, cur, nxt, gcur, gnxt, w_row, bias, dmask, q0, q1, q2, q3, db, 1, K)
    d2, q0, q1, q2, q3, db = _grad_column(prev, cur, nxt, gcur, gnxt, w_row, bias, dmask, q0, q1, q2, q3, db, 2, K)
    d3, q0, q1, q2, q3, db = _grad_column(prev, cur, nxt, gcur, gnxt, w_row, bias, dmask, q0, q1, q2, q3, db, 3, K)
    d4, q0, q1, q2, q3, db = _grad_column(prev, cur, nxt, gcur, gnxt, w_row, bias, dmask, q0, q1, q2, q3, db, 4, K)
    d5, q0, q1, q2, q3, db = _grad_column(prev, cur, nxt, gcur, gnxt, w_row, bias, dmask, q0, q1, q2, q3, db, 5, K)
    d6, q0, q1, q2, q3, db = _grad_column(prev, cur, nxt, gcur, gnxt, w_row, bias, dmask, q0, q1, q2, q3, db, 6, K)
    d7, q0, q1, q2, q3, db = _grad_column(prev, cur, nxt, gcur, gnxt, w_row, bias, dmask, q0, q1, q2, q3, db, 7, K)
    # q_j pairs p at t + j with x at t: tap K − 1 − j of dw
    tl.store(dw_ptr + slot * K + (K - 1), tl.sum(q0, axis=1), mask=dmask)
    if K > 1:
        tl.store(dw_ptr + slot * K + (K - 2), tl.sum(q1, axis=1), mask=dmask)
    if K > 2:
        tl.store(dw_ptr + slot * K + (K - 3), tl.sum(q2, axis=1), mask=dmask)
    if K > 3:
        tl.store(dw_ptr + slot * K + (K - 4), tl.sum(q3, axis=1), mask=dmask)
    if HAS_BIAS:
        tl.store(dbias_ptr + slot, tl.sum(db, axis=1), mask=dmask)
    dx = _join_columns(d0, d1, d2, d3, d4, d5, d6, d7, BD, NI)
    i = tl.arange(0, NI)
    r = tl.arange(0, 8)
    tt = t0 + 8 * i[:, None] + r[None, :]
    m = dmask[:, None, None] & (tt < L)[None, :, :]
    tl.store(dx_ptr + ((pid_b * (DXM * DIM) + d64) * L)[:, None, None] + tt[None, :, :], dx, mask=m)
