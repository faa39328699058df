"""Triton kernels of the fused SSD scan (tokendyn.ops.ssd_triton), one chunk of T steps per
program row; the notation of tokendyn.ops.ssd_chunked (a_t = Δ_t A_h ≤ 0, cum: the cumulative sum
of a inside a chunk, every decay exp(cum_t − cum_s) with t ≥ s, so never above 1).

- ``_ssd_chunk_state``: each chunk's state from a zero start, S_c[p, n] = Σ_s exp(cum_last − cum_s)
  Δ_s x_s[p] B_s[n], one (head_dim-block × state-block) tile per program, a matmul over the steps.
- ``_ssd_chunk_cb``: each chunk's C_t·B_s for s ≤ t, once per group (the heads of a group share
  it), (T × T) in float32, one (step-block × step-block) tile of the lower triangle per program.
- ``_ssd_chunk_scan``: the chunk's outputs, y_t = exp(cum_t) C_t·H_c + Σ_{s≤t} (C_t·B_s)
  exp(cum_t − cum_s) Δ_s x_s (+ D x_t), one (step-block × head_dim-block) tile per program: the
  head's T×T block of the SSD matrix is formed tile by tile in registers from the group's C·B and
  never written out.

Tensors are addressed by their strides; a step past the sequence's end is masked (loads give 0,
stores are skipped), so the sequence needs no padding.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _tile(base, rows, row_stride, cols, col_stride, rows_ok, cols_ok):
    """The (rows × cols) tile at ``base``, 0 where a row or column is out of range."""
    return tl.load(base + rows[:, None] * row_stride + cols[None, :] * col_stride,
                   mask=rows_ok[:, None] & cols_ok[None, :], other=0.0)


@triton.jit
def _chunk_head(n_chunks, hpg):
    """(batch row, chunk, head, group) of a program on the grid (·, batch × chunks, heads)."""
    bc = tl.program_id(1)
    h = tl.program_id(2)
    return bc // n_chunks, bc % n_chunks, h, h // hpg


@triton.jit
def _mm(a, b, like, LOWP: tl.constexpr):
    """a @ b with float32 sums. LOWP (16-bit inputs): both operands in ``like``'s 16-bit dtype, on
    the tensor cores (16-bit operands exact, float32 ones rounded to 16 bits); else both in float32,
    IEEE float32 products."""
    if LOWP:
        out = tl.dot(a.to(like.dtype), b.to(like.dtype))
    else:
        out = tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    return out


@triton.jit
def _pair_decay(cum_t, cum_s, t_offs, s_offs, t_ok, s_ok):
    """(the pairs t ≥ s of the chunk, exp(cum_t − cum_s) on them and 0 elsewhere), both (t × s)."""
    pair = (t_offs[:, None] >= s_offs[None, :]) & t_ok[:, None] & s_ok[None, :]
    return pair, tl.where(pair, tl.exp(tl.minimum(cum_t[:, None] - cum_s[None, :], 0.0)), 0.0)


@triton.jit
def _ssd_chunk_state(x_ptr, dt_ptr, cum_ptr, B_ptr, S_ptr,
                     L, T, n_chunks, hpg, P, N,
                     sxb, sxl, sxh, sxp, sdb, sdl, sdh, scb, sch, scc, sct,
                     sBb, sBl, sBg, sBn, sSb, sSc, sSh, sSp, sSn,
                     ADJ: tl.constexpr, LOWP: tl.constexpr, BP: tl.constexpr, BN: tl.constexpr,
                     BK: tl.constexpr):
    # ADJ: the adjoint of the entering state instead, G_c[p, n] = Σ_t exp(cum_t) dy_t[p] C_t[n]
    # (x_ptr: dy, B_ptr: C; dt unused). LOWP (16-bit x and B of one dtype): the weighted x rounded
    # to 16 bits meets B in a 16-bit matmul, float32 sums; else IEEE float32
    pid_pn = tl.program_id(0)
    b, c, h, g = _chunk_head(n_chunks, hpg)
    n_nb = tl.cdiv(N, BN)
    p_offs = (pid_pn // n_nb) * BP + tl.arange(0, BP)
    n_offs = (pid_pn % n_nb) * BN + tl.arange(0, BN)
    p_ok, n_ok = p_offs < P, n_offs < N
    start = c * T
    t_len = tl.minimum(T, L - start)
    x_rows = x_ptr + b * sxb + start * sxl + h * sxh             # the chunk's first row
    B_rows = B_ptr + b * sBb + start * sBl + g * sBg
    cum_base = cum_ptr + b * scb + h * sch + c * scc
    cum_last = tl.load(cum_base + (t_len - 1) * sct)
    acc = tl.zeros((BP, BN), dtype=tl.float32)
    for k in range(0, t_len, BK):
        s_offs = k + tl.arange(0, BK)
        s_ok = s_offs < t_len
        cum_s = tl.load(cum_base + s_offs * sct, mask=s_ok, other=0.0)
        if ADJ:
            w = tl.where(s_ok, tl.exp(cum_s), 0.0)                                 # (BK,)
        else:
            dt_s = tl.load(dt_ptr + b * sdb + (start + s_offs) * sdl + h * sdh, mask=s_ok, other=0.0)
            w = tl.exp(tl.minimum(cum_last - cum_s, 0.0)) * dt_s
        x_in = _tile(x_rows, s_offs, sxl, p_offs, sxp, s_ok, p_ok)                          # (BK, BP)
        B_in = _tile(B_rows, s_offs, sBl, n_offs, sBn, s_ok, n_ok)                          # (BK, BN)
        acc += _mm(tl.trans(x_in.to(tl.float32) * w[:, None]), B_in, x_in, LOWP)
    tl.store(S_ptr + b * sSb + c * sSc + h * sSh + p_offs[:, None] * sSp + n_offs[None, :] * sSn, acc,
             mask=p_ok[:, None] & n_ok[None, :])


@triton.jit
def _cb_tile(CB_base, t_offs, s_offs, sXt, sXs, t_ok, s_ok):
    """The (t × s) tile of a chunk's C·B (float32), 0 where s > t or a step is past the chunk."""
    pair = t_ok[:, None] & s_ok[None, :] & (t_offs[:, None] >= s_offs[None, :])
    return tl.load(CB_base + t_offs[:, None] * sXt + s_offs[None, :] * sXs, mask=pair, other=0.0)


