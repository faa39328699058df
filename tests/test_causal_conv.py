"""The mixer's causal depthwise conv + SiLU: PyTorch path and fused Triton path against a
float64 oracle written out step by step, outputs and all gradients."""

from __future__ import annotations

import os
import random

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tokendyn.ops.causal_conv import causal_conv1d_silu, causal_conv1d_silu_reference

DEV = os.environ.get("TOKENDYN_TEST_DEVICE", "cuda")
TOL = {torch.float32: 1e-5, torch.bfloat16: 1e-2, torch.float16: 2e-3}


def oracle(x, w, b):
    """float64, one tap at a time: out[t] = silu(b + Σ_k w[k] x[t - (K-1) + k])."""
    x, w = x.double(), w.double()
    K, L = w.shape[1], x.shape[-1]
    pre = torch.zeros_like(x) + (b.double()[:, None] if b is not None else 0.0)
    for k in range(K):
        shift = K - 1 - k
        if shift < L:
            pre[..., shift:] += w[:, k, None] * x[..., : L - shift]
    return pre * torch.sigmoid(pre)


def rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()


def grads(fn, x, w, b, g):
    x, w = x.detach().clone().requires_grad_(), w.detach().clone().requires_grad_()
    b = b.detach().clone().requires_grad_() if b is not None else None
    out = fn(x, w, b)
    out.backward(g.to(out.dtype))
    return out, x.grad, w.grad, (b.grad if b is not None else None)


@settings(max_examples=20)
@given(batch=st.integers(1, 3), dim=st.integers(1, 9), length=st.integers(1, 40), k=st.integers(1, 5),
       has_bias=st.booleans(), seed=st.integers(0, 2**31 - 1))
def test_reference_matches_oracle(batch, dim, length, k, has_bias, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, dim, length, generator=g, dtype=torch.float64)
    w = torch.randn(dim, k, generator=g, dtype=torch.float64)
    b = torch.randn(dim, generator=g, dtype=torch.float64) if has_bias else None
    up = torch.randn(batch, dim, length, generator=g, dtype=torch.float64)
    got = grads(causal_conv1d_silu_reference, x, w, b, up)
    want = grads(oracle, x, w, b, up)
    for a, e in zip(got, want):
        if e is not None:
            assert rel(a, e) < 1e-12


def test_unfused_and_float64_take_the_reference():
    x = torch.randn(2, 3, 7, dtype=torch.float64)
    w = torch.randn(3, 4, dtype=torch.float64)
    assert torch.equal(causal_conv1d_silu(x, w, fused=True), causal_conv1d_silu_reference(x, w))
    assert torch.equal(causal_conv1d_silu(x.float(), w.float()), causal_conv1d_silu_reference(x.float(), w.float()))


# ---- fused (Triton) ------------------------------------------------------------------


@pytest.fixture
def poisoned(monkeypatch):
    from tokendyn.ops import causal_conv

    monkeypatch.setattr(causal_conv, "_empty",
                        lambda shape, dtype, device: torch.full(shape, float("nan"), dtype=dtype, device=device))
    return causal_conv


CASES = [  # batch, dim, length, K, bias, strided input
    (1, 4, 1, 4, True, False),
    (2, 5, 17, 4, True, True),
    (2, 8, 300, 3, False, False),
    (1, 6, 700, 2, True, True),
    (3, 7, 64, 1, True, False),
    (2, 3, 40, 5, True, False),        # more taps than the taps kernel takes: the recompute kernel
]


@pytest.mark.gpu
@pytest.mark.interpretable
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("case", CASES,
                         ids=lambda c: "x".join(map(str, c[:4])) + ("b" if c[4] else "") + ("s" if c[5] else ""))
@pytest.mark.parametrize("kernels", ["shifted/taps", "shifted/recompute", "cols/cols"])
def test_fused_matches_oracle(poisoned, monkeypatch, case, dtype, kernels):
    batch, dim, length, k, has_bias, strided = case
    fwd, bwd = kernels.split("/")
    monkeypatch.setitem(poisoned.LAUNCH, "fwd", fwd)
    monkeypatch.setitem(poisoned.LAUNCH, "bwd", bwd)
    g = torch.Generator(device=DEV).manual_seed(random.SystemRandom().randrange(2**31))
    if strided:  # a channel slice of a wider tensor, as the mixer's x is of in_proj's output
        x = torch.randn(batch, 2 * dim, length, generator=g, device=DEV)[:, dim:].to(dtype)
    else:
        x = torch.randn(batch, dim, length, generator=g, device=DEV).to(dtype)
    w = torch.randn(dim, k, generator=g, device=DEV) * 0.5          # float32 parameters
    b = torch.randn(dim, generator=g, device=DEV) if has_bias else None
    up = torch.randn(batch, dim, length, generator=g, device=DEV)
    got = grads(lambda *a: causal_conv1d_silu(*a, fused=True), x, w, b, up)
    want = grads(oracle, x.double(), w.double(), b.double() if b is not None else None, up.double())
    names = ("out", "dx", "dw", "dbias")
    errs = {n: rel(a, e) for n, a, e in zip(names, got, want) if e is not None}
    print("relative errors:", {n: f"{v:.2e}" for n, v in errs.items()})
    assert got[0].dtype == dtype and got[1].dtype == dtype and got[2].dtype == torch.float32
    for n, a in zip(names, got):
        if a is not None:
            assert not torch.isnan(a).any(), n
    for n, v in errs.items():
        # dw and dbias accumulate in float32 from rounded inputs: same tolerance as out
        assert v < TOL[dtype], (n, v)


@pytest.mark.gpu
@pytest.mark.interpretable
@pytest.mark.parametrize("kernels", ["taps", "recompute", "cols"])
def test_backward_writes_dx_into_a_half_of_a_wider_gradient(poisoned, monkeypatch, kernels):
    """dx= the x half of a (batch, 2·dim, length) buffer (the mixer's xz gradient): the same values
    as a fresh dx, the other half untouched; a dx of another layout is refused."""
    monkeypatch.setitem(poisoned.LAUNCH, "bwd", kernels)
    batch, dim, length, k = 3, 6, 50, 4
    g = torch.Generator(device=DEV).manual_seed(random.SystemRandom().randrange(2**31))
    x = torch.randn(batch, 2 * dim, length, generator=g, device=DEV)[:, :dim]
    w = torch.randn(dim, k, generator=g, device=DEV) * 0.5
    b = torch.randn(dim, generator=g, device=DEV)
    up = torch.randn(batch, dim, length, generator=g, device=DEV)
    fresh, dw, db = poisoned.conv_silu_backward(x, w, b, up)
    wide = torch.zeros(batch, 2 * dim, length, device=DEV)
    for half in (0, 1):   # either half, so that a batch stride taken as dim·length shows
        wide.zero_()
        out = wide[:, half * dim:(half + 1) * dim]
        got, dw2, db2 = poisoned.conv_silu_backward(x, w, b, up, dx=out)
        assert got.data_ptr() == out.data_ptr()
        torch.testing.assert_close(got, fresh, rtol=0, atol=0)
        torch.testing.assert_close(dw2, dw, rtol=0, atol=0)
        assert (wide[:, (1 - half) * dim:(2 - half) * dim] == 0).all()
    with pytest.raises(ValueError, match="dx must be"):
        poisoned.conv_silu_backward(x, w, b, up, dx=torch.zeros(batch, length, dim, device=DEV).transpose(1, 2))
