"""Products along the channel dim of (batch, channels, L) activations, as the mixer and its fused
nodes use them: each keeps unit stride along L and reads transposed operands in place."""

from __future__ import annotations

import torch


def apply_left(weight: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """weight (out, in) applied along the channels of x (batch, in, L) -> (batch, out, L), contiguous.

    A batched product with the weight broadcast over the batch: the result keeps unit stride
    along L (``weight @ x`` lets torch fold the batch into one product whose result is a
    transposed view)."""
    return torch.bmm(weight.expand(x.shape[0], -1, -1), x)


def weight_grad(g: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The gradient of :func:`apply_left`'s weight: Σ_batch g xᵀ for g (batch, out, L) and
    x (batch, in, L) -> (out, in)."""
    return torch.bmm(g, x.transpose(1, 2)).sum(0)