@triton.jit
def _ssd_chunk_cb(C_ptr, B_ptr, CB_ptr, L, T, n_chunks, N,
                  sCb, sCl, sCg, sCn, sBb, sBl, sBg, sBn, sXb, sXc, sXg, sXt, sXs,
                  LOWP: tl.constexpr, BM: tl.constexpr, BK: tl.constexpr, BN: tl.constexpr):
    # grid (·, batch × chunks, groups); a tile wholly above the diagonal (s > t) is never read
    pid = tl.program_id(0)
    n_kb = tl.cdiv(T, BK)
    mb, kb = pid // n_kb, pid % n_kb
    bc = tl.program_id(1)
    g = tl.program_id(2)
    b, c = bc // n_chunks, bc % n_chunks
    start = c * T
    t_len = tl.minimum(T, L - start)
    if (kb * BK < (mb + 1) * BM) & (mb * BM < t_len) & (kb * BK < t_len):
        t_offs = mb * BM + tl.arange(0, BM)
        s_offs = kb * BK + tl.arange(0, BK)
        t_ok, s_ok = t_offs < t_len, s_offs < t_len
        C_rows = C_ptr + b * sCb + start * sCl + g * sCg
        B_rows = B_ptr + b * sBb + start * sBl + g * sBg
        acc = tl.zeros((BM, BK), dtype=tl.float32)
        for n0 in range(0, N, BN):
            n_offs = n0 + tl.arange(0, BN)
            n_ok = n_offs < N
            Ct = _tile(C_rows, t_offs, sCl, n_offs, sCn, t_ok, n_ok)                            # (BM, BN)
            Bs = _tile(B_rows, s_offs, sBl, n_offs, sBn, s_ok, n_ok)                            # (BK, BN)
            acc += _mm(Ct, tl.trans(Bs), Ct, LOWP)
        tl.store(CB_ptr + b * sXb + c * sXc + g * sXg + t_offs[:, None] * sXt + s_offs[None, :] * sXs, acc,
                 mask=t_ok[:, None] & s_ok[None, :])


