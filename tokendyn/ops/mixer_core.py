"""The mixer's core from the conv input to the gated scan output, as one autograd node that
recomputes its cheap intermediates in the backward (THEORY.md section 1):

    u = silu(causal conv1d(x));   [δ; B; C] = W_x u;   Δ_pre = W_Δ δ
    y = selective_scan(u, Δ_pre, A, B, C, D, z, delta_bias, softplus)

Composed from separate autograd nodes, a training step keeps u and Δ_pre (each
(batch, D, L), the size of x) alive until the backward, because the projections and the
scan save their inputs. Here the node saves only xz (in_proj's output, x and z together, which
is alive anyway), the small x_proj output (batch, R + 2N, L) and the scan's chunk states,
and the backward recomputes u (one conv launch) and Δ_pre (a product with R = d_model/16
inner dimension) before running the scan's backward: two activations of (batch, D, L) per
layer fewer at the cost of re-running the two cheapest launches of the forward.

CUDA (Triton kernels) only; :class:`~tokendyn.model.mixer.MambaMixer` uses it where its conv
and scan run in Triton and falls back to the composed nodes elsewhere. Tested against that
composition (values and every gradient) in tests/test_mixer_core.py.
"""

from __future__ import annotations

import torch

from .causal_conv import conv_silu_backward, conv_silu_forward
from .channel_products import apply_left, weight_grad


class _SelectiveCore(torch.autograd.Function):

    @staticmethod
    def forward(ctx, xz, conv_weight, conv_bias, x_proj_weight, dt_proj_weight, A, D, delta_bias,
                dt_rank, d_state):
        from .triton_scan import scan_forward  # imports Triton: only where it runs

        x, z = xz.chunk(2, dim=1)
        dtype = x.dtype
        # the projections run in the activations' dtype (autocast's choice upstream): weights
        # are cast here, once, as channel_linear does under autocast
        w_x = x_proj_weight.to(dtype)
        w_dt = dt_proj_weight.to(dtype)
        conv_weight = conv_weight.contiguous()
        with torch.autocast(x.device.type, enabled=False):
            u = conv_silu_forward(x, conv_weight, conv_bias)
            x_dbl = apply_left(w_x, u)                                   # (b, R + 2N, L)
            dt, B, C = torch.split(x_dbl, [dt_rank, d_state, d_state], dim=1)
            delta = apply_left(w_dt, dt)                                 # (b, D, L)
            y, saved = scan_forward(u, delta, A, B, C, D, z, delta_bias, True)
        ctx.dims = (dt_rank, d_state)
        ctx.scan = (saved.chunk, saved.cfg)
        # the weights as cast for the products (small), so the backward does not cast them again;
        # the dtypes their gradients go back in
        ctx.weight_dtypes = (x_proj_weight.dtype, dt_proj_weight.dtype)
        ctx.save_for_backward(xz, conv_weight, conv_bias, w_x, w_dt, A, D, delta_bias, x_dbl, saved.states)
        return y

    @staticmethod
    def backward(ctx, dy):
        from .triton_scan import ScanSaved, cast_like, scan_backward

        xz, conv_weight, conv_bias, w_x, w_dt, A, D, delta_bias, x_dbl, states = ctx.saved_tensors
        x, z = xz.chunk(2, dim=1)
        dt_rank, d_state = ctx.dims
        dtype = x.dtype
        # xz's gradient, its two halves written in place by the scan (dz) and the conv (dx)
        # kernels: no concatenation of two (b, D, L) gradients afterwards
        dxz = torch.empty_like(xz, memory_format=torch.contiguous_format)
        dx_out, dz_out = dxz.chunk(2, dim=1)
        with torch.autocast(x.device.type, enabled=False):
            # recomputed instead of saved: the conv output and Δ before bias and softplus
            u = conv_silu_forward(x, conv_weight, conv_bias)
            dt, B, C = torch.split(x_dbl, [dt_rank, d_state, d_state], dim=1)
            delta = apply_left(w_dt, dt)
            du, ddelta, dz, dA, dB, dC, dD, dbias = scan_backward(
                u, delta, A, B, C, D, z, delta_bias, True, dy.contiguous(), ScanSaved(states, *ctx.scan), dz=dz_out)
            del delta
            ddt = apply_left(w_dt.t(), ddelta)                           # (b, R, L)
            dw_dt = weight_grad(ddelta, dt)
            del ddelta
            dx_dbl = torch.cat([ddt, dB.to(dtype), dC.to(dtype)], dim=1)  # (b, R + 2N, L)
            # du += W_xᵀ dx_dbl in the product's epilogue, not as a separate pass over du
            du = torch.baddbmm(du, w_x.t().expand(x.shape[0], -1, -1), dx_dbl)
            dw_x = weight_grad(dx_dbl, u)
            del u
            _, dconv_w, dconv_b = conv_silu_backward(x, conv_weight, conv_bias, du, dx=dx_out)
        wx_dtype, wdt_dtype = ctx.weight_dtypes
        return (dxz, dconv_w, dconv_b, dw_x.to(wx_dtype), dw_dt.to(wdt_dtype),
                cast_like(dA, A), cast_like(dD, D), cast_like(dbias, delta_bias), None, None)


def selective_core(xz, conv_weight, conv_bias, x_proj_weight, dt_proj_weight, A, D, delta_bias,
                   dt_rank: int, d_state: int) -> torch.Tensor:
    """y = selective_scan(silu(conv(x)), W_Δ δ, A, B, C, D, z, delta_bias, softplus) with
    [δ; B; C] = W_x silu(conv(x)), recomputing the conv output and Δ in the backward.

    xz: (batch, 2D, L), x its first D channels and z the rest (in_proj's output), with strides
    (any, L, 1); its gradient comes back as one (batch, 2D, L) tensor;
    conv_weight: (D, K); conv_bias: (D,) or None; x_proj_weight: (R + 2N, D);
    dt_proj_weight: (D, R); A: (D, N) float32; D, delta_bias: (D,) float32.
    Returns y (batch, D, L) in x's dtype. Differentiable in every tensor argument.
    """
    return _SelectiveCore.apply(xz, conv_weight, conv_bias, x_proj_weight, dt_proj_weight, A, D,
                                delta_bias, dt_rank, d_state)
