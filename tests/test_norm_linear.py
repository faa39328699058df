"""The fused RMSNorm + in_proj node (ops/norm_linear.py) against the composed modules: equal
values and gradients in float64 and under bfloat16 autocast, a block that uses it equal to
one that does not, and the normalised copy no longer kept for the backward."""

from __future__ import annotations

import os
import random

import pytest
import torch

from tokendyn.model import MambaConfig, MambaLM
from tokendyn.model.blocks import RMSNorm
from tokendyn.model.mixer import channel_linear
from tokendyn.ops.norm_linear import rms_norm_linear
from tokendyn.resources import SavedForBackward


def composed(r, norm, weight):
    return channel_linear(weight, norm(r).transpose(1, 2))


@pytest.mark.parametrize("dtype,autocast", [(torch.float64, False), (torch.float32, True)])
def test_matches_norm_then_linear(dtype, autocast):
    g = torch.Generator().manual_seed(torch.seed() % 2**31)
    b, L, d, out = 2, 7, 12, 20
    norm = RMSNorm(d).to(dtype)
    with torch.no_grad():
        norm.weight.add_(0.3 * torch.randn(d, generator=g, dtype=dtype))
    weight = torch.randn(out, d, generator=g, dtype=dtype, requires_grad=True)
    r = torch.randn(b, L, d, generator=g, dtype=dtype, requires_grad=True)
    dy = torch.randn(b, out, L, generator=g, dtype=dtype)
    results = []
    for fn in (composed, lambda r, n, w: rms_norm_linear(r, n.weight, n.eps, w)):
        for t in (r, weight, norm.weight):
            t.grad = None
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            y = fn(r, norm, weight)
        y.backward(dy.to(y.dtype))
        results.append((y.detach(), r.grad.clone(), weight.grad.clone(), norm.weight.grad.clone()))
    (y0, *g0), (y1, *g1) = results
    assert y1.dtype == y0.dtype and y1.stride(-1) == 1
    # the same operations in the same order: equal to rounding of the gradient sums
    torch.testing.assert_close(y1, y0, rtol=0, atol=0)
    tol = 1e-12 if dtype == torch.float64 else 2e-2
    for a, e in zip(g1, g0):
        assert ((a - e).norm() / e.norm()).item() < tol


def test_block_with_fused_norm_equals_composed_and_keeps_less():
    torch.manual_seed(0)
    model = MambaLM(MambaConfig(d_model=32, n_layer=2, vocab_size=50, scan_backend="chunked"))
    ids = torch.randint(0, 50, (2, 24))

    def run(fused):
        for layer in model.backbone.layers:
            layer.mixer.takes_residual = (lambda: fused) if not fused else type(layer.mixer).takes_residual.__get__(
                layer.mixer)
        model.zero_grad()
        # activations by storage (views count once); parameters are kept anyway
        with torch.autocast("cpu", dtype=torch.bfloat16), SavedForBackward(model.parameters()) as saved:
            logits = model(ids)
        logits.float().square().mean().backward()
        return logits.detach(), {k: p.grad.clone() for k, p in model.named_parameters()}, saved.nbytes

    out_f, grads_f, bytes_f = run(True)
    out_c, grads_c, bytes_c = run(False)
    torch.testing.assert_close(out_f, out_c, rtol=0, atol=0)
    for k in grads_c:
        assert ((grads_f[k] - grads_c[k]).norm() / grads_c[k].norm().clamp_min(1e-30)).item() < 2e-2, k
    # per layer the normalised bf16 copy (batch, L, d_model) is no longer kept
    assert bytes_f <= bytes_c - 2 * (2 * 24 * 32 * 2)


# ---- fused (Triton) ----------------------------------------------------------------------

NORM_CASES = [  # batch, L, d, out, rows per program
    (2, 7, 12, 20, 8),          # 14 rows: a program with a partial set of rows
    (1, 1, 5, 3, 8),            # one row, d far from a power of two
    (3, 33, 64, 48, 4),
    (2, 16, 100, 24, 1),
    (1, 3, 2560, 8, 8),         # a wide row: more warps (mamba-2.8b's d_model)
]


def fused_setup(monkeypatch, rows: int):
    """The device of the fused tests, NaN-poisoned kernel buffers (an element a kernel fails to
    write shows), ``rows`` rows per program, and a generator on a fresh seed."""
    from tokendyn.ops import norm_linear

    dev = os.environ.get("TOKENDYN_TEST_DEVICE", "cuda")
    monkeypatch.setattr(norm_linear, "_empty",
                        lambda shape, dtype, device: torch.full(shape, float("nan"), dtype=dtype, device=device))
    monkeypatch.setitem(norm_linear.LAUNCH, "rows", rows)
    return dev, torch.Generator(device=dev).manual_seed(random.SystemRandom().randrange(2**31))