@triton.jit
def _ssd_chunk_scan(x_ptr, dt_ptr, cum_ptr, CB_ptr, C_ptr, H_ptr, D_ptr, y_ptr,
                    L, T, n_chunks, hpg, P, N,
                    sxb, sxl, sxh, sxp, sdb, sdl, sdh, scb, sch, scc, sct,
                    sXb, sXc, sXg, sXt, sXs, sCb, sCl, sCg, sCn, sHb, sHc, sHh, sHp, sHn,
                    syb, syl, syh, syp,
                    HAS_D: tl.constexpr, LOWP: tl.constexpr, BM: tl.constexpr, BP: tl.constexpr,
                    BN: tl.constexpr, BK: tl.constexpr):
    pid_mp = tl.program_id(0)
    b, c, h, g = _chunk_head(n_chunks, hpg)
    n_pb = tl.cdiv(P, BP)
    mb = pid_mp // n_pb
    t_offs = mb * BM + tl.arange(0, BM)
    p_offs = (pid_mp % n_pb) * BP + tl.arange(0, BP)
    start = c * T
    t_len = tl.minimum(T, L - start)
    if mb * BM < t_len:
        t_ok, p_ok = t_offs < t_len, p_offs < P
        x_rows = x_ptr + b * sxb + start * sxl + h * sxh         # the chunk's first row
        C_rows = C_ptr + b * sCb + start * sCl + g * sCg
        cum_base = cum_ptr + b * scb + h * sch + c * scc
        cum_t = tl.load(cum_base + t_offs * sct, mask=t_ok, other=0.0)
        # the state entering the chunk, carried to each step: exp(cum_t) C_t · H_c, over blocks of
        # BN states (16-bit inputs: the float32 state rounded to 16 bits meets C in a 16-bit matmul)
        acc = tl.zeros((BM, BP), dtype=tl.float32)
        for n0 in range(0, N, BN):
            n_offs = n0 + tl.arange(0, BN)
            n_ok = n_offs < N
            C_in = _tile(C_rows, t_offs, sCl, n_offs, sCn, t_ok, n_ok)                                # (BM, BN)
            Hc = _tile(H_ptr + b * sHb + c * sHc + h * sHh, n_offs, sHn, p_offs, sHp, n_ok, p_ok)    # (BN, BP)
            acc += _mm(C_in, Hc, C_in, LOWP)
        acc = acc * tl.exp(cum_t)[:, None]
        # the chunk's own steps s ≤ t: (C_t·B_s) exp(cum_t − cum_s) Δ_s x_s, C·B read from the group's
        CB_base = CB_ptr + b * sXb + c * sXc + g * sXg
        hi = tl.minimum((mb + 1) * BM, t_len)
        for k in range(0, hi, BK):
            s_offs = k + tl.arange(0, BK)
            s_ok = s_offs < t_len
            CB = _cb_tile(CB_base, t_offs, s_offs, sXt, sXs, t_ok, s_ok)                              # (BM, BK)
            cum_s = tl.load(cum_base + s_offs * sct, mask=s_ok, other=0.0)
            dt_s = tl.load(dt_ptr + b * sdb + (start + s_offs) * sdl + h * sdh, mask=s_ok, other=0.0)
            w = CB * tl.exp(tl.minimum(cum_t[:, None] - cum_s[None, :], 0.0)) * dt_s[None, :]
            x_in = _tile(x_rows, s_offs, sxl, p_offs, sxp, s_ok, p_ok)                               # (BK, BP)
            acc += _mm(w, x_in, x_in, LOWP)              # 16-bit inputs: the weights rounded to 16 bits
        if HAS_D:
            x_t = _tile(x_rows, t_offs, sxl, p_offs, sxp, t_ok, p_ok).to(tl.float32)
            acc += tl.load(D_ptr + h).to(tl.float32) * x_t
        tl.store(y_ptr + b * syb + (start + t_offs)[:, None] * syl + h * syh + p_offs[None, :] * syp,
                 acc.to(y_ptr.dtype.element_ty), mask=t_ok[:, None] & p_ok[None, :])


