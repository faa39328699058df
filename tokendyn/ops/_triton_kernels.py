"""Triton kernels of the fused selective scan (forward, backward, and their segment summaries).

Layout (THEORY.md section 1; same as ``selective_scan``): u, delta, z, out: (batch, dim, length)
with unit stride along length; A: (dim, state); B, C: (batch, state, length); D, delta_bias: (dim,).

One program owns one batch element, a block of ``BD`` channels and one *segment* of the
length (a run of whole chunks; one segment spans the whole length unless the launch splits
it), and walks its segment in chunks of ``T`` steps. Inside a chunk it loops over the states
n; for each n the recurrence h_t = a_t h_{t-1} + b_t, a_t = exp(Δ_t A_n), b_t = Δ_t B_{n,t} u_t,
is an affine map per step, so the chunk is one ``tl.associative_scan`` with the combine
(a1, b1), (a2, b2) -> (a1 a2, a2 b1 + b2). The state entering a chunk is folded into b at the
chunk's first step, so no separate product of the a's is needed.

Carries between chunks go through small global buffers (the forward's per-chunk end states,
the backward's state adjoint): the one thread that holds a chunk's last (first) step stores
it, and the block barrier (``tl.debug_barrier``) at the start of the next chunk makes those
writes visible to every thread of the program before they are read. This avoids a
reduction across the chunk per state. Per-state loads are issued one state ahead.

Segments (the sequence split across programs, for grids short of work). The recurrence is
affine, so a segment acts on the state entering it as h_end = G h_in + h_end⁰ with
G_n = Π a_t = exp(A_n ΣΔ) over the segment (no scan: one sum of Δ) and h_end⁰ the segment's
end state from a zero start. A summary kernel computes, per segment, ΣΔ and
h_end⁰_n = Σ_t exp(A_n Σ_{τ>t} Δ_τ) Δ_t B_{n,t} u_t: per chunk one reverse cumulative sum of Δ
shared by all states, then per state one exp and one sum over the chunk (cheaper than the
scan: no second operand, no output). The forward kernel's prologue then folds the summaries of
the segments before its own into its carry-in, h_in ← G_j h_in + h_end⁰_j for j = 0 … s−1
(a handful of (BD, state) tiles), and scans its segment from there, writing out and the
chunk end states exactly as without segments. The backward does the same in reverse for the
state adjoint (below): summaries of each segment's adjoint at its first step from a zero end
condition, Σ_t exp(A_n Σ_{p<τ≤t} Δ_τ) dy_t C_{n,t}, and its decay exp(A_n Σ_{p<τ≤q} Δ_τ) (Δ
shifted by one step, as in the adjoint's coefficient a_{t+1}), folded from the last segment
down to the program's own.

Backward (per chunk, from the last to the first): the forward states of the chunk are
recomputed from the saved state at the chunk's start; the state adjoint
s_t = dy_t C_t + a_{t+1} s_{t+1} is a reverse scan of the same affine form with the
coefficient a_{t+1} (loaded from delta shifted by one step). With q_t = s_t (h_t - b_t)
(= s_t a_t h_{t-1}, no division):
    dΔ_t = Σ_n A_n q_t + u_t Σ_n B_{n,t} s_t,    du_t = Δ_t Σ_n B_{n,t} s_t + D dy_t,
    dA_n = Σ_t Δ_t q_t,    dB_{n,t} = Σ_d s_t Δ_t u_t,    dC_{n,t} = Σ_d dy_t h_t.
dB and dC are sums over channels, and dA over the length, so programs add their partial sums
atomically; dD and dbias are stored per (segment, batch, channel) and summed by the caller.
"""

from __future__ import annotations

import triton
import triton.language as tl

LOG2E = 1.4426950408889634


@triton.jit
def _affine_combine(a1, b1, a2, b2):
    # (a1, b1) is applied first: h -> a2 (a1 h + b1) + b2.
    return a1 * a2, a2 * b1 + b2


@triton.jit
def _softplus(x):
    # torch.nn.functional.softplus with threshold 20; exp(x) for very negative x keeps the
    # tiny value that log(1 + exp(x)) would round to 0 in float32.
    return tl.where(x > 20.0, x, tl.where(x < -15.0, tl.exp(x), tl.log(1.0 + tl.exp(x))))


