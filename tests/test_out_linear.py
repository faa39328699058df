"""The mixer's out_proj node (ops/out_linear.py): values and gradients against PyTorch's linear
map on a float64 oracle, layouts without copies, autocast."""

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from tokendyn.ops.out_linear import out_linear


def _oracle(weight, y):
    return F.linear(y.transpose(1, 2), weight)


@settings(max_examples=15, deadline=None)
@given(batch=st.integers(1, 3), dim=st.integers(1, 9), d_model=st.integers(1, 7), length=st.integers(1, 12),
       seed=st.integers(0, 2**31 - 1))
def test_gradcheck_in_float64(batch, dim, d_model, length, seed):
    g = torch.Generator().manual_seed(seed)
    y = torch.randn(batch, dim, length, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(d_model, dim, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(out_linear, (w, y))
    torch.testing.assert_close(out_linear(w, y), _oracle(w, y), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_matches_the_float64_oracle_with_gradients(dtype):
    g = torch.Generator().manual_seed(0)
    y64 = torch.randn(3, 48, 40, generator=g, dtype=torch.float64)
    w64 = torch.randn(24, 48, generator=g, dtype=torch.float64) / 7
    up = torch.randn(3, 40, 24, generator=g, dtype=torch.float64)
    y, w = y64.to(dtype).requires_grad_(), w64.float().requires_grad_()
    if dtype == torch.bfloat16:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = out_linear(w, y)
    else:
        out = out_linear(w, y)
    assert out.dtype == dtype and out.is_contiguous() and out.shape == (3, 40, 24)
    out.backward(up.to(dtype))
    yo, wo = y.detach().double().requires_grad_(), w.detach().double().requires_grad_()
    want = _oracle(wo, yo)
    want.backward(up.to(dtype).double())
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    for got, ref in ((out, want), (y.grad, yo.grad), (w.grad, wo.grad)):
        assert ((got.double() - ref).norm() / ref.norm()).item() < tol
    assert w.grad.dtype == torch.float32 and y.grad.dtype == dtype


def test_dy_comes_in_the_scans_layout():
    """The backward writes dy with unit stride along L, as the scan's backward reads it."""
    y = torch.randn(2, 6, 5, requires_grad=True)
    w = torch.randn(4, 6, requires_grad=True)
    seen = {}
    y_in = y * 1.0
    y_in.register_hook(lambda g: seen.update(stride=g.stride()))
    out_linear(w, y_in).sum().backward()
    assert seen["stride"] == (30, 5, 1)


def test_only_the_gradients_asked_for():
    y = torch.randn(2, 6, 5)
    w = torch.randn(4, 6, requires_grad=True)
    out_linear(w, y).sum().backward()
    assert w.grad is not None and y.grad is None