@triton.jit
def _bwd_pairs(C_rows, dy_rows, dC_rows, CB_base, cum_base, dcum_base, sct, sCl, sCn, syl, syp, sCgl, sCgn,
               sXt, sXs,
               x_in, B_in, cum_s, dt_s, s_offs, s_ok, p_offs, p_ok, n_offs, n_ok, first, t_len,
               LOWP: tl.constexpr, DC: tl.constexpr, BS: tl.constexpr, BP: tl.constexpr, BN: tl.constexpr):
    """The pairs t ≥ s of a chunk with a block of steps as the sources s (x_in, B_in: their x and
    B tiles as loaded; *_rows: the chunk's first row of C, dy and dC):
    returns the block's dx, dB, dΔ and dcum from them, and adds the targets' dcum in place, and
    with DC their dC (else :func:`_ssd_chunk_bwd_dc` computes dC)."""
    dx = tl.zeros((BS, BP), dtype=tl.float32)
    dB = tl.zeros((BS, BN), dtype=tl.float32)
    ddt = tl.zeros((BS,), dtype=tl.float32)
    dcum_s = tl.zeros((BS,), dtype=tl.float32)
    for k in range(first, t_len, BS):
        t_offs = k + tl.arange(0, BS)
        t_ok = t_offs < t_len
        cum_t = tl.load(cum_base + t_offs * sct, mask=t_ok, other=0.0)
        C_in = _tile(C_rows, t_offs, sCl, n_offs, sCn, t_ok, n_ok)                          # (BS, BN)
        dy_in = _tile(dy_rows, t_offs, syl, p_offs, syp, t_ok, p_ok)                        # (BS, BP)
        pair, E = _pair_decay(cum_t, cum_s, t_offs, s_offs, t_ok, s_ok)                       # (t, s)
        CB = _cb_tile(CB_base, t_offs, s_offs, sXt, sXs, t_ok, s_ok)                          # (t, s)
        # 16-bit inputs: dy·x exact, the weights rounded to 16 bits before they meet dy, C or B
        dW = tl.where(pair, _mm(dy_in, tl.trans(x_in), x_in, LOWP), 0.0)
        W = CB * E * dt_s[None, :]
        dCB = dW * E * dt_s[None, :]
        dx += _mm(tl.trans(W), dy_in, dy_in, LOWP)
        dB += _mm(tl.trans(dCB), C_in, C_in, LOWP)
        if DC:
            dC_t = _mm(dCB, B_in, B_in, LOWP)                                                  # (t, BN)
            tl.atomic_add(dC_rows + t_offs[:, None] * sCgl + n_offs[None, :] * sCgn, dC_t,
                          mask=t_ok[:, None] & n_ok[None, :], sem="relaxed")
        Z = dW * W
        tl.atomic_add(dcum_base + t_offs * sct, tl.sum(Z, axis=1), mask=t_ok, sem="relaxed")
        dcum_s -= tl.sum(Z, axis=0)
        ddt += tl.sum(dW * CB * E, axis=0)
    return dx, dB, ddt, dcum_s


@triton.jit
def _bwd_chunk_state(x_in, B_in, dSc, cum_s, dt_s, s_ok, cum_last_ptr, dcum_last_ptr, dx, dB, ddt, dcum,
                     LOWP: tl.constexpr):
    """A block of steps in its chunk's state S_c = Σ_s v_s x_s ⊗ B_s, v_s = exp(cum_last − cum_s) Δ_s,
    given dS_c (P × N): returns the block's dx, dB, dΔ and dcum with its share added, and adds
    cum_last's share in place. LOWP:
    dS_c rounded to 16 bits meets the 16-bit x and B tiles (x_in, B_in); else IEEE float32."""
    ev = tl.where(s_ok, tl.exp(tl.minimum(tl.load(cum_last_ptr) - cum_s, 0.0)), 0.0)
    v = ev * dt_s
    dSB = _mm(B_in, tl.trans(dSc), x_in, LOWP)                                                   # (BS, BP)
    dv = tl.sum(x_in.to(tl.float32) * dSB, axis=1)
    tl.atomic_add(dcum_last_ptr, tl.sum(dv * v, axis=0), sem="relaxed")
    return dx + v[:, None] * dSB, dB + v[:, None] * _mm(x_in, dSc, x_in, LOWP), ddt + dv * ev, dcum - dv * v


