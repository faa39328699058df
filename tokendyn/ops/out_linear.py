"""The mixer's out_proj from the scan's layout to the residual stream's, as one autograd node
that never copies (THEORY.md section 1: ``out = out_proj(y)``).

    out[b, t, :] = W · y[b, :, t]        y: (batch, D, L); W: (d_model, D); out: (batch, L, d_model)

The scan writes y with unit stride along L, and its backward reads dy in the same layout; the
residual stream is (batch, L, d_model). Composed from PyTorch operations, that turn costs a
transposing copy: of out in the forward (a product along the channels, then a contiguous
transpose), or of dy in the backward (F.linear on y's transposed view). Here each product reads
its operands transposed in place (batched matmuls take any strides), so the forward writes out
contiguous in the stream's layout and the backward writes dy contiguous in the scan's.
"""

from __future__ import annotations

import torch

from .channel_products import apply_left, weight_grad


class _OutLinear(torch.autograd.Function):

    @staticmethod
    def forward(ctx, y, weight):
        ctx.save_for_backward(y, weight)
        return torch.bmm(y.transpose(1, 2), weight.t().expand(y.shape[0], -1, -1))     # (b, L, d_model)

    @staticmethod
    def backward(ctx, dout):
        y, weight = ctx.saved_tensors
        dy = dw = None
        if ctx.needs_input_grad[0]:
            dy = apply_left(weight.t(), dout.transpose(1, 2))                             # (b, D, L)
        if ctx.needs_input_grad[1]:
            dw = weight_grad(dout.transpose(1, 2), y)                                  # (d_model, D)
        return dy, dw


def out_linear(weight: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """weight (d_model, D) applied along the channels of y (batch, D, L) -> (batch, L, d_model),
    contiguous. Under autocast the weight is cast to autocast's dtype first (once, not per batch
    element), and the gradient reaches the parameter in its own dtype through that cast."""
    device = y.device.type
    if torch.is_autocast_enabled(device):
        weight = weight.to(torch.get_autocast_dtype(device))
    with torch.autocast(device, enabled=False):
        return _OutLinear.apply(y, weight.to(y.dtype))
