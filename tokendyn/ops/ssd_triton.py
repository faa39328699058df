"""The ``triton`` Mamba-2 (SSD) backend: a fused forward and backward.

Same function and contract as :func:`tokendyn.ops.ssd_chunked.ssd_chunked` (docs/scan.md, "The
Mamba-2 (SSD) scan"), in the notation there: chunks of T steps, a_t = Δ_t A_h, cum_t the sum of a
inside a chunk up to t, v_s = exp(cum_last − cum_s) Δ_s, d_c = exp(cum_last) the chunk's decay.

Forward, five steps (the first in plain PyTorch on small tensors):

1. cum, (batch, heads, chunks, T);
2. each chunk's state from a zero start, S_c = Σ_s v_s x_s ⊗ B_s (Triton, ``_ssd_chunk_state``);
3. the state entering each chunk, H_{c+1} = d_c H_c + S_c, by a loop over the chunks (Triton,
   ``_ssd_chunk_recurrence``, every (head_dim × state) entry in parallel);
4. each chunk's C_t·B_s (s ≤ t) once per group, (batch, chunks, groups, T, T) in float32 (Triton,
   ``_ssd_chunk_cb``): the one product over the state that the T×T blocks need, so the heads of a
   group share it and the output kernel's loop holds no state-sized tile;
5. the outputs y_t = Σ_{s≤t} (C_t·B_s) exp(cum_t − cum_s) Δ_s x_s + exp(cum_t) H_c C_t + D x_t
   (Triton, ``_ssd_chunk_scan``): the head's T×T block formed tile by tile in registers.

Backward (where gradients are wanted the forward keeps cum and the entering states H):

A. each entering state's adjoint from the chunk's outputs, G_c = Σ_t exp(cum_t) dy_t ⊗ C_t (the
   state kernel run on dy and C);
B. back through the chunks: dS_c = dH_{c+1}, dH_c = G_c + d_c dH_{c+1}, and the decay's gradient
   ⟨dH_{c+1}, H_c⟩ (the same kernel, backwards); dH_0 is the initial state's gradient;
C. every block of steps of every chunk and head (Triton, ``_ssd_chunk_bwd``): as the source s of
   the pairs t ≥ s (the block of the SSD matrix again formed in registers, from C·B recomputed
   by step 4 of the forward rather than kept), as the target of the
   entering state, in the chunk's state, and in D x: dx and dΔ of the block; dB and dcum by
   atomic additions (the heads of a group adding into its dB); dC by a pass of its own per block
   of targets and group (``_ssd_chunk_bwd_dc``), summing the group's heads in registers;
D. the decay's gradient into cum_last, then da_r = Σ_{t≥r} dcum_t, dΔ += da A and dA = Σ da Δ.

The kernels sum in float32. bfloat16 and float16 inputs (x, B, C and dy of one dtype) meet in
16-bit matmuls, as mamba_ssm's do: C·B and dy·x exact; the decay-weighted blocks, the Δ- and
decay-weighted x and dy of the state terms, and the float32 states and their adjoints rounded to
16 bits before they meet x, dy, B or C. That puts the state terms, as many operations as the
blocks, on the tensor cores; the final state then carries the 16-bit rounding (about 1e-3 of its
norm in bfloat16). float32 inputs, and any mix of dtypes, use IEEE float32 matmuls. float64
inputs, and tensors not on a CUDA device, go to the chunked backend (Triton's interpreter,
TRITON_INTERPRET=1, runs the kernels on the CPU for the tests).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .reference import compute_dtype
from .ssd_chunked import ssd_chunked

DEFAULT_CHUNK = 128
# tile sizes: steps per output tile (BM), steps per inner block (BK), head_dim and state columns;
# steps per block of the backward (BS_BWD); the C·B kernel's (steps × steps) tile and state block
BM, BK, BP_MAX, BN_STATE, BS_BWD = 64, 32, 64, 64, 32
BM_CB, BK_CB, BN_CB, WARPS_CB = 64, 64, 32, 4
# dC: 1 = its own pass per block of targets and group (_ssd_chunk_bwd_dc: the group's heads summed
# in registers, one store, no atomic additions, the same bits every run); 0 = atomic additions
# from the backward's pairs (every head and source block adding into the targets' rows)
DC_PASS, BS_DC, WARPS_DC = 1, 32, 4
# warps of the output and backward kernels: 4 beat 8 in both on an H100 (results/ssd_triton_tuning.json:
# forward 1.5x faster, backward 8%); the other tiles as they were (BK 64, BS_BWD 64 were slower)
WARPS_SCAN, WARPS_BWD = 4, 4
STATE_BLOCK = 1024     # (head_dim × state) entries per program of the loops over the chunks


def _fused_ok(x) -> bool:
    """Whether the kernels take x: not float64, not empty, on CUDA (or the CPU under the interpreter)."""
    interpreted = x.device.type == "cpu" and interpreting()
    return x.dtype != torch.float64 and (x.device.type == "cuda" or interpreted) and x.shape[1] > 0


def _empty(shape, dtype, device) -> torch.Tensor:
    """A buffer every element of which a kernel writes (the tests fill it with NaN instead)."""
    return torch.empty(shape, dtype=dtype, device=device)


def interpreting() -> bool:
    """Whether Triton's interpreter runs the kernels (TRITON_INTERPRET=1: on the CPU, for tests)."""
    import os

    return os.environ.get("TRITON_INTERPRET") == "1"