@triton.jit
def _step_block(j, c, T, L, P, N, BS: tl.constexpr, BP: tl.constexpr, BN: tl.constexpr):
    """Block j of BS steps of chunk c: (chunk start, chunk length, the block's steps and mask,
    head_dim columns and mask, state columns and mask); the block is empty where j·BS ≥ length."""
    start = c * T
    t_len = tl.minimum(T, L - start)
    offs = j * BS + tl.arange(0, BS)
    p_offs, n_offs = tl.arange(0, BP), tl.arange(0, BN)
    return start, t_len, offs, offs < t_len, p_offs, p_offs < P, n_offs, n_offs < N


@triton.jit
def _ssd_chunk_bwd(x_ptr, dt_ptr, cum_ptr, B_ptr, C_ptr, CB_ptr, H_ptr, dS_ptr, D_ptr, dy_ptr,
                   dx_ptr, dB_ptr, dC_ptr, ddt_ptr, dcum_ptr, dD_ptr,
                   L, T, n_chunks, hpg, P, N,
                   sxb, sxl, sxh, sxp, sdb, sdl, sdh, scb, sch, scc, sct,
                   sBb, sBl, sBg, sBn, sCb, sCl, sCg, sCn, sXb, sXc, sXg, sXt, sXs, sHb, sHc, sHh, sHp, sHn,
                   sGb, sGc, sGh, sGp, sGn, syb, syl, syh, syp,
                   sxgb, sxgl, sxgh, sxgp, sBgb, sBgl, sBgh, sBgn, sCgb, sCgl, sCgh, sCgn,
                   sdgb, sdgl, sdgh,
                   HAS_D: tl.constexpr, LOWP: tl.constexpr, DC: tl.constexpr, BS: tl.constexpr,
                   BP: tl.constexpr, BN: tl.constexpr):
    """The gradients of one block of BS steps of one chunk and head (module docstring of
    tokendyn.ops.ssd_triton, "Backward"): this block as the source s of every pair (t ≥ s) of the
    chunk (:func:`_bwd_pairs`), as the target t of the entering state, and its own state and D
    terms. dx and ddt of the block are written; dB (per group, the heads of a group adding in),
    dcum and dD take atomic additions, and so does dC with DC (else :func:`_ssd_chunk_bwd_dc`
    computes it)."""
    j = tl.program_id(0)
    b, c, h, g = _chunk_head(n_chunks, hpg)
    start, t_len, s_offs, s_ok, p_offs, p_ok, n_offs, n_ok = _step_block(j, c, T, L, P, N, BS, BP, BN)
    if j * BS < t_len:
        # the chunk's first row of each tensor, for this batch row, head and group
        x_rows = x_ptr + b * sxb + start * sxl + h * sxh
        B_rows = B_ptr + b * sBb + start * sBl + g * sBg
        C_rows = C_ptr + b * sCb + start * sCl + g * sCg
        dy_rows = dy_ptr + b * syb + start * syl + h * syh
        dC_rows = dC_ptr + b * sCgb + start * sCgl + g * sCgh
        cum_base = cum_ptr + b * scb + h * sch + c * scc
        dcum_base = dcum_ptr + b * scb + h * sch + c * scc
        cum_s = tl.load(cum_base + s_offs * sct, mask=s_ok, other=0.0)
        dt_s = tl.load(dt_ptr + b * sdb + (start + s_offs) * sdl + h * sdh, mask=s_ok, other=0.0)
        x_in = _tile(x_rows, s_offs, sxl, p_offs, sxp, s_ok, p_ok)                             # (BS, BP)
        B_in = _tile(B_rows, s_offs, sBl, n_offs, sBn, s_ok, n_ok)                             # (BS, BN)
        C_s = _tile(C_rows, s_offs, sCl, n_offs, sCn, s_ok, n_ok).to(tl.float32)              # (BS, BN)
        dy_si = _tile(dy_rows, s_offs, syl, p_offs, syp, s_ok, p_ok)                          # (BS, BP)
        CB_base = CB_ptr + b * sXb + c * sXc + g * sXg
        dx, dB, ddt, dcum_s = _bwd_pairs(C_rows, dy_rows, dC_rows, CB_base, cum_base, dcum_base, sct, sCl, sCn,
                                         syl, syp, sCgl, sCgn, sXt, sXs, x_in, B_in, cum_s, dt_s, s_offs, s_ok,
                                         p_offs, p_ok, n_offs, n_ok, j * BS, t_len, LOWP, DC, BS, BP, BN)
        # this block as t of the entering state: y_t += exp(cum_t) H_c C_t
        Hc = _tile(H_ptr + b * sHb + c * sHc + h * sHh, p_offs, sHp, n_offs, sHn, p_ok, n_ok)  # (BP, BN)
        dC_off = _mm(dy_si, Hc, dy_si, LOWP) * tl.where(s_ok, tl.exp(cum_s), 0.0)[:, None]
        if DC:
            tl.atomic_add(dC_rows + s_offs[:, None] * sCgl + n_offs[None, :] * sCgn, dC_off,
                          mask=s_ok[:, None] & n_ok[None, :], sem="relaxed")
        dcum_s += tl.sum(dC_off * C_s, axis=1)
        # this block in the chunk's state
        dSc = _tile(dS_ptr + b * sGb + c * sGc + h * sGh, p_offs, sGp, n_offs, sGn, p_ok, n_ok)  # (BP, BN)
        dx, dB, ddt, dcum_s = _bwd_chunk_state(x_in, B_in, dSc, cum_s, dt_s, s_ok, cum_base + (T - 1) * sct,
                                               dcum_base + (T - 1) * sct, dx, dB, ddt, dcum_s, LOWP)
        if HAS_D:
            dx += tl.load(D_ptr + h).to(tl.float32) * dy_si.to(tl.float32)
            tl.atomic_add(dD_ptr + h, tl.sum(tl.sum(dy_si.to(tl.float32) * x_in.to(tl.float32), axis=1), axis=0),
                          sem="relaxed")
        tl.atomic_add(dcum_base + s_offs * sct, dcum_s, mask=s_ok, sem="relaxed")
        rows_s = start + s_offs
        tl.store(dx_ptr + b * sxgb + rows_s[:, None] * sxgl + h * sxgh + p_offs[None, :] * sxgp, dx,
                 mask=s_ok[:, None] & p_ok[None, :])
        tl.atomic_add(dB_ptr + b * sBgb + rows_s[:, None] * sBgl + g * sBgh + n_offs[None, :] * sBgn, dB,
                      mask=s_ok[:, None] & n_ok[None, :], sem="relaxed")
        tl.store(ddt_ptr + b * sdgb + rows_s * sdgl + h * sdgh, ddt, mask=s_ok)


