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


def _normed(r: torch.Tensor, gain: torch.Tensor, eps: float, dtype: torch.dtype) -> torch.Tensor:
    return F.rms_norm(r, (r.shape[-1],), gain, eps).to(dtype)


class _RMSNormLinear(torch.autograd.Function):

    @staticmethod
    def forward(ctx, r, gain, weight, eps, dtype):
        with torch.autocast(r.device.type, enabled=False):
            n = _normed(r, gain, eps, dtype)                                     # (b, L, d)
            w = weight.to(dtype)
            y = torch.bmm(w.expand(r.shape[0], -1, -1), n.transpose(1, 2))       # (b, out, L)
        ctx.eps, ctx.dtype = eps, dtype
        ctx.save_for_backward(r, gain, weight)
        return y

    @staticmethod
    def backward(ctx, dy):
        r, gain, weight = ctx.saved_tensors
        need_r, need_gain, need_w = ctx.needs_input_grad[:3]
        with torch.autocast(r.device.type, enabled=False):
            with torch.enable_grad():
                # both leaves require grad: the gain's gradient is a (d,) sum, nearly free
                r_ = r.detach().requires_grad_()
                gain_ = gain.detach().requires_grad_()
                n = _normed(r_, gain_, ctx.eps, ctx.dtype)                       # recomputed
            dw = torch.bmm(dy, n.detach()).sum(0).to(weight.dtype) if need_w else None
            dr = dgain = None
            if need_r or need_gain:
                w = weight.to(ctx.dtype)
                # (b, L, d) contiguous, dy read transposed in place: the cast and the norm's
                # backward below then read it without a strided pass
                dn = torch.bmm(dy.transpose(1, 2), w.expand(dy.shape[0], -1, -1))
                dr, dgain = torch.autograd.grad(n, (r_, gain_), dn)
        return (dr if need_r else None), (dgain if need_gain else None), dw, None, None


def rms_norm_linear(r: torch.Tensor, gain: torch.Tensor, eps: float, weight: torch.Tensor) -> torch.Tensor:
    """weight · rms_norm(r; gain, eps) along the channels, saving only r for the backward.

    r: (batch, L, d) float32 (or float64); gain: (d,); weight: (out, d).
    Returns (batch, out, L) with unit stride along L (the layout the conv and scan read), in
    autocast's dtype under autocast, else in r's dtype. The norm computes in r's dtype, as
    :class:`~tokendyn.model.blocks.RMSNorm` does for a float32 residual stream.
    """
    device = r.device.type
    dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else r.dtype
    return _RMSNormLinear.apply(r, gain.to(r.dtype), weight, eps, dtype)
