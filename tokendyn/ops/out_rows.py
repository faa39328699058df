"""The one check of an output buffer a backward kernel writes in place of allocating its own: a
gradient written straight into one half of a wider gradient (the mixer's xz), so that nothing
has to join the halves afterwards."""

from __future__ import annotations

import torch


def rows_per_batch(out: torch.Tensor, like: torch.Tensor, name: str) -> int:
    """m such that ``out`` (batch, dim, length), ``like``'s shape and dtype, has strides
    (m·dim·length, length, 1): a channel slice of a (batch, m·dim, length) buffer (1 for a
    contiguous one). ValueError for any other layout (size-1 dimensions take any stride)."""
    batch, dim, length = like.shape
    row = max(dim * length, 1)
    m = max(out.stride(0) // row, 1) if batch > 1 else 1
    if (out.shape != like.shape or out.dtype != like.dtype or (length > 1 and out.stride(2) != 1)
            or (dim > 1 and out.stride(1) != length) or (batch > 1 and out.stride(0) != m * row)):
        raise ValueError(f"{name} must be {tuple(like.shape)} {like.dtype} with strides (m·{row}, {length}, 1), "
                         f"got {tuple(out.shape)} {out.dtype} strides {out.stride()}.")
    return m