@triton.jit
def _ssd_chunk_bwd_dc(x_ptr, dt_ptr, cum_ptr, B_ptr, H_ptr, dy_ptr, dC_ptr,
                      L, T, n_chunks, hpg, P, N,
                      sxb, sxl, sxh, sxp, sdb, sdl, sdh, scb, sch, scc, sct,
                      sBb, sBl, sBg, sBn, sHb, sHc, sHh, sHp, sHn, syb, syl, syh, syp, sCgb, sCgl, sCgh, sCgn,
                      LOWP: tl.constexpr, BS: tl.constexpr, BP: tl.constexpr, BN: tl.constexpr):
    """dC of one block of BS steps of one chunk and group, as the targets t: over the heads of the
    group, Σ_{s≤t} (dy_t·x_s) exp(cum_t − cum_s) Δ_s B_s + exp(cum_t) dy_t H_c, summed in registers
    and stored once (no atomic additions). Grid (blocks of T, batch × chunks, groups)."""
    j = tl.program_id(0)
    bc = tl.program_id(1)
    g = tl.program_id(2)
    b, c = bc // n_chunks, bc % n_chunks
    start, t_len, t_offs, t_ok, p_offs, p_ok, n_offs, n_ok = _step_block(j, c, T, L, P, N, BS, BP, BN)
    if j * BS < t_len:
        B_rows = B_ptr + b * sBb + start * sBl + g * sBg
        acc = tl.zeros((BS, BN), dtype=tl.float32)
        for hh in range(0, hpg):
            h = g * hpg + hh
            x_rows = x_ptr + b * sxb + start * sxl + h * sxh
            cum_base = cum_ptr + b * scb + h * sch + c * scc
            cum_t = tl.load(cum_base + t_offs * sct, mask=t_ok, other=0.0)
            dy_in = _tile(dy_ptr + b * syb + start * syl + h * syh, t_offs, syl, p_offs, syp, t_ok, p_ok)  # (BS, BP)
            # the entering state: exp(cum_t) dy_t H_c (float32)
            Hc = _tile(H_ptr + b * sHb + c * sHc + h * sHh, p_offs, sHp, n_offs, sHn, p_ok, n_ok)          # (BP, BN)
            acc += _mm(dy_in, Hc, dy_in, LOWP) * tl.exp(cum_t)[:, None]
            for k in range(0, (j + 1) * BS, BS):
                s_offs = k + tl.arange(0, BS)
                s_ok = s_offs < t_len
                cum_s = tl.load(cum_base + s_offs * sct, mask=s_ok, other=0.0)
                dt_s = tl.load(dt_ptr + b * sdb + (start + s_offs) * sdl + h * sdh, mask=s_ok, other=0.0)
                x_in = _tile(x_rows, s_offs, sxl, p_offs, sxp, s_ok, p_ok)                                # (BS, BP)
                B_in = _tile(B_rows, s_offs, sBl, n_offs, sBn, s_ok, n_ok)                                # (BS, BN)
                E = _pair_decay(cum_t, cum_s, t_offs, s_offs, t_ok, s_ok)[1]
                dCB = _mm(dy_in, tl.trans(x_in), x_in, LOWP) * E * dt_s[None, :]
                acc += _mm(dCB, B_in, B_in, LOWP)
        tl.store(dC_ptr + b * sCgb + (start + t_offs)[:, None] * sCgl + g * sCgh + n_offs[None, :] * sCgn, acc,
                 mask=t_ok[:, None] & n_ok[None, :])