@triton.jit
def _program_rows(L, DIM, su_b, su_d, sdl_b, sdl_d, sz_b, sz_d, BD: tl.constexpr):
    """This program's batch element and BD channels: (pid_b int64, offs_d, dmask, d64) and the
    row bases of u, delta, z (strided inputs) and of the contiguous (batch, dim, length) outputs."""
    pid_d = tl.program_id(0)
    pid_b = tl.program_id(1).to(tl.int64)
    offs_d = pid_d * BD + tl.arange(0, BD)
    dmask = offs_d < DIM
    d64 = offs_d.to(tl.int64)
    row_u = pid_b * su_b + d64 * su_d
    row_dl = pid_b * sdl_b + d64 * sdl_d
    row_z = pid_b * sz_b + d64 * sz_d
    row_o = (pid_b * DIM + d64) * L
    return pid_b, offs_d, dmask, d64, row_u, row_dl, row_z, row_o


@triton.jit
def _segment_span(seg, CPS, n_chunks):
    """Chunks [k0, k1) of segment ``seg`` (CPS chunks each, the last one possibly fewer)."""
    k0 = seg * CPS
    k1 = tl.minimum(k0 + CPS, n_chunks)
    return k0, k1


@triton.jit
def _channel_params(D_ptr, bias_ptr, offs_d, dmask, HAS_D: tl.constexpr, HAS_BIAS: tl.constexpr,
                    BD: tl.constexpr):
    """D and delta_bias of the program's channels as float32 (zeros where absent)."""
    Dv = tl.zeros([BD], dtype=tl.float32)
    bias = tl.zeros([BD], dtype=tl.float32)
    if HAS_D:
        Dv = tl.load(D_ptr + offs_d, mask=dmask, other=0.0).to(tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_d, mask=dmask, other=0.0).to(tl.float32)
    return Dv, bias


@triton.jit
def _delta_tile(delta_ptr, row_dl, t, m2, bias, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr):
    """Δ at steps t (BD, T) as float32: (raw = delta + bias, Δ = softplus(raw) or raw), Δ = 0
    outside m2. Past the end Δ = 0 makes a = 1, b = 0: the state passes through unchanged."""
    raw = tl.load(delta_ptr + row_dl[:, None] + t[None, :], mask=m2, other=0.0).to(tl.float32)
    if HAS_BIAS:
        raw = raw + bias[:, None]
    if SOFTPLUS:
        dd = _softplus(raw)
    else:
        dd = raw
    return raw, tl.where(m2, dd, 0.0)


@triton.jit
def _gated_dout(dout_ptr, z_ptr, row_g, row_z, t, m2, HAS_Z: tl.constexpr):
    """The upstream gradient g, z, sigmoid(z) and dy = g z sigmoid(z) (g itself without z),
    each (BD, T) float32, zero outside m2."""
    g = tl.load(dout_ptr + row_g[:, None] + t[None, :], mask=m2, other=0.0).to(tl.float32)
    if HAS_Z:
        zz = tl.load(z_ptr + row_z[:, None] + t[None, :], mask=m2, other=0.0).to(tl.float32)
        sz = tl.sigmoid(zz)
        dy = g * zz * sz
    else:
        zz = g
        sz = g
        dy = g
    return g, zz, sz, dy


@triton.jit
def _state_loads(n, NSTATE, pA, pB, pC, pS, sA_n, sB_n, sC_n, dmask, tmask, kprev, offs_d, offs_t):
    """State n's A (BD,), B and C (T,) as float32 and the carry h0 (BD,) entering the chunk;
    zeros when n >= NSTATE (the loads one state past the last are issued and masked)."""
    vd = (offs_d * 0 + n) < NSTATE
    vt = (offs_t * 0 + n) < NSTATE
    an = tl.load(pA + n * sA_n, mask=dmask & vd, other=0.0).to(tl.float32)
    bn = tl.load(pB + n * sB_n, mask=tmask & vt, other=0.0).to(tl.float32)
    cn = tl.load(pC + n * sC_n, mask=tmask & vt, other=0.0).to(tl.float32)
    h0 = tl.load(pS + n, mask=kprev & vd, other=0.0)
    return an, bn, cn, h0


@triton.jit
def _state_tile_A2(A_ptr, sA_d, sA_n, offs_d, dmask, NSTATE, NP: tl.constexpr):
    """A (BD, NP) times log2(e) (zeros past NSTATE), the state axis index and its mask."""
    offs_n = tl.arange(0, NP)
    m_dn = dmask[:, None] & (offs_n < NSTATE)[None, :]
    a2 = tl.load(A_ptr + offs_d[:, None] * sA_d + offs_n[None, :] * sA_n, mask=m_dn, other=0.0)
    return a2.to(tl.float32) * 1.4426950408889634, offs_n, m_dn


