"""The block's Add -> RMSNorm followed by a linear map along the channels, as one autograd node
that keeps only the residual stream for the backward (THEORY.md section 1: a block's
``in_proj(norm(r))`` with r = h + the stream so far).

    r = h + res;   y = W · cast(rms_norm(r) ⊙ g)     h, res, r: (batch, L, d); y: (batch, out, L)

Composed from separate nodes, a training step keeps both r (saved by the norm) and the
normalised, cast copy of it (saved by the product for W's gradient): (batch, L, d) twice per
layer. Here only r is kept and the normalised copy is recomputed in the backward (one
elementwise kernel, no second product), which saves (batch, L, d) in the cast dtype per layer.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .channel_products import apply_left, weight_grad

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


def add_rms_norm_cast(h: torch.Tensor, res: torch.Tensor | None, gain: torch.Tensor, eps: float,
                      dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """The fused forward (Triton) in one pass: (r, n) for h (..., d) (any float dtype), res
    (..., d) float32 or None, gain (d,) float32. r = h + res in float32 (h itself where res is None
    and h is float32 already); n = cast(rms_norm(r) ⊙ gain) in ``dtype``, contiguous."""
    from . import _triton_norm as K

    h2 = _rows(h)
    res2 = _rows(res) if res is not None else h2
    rows, d = h2.shape
    store_r = res is not None or h.dtype != torch.float32
    r = _empty((rows, d), torch.float32, h.device) if store_r else h2
    n = _empty((rows, d), dtype, h.device)
    grid, meta = _launch(rows, d)
    K._add_rms_norm_cast_fwd_kernel[grid](h2, res2, gain, n, r, rows, d, h2.stride(0), res2.stride(0), eps,
                                          HAS_RES=res is not None, STORE_R=store_r, **meta)
    return (r.view(h.shape) if store_r else h), n.view(h.shape)


def add_rms_norm_cast_backward(r: torch.Tensor, gain: torch.Tensor, dn: torch.Tensor, dres: torch.Tensor | None,
                               eps: float, h_dtype: torch.dtype):
    """The fused backward (Triton) in one pass: (dr float32 like r, dh in ``h_dtype`` (dr itself
    where that is float32), dgain (d,) float32) for the gradients dn of n and dres of r (or None)."""
    from . import _triton_norm as K

    r2, dn2 = _rows(r), _rows(dn)
    dres2 = _rows(dres) if dres is not None else r2
    rows, d = r2.shape
    grid, meta = _launch(rows, d)
    dr = _empty((rows, d), torch.float32, r.device)
    store_dh = h_dtype != torch.float32
    dh = _empty((rows, d), h_dtype, r.device) if store_dh else dr
    dg = _empty((grid[0], d), torch.float32, r.device)
    K._add_rms_norm_cast_bwd_kernel[grid](r2, gain, dn2, dres2, dr, dh, dg, rows, d, r2.stride(0), dn2.stride(0),
                                          dres2.stride(0), eps, HAS_DRES=dres is not None, STORE_DH=store_dh,
                                          **meta)
    return dr.view(r.shape), dh.view(r.shape), dg.sum(0)


class _AddRMSNormLinear(torch.autograd.Function):
    """(y, r) from (h, res or None); saves r, the gain and the weight only."""

    @staticmethod
    def forward(ctx, h, res, gain, weight, eps, dtype, fused):
        with torch.autocast(h.device.type, enabled=False):
            if fused:
                r, n = add_rms_norm_cast(h, res, gain, eps, dtype)                       # (b, L, d) each
            else:
                r = (h if res is None else h + res).to(gain.dtype)
                n = _normed(r, gain, eps, dtype)
            y = apply_left(weight.to(dtype), n.transpose(1, 2))                             # (b, out, L)
        ctx.eps, ctx.dtype, ctx.fused, ctx.h_dtype = eps, dtype, fused, h.dtype
        ctx.save_for_backward(r, gain, weight)
        return y, r

    @staticmethod
    def backward(ctx, dy, dres):
        r, gain, weight = ctx.saved_tensors
        need_h, need_res, need_gain, need_w = ctx.needs_input_grad[:4]
        with torch.autocast(r.device.type, enabled=False):
            if ctx.fused:
                n = add_rms_norm_cast(r, None, gain, ctx.eps, ctx.dtype)[1]                # recomputed
            else:
                with torch.enable_grad():
                    # both leaves require grad: the gain's gradient is a (d,) sum, nearly free
                    r_ = r.detach().requires_grad_()
                    gain_ = gain.detach().requires_grad_()
                    n = _normed(r_, gain_, ctx.eps, ctx.dtype)                           # recomputed
            dw = weight_grad(dy, n.detach().transpose(1, 2)).to(weight.dtype) if need_w else None
            dh = dr = dgain = None
            if need_h or need_res or need_gain:
                # (b, L, d) contiguous, dy read transposed in place: the norm's backward then
                # reads it without a strided pass
                dn = torch.bmm(dy.transpose(1, 2), weight.to(ctx.dtype).expand(dy.shape[0], -1, -1))
                if ctx.fused:
                    dr, dh, dgain = add_rms_norm_cast_backward(r, gain, dn, dres, ctx.eps, ctx.h_dtype)
                    dgain = dgain.to(gain.dtype)
                else:
                    dr, dgain = torch.autograd.grad(n, (r_, gain_), dn)
                    dr = dr if dres is None else dr + dres
                    dh = dr.to(ctx.h_dtype)
        return (dh if need_h else None), (dr if need_res else None), (dgain if need_gain else None), dw, \
            None, None, None


def _fusable(h: torch.Tensor, gain: torch.Tensor, fused: bool) -> bool:
    """The Triton kernels (CUDA, or Triton's interpreter) for a float32 stream and a 16- or 32-bit
    h; float64 and empty inputs take PyTorch's path."""
    return (fused and LAUNCH["fused"] and gain.dtype == torch.float32 and h.numel() > 0
            and h.dtype in (torch.float32, torch.bfloat16, torch.float16))


def _projection_dtype(x: torch.Tensor, stream: torch.dtype) -> torch.dtype:
    device = x.device.type
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else stream


def rms_norm_linear(r: torch.Tensor, gain: torch.Tensor, eps: float, weight: torch.Tensor,
                    fused: bool = False) -> torch.Tensor:
    """weight · rms_norm(r; gain, eps) along the channels, saving only r for the backward.

    r: (batch, L, d) float32 (or float64), the residual stream; gain: (d,); weight: (out, d).
    Returns (batch, out, L) with unit stride along L (the layout the conv and scan read), in
    autocast's dtype under autocast, else in r's dtype. The norm computes in r's dtype, as
    :class:`~tokendyn.model.blocks.RMSNorm` does for a float32 residual stream. ``fused``: the
    norm and the cast in one Triton kernel each way (``_triton_norm.py``; CUDA, or Triton's
    interpreter), instead of PyTorch's norm, cast and autograd.
    """
    return add_rms_norm_linear(r, None, gain.to(r.dtype), eps, weight, fused)[0]


def add_rms_norm_linear(h: torch.Tensor, residual: torch.Tensor | None, gain: torch.Tensor, eps: float,
                        weight: torch.Tensor, fused: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """The block's Add -> RMSNorm -> in_proj: (weight · rms_norm(r; gain, eps), r) with r = h +
    residual (r = h where there is no stream yet), saving only r for the backward.

    h: (batch, L, d), the previous block's output (any float dtype); residual: (batch, L, d), the
    stream so far, or None; r comes in the gain's dtype (float32, or float64), which the norm
    computes in.
    y as :func:`rms_norm_linear`'s. ``fused``: the add, the norm and the cast in one Triton kernel
    each way, and the backward adds the stream's gradient and casts h's in the same pass.
    """
    return _AddRMSNormLinear.apply(h, residual, gain, weight, eps, _projection_dtype(h, gain.dtype),
                                   _fusable(h, gain, fused))