@triton.jit
def _ssd_chunk_recurrence(in_ptr, decay_ptr, first_ptr, out_ptr, last_ptr, H_ptr, ddecay_ptr, n_chunks, heads, PN,
                          sSb, sSc, sSh, sdb, sdh, sdc, BLOCK: tl.constexpr, HAS_FIRST: tl.constexpr,
                          REVERSE: tl.constexpr):
    """r ← d_c r + in_c over the chunks, for one block of the (head_dim × state) entries of one
    batch row and head, storing r before each chunk in out_c and the last r in ``last``; r starts
    at ``first`` (zeros without HAS_FIRST). Forward: in = S (each chunk's own state), out = H (the
    entering states), first = h0, last = S_L. REVERSE: the chunks backwards, in = G (the entering
    states' adjoints), out = dS, first = dS_L, last = dh0, and d(d_c) += ⟨r, H_c⟩ (an atomic
    addition per block). in, out, H: (b, c, h, P·N) with the P·N entries contiguous; decay,
    ddecay: (b, h, c); first, last: (b, h, P·N)."""
    bh = tl.program_id(0)
    b = bh // heads
    h = bh % heads
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < PN
    if HAS_FIRST:
        r = tl.load(first_ptr + bh * PN + offs, mask=ok, other=0.0)
    else:
        r = tl.zeros((BLOCK,), dtype=tl.float32)
    for i in range(0, n_chunks):
        c = n_chunks - 1 - i if REVERSE else i
        at = b * sSb + c * sSc + h * sSh + offs
        tl.store(out_ptr + at, r, mask=ok)
        if REVERSE:
            Hc = tl.load(H_ptr + at, mask=ok, other=0.0)
            tl.atomic_add(ddecay_ptr + b * sdb + h * sdh + c * sdc, tl.sum(r * Hc, axis=0), sem="relaxed")
        d = tl.load(decay_ptr + b * sdb + h * sdh + c * sdc)
        r = d * r + tl.load(in_ptr + at, mask=ok, other=0.0)
    tl.store(last_ptr + bh * PN + offs, r, mask=ok)
