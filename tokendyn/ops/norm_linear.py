"""RMSNorm followed by a linear map along the channels, as one autograd node that keeps only
its input for the backward (THEORY.md section 1: a block's ``in_proj(norm(r))``).

    y = W · cast(rms_norm(r) ⊙ g)        r: (batch, L, d) residual stream; y: (batch, out, L)

Composed from separate nodes, a training step keeps both r (saved by the norm) and the
normalised, cast copy of it (saved by the product for W's gradient): (batch, L, d) twice per
layer. Here only r is kept and the normalised copy is recomputed in the backward (one
elementwise kernel, no second product), which saves (batch, L, d) in the cast dtype per layer.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# rows of the norm per program of the fused kernels, and their warps for rows of up to 1,024
# channels (more for wider rows, so that a thread holds at most 8 of a row's channels, up to 16
# warps); "fused": False keeps PyTorch's norm and cast where the Triton kernels would run (for
# timing the two in one process)
LAUNCH = {"rows": 8, "num_warps": 4, "fused": True}


def _normed(r: torch.Tensor, gain: torch.Tensor, eps: float, dtype: torch.dtype) -> torch.Tensor:
    return F.rms_norm(r, (r.shape[-1],), gain, eps).to(dtype)


def _empty(shape, dtype, device) -> torch.Tensor:
    """Every buffer a kernel must fill; tests replace this to poison them with NaN."""
    return torch.empty(shape, dtype=dtype, device=device)


def _rows(r: torch.Tensor) -> torch.Tensor:
    """r (..., d) as (rows, d) with unit stride along d (a view where the layout allows)."""
    r2 = r.reshape(-1, r.shape[-1])
    return r2 if r2.stride(-1) == 1 else r2.contiguous()


def _launch(rows: int, d: int):
    import triton

    block = triton.next_power_of_2(d)
    warps = min(16, max(LAUNCH["num_warps"], block // 256))
    return (triton.cdiv(rows, LAUNCH["rows"]),), dict(BLOCK=block, ROWS=LAUNCH["rows"], num_warps=warps)


def rms_norm_cast(r: torch.Tensor, gain: torch.Tensor, eps: float, dtype: torch.dtype) -> torch.Tensor:
    """The fused forward (Triton): ``_normed`` in one pass. r (..., d) float32, gain (d,) -> (..., d)
    in ``dtype``, contiguous."""
    from . import _triton_norm as K

    r2 = _rows(r)
    n = _empty(r2.shape, dtype, r.device)
    grid, meta = _launch(*r2.shape)
    K._rms_norm_cast_fwd_kernel[grid](r2, gain, n, r2.shape[0], r2.shape[1], r2.stride(0), eps, **meta)
    return n.view(r.shape)


def rms_norm_cast_backward(r: torch.Tensor, gain: torch.Tensor, dn: torch.Tensor, eps: float):
    """The fused backward (Triton): (dr float32 like r, dgain (d,) float32) for the gradient dn
    (..., d) of ``rms_norm_cast``'s output."""
    from . import _triton_norm as K

    r2, dn2 = _rows(r), _rows(dn)
    rows, d = r2.shape
    grid, meta = _launch(rows, d)
    dr = _empty((rows, d), torch.float32, r.device)
    dg = _empty((grid[0], d), torch.float32, r.device)
    K._rms_norm_cast_bwd_kernel[grid](r2, gain, dn2, dr, dg, rows, d, r2.stride(0), dn2.stride(0), eps, **meta)
    return dr.view(r.shape), dg.sum(0)


class _RMSNormLinear(torch.autograd.Function):

    @staticmethod
    def forward(ctx, r, gain, weight, eps, dtype, fused):
        with torch.autocast(r.device.type, enabled=False):
            n = rms_norm_cast(r, gain, eps, dtype) if fused else _normed(r, gain, eps, dtype)   # (b, L, d)
            w = weight.to(dtype)
            y = torch.bmm(w.expand(r.shape[0], -1, -1), n.transpose(1, 2))       # (b, out, L)
        ctx.eps, ctx.dtype, ctx.fused = eps, dtype, fused
        ctx.save_for_backward(r, gain, weight)
        return y

    @staticmethod
    def backward(ctx, dy):
        r, gain, weight = ctx.saved_tensors
        need_r, need_gain, need_w = ctx.needs_input_grad[:3]
        with torch.autocast(r.device.type, enabled=False):
            if ctx.fused:
                n = rms_norm_cast(r, gain, ctx.eps, ctx.dtype)                   # recomputed
            else:
                with torch.enable_grad():
                    # both leaves require grad: the gain's gradient is a (d,) sum, nearly free
                    r_ = r.detach().requires_grad_()
                    gain_ = gain.detach().requires_grad_()
                    n = _normed(r_, gain_, ctx.eps, ctx.dtype)                   # recomputed
            dw = torch.bmm(dy, n.detach()).sum(0).to(weight.dtype) if need_w else None
            dr = dgain = None
            if need_r or need_gain:
                w = weight.to(ctx.dtype)
                # (b, L, d) contiguous, dy read transposed in place: the norm's backward then
                # reads it without a strided pass
                dn = torch.bmm(dy.transpose(1, 2), w.expand(dy.shape[0], -1, -1))
                if ctx.fused:
                    dr, dgain = rms_norm_cast_backward(r, gain, dn, ctx.eps)
                    dgain = dgain.to(gain.dtype)
                else:
                    dr, dgain = torch.autograd.grad(n, (r_, gain_), dn)
        return (dr if need_r else None), (dgain if need_gain else None), dw, None, None, None


def rms_norm_linear(r: torch.Tensor, gain: torch.Tensor, eps: float, weight: torch.Tensor,
                    fused: bool = False) -> torch.Tensor:
    """weight · rms_norm(r; gain, eps) along the channels, saving only r for the backward.

    r: (batch, L, d) float32 (or float64); gain: (d,); weight: (out, d).
    Returns (batch, out, L) with unit stride along L (the layout the conv and scan read), in
    autocast's dtype under autocast, else in r's dtype. The norm computes in r's dtype, as
    :class:`~tokendyn.model.blocks.RMSNorm` does for a float32 residual stream. ``fused``: the
    norm and the cast in one Triton kernel each way (``_triton_norm.py``; CUDA, or Triton's
    interpreter), instead of PyTorch's norm, cast and autograd.
    """
    device = r.device.type
    dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else r.dtype
    # the Triton norm (CUDA, or Triton's interpreter) for a float32 stream; float64 and empty
    # inputs take PyTorch's
    fused = fused and LAUNCH["fused"] and r.dtype == torch.float32 and r.numel() > 0
    return _RMSNormLinear.apply(r, gain.to(r.dtype), weight, eps, dtype, fused)
