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
        with torch.autocast(r.device.type, enabled=False):
            with torch.enable_grad():
                r_ = r.detach().requires_grad_(ctx.needs_input_grad[0])
                gain_ = gain.detach().requires_grad_(ctx.needs_input_grad[1])
                n = _normed(r_, gain_, ctx.eps, ctx.dtype)                       # recomputed
            w = weight.to(ctx.dtype)
            dw = torch.bmm(dy, n.detach()).sum(0).to(weight.dtype) if ctx.needs_input_grad[2] else None
            dr = dgain = None
            if ctx.needs_input_grad[0] or ctx.needs_input_grad[1]:
                dn = torch.bmm(w.t().expand(dy.shape[0], -1, -1), dy).transpose(1, 2)  # (b, L, d)
                inputs = [t for t in (r_, gain_) if t.requires_grad]
                grads = torch.autograd.grad(n, inputs, dn)
                got = dict(zip([id(t) for t in inputs], grads))
                dr, dgain = got.get(id(r_)), got.get(id(gain_))
        return dr, dgain, dw, None, None


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
