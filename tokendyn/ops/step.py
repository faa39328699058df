"""The mixer's one-token step: the causal-conv state update and the selective state update
(one step of THEORY.md section 1's recurrence), each with a plain PyTorch path and a fused
Triton path for CUDA. Both update their state in place, so a decoding loop (or a captured CUDA
graph) keeps the same state tensors from step to step.

    causal_conv1d_update:    s <- (s[..., 1:], x);  out = silu(Σ_k w_k s_k + bias)
    selective_state_update:  Δ = softplus(dt + dt_bias);  h <- exp(Δ A) ⊙ h + Δ B x;
                             y = (C · h + D x) · silu(z)
    add_rms_norm:            r = hidden + residual;  out = RMSNorm(r)   (a block's Add -> Norm)

The fused path computes in float32 (outputs in x's dtype); the plain path in
:func:`~tokendyn.ops.compute_dtype` of x (float64 stays float64). float64 inputs always take
the plain path.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .reference import compute_dtype

# channels per program of the fused kernels
BLOCK_D = {"conv": 64, "state": 32}


def _pow2(n: int) -> int:
    return 1 << max(n - 1, 0).bit_length()


def causal_conv1d_update_reference(conv_state: torch.Tensor, x: torch.Tensor, weight: torch.Tensor,
                                   bias: torch.Tensor | None = None) -> torch.Tensor:
    """The plain path of :func:`causal_conv1d_update`."""
    conv_state.copy_(torch.roll(conv_state, shifts=-1, dims=-1))
    conv_state[:, :, -1] = x
    acc = compute_dtype(x.dtype)
    pre = (conv_state.to(acc) * weight.to(acc)).sum(-1)
    if bias is not None:
        pre = pre + bias.to(acc)
    return F.silu(pre).to(x.dtype)


def causal_conv1d_update(conv_state: torch.Tensor, x: torch.Tensor, weight: torch.Tensor,
                         bias: torch.Tensor | None = None, fused: bool = False) -> torch.Tensor:
    """One step of the causal depthwise conv with SiLU; ``conv_state`` is updated in place.

    Arguments:
        conv_state: (batch, D, K), the last K inputs, oldest first; shifted left by one and
            given x in its last slot.
        x: (batch, D), the new input (any strides).
        weight: (D, K) (``conv1d.weight[:, 0, :]``); bias: (D,) or None.
        fused: use the Triton kernel (CUDA, or Triton's interpreter).
    Returns (batch, D) in x's dtype.
    """
    if not fused or x.dtype == torch.float64 or conv_state.dtype == torch.float64:
        return causal_conv1d_update_reference(conv_state, x, weight, bias)
    from . import _triton_step as K

    batch, dim, width = conv_state.shape
    out = torch.empty((batch, dim), dtype=x.dtype, device=x.device)
    bd = min(BLOCK_D["conv"], _pow2(dim))
    grid = (batch, -(-dim // bd))
    K._conv_update_kernel[grid](conv_state, x, weight, bias, out, dim, *conv_state.stride(), *x.stride(),
                                *weight.stride(), out.stride(0), HAS_BIAS=bias is not None, K=width,
                                KP=max(2, _pow2(width)), BD=bd, num_warps=4)
    return out


def selective_state_update_reference(ssm_state: torch.Tensor, x: torch.Tensor, dt: torch.Tensor,
                                     dt_bias: torch.Tensor | None, A: torch.Tensor, B: torch.Tensor,
                                     C: torch.Tensor, D: torch.Tensor | None = None,
                                     z: torch.Tensor | None = None, a_log: bool = False) -> torch.Tensor:
    """The plain path of :func:`selective_state_update`, in ``ssm_state``'s dtype."""
    acc = ssm_state.dtype
    A = -torch.exp(A.to(acc)) if a_log else A
    dt = dt.to(acc)
    if dt_bias is not None:
        dt = dt + dt_bias.to(acc)
    delta = F.softplus(dt)                                               # (b, D)
    xa = x.to(acc)
    # h = exp(Δ A) ⊙ h + Δ B x   (THEORY.md section 1)
    ssm_state.mul_(torch.exp(delta[:, :, None] * A.to(acc))).add_((delta * xa)[:, :, None] * B.to(acc)[:, None, :])
    y = torch.einsum("bdn,bn->bd", ssm_state, C.to(acc))
    if D is not None:
        y = y + D.to(acc) * xa
    if z is not None:
        y = y * F.silu(z.to(acc))
    return y.to(x.dtype)


def selective_state_update(ssm_state: torch.Tensor, x: torch.Tensor, dt: torch.Tensor,
                           dt_bias: torch.Tensor | None, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                           D: torch.Tensor | None = None, z: torch.Tensor | None = None,
                           fused: bool = False, a_log: bool = False) -> torch.Tensor:
    """One step of the selective scan; ``ssm_state`` is updated in place.

    Arguments:
        ssm_state: (batch, D, N), h before the token (float32; float64 for a float64 model).
        x: (batch, D), the token after the conv; dt: (batch, D), S_Δ x before bias and softplus;
        dt_bias: (D,) or None; A: (D, N); B, C: (batch, N); D: (D,) or None;
        z: (batch, D) or None, the gate. Vectors may have any strides.
        fused: use the Triton kernel (CUDA, or Triton's interpreter; float32 state only).
        a_log: ``A`` holds A_log and the op uses A = −exp(A_log) (a model's parameter as it is,
            computed inside the kernel rather than by three more small kernels per step).
    Returns y: (batch, D) in x's dtype.
    """
    if not fused or ssm_state.dtype != torch.float32 or x.dtype == torch.float64:
        return selective_state_update_reference(ssm_state, x, dt, dt_bias, A, B, C, D, z, a_log=a_log)
    from . import _triton_step as K

    batch, dim, nstate = ssm_state.shape
    y = torch.empty((batch, dim), dtype=x.dtype, device=x.device)
    bd = min(BLOCK_D["state"], _pow2(dim))
    grid = (batch, -(-dim // bd))
    zs = z.stride() if z is not None else (0, 0)
    K._state_update_kernel[grid](ssm_state, x, dt, dt_bias, A, B, C, D, z, y, dim, nstate,
                                 *ssm_state.stride(), *x.stride(), *dt.stride(), *A.stride(), *B.stride(),
                                 *C.stride(), *zs, y.stride(0),
                                 HAS_DTB=dt_bias is not None, HAS_D=D is not None, HAS_Z=z is not None,
                                 A_LOG=a_log, NP=max(2, _pow2(nstate)), BD=bd, num_warps=4)
    return y


def add_rms_norm_reference(hidden: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor,
                           eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The plain path of :func:`add_rms_norm` (what Block's Add -> RMSNorm computes)."""
    residual = hidden if residual is None else hidden + residual
    acc = compute_dtype(weight.dtype)
    x = residual.to(weight.dtype).to(acc)
    normed = F.rms_norm(x, (x.shape[-1],), weight.to(acc), eps).to(weight.dtype)
    return normed, residual.to(compute_dtype(residual.dtype))


def add_rms_norm(hidden: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor, eps: float,
                 fused: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """A block's Add -> RMSNorm for one token, with the residual stream kept in float32.

    Arguments:
        hidden: (batch, d), the previous mixer's output; residual: (batch, d) or None (first
            layer), the residual stream.
        weight: (d,), the norm's weight; eps: its epsilon.
        fused: use the Triton kernel (CUDA, or Triton's interpreter; not for float64).
    Returns (normed (batch, d) in weight's dtype, r = hidden + residual (batch, d) in float32,
    float64 for float64). The sum is rounded to weight's dtype before the norm, as the model's
    RMSNorm receives it; the norm computes in float32.
    """
    if (not fused or torch.float64 in (hidden.dtype, weight.dtype)
            or (residual is not None and residual.dtype != torch.float32)):
        return add_rms_norm_reference(hidden, residual, weight, eps)
    from . import _triton_step as K

    # the kernel reads rows with unit stride
    hidden = hidden if hidden.stride(-1) == 1 else hidden.contiguous()
    if residual is not None and residual.stride(-1) != 1:
        residual = residual.contiguous()
    batch, d = hidden.shape
    normed = torch.empty((batch, d), dtype=weight.dtype, device=hidden.device)
    res_out = torch.empty((batch, d), dtype=torch.float32, device=hidden.device)
    res_stride = residual.stride(0) if residual is not None else 0
    K._add_rms_norm_kernel[(batch,)](hidden, residual, weight, normed, res_out, d, eps, hidden.stride(0),
                                     res_stride, HAS_RES=residual is not None, BLOCK=_pow2(d), num_warps=4)
    return normed, res_out