def _low_precision(*tensors) -> bool:
    """16-bit matmuls where the tensors share one 16-bit dtype (any other mix takes IEEE float32
    matmuls); Triton's interpreter (CPU) multiplies bfloat16 wrongly, so there bfloat16 inputs take
    the float32 matmuls (float16 checks the 16-bit path)."""
    dtype = tensors[0].dtype
    if any(t.dtype != dtype for t in tensors):
        return False
    return dtype == torch.float16 or (dtype == torch.bfloat16 and not interpreting())


def ssd_triton(x, dt, A, B, C, D=None, initial_state=None, return_final_state=False,
               chunk_size: int = DEFAULT_CHUNK):
    """Fused SSD scan; the arguments, shapes and results of
    :func:`~tokendyn.ops.ssd_chunked.ssd_chunked` (x: (b, L, h, p), dt: (b, L, h), A: (h,),
    B, C: (b, L, g, n), D: (h,), initial_state: (b, h, p, n)). With gradients wanted, the forward
    keeps the chunk sums and entering states for the fused backward. Falls back to the chunked
    backend where the module docstring says."""
    if not _fused_ok(x):
        return ssd_chunked(x, dt, A, B, C, D=D, initial_state=initial_state,
                           return_final_state=return_final_state, chunk_size=chunk_size)
    T = min(chunk_size, x.shape[1])
    if _needs_grad(x, dt, A, B, C, D, initial_state):
        y, final = _SSDTriton.apply(x, dt, A, B, C, D, initial_state, T)
    else:
        y, final, *_ = _forward(x, dt, A, B, C, D, initial_state, T)
    return (y, final) if return_final_state else y