@triton.jit
def _segment_carry(A_ptr, sA_d, sA_n, sum_ptr, dsum_ptr, dst_ptr, row_seg, seg, start, step, count,
                   offs_d, dmask, NSTATE, BD: tl.constexpr, NP: tl.constexpr):
    """Fold the summaries of segments start, start + step, ... (count of them) into the carry
    entering segment ``seg``: c <- exp(A ΣΔ_j) c + sum_j, from c = 0; store it (BD, state) at
    dst_ptr + (row_seg + seg) * NSTATE. row_seg: (BD,) the (batch, channel) row's first segment
    index in the (batch, dim, segments[, state]) summary buffers."""
    a2, offs_n, m_dn = _state_tile_A2(A_ptr, sA_d, sA_n, offs_d, dmask, NSTATE, NP)
    c = tl.zeros([BD, NP], dtype=tl.float32)
    for i in range(0, count):
        j = start + step * i
        dj = tl.load(dsum_ptr + row_seg + j, mask=dmask, other=0.0)
        hj = tl.load(sum_ptr + (row_seg + j)[:, None] * NSTATE + offs_n[None, :], mask=m_dn, other=0.0)
        c = c * tl.exp2(a2 * dj[:, None]) + hj
    tl.store(dst_ptr + (row_seg + seg)[:, None] * NSTATE + offs_n[None, :], c, mask=m_dn)


@triton.jit
def _scan_fwd_summary_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, bias_ptr, hsum_ptr, dsum_ptr,
    L, DIM, NSTATE, n_chunks, NSEG, CPS,
    su_b, su_d, sdl_b, sdl_d, sB_b, sB_n, sA_d, sA_n,
    HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    BD: tl.constexpr, T: tl.constexpr, NP: tl.constexpr,
):
    """Per segment s (program_id(2); every segment but the last): hsum (batch, dim, segments,
    state) = the segment's end state from a zero start; dsum (batch, dim, segments) = ΣΔ over
    the segment. Both float32."""
    pid_b, offs_d, dmask, d64, row_u, row_dl, row_z, row_o = _program_rows(
        L, DIM, su_b, su_d, sdl_b, sdl_d, 0, 0, BD)
    Dv, bias = _channel_params(bias_ptr, bias_ptr, offs_d, dmask, False, HAS_BIAS, BD)
    seg = tl.program_id(2)
    k0, k1 = _segment_span(seg, CPS, n_chunks)
    a2all, offs_n, m_dn = _state_tile_A2(A_ptr, sA_d, sA_n, offs_d, dmask, NSTATE, NP)
    offs_t = tl.arange(0, T)
    pA = A_ptr + offs_d * sA_d
    h = tl.zeros([BD, NP], dtype=tl.float32)
    dsum = tl.zeros([BD], dtype=tl.float32)
    for k in range(k0, k1):
        t = k * T + offs_t
        tmask = t < L
        m2 = dmask[:, None] & tmask[None, :]
        uu = tl.load(u_ptr + row_u[:, None] + t[None, :], mask=m2, other=0.0).to(tl.float32)
        raw, dd = _delta_tile(delta_ptr, row_dl, t, m2, bias, HAS_BIAS, SOFTPLUS)
        dbu = dd * uu
        # exp(A_n · rest_t) carries step t's input to the chunk's end: one sum of Δ over the
        # later steps, shared by all states
        rest = tl.cumsum(dd, axis=1, reverse=True) - dd
        dk = tl.sum(dd, axis=1)
        dsum += dk
        h = h * tl.exp2(a2all * dk[:, None])
        pB = B_ptr + pid_b * sB_b + t
        a2n = tl.load(pA, mask=dmask, other=0.0).to(tl.float32) * 1.4426950408889634
        bn = tl.load(pB, mask=tmask, other=0.0).to(tl.float32)
        for n in range(0, NSTATE):
            # next state's loads issued before this state's arithmetic
            more_d = (offs_d * 0 + n + 1) < NSTATE
            more_t = (offs_t * 0 + n + 1) < NSTATE
            a2x = tl.load(pA + (n + 1) * sA_n, mask=dmask & more_d, other=0.0).to(tl.float32) * 1.4426950408889634
            bx = tl.load(pB + (n + 1) * sB_n, mask=tmask & more_t, other=0.0).to(tl.float32)
            e = tl.sum(tl.exp2(rest * a2n[:, None]) * dbu * bn[None, :], axis=1)
            h += tl.where(offs_n[None, :] == n, e[:, None], 0.0)
            a2n, bn = a2x, bx
    row_seg = (pid_b * DIM + d64) * NSEG + seg
    tl.store(hsum_ptr + row_seg[:, None] * NSTATE + offs_n[None, :], h, mask=m_dn)
    tl.store(dsum_ptr + row_seg, dsum, mask=dmask)