@pytest.mark.gpu
@pytest.mark.interpretable
@pytest.mark.parametrize("out_dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("case", NORM_CASES, ids=lambda c: "x".join(map(str, c)))
def test_fused_norm_matches_the_float64_oracle(monkeypatch, case, out_dtype):
    """The Triton norm + cast, forward and every gradient, against the same node in float64 on
    fresh random inputs; NaN-poisoned buffers show any element a kernel fails to write."""
    dev, g = fused_setup(monkeypatch, case[4])
    b, L, d, out, _ = case
    r = (torch.randn(b, L, d, generator=g, device=dev) * 3).requires_grad_()
    gain = (1 + 0.3 * torch.randn(d, generator=g, device=dev)).requires_grad_()
    weight = (torch.randn(out, d, generator=g, device=dev) / d**0.5).requires_grad_()
    dy = torch.randn(b, out, L, generator=g, device=dev)
    with torch.autocast(dev, dtype=torch.bfloat16, enabled=out_dtype == torch.bfloat16):
        y = rms_norm_linear(r, gain, 1e-5, weight, fused=True)
    assert y.dtype == out_dtype and y.stride(-1) == 1
    y.backward(dy.to(y.dtype))
    r64, gain64, w64 = (t.detach().double().requires_grad_() for t in (r, gain, weight))
    y64 = rms_norm_linear(r64, gain64, 1e-5, w64)
    y64.backward(dy.to(y.dtype).double())
    tol = 1e-5 if out_dtype == torch.float32 else 2e-2
    for name, got, want in (("y", y, y64), ("dr", r.grad, r64.grad), ("dgain", gain.grad, gain64.grad),
                            ("dweight", weight.grad, w64.grad)):
        assert not torch.isnan(got).any(), name
        err = ((got.double().cpu() - want.cpu()).norm() / want.norm().cpu()).item()
        assert err < tol, (name, err)
    assert r.grad.dtype == torch.float32 and gain.grad.dtype == torch.float32


@pytest.mark.gpu
@pytest.mark.interpretable
@pytest.mark.parametrize("h_dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("case", NORM_CASES[:3], ids=lambda c: "x".join(map(str, c)))
def test_fused_add_norm_matches_the_float64_oracle(monkeypatch, case, h_dtype):
    """The block's Add -> RMSNorm -> in_proj in the Triton kernels: y, the stream r = h + res, and
    the gradients of h, res, the gain and the weight, with a gradient arriving on r too (as the
    next block's add sends it), against the same node in float64."""
    from tokendyn.ops.norm_linear import add_rms_norm_linear

    dev, g = fused_setup(monkeypatch, case[4])
    b, L, d, out, _ = case
    h = torch.randn(b, L, d, generator=g, device=dev).to(h_dtype).requires_grad_()
    res = (torch.randn(b, L, d, generator=g, device=dev) * 2).requires_grad_()
    gain = (1 + 0.3 * torch.randn(d, generator=g, device=dev)).requires_grad_()
    weight = (torch.randn(out, d, generator=g, device=dev) / d**0.5).requires_grad_()
    dy = torch.randn(b, out, L, generator=g, device=dev)
    dr = torch.randn(b, L, d, generator=g, device=dev)
    with torch.autocast(dev, dtype=torch.bfloat16, enabled=h_dtype == torch.bfloat16):
        y, r = add_rms_norm_linear(h, res, gain, 1e-5, weight, fused=True)
    assert r.dtype == torch.float32 and y.stride(-1) == 1
    torch.autograd.backward((y, r), (dy.to(y.dtype), dr))
    leaves64 = [t.detach().double().requires_grad_() for t in (h, res, gain, weight)]
    y64, r64 = add_rms_norm_linear(leaves64[0], leaves64[1], leaves64[2], 1e-5, leaves64[3])
    torch.autograd.backward((y64, r64), (dy.to(y.dtype).double(), dr.double()))
    tol = 1e-5 if h_dtype == torch.float32 else 2e-2
    got = (y, r, h.grad, res.grad, gain.grad, weight.grad)
    want = (y64, r64, *(t.grad for t in leaves64))
    for name, a, e in zip(("y", "r", "dh", "dres", "dgain", "dweight"), got, want):
        assert not torch.isnan(a).any(), name
        err = ((a.double().cpu() - e.cpu()).norm() / e.norm().cpu()).item()
        assert err < tol, (name, err)
    assert h.grad.dtype == h_dtype and res.grad.dtype == torch.float32