def _needs_grad(*tensors) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def _forward(x, dt, A, B, C, D, initial_state, T: int):
    """(y, S_L, dtc, cum, H): the outputs, the final state (b, h, p, n), Δ in the compute dtype,
    the chunk sums (b, h, c, T) and the entering states (b, c, h, p, n)."""
    import triton

    from . import _triton_ssd as kernels

    batch, length, heads, hdim = x.shape
    groups, dstate = B.shape[2], B.shape[3]
    hpg = heads // groups
    chunks = -(-length // T)
    ct = compute_dtype(x.dtype)
    # 1. cumulative sums of a inside each chunk (padding steps: Δ = 0, decay 1)
    dtc = dt.to(ct)
    a = F.pad(dtc * A.to(ct), (0, 0, 0, chunks * T - length))
    cum = a.reshape(batch, chunks, T, heads).cumsum(2).permute(0, 3, 1, 2).contiguous()   # (b, h, c, T)
    # 2. each chunk's state from a zero start
    S = _empty((batch, chunks, heads, hdim, dstate), ct, x.device)
    bp, bn = _tiles(hdim, dstate)
    grid = (triton.cdiv(hdim, bp) * triton.cdiv(dstate, bn), batch * chunks, heads)
    kernels._ssd_chunk_state[grid](x, dtc, cum, B, S, length, T, chunks, hpg, hdim, dstate,
                                   *x.stride(), *dtc.stride(), *cum.stride(), *B.stride(), *S.stride(),
                                   ADJ=False, LOWP=_low_precision(x, B), BP=bp, BN=bn, BK=BK)
    # 3. the state entering each chunk, and the final state (a loop over the chunks in one kernel)
    decay = torch.exp(cum[..., -1]).contiguous()                                              # (b, h, c)
    h0 = initial_state.to(ct).contiguous() if initial_state is not None else None
    H = _empty(S.shape, ct, x.device)
    final = _empty((batch, heads, hdim, dstate), ct, x.device)
    pn = hdim * dstate
    grid = (batch * heads, triton.cdiv(pn, STATE_BLOCK))
    kernels._ssd_chunk_recurrence[grid](S, decay, h0 if h0 is not None else final, H, final, H, decay, chunks,
                                        heads, pn, S.stride(0), S.stride(1), S.stride(2), *decay.stride(),
                                        BLOCK=STATE_BLOCK, HAS_FIRST=h0 is not None, REVERSE=False)
    # 4. each chunk's C·B, once per group
    CB = _chunk_cb(B, C, T, chunks)
    # 5. the outputs
    y = _empty(x.shape, x.dtype, x.device)
    grid = (triton.cdiv(T, BM) * triton.cdiv(hdim, bp), batch * chunks, heads)
    Dc = D.to(ct) if D is not None else x.new_zeros(1, dtype=ct)
    kernels._ssd_chunk_scan[grid](x, dtc, cum, CB, C, H, Dc, y, length, T, chunks, hpg, hdim, dstate,
                                  *x.stride(), *dtc.stride(), *cum.stride(), *CB.stride(), *C.stride(),
                                  *H.stride(), *y.stride(),
                                  HAS_D=D is not None, LOWP=_low_precision(x, C),
                                  BM=BM, BP=bp, BN=bn, BK=BK, num_warps=WARPS_SCAN)
    return y, final, dtc, cum, H


def _chunk_cb(B, C, T: int, chunks: int) -> torch.Tensor:
    """C_t·B_s of each chunk for s ≤ t (the tiles wholly above the diagonal are left unwritten and
    never read), (batch, chunks, groups, T, T) float32; B, C: (batch, L, groups, state)."""
    import triton

    from . import _triton_ssd as kernels

    batch, length, groups, dstate = B.shape
    CB = _empty((batch, chunks, groups, T, T), torch.float32, B.device)
    grid = (triton.cdiv(T, BM_CB) * triton.cdiv(T, BK_CB), batch * chunks, groups)
    kernels._ssd_chunk_cb[grid](C, B, CB, length, T, chunks, dstate, *C.stride(), *B.stride(), *CB.stride(),
                                LOWP=_low_precision(B, C),
                                BM=BM_CB, BK=BK_CB, BN=_tile(dstate, BN_CB), num_warps=WARPS_CB)
    return CB


def _tile(n: int, most: int | None = None) -> int:
    """A tile over n columns: the power of two that covers them (at most ``most``), at least 16
    (tl.dot's smallest); columns past n are masked."""
    import triton

    cover = triton.next_power_of_2(n)
    return max(16, min(most, cover) if most else cover)


def _tiles(hdim: int, dstate: int) -> tuple[int, int]:
    """Column tiles of head_dim and state for the state kernel."""
    return _tile(hdim, BP_MAX), _tile(dstate, BN_STATE)


def _backward(dy, dfinal, x, dtc, A, B, C, D, cum, H, T: int):
    """The gradients of x, Δ, A, B, C, D and S_0 (module docstring, "Backward"): dx in x's dtype
    (stored once per element, rounded in the store, so no float32 copy of it is kept), the
    others in float32 (summed atomically or added to after the kernels)."""
    import triton

    from . import _triton_ssd as kernels

    batch, length, heads, hdim = x.shape
    groups, dstate = B.shape[2], B.shape[3]
    hpg, chunks = heads // groups, H.shape[1]
    f32, dev = torch.float32, x.device
    # A. the adjoint of each entering state from the chunk's outputs: Σ_t exp(cum_t) dy_t ⊗ C_t
    G = _empty((batch, chunks, heads, hdim, dstate), f32, dev)
    bp, bn = _tiles(hdim, dstate)
    grid = (triton.cdiv(hdim, bp) * triton.cdiv(dstate, bn), batch * chunks, heads)
    kernels._ssd_chunk_state[grid](dy, dtc, cum, C, G, length, T, chunks, hpg, hdim, dstate,
                                   *dy.stride(), *dtc.stride(), *cum.stride(), *C.stride(), *G.stride(),
                                   ADJ=True, LOWP=_low_precision(dy, C), BP=bp, BN=bn, BK=BK)
    # B. back through the chunks: dS_c = dH_{c+1}, dH_c = G_c + d_c dH_{c+1}, d(d_c) = ⟨dH_{c+1}, H_c⟩
    decay = torch.exp(cum[..., -1]).contiguous()                                           # (b, h, c)
    dS, ddecay = _empty(G.shape, f32, dev), torch.zeros_like(decay)
    g = _empty((batch, heads, hdim, dstate), f32, dev)                                   # dL/dS_0
    dfinal = dfinal.to(f32).contiguous() if dfinal is not None else None
    pn = hdim * dstate
    grid = (batch * heads, triton.cdiv(pn, STATE_BLOCK))
    kernels._ssd_chunk_recurrence[grid](G, decay, dfinal if dfinal is not None else g, dS, g, H, ddecay, chunks,
                                        heads, pn, G.stride(0), G.stride(1), G.stride(2), *decay.stride(),
                                        BLOCK=STATE_BLOCK, HAS_FIRST=dfinal is not None, REVERSE=True)
    # C. each block of steps: pairs, entering state, chunk state, D
    dx = _empty(x.shape, x.dtype, dev)
    dB = torch.zeros(batch, length, groups, dstate, dtype=f32, device=dev)
    dC = (_empty if DC_PASS else torch.zeros)((batch, length, groups, dstate), dtype=f32, device=dev)
    ddt = _empty((batch, length, heads), f32, dev)
    dcum = torch.zeros_like(cum)
    dD = torch.zeros(heads, dtype=f32, device=dev)
    Dc = D.to(f32) if D is not None else dD
    grid = (triton.cdiv(T, BS_BWD), batch * chunks, heads)
    CB = _chunk_cb(B, C, T, chunks)
    lowp = _low_precision(x, dy, B, C)
    kernels._ssd_chunk_bwd[grid](x, dtc, cum, B, C, CB, H, dS, Dc, dy, dx, dB, dC, ddt, dcum, dD,
                                 length, T, chunks, hpg, hdim, dstate,
                                 *x.stride(), *dtc.stride(), *cum.stride(), *B.stride(), *C.stride(), *CB.stride(),
                                 *H.stride(),
                                 *dS.stride(), *dy.stride(), *dx.stride(), *dB.stride(), *dC.stride(),
                                 *ddt.stride(),
                                 HAS_D=D is not None, LOWP=lowp, DC=not DC_PASS,
                                 BS=BS_BWD, BP=_tile(hdim), BN=_tile(dstate), num_warps=WARPS_BWD)
    if DC_PASS:
        grid = (triton.cdiv(T, BS_DC), batch * chunks, groups)
        kernels._ssd_chunk_bwd_dc[grid](x, dtc, cum, B, H, dy, dC, length, T, chunks, hpg, hdim, dstate,
                                        *x.stride(), *dtc.stride(), *cum.stride(), *B.stride(), *H.stride(),
                                        *dy.stride(), *dC.stride(),
                                        LOWP=lowp, BS=BS_DC, BP=_tile(hdim), BN=_tile(dstate), num_warps=WARPS_DC)
    # D. the chunk decay, then a = Δ A through the sums: da_r = Σ_{t≥r} dcum_t
    dcum[..., -1] += ddecay * decay
    da = dcum.flip(-1).cumsum(-1).flip(-1).permute(0, 2, 3, 1).reshape(batch, chunks * T, heads)[:, :length]
    ddt = ddt + da * A.to(f32)
    dA = (da * dtc.to(f32)).sum((0, 1))
    return dx, ddt, dA, dB, dC, (dD if D is not None else None), g


class _SSDTriton(torch.autograd.Function):
    """The fused forward with the fused backward (x, dt, A, B, C, D, initial_state, T)."""

    @staticmethod
    def forward(ctx, x, dt, A, B, C, D, initial_state, T):
        y, final, dtc, cum, H = _forward(x, dt, A, B, C, D, initial_state, T)
        ctx.save_for_backward(x, dtc, A, B, C, D, cum, H)
        ctx.T = T
        ctx.dtypes = (x.dtype, dt.dtype, A.dtype, B.dtype, C.dtype, None if D is None else D.dtype,
                      None if initial_state is None else initial_state.dtype)
        return y, final

    @staticmethod
    def backward(ctx, dy, dfinal):
        x, dtc, A, B, C, D, cum, H = ctx.saved_tensors
        if dy is None:
            dy = torch.zeros_like(x)
        grads = _backward(dy, dfinal, x, dtc, A, B, C, D, cum, H, ctx.T)
        # an input that was None (D, initial_state) has no dtype and gets no gradient
        return (*(None if t is None else g.to(t) for g, t in zip(grads, ctx.dtypes)), None)