@triton.jit
def _saved_state_stores(state_ptr, row_s, k, offs_t, dmask, n_saved, NSTATE, T: tl.constexpr, TS: tl.constexpr):
    """Where chunk k of the forward stores h for the backward: (BD, T) pointers (plus the state
    index n at the store) and their mask, true at the steps that end one of the backward's chunks
    of TS steps (every TS-th; the chunk's last when TS = T), so only the threads holding those
    steps write; past the length h passes through unchanged, up to the last saved index. The
    mask is built as (BD, 1) & (1, T) & (1, T): grouped as (BD, 1) & (1, T), the same mask
    compiled to more registers on sm_90 (BD 2 / T 512 / 4 warps: 168 with a spill, not 146;
    benchmarks/scan_kernel_resources.py)."""
    j = (k * T + offs_t) // TS
    last = (offs_t % TS == TS - 1)[None, :]
    return state_ptr + row_s[:, None] + (j * NSTATE)[None, :], dmask[:, None] & last & (j < n_saved)[None, :]


@triton.jit
def _gated_output(y, uu, Dv, z_ptr, row_z, t, m2, HAS_D: tl.constexpr, HAS_Z: tl.constexpr):
    """The chunk's output (BD, T) float32 from the scan's y: + D u, then times silu(z)."""
    if HAS_D:
        y += Dv[:, None] * uu
    if HAS_Z:
        zz = tl.load(z_ptr + row_z[:, None] + t[None, :], mask=m2, other=0.0).to(tl.float32)
        y = y * zz * tl.sigmoid(zz)
    return y


