"""The mixer's causal depthwise convolution followed by SiLU (THEORY.md section 1, "x =
silu(conv1d(x))"), with a plain PyTorch path and a fused Triton path for CUDA.

    out[b, d, t] = silu(bias[d] + Σ_k weight[d, k] · x[b, d, t − (K − 1) + k]),  x = 0 before t = 0

x: (batch, dim, length); weight: (dim, K) (``conv1d.weight[:, 0, :]``); bias: (dim,) or None.
Returns (batch, dim, length) in x's dtype. The fused path computes in float32 with the weights
as given (float32 parameters stay float32 under autocast), reads x with any batch and channel
strides (unit stride along length) and recomputes the pre-activation in the backward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .out_rows import rows_per_batch


def causal_conv1d_silu_reference(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None):
    """PyTorch's depthwise conv1d, padded on both sides and cut back to the first L steps."""
    dim, k = weight.shape
    pre = F.conv1d(x, weight[:, None, :], bias, padding=k - 1, groups=dim)[..., : x.shape[-1]]
    return F.silu(pre)


# launch shape of the fused kernels: channels per program, most steps per program, warps; the
# forward kernel: "shifted" reads x at each of the K shifts, "cols" only at multiples of 8 steps
# (16-byte loads; K ≤ 9); and the backward kernel for filters of at most 4 taps: "taps" reads each
# shifted tile of x and g once, "cols" reads them only at multiples of 8 steps, "recompute"
# re-reads x for every tap's pre-activation (K² tiles; the only kernel for K > 4)
LAUNCH = {"block_d": 4, "block_t": 256, "num_warps": 4, "fwd": "shifted", "bwd": "taps"}
MAX_TAPS_KERNEL = 4
MAX_COLS_FWD = 9


def _empty(shape, dtype, device) -> torch.Tensor:
    """Every buffer a kernel must fill; tests replace this to poison them with NaN."""
    return torch.empty(shape, dtype=dtype, device=device)


def _launch(length: int, dim: int, batch: int):
    """(grid, BD, BT, warps); BT is a power of two of at least 16, no longer than needed."""
    bd = LAUNCH["block_d"]
    bt = max(16, min(LAUNCH["block_t"], 1 << max(length - 1, 0).bit_length()))
    return (-(-length // bt), -(-dim // bd), batch), bd, bt, LAUNCH["num_warps"]


def conv_silu_forward(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """The fused forward launch, outside autograd: x (batch, dim, length) with unit stride
    along length, weight (dim, K) contiguous, bias (dim,) or None -> (batch, dim, length)."""
    from . import _triton_conv as K

    batch, dim, length = x.shape
    out = _empty((batch, dim, length), x.dtype, x.device)
    grid, bd, bt, warps = _launch(length, dim, batch)
    cols = LAUNCH["fwd"] == "cols" and weight.shape[1] <= MAX_COLS_FWD
    kernel = K._conv_silu_fwd_cols_kernel if cols else K._conv_silu_fwd_kernel
    kernel[grid](x, weight, bias, out, length, dim, x.stride(0), x.stride(1), weight.stride(0),
                 HAS_BIAS=bias is not None, K=weight.shape[1], BD=bd, BT=bt, num_warps=warps)
    return out


def conv_silu_backward(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, g: torch.Tensor,
                       dx: torch.Tensor | None = None):
    """The fused backward launch, outside autograd: gradients (dx, dweight, dbias) for the
    upstream g (batch, dim, length); dx in x's dtype, dweight and dbias in the weights' dtypes.
    ``dx``: where to write dx, (batch, dim, length) in x's dtype with strides (m·dim·length,
    length, 1) for a whole m ≥ 1 (the x half of xz's gradient, m = 2, which then needs no
    concatenation); else a new contiguous one."""
    from . import _triton_conv as K

    batch, dim, length = x.shape
    g = g.contiguous()
    grid, bd, bt, warps = _launch(length, dim, batch)
    n_t = grid[0]
    if dx is None:
        dx = _empty((batch, dim, length), x.dtype, x.device)
    # dx's rows per batch element, in units of dim: a compile-time constant, so the store's
    # address costs no more registers than a contiguous dx's
    dxm = rows_per_batch(dx, x, "dx")
    dw = _empty((batch, n_t, dim, weight.shape[1]), torch.float32, x.device)
    dbias = _empty((batch, n_t, dim), torch.float32, x.device) if bias is not None else None
    kernel = K._conv_silu_bwd_kernel
    if weight.shape[1] <= MAX_TAPS_KERNEL:
        kernel = {"taps": K._conv_silu_bwd_taps_kernel, "cols": K._conv_silu_bwd_cols_kernel}.get(LAUNCH["bwd"], kernel)
    kernel[grid](x, weight, bias, g, dx, dw, dbias, length, dim, x.stride(0), x.stride(1), weight.stride(0),
                 HAS_BIAS=bias is not None, K=weight.shape[1], BD=bd, BT=bt, DXM=dxm, num_warps=warps)
    dw = dw.sum((0, 1)).to(weight.dtype)
    dbias = dbias.sum((0, 1)).to(bias.dtype) if bias is not None else None
    return dx, dw, dbias


class _CausalConvSiLUTriton(torch.autograd.Function):

    @staticmethod
    def forward(ctx, x, weight, bias):
        if x.stride(-1) != 1:
            x = x.contiguous()
        weight = weight.contiguous()
        ctx.save_for_backward(x, weight, bias)
        return conv_silu_forward(x, weight, bias)

    @staticmethod
    def backward(ctx, g):
        return conv_silu_backward(*ctx.saved_tensors, g)


def causal_conv1d_silu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                       fused: bool = False) -> torch.Tensor:
    """silu(causal depthwise conv1d(x)); ``fused`` selects the Triton kernels (CUDA, or Triton's
    interpreter), otherwise PyTorch's conv1d. float64 and empty inputs always take PyTorch's path.

    x: (batch, dim, length); weight: (dim, K); bias: (dim,) or None -> (batch, dim, length).
    """
    if not fused or x.dtype == torch.float64 or x.numel() == 0:
        return causal_conv1d_silu_reference(x, weight, bias)
    return _CausalConvSiLUTriton.apply(x, weight, bias)
