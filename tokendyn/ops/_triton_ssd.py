"""Triton kernels of the fused SSD forward (tokendyn.ops.ssd_triton), one chunk of T steps per
program row; the notation of tokendyn.ops.ssd_chunked (a_t = Δ_t A_h ≤ 0, cum: the cumulative sum
of a inside a chunk, every decay exp(cum_t − cum_s) with t ≥ s, so never above 1).

- ``_ssd_chunk_state``: each chunk's state from a zero start, S_c[p, n] = Σ_s exp(cum_last − cum_s)
  Δ_s x_s[p] B_s[n], one (head_dim-block × state-block) tile per program, a matmul over the steps.
- ``_ssd_chunk_scan``: the chunk's outputs, y_t = exp(cum_t) C_t·H_c + Σ_{s≤t} (C_t·B_s)
  exp(cum_t − cum_s) Δ_s x_s (+ D x_t), one (step-block × head_dim-block) tile per program: the
  T×T block of the SSD matrix is formed tile by tile in registers and never written out.

Tensors are addressed by their strides; a step past the sequence's end is masked (loads give 0,
stores are skipped), so the sequence needs no padding.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _ssd_chunk_state(x_ptr, dt_ptr, cum_ptr, B_ptr, S_ptr,
                     L, T, n_chunks, hpg, P, N,
                     sxb, sxl, sxh, sxp, sdb, sdl, sdh, scb, sch, scc, sct,
                     sBb, sBl, sBg, sBn, sSb, sSc, sSh, sSp, sSn,
                     ADJ: tl.constexpr, BP: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    # ADJ: the adjoint of the entering state instead, G_c[p, n] = Σ_t exp(cum_t) dy_t[p] C_t[n]
    # (x_ptr: dy, B_ptr: C; dt unused)
    pid_pn = tl.program_id(0)
    pid_bc = tl.program_id(1)
    h = tl.program_id(2)
    b = pid_bc // n_chunks
    c = pid_bc % n_chunks
    g = h // hpg
    n_nb = tl.cdiv(N, BN)
    p_offs = (pid_pn // n_nb) * BP + tl.arange(0, BP)
    n_offs = (pid_pn % n_nb) * BN + tl.arange(0, BN)
    start = c * T
    t_len = tl.minimum(T, L - start)
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
        xs = tl.load(x_ptr + b * sxb + (start + s_offs)[:, None] * sxl + h * sxh + p_offs[None, :] * sxp,
                     mask=s_ok[:, None] & (p_offs[None, :] < P), other=0.0).to(tl.float32)   # (BK, BP)
        Bs = tl.load(B_ptr + b * sBb + (start + s_offs)[:, None] * sBl + g * sBg + n_offs[None, :] * sBn,
                     mask=s_ok[:, None] & (n_offs[None, :] < N), other=0.0).to(tl.float32)   # (BK, BN)
        acc += tl.dot(tl.trans(xs * w[:, None]), Bs, input_precision="ieee")
    tl.store(S_ptr + b * sSb + c * sSc + h * sSh + p_offs[:, None] * sSp + n_offs[None, :] * sSn, acc,
             mask=(p_offs[:, None] < P) & (n_offs[None, :] < N))


@triton.jit
def _ssd_chunk_scan(x_ptr, dt_ptr, cum_ptr, B_ptr, C_ptr, H_ptr, D_ptr, y_ptr,
                    L, T, n_chunks, hpg, P, N,
                    sxb, sxl, sxh, sxp, sdb, sdl, sdh, scb, sch, scc, sct,
                    sBb, sBl, sBg, sBn, sCb, sCl, sCg, sCn, sHb, sHc, sHh, sHp, sHn,
                    syb, syl, syh, syp,
                    HAS_D: tl.constexpr, LOWP: tl.constexpr, BM: tl.constexpr, BP: tl.constexpr,
                    BN: tl.constexpr, BK: tl.constexpr):
    pid_mp = tl.program_id(0)
    pid_bc = tl.program_id(1)
    h = tl.program_id(2)
    b = pid_bc // n_chunks
    c = pid_bc % n_chunks
    g = h // hpg
    n_pb = tl.cdiv(P, BP)
    mb = pid_mp // n_pb
    t_offs = mb * BM + tl.arange(0, BM)
    p_offs = (pid_mp % n_pb) * BP + tl.arange(0, BP)
    n_offs = tl.arange(0, BN)
    start = c * T
    t_len = tl.minimum(T, L - start)
    if mb * BM < t_len:
        t_ok = t_offs < t_len
        p_ok = p_offs < P
        n_ok = n_offs < N
        cum_base = cum_ptr + b * scb + h * sch + c * scc
        cum_t = tl.load(cum_base + t_offs * sct, mask=t_ok, other=0.0)
        C_in = tl.load(C_ptr + b * sCb + (start + t_offs)[:, None] * sCl + g * sCg + n_offs[None, :] * sCn,
                       mask=t_ok[:, None] & n_ok[None, :], other=0.0)                         # (BM, BN)
        Ct = C_in.to(tl.float32)
        # the state entering the chunk, carried to each step: exp(cum_t) C_t · H_c
        Hc = tl.load(H_ptr + b * sHb + c * sHc + h * sHh + n_offs[:, None] * sHn + p_offs[None, :] * sHp,
                     mask=n_ok[:, None] & p_ok[None, :], other=0.0)                           # (BN, BP)
        acc = tl.dot(Ct, Hc, input_precision="ieee") * tl.exp(cum_t)[:, None]
        # the chunk's own steps s ≤ t: (C_t·B_s) exp(cum_t − cum_s) Δ_s x_s
        hi = tl.minimum((mb + 1) * BM, t_len)
        for k in range(0, hi, BK):
            s_offs = k + tl.arange(0, BK)
            s_ok = s_offs < t_len
            B_in = tl.load(B_ptr + b * sBb + (start + s_offs)[:, None] * sBl + g * sBg + n_offs[None, :] * sBn,
                           mask=s_ok[:, None] & n_ok[None, :], other=0.0)                     # (BK, BN)
            cum_s = tl.load(cum_base + s_offs * sct, mask=s_ok, other=0.0)
            dt_s = tl.load(dt_ptr + b * sdb + (start + s_offs) * sdl + h * sdh, mask=s_ok, other=0.0)
            decay = tl.exp(tl.minimum(cum_t[:, None] - cum_s[None, :], 0.0))
            x_in = tl.load(x_ptr + b * sxb + (start + s_offs)[:, None] * sxl + h * sxh + p_offs[None, :] * sxp,
                           mask=s_ok[:, None] & p_ok[None, :], other=0.0)                     # (BK, BP)
            # half-precision inputs: both matmuls on their 16-bit values (exact products, float32
            # sums; the weights rounded to 16 bits for the second); float32 inputs: IEEE float32
            if LOWP:
                CB = tl.dot(C_in, tl.trans(B_in))
            else:
                CB = tl.dot(Ct, tl.trans(B_in.to(tl.float32)), input_precision="ieee")
            w = tl.where((t_offs[:, None] >= s_offs[None, :]) & s_ok[None, :], CB * decay * dt_s[None, :], 0.0)
            if LOWP:
                acc += tl.dot(w.to(x_in.dtype), x_in)
            else:
                acc += tl.dot(w, x_in.to(tl.float32), input_precision="ieee")
        x_rows = x_ptr + b * sxb + (start + t_offs)[:, None] * sxl + h * sxh + p_offs[None, :] * sxp
        if HAS_D:
            xt = tl.load(x_rows, mask=t_ok[:, None] & p_ok[None, :], other=0.0).to(tl.float32)
            acc += tl.load(D_ptr + h).to(tl.float32) * xt
        tl.store(y_ptr + b * syb + (start + t_offs)[:, None] * syl + h * syh + p_offs[None, :] * syp,
                 acc.to(y_ptr.dtype.element_ty), mask=t_ok[:, None] & p_ok[None, :])


@triton.jit
def _ssd_chunk_bwd(x_ptr, dt_ptr, cum_ptr, B_ptr, C_ptr, H_ptr, dS_ptr, D_ptr, dy_ptr,
                   dx_ptr, dB_ptr, dC_ptr, ddt_ptr, dcum_ptr, dD_ptr,
                   L, T, n_chunks, hpg, P, N,
                   sxb, sxl, sxh, sxp, sdb, sdl, sdh, scb, sch, scc, sct,
                   sBb, sBl, sBg, sBn, sCb, sCl, sCg, sCn, sHb, sHc, sHh, sHp, sHn,
                   sGb, sGc, sGh, sGp, sGn, syb, syl, syh, syp,
                   sxgb, sxgl, sxgh, sxgp, sBgb, sBgl, sBgh, sBgn, sCgb, sCgl, sCgh, sCgn,
                   sdgb, sdgl, sdgh,
                   HAS_D: tl.constexpr, LOWP: tl.constexpr, BS: tl.constexpr, BP: tl.constexpr,
                   BN: tl.constexpr):
    """The gradients of one block of BS steps of one chunk and head (module docstring of
    tokendyn.ops.ssd_triton, "Backward"): this block as the source s of every pair (t ≥ s) of the
    chunk, as the target t of the entering state, and its own state and D terms. dx and ddt of the
    block are written; dB and dC (per group, the heads of a group adding in) and dcum and dD take
    atomic additions."""
    j = tl.program_id(0)
    pid_bc = tl.program_id(1)
    h = tl.program_id(2)
    b = pid_bc // n_chunks
    c = pid_bc % n_chunks
    g = h // hpg
    start = c * T
    t_len = tl.minimum(T, L - start)
    if j * BS < t_len:
        p_offs = tl.arange(0, BP)
        n_offs = tl.arange(0, BN)
        p_ok = p_offs < P
        n_ok = n_offs < N
        s_offs = j * BS + tl.arange(0, BS)
        s_ok = s_offs < t_len
        cum_base = cum_ptr + b * scb + h * sch + c * scc
        dcum_base = dcum_ptr + b * scb + h * sch + c * scc
        cum_s = tl.load(cum_base + s_offs * sct, mask=s_ok, other=0.0)
        dt_s = tl.load(dt_ptr + b * sdb + (start + s_offs) * sdl + h * sdh, mask=s_ok, other=0.0)
        rows_s = start + s_offs
        x_in = tl.load(x_ptr + b * sxb + rows_s[:, None] * sxl + h * sxh + p_offs[None, :] * sxp,
                       mask=s_ok[:, None] & p_ok[None, :], other=0.0)                            # (BS, BP)
        B_in = tl.load(B_ptr + b * sBb + rows_s[:, None] * sBl + g * sBg + n_offs[None, :] * sBn,
                       mask=s_ok[:, None] & n_ok[None, :], other=0.0)                            # (BS, BN)
        x_s, B_s = x_in.to(tl.float32), B_in.to(tl.float32)
        C_s = tl.load(C_ptr + b * sCb + rows_s[:, None] * sCl + g * sCg + n_offs[None, :] * sCn,
                      mask=s_ok[:, None] & n_ok[None, :], other=0.0).to(tl.float32)             # (BS, BN)
        dy_s = tl.load(dy_ptr + b * syb + rows_s[:, None] * syl + h * syh + p_offs[None, :] * syp,
                       mask=s_ok[:, None] & p_ok[None, :], other=0.0).to(tl.float32)            # (BS, BP)
        dx = tl.zeros((BS, BP), dtype=tl.float32)
        dB = tl.zeros((BS, BN), dtype=tl.float32)
        ddt = tl.zeros((BS,), dtype=tl.float32)
        dcum_s = tl.zeros((BS,), dtype=tl.float32)
        # pairs t ≥ s of the chunk, this block as s
        for k in range(j * BS, t_len, BS):
            t_offs = k + tl.arange(0, BS)
            t_ok = t_offs < t_len
            rows_t = start + t_offs
            cum_t = tl.load(cum_base + t_offs * sct, mask=t_ok, other=0.0)
            C_in = tl.load(C_ptr + b * sCb + rows_t[:, None] * sCl + g * sCg + n_offs[None, :] * sCn,
                           mask=t_ok[:, None] & n_ok[None, :], other=0.0)                        # (BS, BN)
            dy_in = tl.load(dy_ptr + b * syb + rows_t[:, None] * syl + h * syh + p_offs[None, :] * syp,
                            mask=t_ok[:, None] & p_ok[None, :], other=0.0)                       # (BS, BP)
            pair = (t_offs[:, None] >= s_offs[None, :]) & t_ok[:, None] & s_ok[None, :]
            E = tl.where(pair, tl.exp(tl.minimum(cum_t[:, None] - cum_s[None, :], 0.0)), 0.0)  # (t, s)
            # 16-bit inputs: the five matmuls on 16-bit operands (C·B and dy·x exact, the weights
            # rounded to 16 bits), float32 sums; float32 inputs: IEEE float32
            if LOWP:
                CB = tl.dot(C_in, tl.trans(B_in))
                dW = tl.where(pair, tl.dot(dy_in, tl.trans(x_in)), 0.0)
            else:
                CB = tl.dot(C_in.to(tl.float32), tl.trans(B_s), input_precision="ieee")
                dW = tl.where(pair, tl.dot(dy_in.to(tl.float32), tl.trans(x_s), input_precision="ieee"), 0.0)
            W = CB * E * dt_s[None, :]
            dCB = dW * E * dt_s[None, :]
            if LOWP:
                dx += tl.dot(tl.trans(W.to(dy_in.dtype)), dy_in)
                dB += tl.dot(tl.trans(dCB.to(C_in.dtype)), C_in)
                dC_t = tl.dot(dCB.to(B_in.dtype), B_in)                                        # (t, BN)
            else:
                dx += tl.dot(tl.trans(W), dy_in.to(tl.float32), input_precision="ieee")
                dB += tl.dot(tl.trans(dCB), C_in.to(tl.float32), input_precision="ieee")
                dC_t = tl.dot(dCB, B_s, input_precision="ieee")                                # (t, BN)
            tl.atomic_add(dC_ptr + b * sCgb + rows_t[:, None] * sCgl + g * sCgh + n_offs[None, :] * sCgn, dC_t,
                          mask=t_ok[:, None] & n_ok[None, :])
            Z = dW * W
            tl.atomic_add(dcum_base + t_offs * sct, tl.sum(Z, axis=1), mask=t_ok)
            dcum_s -= tl.sum(Z, axis=0)
            ddt += tl.sum(dW * CB * E, axis=0)
        # this block as t of the entering state: y_t += exp(cum_t) H_c C_t
        Hc = tl.load(H_ptr + b * sHb + c * sHc + h * sHh + p_offs[:, None] * sHp + n_offs[None, :] * sHn,
                     mask=p_ok[:, None] & n_ok[None, :], other=0.0)                             # (BP, BN)
        e_s = tl.where(s_ok, tl.exp(cum_s), 0.0)
        dC_off = tl.dot(dy_s, Hc, input_precision="ieee") * e_s[:, None]                       # (BS, BN)
        tl.atomic_add(dC_ptr + b * sCgb + rows_s[:, None] * sCgl + g * sCgh + n_offs[None, :] * sCgn, dC_off,
                      mask=s_ok[:, None] & n_ok[None, :])
        dcum_s += tl.sum(dC_off * C_s, axis=1)
        # this block in the chunk's state: S_c = Σ_s v_s x_s ⊗ B_s, v_s = exp(cum_last − cum_s) Δ_s
        cum_last = tl.load(cum_base + (T - 1) * sct)
        ev = tl.where(s_ok, tl.exp(tl.minimum(cum_last - cum_s, 0.0)), 0.0)
        v = ev * dt_s
        dSc = tl.load(dS_ptr + b * sGb + c * sGc + h * sGh + p_offs[:, None] * sGp + n_offs[None, :] * sGn,
                      mask=p_ok[:, None] & n_ok[None, :], other=0.0)                            # (BP, BN)
        dSB = tl.dot(B_s, tl.trans(dSc), input_precision="ieee")                               # (BS, BP)
        dx += v[:, None] * dSB
        dB += v[:, None] * tl.dot(x_s, dSc, input_precision="ieee")
        dv = tl.sum(x_s * dSB, axis=1)
        ddt += dv * ev
        dcum_s -= dv * v
        tl.atomic_add(dcum_base + (T - 1) * sct, tl.sum(dv * v, axis=0))
        if HAS_D:
            Dh = tl.load(D_ptr + h).to(tl.float32)
            dx += Dh * dy_s
            tl.atomic_add(dD_ptr + h, tl.sum(tl.sum(dy_s * x_s, axis=1), axis=0))
        tl.atomic_add(dcum_base + s_offs * sct, dcum_s, mask=s_ok)
        tl.store(dx_ptr + b * sxgb + rows_s[:, None] * sxgl + h * sxgh + p_offs[None, :] * sxgp, dx,
                 mask=s_ok[:, None] & p_ok[None, :])
        tl.atomic_add(dB_ptr + b * sBgb + rows_s[:, None] * sBgl + g * sBgh + n_offs[None, :] * sBgn, dB,
                      mask=s_ok[:, None] & n_ok[None, :])
        tl.store(ddt_ptr + b * sdgb + rows_s * sdgl + h * sdgh, ddt, mask=s_ok)


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
            tl.atomic_add(ddecay_ptr + b * sdb + h * sdh + c * sdc, tl.sum(r * Hc, axis=0))
        d = tl.load(decay_ptr + b * sdb + h * sdh + c * sdc)
        r = d * r + tl.load(in_ptr + at, mask=ok, other=0.0)
    tl.store(last_ptr + bh * PN + offs, r, mask=ok)