@triton.jit
def _scan_fwd_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr,
    out_ptr, state_ptr, carry_ptr, hsum_ptr, dsum_ptr,
    L, DIM, NSTATE, n_chunks, NSEG, CPS, n_saved,
    su_b, su_d, sdl_b, sdl_d, sz_b, sz_d, sB_b, sB_n, sC_b, sC_n, sA_d, sA_n,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr,
    SOFTPLUS: tl.constexpr,
    BD: tl.constexpr, T: tl.constexpr, NP: tl.constexpr, TS: tl.constexpr,
):
    """out (batch, dim, length); state (batch, dim, n_saved, state): h at the end of every
    TS steps (float32), the backward's chunks; TS divides the forward's chunk T, so a chunk
    reads its carry from the state saved at the end of the chunk before. program_id(2) is the
    segment (CPS of the n_chunks chunks of T steps); carry (batch, dim, segments, state)
    float32 scratch receives the state entering it, folded from hsum, dsum (the summaries of
    the segments before it)."""
    pid_b, offs_d, dmask, d64, row_u, row_dl, row_z, row_o = _program_rows(
        L, DIM, su_b, su_d, sdl_b, sdl_d, sz_b, sz_d, BD)
    Dv, bias = _channel_params(D_ptr, bias_ptr, offs_d, dmask, HAS_D, HAS_BIAS, BD)
    seg = tl.program_id(2)
    k0, k1 = _segment_span(seg, CPS, n_chunks)
    row_seg = (pid_b * DIM + d64) * NSEG
    # the state entering the segment (zero for the first), read by its first chunk
    _segment_carry(A_ptr, sA_d, sA_n, hsum_ptr, dsum_ptr, carry_ptr, row_seg, seg, 0, 1, seg,
                   offs_d, dmask, NSTATE, BD, NP)
    offs_t = tl.arange(0, T)
    row_s = (pid_b * DIM + d64) * n_saved * NSTATE
    pS_in = carry_ptr + (row_seg + seg) * NSTATE
    first = (offs_t == 0)[None, :]
    for k in range(k0, k1):
        t = k * T + offs_t
        tmask = t < L
        m2 = dmask[:, None] & tmask[None, :]
        uu = tl.load(u_ptr + row_u[:, None] + t[None, :], mask=m2, other=0.0).to(tl.float32)
        raw, dd = _delta_tile(delta_ptr, row_dl, t, m2, bias, HAS_BIAS, SOFTPLUS)
        dbu = dd * uu
        y = tl.zeros([BD, T], dtype=tl.float32)
        # Carries written by the previous chunk (or the prologue) must be visible to every thread.
        tl.debug_barrier()
        pA = A_ptr + offs_d * sA_d
        pB = B_ptr + pid_b * sB_b + t
        pC = C_ptr + pid_b * sC_b + t
        pS = tl.where(offs_d * 0 + k == k0, pS_in, state_ptr + row_s + (k * (T // TS) - 1) * NSTATE)
        pS_out, m_out = _saved_state_stores(state_ptr, row_s, k, offs_t, dmask, n_saved, NSTATE, T, TS)
        # loads for state n are issued one iteration ahead, so their latency hides
        # behind the scan of state n - 1
        a2n, bn, cn, h0 = _state_loads(0, NSTATE, pA, pB, pC, pS, sA_n, sB_n, sC_n, dmask, tmask, dmask,
                                       offs_d, offs_t)
        for n in range(0, NSTATE):
            a2x, bx, cx, h0x = _state_loads(n + 1, NSTATE, pA, pB, pC, pS, sA_n, sB_n, sC_n, dmask, tmask, dmask,
                                            offs_d, offs_t)
            a = tl.exp2(dd * (a2n * 1.4426950408889634)[:, None])
            b = dbu * bn[None, :]
            b = tl.where(first, b + a * h0[:, None], b)
            _, h = tl.associative_scan((a, b), 1, _affine_combine)
            y += h * cn[None, :]
            tl.store(pS_out + n, h, mask=m_out)
            a2n, bn, cn, h0 = a2x, bx, cx, h0x
        tl.store(out_ptr + row_o[:, None] + t[None, :], _gated_output(y, uu, Dv, z_ptr, row_z, t, m2, HAS_D, HAS_Z),
                 mask=m2)


@triton.jit
def _scan_bwd_summary_kernel(
    delta_ptr, A_ptr, C_ptr, z_ptr, bias_ptr, dout_ptr, dlast_ptr, ssum_ptr, dsum_ptr,
    L, DIM, NSTATE, n_chunks, NSEG, CPS,
    sdl_b, sdl_d, sz_b, sz_d, sC_b, sC_n, sA_d, sA_n, sg_b, sg_d,
    HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, HAS_DLAST: tl.constexpr,
    BD: tl.constexpr, T: tl.constexpr, NP: tl.constexpr,
):
    """Per segment s = program_id(2) + 1 (every segment but the first): ssum (batch, dim,
    segments, state) = the state adjoint at the segment's first step from a zero adjoint past
    its end (dlast included in the last segment); dsum (batch, dim, segments) = Σ Δ_{t+1} over
    the segment's steps t (the decay of the adjoint across it). Both float32."""
    pid_b, offs_d, dmask, d64, row_g, row_dl, row_z, row_o = _program_rows(
        L, DIM, sg_b, sg_d, sdl_b, sdl_d, sz_b, sz_d, BD)
    Dv, bias = _channel_params(bias_ptr, bias_ptr, offs_d, dmask, False, HAS_BIAS, BD)
    seg = tl.program_id(2) + 1
    k0, k1 = _segment_span(seg, CPS, n_chunks)
    a2all, offs_n, m_dn = _state_tile_A2(A_ptr, sA_d, sA_n, offs_d, dmask, NSTATE, NP)
    offs_t = tl.arange(0, T)
    pA = A_ptr + offs_d * sA_d
    row_n = (pid_b * DIM + d64) * NSTATE
    s = tl.zeros([BD, NP], dtype=tl.float32)
    dsum = tl.zeros([BD], dtype=tl.float32)
    for kk in range(0, k1 - k0):
        k = k1 - 1 - kk
        t = k * T + offs_t
        tmask = t < L
        m2 = dmask[:, None] & tmask[None, :]
        tn = t + 1
        m2n = dmask[:, None] & (tn < L)[None, :]
        rawn, ddn = _delta_tile(delta_ptr, row_dl, tn, m2n, bias, HAS_BIAS, SOFTPLUS)
        g, zz, sz, dy = _gated_dout(dout_ptr, z_ptr, row_g, row_z, t, m2, HAS_Z)
        # exp(A_n · before_t) = a_{k T + 1} ... a_t carries step t's term back to the chunk's
        # first step: one sum of the shifted Δ over the earlier steps, shared by all states
        before = tl.cumsum(ddn, axis=1) - ddn
        dk = tl.sum(ddn, axis=1)
        dsum += dk
        s = s * tl.exp2(a2all * dk[:, None])
        is_end = (t == L - 1)[None, :]
        pC = C_ptr + pid_b * sC_b + t
        a2n = tl.load(pA, mask=dmask, other=0.0).to(tl.float32) * 1.4426950408889634
        cn = tl.load(pC, mask=tmask, other=0.0).to(tl.float32)
        for n in range(0, NSTATE):
            more_d = (offs_d * 0 + n + 1) < NSTATE
            more_t = (offs_t * 0 + n + 1) < NSTATE
            a2x = tl.load(pA + (n + 1) * sA_n, mask=dmask & more_d, other=0.0).to(tl.float32) * 1.4426950408889634
            cx = tl.load(pC + (n + 1) * sC_n, mask=tmask & more_t, other=0.0).to(tl.float32)
            c = dy * cn[None, :]
            if HAS_DLAST:
                dl = tl.load(dlast_ptr + row_n + n, mask=dmask, other=0.0)
                c = tl.where(is_end, c + dl[:, None], c)
            e = tl.sum(tl.exp2(before * a2n[:, None]) * c, axis=1)
            s += tl.where(offs_n[None, :] == n, e[:, None], 0.0)
            a2n, cn = a2x, cx
    row_seg = (pid_b * DIM + d64) * NSEG + seg
    tl.store(ssum_ptr + row_seg[:, None] * NSTATE + offs_n[None, :], s, mask=m_dn)
    tl.store(dsum_ptr + row_seg, dsum, mask=dmask)


@triton.jit
def _bwd_chunk_inputs(u_ptr, delta_ptr, dout_ptr, z_ptr, row_u, row_dl, row_g, row_z, bias, k, L, offs_t, dmask,
                      T: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr):
    """A backward chunk's per-channel tiles, (BD, T) float32: steps t (T,), their masks
    (tmask (T,), m2 and m2n for the steps and the steps one later), u, raw Δ and Δ, Δ one
    step later, and the gated upstream gradient (g, z, sigmoid(z), dy; see _gated_dout)."""
    t = k * T + offs_t
    tmask = t < L
    m2 = dmask[:, None] & tmask[None, :]
    tn = t + 1
    m2n = dmask[:, None] & (tn < L)[None, :]
    uu = tl.load(u_ptr + row_u[:, None] + t[None, :], mask=m2, other=0.0).to(tl.float32)
    raw, dd = _delta_tile(delta_ptr, row_dl, t, m2, bias, HAS_BIAS, SOFTPLUS)
    rawn, ddn = _delta_tile(delta_ptr, row_dl, tn, m2n, bias, HAS_BIAS, SOFTPLUS)
    g, zz, sz, dy = _gated_dout(dout_ptr, z_ptr, row_g, row_z, t, m2, HAS_Z)
    return t, tmask, m2, m2n, uu, raw, dd, ddn, g, zz, sz, dy


@triton.jit
def _bwd_chunk_outputs(du_ptr, ddelta_ptr, dz_ptr, row_o, row_dz, t, m2, qA, sB, y, uu, raw, dd, g, zz, sz, dy, Dv,
                       HAS_D: tl.constexpr, HAS_Z: tl.constexpr, SOFTPLUS: tl.constexpr):
    """Store a chunk's du, dΔ (rows row_o) and dz (rows row_dz) from qA = Σ_n A_n q, sB = Σ_n B_n s
    and y = Σ_n C_n h (y before D and the gate; read only with z), each (BD, T). Returns dΔ (for
    dbias)."""
    if HAS_Z:
        if HAS_D:
            y += Dv[:, None] * uu
        tl.store(dz_ptr + row_dz[:, None] + t[None, :], g * y * sz * (1.0 + zz * (1.0 - sz)), mask=m2)
    ddl = qA + sB * uu
    duv = sB * dd
    if HAS_D:
        duv += Dv[:, None] * dy
    if SOFTPLUS:
        ddl = tl.where(raw > 20.0, ddl, ddl * tl.sigmoid(raw))
    tl.store(du_ptr + row_o[:, None] + t[None, :], duv, mask=m2)
    tl.store(ddelta_ptr + row_o[:, None] + t[None, :], ddl, mask=m2)
    return ddl


@triton.jit
def _store_channel_sums(dD_ptr, dbias_ptr, seg, pid_b, DIM, offs_d, dmask, dD_acc, dbias_acc,
                        HAS_D: tl.constexpr, HAS_BIAS: tl.constexpr):
    """The program's partial dD and dbias, (BD,) each, into the (segments, batch, dim) buffers."""
    row_p = (seg * tl.num_programs(1) + pid_b) * DIM + offs_d
    if HAS_D:
        tl.store(dD_ptr + row_p, tl.sum(dD_acc, axis=1), mask=dmask)
    if HAS_BIAS:
        tl.store(dbias_ptr + row_p, tl.sum(dbias_acc, axis=1), mask=dmask)


@triton.jit
def _bwd_state_scans(an, bn, cn, h0, s1, dl, dd, ddn, dbu, dy, m2n, first, last, is_end, HAS_DLAST: tl.constexpr):
    """One state of a chunk in the backward: its forward states h recomputed from the saved start
    state h0, its adjoint s (a reverse scan with coefficient a_{t+1}, 0 past the last step, seeded
    with s1 from the next chunk and, with HAS_DLAST, dl at the sequence's last step), and
    q = s (h − b); each (BD, T) float32."""
    a2n = an * 1.4426950408889634
    a = tl.exp2(dd * a2n[:, None])
    b = dbu * bn[None, :]
    _, h = tl.associative_scan((a, tl.where(first, b + a * h0[:, None], b)), 1, _affine_combine)
    al = tl.where(m2n, tl.exp2(ddn * a2n[:, None]), 0.0)
    c = dy * cn[None, :]
    if HAS_DLAST:
        c = tl.where(is_end, c + dl[:, None], c)
    c = tl.where(last, c + al * s1[:, None], c)
    _, s = tl.associative_scan((al, c), 1, _affine_combine, reverse=True)
    return h, s, s * (h - b)


@triton.jit
def _bwd_chunk_states(A_ptr, B_ptr, C_ptr, state_ptr, dlast_ptr, dA_ptr, dB_ptr, dC_ptr, sc_read, sc_write,
                      row_s, row_n, pid_b, k, L, t, tmask, dmask, offs_d, offs_t, first, last, dd, ddn, dbu, dy,
                      m2n, sA_d, sA_n, sB_b, sB_n, sC_b, sC_n, NSTATE, HAS_DLAST: tl.constexpr,
                      BD: tl.constexpr, T: tl.constexpr):
    """One chunk's backward over the states, last step first within each state: accumulates dA
    (batch, dim, state), dB and dC (batch, state, length) atomically, writes the state adjoint at
    the chunk's first step to sc_write (read by the chunk before it) and returns y before the gate,
    Σ_n A_n q_n and Σ_n s_n B_n, each (BD, T), for the chunk's input gradients."""
    qA = tl.zeros([BD, T], dtype=tl.float32)
    sB = tl.zeros([BD, T], dtype=tl.float32)
    # y before the gate, rebuilt from the recomputed states (the gate's gradient needs
    # it): one multiply-add per state instead of saving (batch, dim, length) in the forward
    y = tl.zeros([BD, T], dtype=tl.float32)
    kprev = dmask & ((offs_d * 0 + k) > 0)
    pA = A_ptr + offs_d * sA_d
    pB = B_ptr + pid_b * sB_b + t
    pC = C_ptr + pid_b * sC_b + t
    pS = state_ptr + row_s + (k - 1) * NSTATE
    # the adjoint at the chunk's first step: only the thread holding it writes
    pSC_out = sc_write[:, None] + offs_t[None, :] * 0
    m_out = dmask[:, None] & first
    is_end = (t == L - 1)[None, :]
    # loads for state n + 1 are issued while state n is computed
    an, bn, cn, h0 = _state_loads(0, NSTATE, pA, pB, pC, pS, sA_n, sB_n, sC_n, dmask, tmask, kprev,
                                  offs_d, offs_t)
    s1 = tl.load(sc_read, mask=dmask, other=0.0)
    dl = s1                                     # a name only: read only with HAS_DLAST
    if HAS_DLAST:
        dl = tl.load(dlast_ptr + row_n, mask=dmask, other=0.0)
    for n in range(0, NSTATE):
        nx = n + 1
        more_d = (offs_d * 0 + nx) < NSTATE
        anx, bnx, cnx, h0x = _state_loads(nx, NSTATE, pA, pB, pC, pS, sA_n, sB_n, sC_n, dmask, tmask, kprev,
                                          offs_d, offs_t)
        s1x = tl.load(sc_read + nx, mask=dmask & more_d, other=0.0)
        if HAS_DLAST:
            dlx = tl.load(dlast_ptr + row_n + nx, mask=dmask & more_d, other=0.0)
        h, s, q = _bwd_state_scans(an, bn, cn, h0, s1, dl, dd, ddn, dbu, dy, m2n, first, last, is_end,
                                   HAS_DLAST)
        y += h * cn[None, :]
        qA += an[:, None] * q
        sB += s * bn[None, :]
        # relaxed: plain reductions into memory, no ordering with other accesses needed
        tl.atomic_add(dA_ptr + row_n + n, tl.sum(dd * q, axis=1), mask=dmask, sem="relaxed")
        tl.atomic_add(dB_ptr + (pid_b * NSTATE + n) * L + t, tl.sum(s * dbu, axis=0), mask=tmask,
                      sem="relaxed")
        tl.atomic_add(dC_ptr + (pid_b * NSTATE + n) * L + t, tl.sum(dy * h, axis=0), mask=tmask,
                      sem="relaxed")
        tl.store(pSC_out + n, s, mask=m_out)
        an, bn, cn, h0, s1 = anx, bnx, cnx, h0x, s1x
        if HAS_DLAST:
            dl = dlx
    return y, qA, sB


@triton.jit
def _scan_bwd_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr,
    dout_ptr, state_ptr, dlast_ptr, scarry_ptr, ssum_ptr, dsum_ptr,
    du_ptr, ddelta_ptr, dz_ptr, dA_ptr, dB_ptr, dC_ptr, dD_ptr, dbias_ptr,
    L, DIM, NSTATE, n_chunks, NSEG, CPS,
    su_b, su_d, sdl_b, sdl_d, sz_b, sz_d, sB_b, sB_n, sC_b, sC_n, sA_d, sA_n, sg_b, sg_d, sdz_b,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr,
    SOFTPLUS: tl.constexpr, HAS_DLAST: tl.constexpr,
    BD: tl.constexpr, T: tl.constexpr, NP: tl.constexpr,
):
    """Gradients; program_id(2) is the segment. du, ddelta: (batch, dim, length) contiguous;
    dz: (batch, dim, length) with batch stride sdz_b and unit stride along length (a channel
    slice of a larger buffer is fine); dA: (batch, dim, state) float32, zeroed, accumulated atomically (summed over
    batch by the caller); dB, dC: (batch, state, length) float32, zeroed, accumulated
    atomically; dD, dbias: (segments, batch, dim) float32 partials. scarry: (2, batch, dim,
    segments, state) float32 scratch for the state adjoint between chunks; its first half
    receives the adjoint entering the segment from its end, folded from ssum, dsum (the
    summaries of the segments after it)."""
    pid_b, offs_d, dmask, d64, row_u, row_dl, row_z, row_o = _program_rows(
        L, DIM, su_b, su_d, sdl_b, sdl_d, sz_b, sz_d, BD)
    Dv, bias = _channel_params(D_ptr, bias_ptr, offs_d, dmask, HAS_D, HAS_BIAS, BD)
    seg = tl.program_id(2)
    k0, k1 = _segment_span(seg, CPS, n_chunks)
    row_seg = (pid_b * DIM + d64) * NSEG
    # the adjoint at the next segment's first step (zero for the last segment), read by this
    # segment's last chunk
    _segment_carry(A_ptr, sA_d, sA_n, ssum_ptr, dsum_ptr, scarry_ptr, row_seg, seg, NSEG - 1, -1,
                   NSEG - 1 - seg, offs_d, dmask, NSTATE, BD, NP)
    offs_t = tl.arange(0, T)
    row_g = pid_b * sg_b + d64 * sg_d
    row_s = (pid_b * DIM + d64) * n_chunks * NSTATE
    row_n = (pid_b * DIM + d64) * NSTATE
    row_c = (row_seg + seg) * NSTATE
    # the two halves of scarry alternate between chunks
    half = tl.num_programs(1) * DIM * NSEG * NSTATE
    first = (offs_t == 0)[None, :]
    last = (offs_t == T - 1)[None, :]
    dD_acc = tl.zeros([BD, T], dtype=tl.float32)
    dbias_acc = tl.zeros([BD, T], dtype=tl.float32)
    for kk in range(0, k1 - k0):
        k = k1 - 1 - kk
        t, tmask, m2, m2n, uu, raw, dd, ddn, g, zz, sz, dy = _bwd_chunk_inputs(
            u_ptr, delta_ptr, dout_ptr, z_ptr, row_u, row_dl, row_g, row_z, bias, k, L, offs_t, dmask,
            T, HAS_Z, HAS_BIAS, SOFTPLUS)
        if HAS_D:
            dD_acc += dy * uu
        dbu = dd * uu
        sc_read = scarry_ptr + (kk % 2) * half + row_c
        sc_write = scarry_ptr + ((kk + 1) % 2) * half + row_c
        tl.debug_barrier()
        y, qA, sB = _bwd_chunk_states(A_ptr, B_ptr, C_ptr, state_ptr, dlast_ptr, dA_ptr, dB_ptr, dC_ptr,
                                      sc_read, sc_write, row_s, row_n, pid_b, k, L, t, tmask, dmask, offs_d,
                                      offs_t, first, last, dd, ddn, dbu, dy, m2n, sA_d, sA_n, sB_b, sB_n, sC_b,
                                      sC_n, NSTATE, HAS_DLAST, BD, T)
        ddl = _bwd_chunk_outputs(du_ptr, ddelta_ptr, dz_ptr, row_o, pid_b * sdz_b + d64 * L, t, m2, qA, sB, y, uu,
                                 raw, dd, g, zz, sz, dy, Dv, HAS_D, HAS_Z, SOFTPLUS)
        if HAS_BIAS:
            dbias_acc += tl.where(m2, ddl, 0.0)
    _store_channel_sums(dD_ptr, dbias_ptr, seg, pid_b, DIM, offs_d, dmask, dD_acc, dbias_acc, HAS_D, HAS_BIAS)

