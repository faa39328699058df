"""The one-token ops (tokendyn.ops.step): the plain path and the fused Triton kernels against a
float64 oracle written from THEORY.md section 1, on fresh random inputs, strided views included.

GPU tests run on CUDA, or in Triton's interpreter with
``TRITON_INTERPRET=1 TOKENDYN_TEST_DEVICE=cpu`` (tiny shapes).
"""

from __future__ import annotations

import math
import os
import random

import pytest
import torch

from tokendyn.ops.step import add_rms_norm, causal_conv1d_update, selective_state_update

DEV = os.environ.get("TOKENDYN_TEST_DEVICE", "cuda")
# ‖x − ref‖/‖ref‖ limits of the outputs (rounded to the dtype); the float32 states stay far tighter
TOL = {torch.float32: 1e-5, torch.bfloat16: 1e-2, torch.float16: 2e-3, torch.float64: 1e-12}
SHAPES = [(1, 5, 4, 1), (2, 24, 3, 16), (3, 40, 2, 4)]    # (batch, D, K, N): D not a power of two


def rel(x, ref) -> float:
    x, ref = x.double(), ref.double()
    return ((x - ref).norm() / ref.norm()).item()


def gen(device):
    g = torch.Generator(device=device)
    g.manual_seed(random.SystemRandom().randrange(2**31))
    return g


def conv_inputs(b, d, k, dtype, device, bias=True):
    g = gen(device)
    state = torch.randn(b, d, k, generator=g, device=device).to(dtype)
    # x as a strided view (a chunk of a wider in_proj output)
    x = torch.randn(b, 2 * d, generator=g, device=device).to(dtype)[:, :d]
    w = torch.randn(d, k, generator=g, device=device).to(dtype)
    bb = torch.randn(d, generator=g, device=device).to(dtype) if bias else None
    return state, x, w, bb


def conv_oracle(state, x, w, bias):
    s = torch.cat([state.double()[:, :, 1:], x.double()[:, :, None]], dim=-1)
    pre = (s * w.double()).sum(-1) + (bias.double() if bias is not None else 0)
    return s, pre * torch.sigmoid(pre)


def state_inputs(b, d, n, dtype, device, with_z=True, with_D=True):
    g = gen(device)

    def rn(*shape, scale=1.0, shift=0.0):
        return torch.randn(*shape, generator=g, device=device) * scale + shift

    h = rn(b, d, n)                                          # float32 state
    x = rn(b, d).to(dtype)
    dt = rn(b, d, scale=0.5, shift=-2.0).to(dtype)
    dt_bias = rn(d, scale=0.5)
    A = -torch.exp(torch.rand(d, n, generator=g, device=device) * math.log(max(n, 2)) * 1.5 - 0.5)
    # B and C as strided columns of one projection output, as the mixer passes them
    proj = rn(b, 3 * n).to(dtype)
    B, C = proj[:, n:2 * n], proj[:, 2 * n:]
    D = rn(d) if with_D else None
    z = rn(b, d).to(dtype) if with_z else None
    return h, x, dt, dt_bias, A, B, C, D, z


def state_oracle(h, x, dt, dt_bias, A, B, C, D, z):
    h, x, dt, dt_bias, A, B, C, D, z = (None if t is None else t.double() for t in (h, x, dt, dt_bias, A, B, C, D, z))
    delta = torch.nn.functional.softplus(dt + dt_bias)
    h = torch.exp(delta[:, :, None] * A) * h + (delta * x)[:, :, None] * B[:, None, :]
    y = (h * C[:, None, :]).sum(-1)
    if D is not None:
        y = y + D * x
    if z is not None:
        y = y * z * torch.sigmoid(z)
    return h, y


def check_conv(dtype, shape, fused, device, bias=True):
    b, d, k, _ = shape
    state, x, w, bias_t = conv_inputs(b, d, k, dtype, device, bias)
    want_state, want = conv_oracle(state, x, w, bias_t)
    ptr = state.data_ptr()
    out = causal_conv1d_update(state, x, w, bias_t, fused=fused)
    assert state.data_ptr() == ptr and out.dtype == dtype and out.shape == (b, d)
    # the state only moves values: exact up to the dtype
    torch.testing.assert_close(state.double(), want_state, rtol=0, atol=0)
    assert rel(out, want) <= TOL[dtype]


