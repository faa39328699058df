"""Triton kernels of the block's Add -> RMSNorm, fused with the cast to the projection's dtype.

    r[i, :] = h[i, :] + res[i, :]   (float32; r = h where there is no stream yet)
    n[i, :] = cast(r[i, :] · rstd_i ⊙ g),   rstd_i = 1 / sqrt(mean_j r[i, j]² + eps)

h: (rows, d) the previous block's output, any float dtype; res, r: (rows, d) float32; n:
(rows, d) contiguous in the projection's dtype; every row with unit stride along d (row strides
free). The forward is one pass: it reads h and res once and writes r (with STORE_R) and n
(PyTorch's path is an add, a norm and a cast). Run on r alone (no res, no STORE_R) it
recomputes n for the backward. The backward, for the gradient dn of n and dres of r:

    r̂ = r · rstd,   dr̂ = dn ⊙ g,   dr = rstd · (dr̂ − r̂ · mean_j(dr̂ ⊙ r̂)) + dres,
    dh = cast(dr),   dg = Σ_i dn ⊙ r̂

in one pass over r, dn and dres, with dg as per-program partial sums over ``ROWS`` rows that the
caller adds up (PyTorch's path casts dn, runs the norm's backward, adds dres, casts dh and
reduces the gain's gradient in separate passes).
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _load_row(ptr, stride, row, cols, cmask):
    return tl.load(ptr + row * stride + cols, mask=cmask, other=0.0).to(tl.float32)


@triton.jit
def _add_rms_norm_cast_fwd_kernel(h_ptr, res_ptr, g_ptr, n_ptr, r_ptr, n_rows, D, s_h, s_res, eps,
                                  HAS_RES: tl.constexpr, STORE_R: tl.constexpr,
                                  BLOCK: tl.constexpr, ROWS: tl.constexpr):
    """ROWS rows per program; BLOCK ≥ D, a power of two. r_ptr: (rows, d) float32 contiguous."""
    cols = tl.arange(0, BLOCK)
    cmask = cols < D
    g = tl.load(g_ptr + cols, mask=cmask, other=0.0).to(tl.float32)
    first = tl.program_id(0).to(tl.int64) * ROWS
    for i in range(ROWS):
        row = first + i
        if row < n_rows:
            r = _load_row(h_ptr, s_h, row, cols, cmask)
            if HAS_RES:
                r += _load_row(res_ptr, s_res, row, cols, cmask)
            if STORE_R:
                tl.store(r_ptr + row * D + cols, r, mask=cmask)
            rstd = 1.0 / tl.sqrt(tl.sum(r * r, axis=0) / D + eps)
            tl.store(n_ptr + row * D + cols, r * rstd * g, mask=cmask)


@triton.jit
def _add_rms_norm_cast_bwd_kernel(r_ptr, g_ptr, dn_ptr, dres_ptr, dr_ptr, dh_ptr, dg_ptr, n_rows, D, s_r, s_dn,
                                  s_dres, eps, HAS_DRES: tl.constexpr, STORE_DH: tl.constexpr,
                                  BLOCK: tl.constexpr, ROWS: tl.constexpr):
    """dr: (rows, d) float32 and dh (rows, d) in h's dtype, contiguous; dg: (programs, d) float32
    partial sums."""
    cols = tl.arange(0, BLOCK)
    cmask = cols < D
    g = tl.load(g_ptr + cols, mask=cmask, other=0.0).to(tl.float32)
    dg = tl.zeros([BLOCK], dtype=tl.float32)
    first = tl.program_id(0).to(tl.int64) * ROWS
    for i in range(ROWS):
        row = first + i
        if row < n_rows:
            r = _load_row(r_ptr, s_r, row, cols, cmask)
            rstd = 1.0 / tl.sqrt(tl.sum(r * r, axis=0) / D + eps)
            rhat = r * rstd
            dn = _load_row(dn_ptr, s_dn, row, cols, cmask)
            drhat = dn * g
            dr = rstd * (drhat - rhat * (tl.sum(drhat * rhat, axis=0) / D))
            if HAS_DRES:
                dr += _load_row(dres_ptr, s_dres, row, cols, cmask)
            tl.store(dr_ptr + row * D + cols, dr, mask=cmask)
            if STORE_DH:
                tl.store(dh_ptr + row * D + cols, dr, mask=cmask)
            dg += dn * rhat
    tl.store(dg_ptr + tl.program_id(0) * D + cols, dg, mask=cmask)
