"""The ``triton`` Mamba-2 (SSD) backend: a fused forward for passes without gradients.

Same function and contract as :func:`tokendyn.ops.ssd_chunked.ssd_chunked` (docs/scan.md, "The
Mamba-2 (SSD) scan"), computed in four steps, the middle two in plain PyTorch on small tensors:

1. the cumulative sums of a = Δ A inside each chunk of T steps, (batch, heads, chunks, T);
2. each chunk's state from a zero start (Triton, ``_ssd_chunk_state``), (batch, chunks, heads,
   head_dim, state) in float32;
3. the state entering each chunk, by a loop over the chunks (as the chunked backend's step 3);
4. the outputs (Triton, ``_ssd_chunk_scan``): the chunk's T×T block of the SSD matrix formed tile
   by tile in registers, never in memory, plus the entering state carried to each step.

The kernels sum in float32; with bfloat16 or float16 inputs the two matmuls of step 4 run on the
16-bit values (C·B exact, the decay-weighted C·B rounded to 16 bits before it meets x, as
mamba_ssm does), with float32 inputs every matmul is IEEE float32. Where a
gradient is wanted (grad mode on and an input that requires it) or the inputs are float64 or
not on a CUDA device, the call goes to the chunked backend, which autograd differentiates: the
fused path serves inference, prefill and analysis; training runs the chunked backend.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .reference import compute_dtype
from .ssd_chunked import _chunk_states_scan, ssd_chunked

DEFAULT_CHUNK = 128
# tile sizes: steps per output tile (BM), steps per inner block (BK), head_dim and state columns
BM, BK, BP_MAX, BN_STATE = 64, 32, 64, 64


def _fused_ok(x, dt, A, B, C, D, initial_state) -> bool:
    tensors = [t for t in (x, dt, A, B, C, D, initial_state) if t is not None]
    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in tensors)
    interpreted = x.device.type == "cpu" and _interpreting()
    return (not needs_grad and x.dtype != torch.float64 and (x.device.type == "cuda" or interpreted)
            and x.shape[1] > 0)


def _empty(shape, dtype, device) -> torch.Tensor:
    """A buffer every element of which a kernel writes (the tests fill it with NaN instead)."""
    return torch.empty(shape, dtype=dtype, device=device)


def _interpreting() -> bool:
    import os

    return os.environ.get("TRITON_INTERPRET") == "1"


def _low_precision(dtype) -> bool:
    """16-bit matmuls for 16-bit inputs; Triton's interpreter (CPU) multiplies bfloat16 wrongly,
    so there bfloat16 inputs take the float32 matmuls (float16 checks the 16-bit path)."""
    return dtype == torch.float16 or (dtype == torch.bfloat16 and not _interpreting())


def ssd_triton(x, dt, A, B, C, D=None, initial_state=None, return_final_state=False,
               chunk_size: int = DEFAULT_CHUNK):
    """Fused SSD forward; the arguments, shapes and results of
    :func:`~tokendyn.ops.ssd_chunked.ssd_chunked` (x: (b, L, h, p), dt: (b, L, h), A: (h,),
    B, C: (b, L, g, n), D: (h,), initial_state: (b, h, p, n)). Falls back to the chunked backend
    where the module docstring says."""
    if not _fused_ok(x, dt, A, B, C, D, initial_state):
        return ssd_chunked(x, dt, A, B, C, D=D, initial_state=initial_state,
                           return_final_state=return_final_state, chunk_size=chunk_size)
    import triton

    from . import _triton_ssd as kernels

    batch, length, heads, hdim = x.shape
    groups, dstate = B.shape[2], B.shape[3]
    hpg = heads // groups
    T = min(chunk_size, length)
    chunks = -(-length // T)
    ct = compute_dtype(x.dtype)
    # 1. cumulative sums of a inside each chunk (padding steps: Δ = 0, decay 1)
    dtc = dt.to(ct)
    a = F.pad(dtc * A.to(ct), (0, 0, 0, chunks * T - length))
    cum = a.reshape(batch, chunks, T, heads).cumsum(2).permute(0, 3, 1, 2).contiguous()   # (b, h, c, T)
    # 2. each chunk's state from a zero start
    S = _empty((batch, chunks, heads, hdim, dstate), ct, x.device)
    # tiles of at least 16 (tl.dot's smallest), masked where head_dim or state is smaller
    bp = max(16, min(BP_MAX, triton.next_power_of_2(hdim)))
    bn = max(16, min(BN_STATE, triton.next_power_of_2(dstate)))
    grid = (triton.cdiv(hdim, bp) * triton.cdiv(dstate, bn), batch * chunks, heads)
    kernels._ssd_chunk_state[grid](x, dtc, cum, B, S, length, T, chunks, hpg, hdim, dstate,
                                   *x.stride(), *dtc.stride(), *cum.stride(), *B.stride(), *S.stride(),
                                   BP=bp, BN=bn, BK=BK)
    # 3. the state entering each chunk, and the final state
    if initial_state is None:
        h0 = x.new_zeros(batch, groups, hpg, hdim, dstate, dtype=ct)
    else:
        h0 = initial_state.to(ct).reshape(batch, groups, hpg, hdim, dstate)
    chunk_decay = torch.exp(cum[..., -1]).reshape(batch, groups, hpg, chunks)
    entering, final = _chunk_states_scan(S.reshape(batch, chunks, groups, hpg, hdim, dstate), chunk_decay, h0)
    H = entering.reshape(batch, chunks, heads, hdim, dstate)
    # 4. the outputs
    y = _empty(x.shape, x.dtype, x.device)
    bn_all = max(16, triton.next_power_of_2(dstate))
    grid = (triton.cdiv(T, BM) * triton.cdiv(hdim, bp), batch * chunks, heads)
    Dc = D.to(ct) if D is not None else x.new_zeros(1, dtype=ct)
    kernels._ssd_chunk_scan[grid](x, dtc, cum, B, C, H, Dc, y, length, T, chunks, hpg, hdim, dstate,
                                  *x.stride(), *dtc.stride(), *cum.stride(), *B.stride(), *C.stride(),
                                  *H.stride(), *y.stride(),
                                  HAS_D=D is not None, LOWP=_low_precision(x.dtype),
                                  BM=BM, BP=bp, BN=bn_all, BK=BK)
    if return_final_state:
        return y, final.reshape(batch, heads, hdim, dstate)
    return y