def check_state(dtype, shape, fused, device, with_z=True, with_D=True, a_log=False):
    b, d, _, n = shape
    h, x, dt, dt_bias, A, B, C, D, z = state_inputs(b, d, n, dtype, device, with_z, with_D)
    if dtype == torch.float64:
        h = h.double()
    if a_log:   # A handed over as A_log (what the mixer passes); the oracle takes −exp(A_log)
        A = torch.log(-A)
        want_h, want_y = state_oracle(h, x, dt, dt_bias, -torch.exp(A.double()), B, C, D, z)
    else:
        want_h, want_y = state_oracle(h, x, dt, dt_bias, A, B, C, D, z)
    ptr = h.data_ptr()
    y = selective_state_update(h, x, dt, dt_bias, A, B, C, D, z, fused=fused, a_log=a_log)
    assert h.data_ptr() == ptr and y.dtype == dtype and y.shape == (b, d)
    assert rel(h, want_h) <= (1e-12 if dtype == torch.float64 else 1e-6)
    assert rel(y, want_y) <= TOL[dtype]


# ---- the plain path (CPU) ---------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", SHAPES)
def test_plain_paths_against_float64(dtype, shape):
    check_conv(dtype, shape, False, "cpu")
    check_conv(dtype, shape, False, "cpu", bias=False)
    check_state(dtype, shape, False, "cpu")
    check_state(dtype, shape, False, "cpu", with_z=False, with_D=False, a_log=True)


def test_fused_flag_keeps_float64_exact():
    # float64 always takes the plain path, fused or not (no Triton needed for it)
    check_conv(torch.float64, SHAPES[1], True, "cpu")
    check_state(torch.float64, SHAPES[1], True, "cpu")


# ---- the Triton kernels -------------------------------------------------------------------------

@pytest.mark.gpu
@pytest.mark.interpretable
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", SHAPES)
def test_fused_conv_update_against_float64(dtype, shape):
    check_conv(dtype, shape, True, DEV)
    check_conv(dtype, shape, True, DEV, bias=False)


@pytest.mark.gpu
@pytest.mark.interpretable
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", SHAPES)
def test_fused_state_update_against_float64(dtype, shape):
    check_state(dtype, shape, True, DEV)
    check_state(dtype, shape, True, DEV, with_z=False, with_D=False, a_log=True)


@pytest.mark.gpu
def test_fused_kernels_on_model_sizes():
    """The 129M model's shapes (D = 1536, N = 16, K = 4) at batch 1 and 16."""
    for b in (1, 16):
        for dtype in (torch.float32, torch.bfloat16):
            check_conv(dtype, (b, 1536, 4, 16), True, "cuda")
            check_state(dtype, (b, 1536, 4, 16), True, "cuda")


# ---- Add -> RMSNorm ---------------------------------------------------------------------------

def norm_inputs(b, d, dtype, device, first):
    g = gen(device)
    hidden = torch.randn(b, 2 * d, generator=g, device=device).to(dtype)[:, :d]      # a strided view
    residual = None if first else torch.randn(b, d, generator=g, device=device) * 3
    if dtype == torch.float64 and residual is not None:
        residual = residual.double()
    weight = (1 + 0.3 * torch.randn(d, generator=g, device=device)).to(dtype)
    return hidden, residual, weight


def norm_oracle(hidden, residual, weight, eps):
    r = hidden.double() if residual is None else hidden.double() + residual.double()
    u = r.to(weight.dtype).double()       # the norm sees the sum in its weight's dtype
    return u / torch.sqrt((u * u).mean(-1, keepdim=True) + eps) * weight.double(), r


def check_norm(dtype, b, d, fused, device, first):
    hidden, residual, weight = norm_inputs(b, d, dtype, device, first)
    want, want_r = norm_oracle(hidden, residual, weight, 1e-5)
    normed, r = add_rms_norm(hidden, residual, weight, 1e-5, fused=fused)
    assert normed.dtype == dtype and r.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    assert rel(r, want_r) <= (1e-15 if dtype == torch.float64 else 1e-7)
    assert rel(normed, want) <= TOL[dtype]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("first", [True, False])
def test_add_rms_norm_plain_path_and_the_block(dtype, first):
    check_norm(dtype, 3, 24, False, "cpu", first)
    # the plain path is exactly the forward's Add -> Norm of a block
    from tokendyn.model.blocks import Block, RMSNorm

    block = Block(torch.nn.Identity(), RMSNorm(24).to(dtype), residual_in_fp32=True)
    with torch.no_grad():
        block.norm.weight.normal_()
    hidden, residual, weight = norm_inputs(2, 24, dtype, "cpu", first)
    got = add_rms_norm(hidden, residual, block.norm.weight, block.norm.eps)
    want = block._add_norm(hidden, residual)
    assert all(torch.equal(a, b) for a, b in zip(got, want))


@pytest.mark.gpu
@pytest.mark.interpretable
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("b,d", [(1, 5), (3, 24)])
def test_fused_add_rms_norm_against_float64(dtype, b, d):
    check_norm(dtype, b, d, True, DEV, first=True)
    check_norm(dtype, b, d, True, DEV, first=False)
