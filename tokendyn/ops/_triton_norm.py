"""Triton kernels of the block's RMSNorm, fused with the cast to the projection's dtype.

    n[i, :] = cast(r[i, :] · rstd_i ⊙ g),   rstd_i = 1 / sqrt(mean_j r[i, j]² + eps)

r: (rows, d) float32 with unit stride along d (row stride free); n: (rows, d) contiguous in the
projection's dtype. The forward is one pass over r (PyTorch's path is a norm kernel and a cast
kernel). The backward, for the gradient dn of n (any row stride):

    r̂ = r · rstd,   dr̂ = dn ⊙ g,   dr = rstd · (dr̂ − r̂ · mean_j(dr̂ ⊙ r̂)),   dg = Σ_i dn ⊙ r̂

in one pass over r and dn, with dg as per-program partial sums over ``ROWS`` rows that the
caller adds up (PyTorch's path casts dn, then runs the norm's backward and a separate reduction
for the gain).
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _row(r_ptr, s_r, row, cols, cmask, D, eps):
    """Row ``row`` of r as float32 (BLOCK,), its r̂ = r · rstd and rstd."""
    r = tl.load(r_ptr + row * s_r + cols, mask=cmask, other=0.0).to(tl.float32)
    rstd = 1.0 / tl.sqrt(tl.sum(r * r, axis=0) / D + eps)
    return r * rstd, rstd


@triton.jit
def _rms_norm_cast_fwd_kernel(r_ptr, g_ptr, n_ptr, n_rows, D, s_r, eps,
                              BLOCK: tl.constexpr, ROWS: tl.constexpr):
    """ROWS rows per program; BLOCK ≥ D, a power of two."""
    cols = tl.arange(0, BLOCK)
    cmask = cols < D
    g = tl.load(g_ptr + cols, mask=cmask, other=0.0).to(tl.float32)
    first = tl.program_id(0).to(tl.int64) * ROWS
    for i in range(ROWS):
        row = first + i
        if row < n_rows:
            rhat, _ = _row(r_ptr, s_r, row, cols, cmask, D, eps)
            tl.store(n_ptr + row * D + cols, rhat * g, mask=cmask)


@triton.jit
def _rms_norm_cast_bwd_kernel(r_ptr, g_ptr, dn_ptr, dr_ptr, dg_ptr, n_rows, D, s_r, s_dn, eps,
                              BLOCK: tl.constexpr, ROWS: tl.constexpr):
    """dr: (rows, d) float32 contiguous; dg: (programs, d) float32 partial sums."""
    cols = tl.arange(0, BLOCK)
    cmask = cols < D
    g = tl.load(g_ptr + cols, mask=cmask, other=0.0).to(tl.float32)
    dg = tl.zeros([BLOCK], dtype=tl.float32)
    first = tl.program_id(0).to(tl.int64) * ROWS
    for i in range(ROWS):
        row = first + i
        if row < n_rows:
            rhat, rstd = _row(r_ptr, s_r, row, cols, cmask, D, eps)
            dn = tl.load(dn_ptr + row * s_dn + cols, mask=cmask, other=0.0).to(tl.float32)
            drhat = dn * g
            dr = rstd * (drhat - rhat * (tl.sum(drhat * rhat, axis=0) / D))
            tl.store(dr_ptr + row * D + cols, dr, mask=cmask)
            dg += dn * rhat
    tl.store(dg_ptr + tl.program_id(0) * D + cols, dg, mask=cmask)
