"""The ``triton`` SSD backend (tokendyn.ops.ssd_triton): its fused forward against the float64
recurrence on fresh random inputs, on NaN-poisoned buffers (an element a kernel forgot to write
fails), across lengths off the chunk, groups, initial states, D, chunk sizes and dtypes; and its
hand-off to the chunked backend where gradients are wanted. On a GPU, or in Triton's interpreter
(TRITON_INTERPRET=1 TOKENDYN_TEST_DEVICE=cpu)."""

from __future__ import annotations

import os
import random

import pytest
import torch

from tokendyn.ops import ssd_scan
from tokendyn.ops import ssd_triton as st
from tokendyn.ops.ssd_chunked import ssd_chunked
from tokendyn.ops.ssd_reference import ssd_reference

pytestmark = [pytest.mark.gpu, pytest.mark.interpretable]

DEV = os.environ.get("TOKENDYN_TEST_DEVICE", "cuda")
# ‖y − ref‖/‖ref‖: float32 sums; 16-bit inputs and outputs rounded to 11 (fp16) or 8 (bf16) bits
TOL = {torch.float32: 2e-5, torch.float16: 3e-3, torch.bfloat16: 2e-2}
# the final state (float32): 16-bit inputs meet in 16-bit matmuls there too, their Δ- and
# decay-weighted x rounded to 11 (fp16) or 8 (bf16) bits
STATE_TOL = {torch.float32: 1e-5, torch.float16: 1e-3, torch.bfloat16: 1e-2}


@pytest.fixture(autouse=True)
def poisoned(monkeypatch):
    monkeypatch.setattr(st, "_empty", lambda shape, dtype, device: torch.full(shape, float("nan"), dtype=dtype,
                                                                              device=device))


def make(b, L, h, p, n, g, dtype, *, D=True, init=True, seed=None):
    gen = torch.Generator(device=DEV).manual_seed(seed if seed is not None else random.SystemRandom().randrange(2**31))

    def rn(*shape):
        return torch.randn(*shape, generator=gen, device=DEV)

    x = rn(b, L, h, p).to(dtype)
    dt = torch.exp(torch.rand(b, L, h, generator=gen, device=DEV) * 3 - 4).to(dtype)   # Δ in [e^-4, e^-1]
    A = -(1 + 7 * torch.rand(h, generator=gen, device=DEV))
    B, C = rn(b, L, g, n).to(dtype), rn(b, L, g, n).to(dtype)
    return x, dt, A, B, C, (rn(h) if D else None), (rn(b, h, p, n) if init else None)


def rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()


def check(shape, dtype, chunk, **kw):
    x, dt, A, B, C, D, h0 = inputs = make(*shape, dtype, **kw)
    y, S = st.ssd_triton(*inputs[:5], D=D, initial_state=h0, return_final_state=True, chunk_size=chunk)
    d = [t.double() if t is not None else None for t in inputs]
    yr, Sr = ssd_reference(*d[:5], D=d[5], initial_state=d[6], return_final_state=True)
    assert y.dtype == x.dtype and y.shape == x.shape and S.dtype == torch.float32
    assert not torch.isnan(y).any()
    assert rel(y, yr) < TOL[dtype], (shape, dtype, chunk, rel(y, yr))
    assert rel(S, Sr) < STATE_TOL[dtype], (shape, dtype, chunk, rel(S, Sr))


@pytest.mark.parametrize("shape, chunk", [
    ((1, 40, 2, 8, 4, 1), 32),          # head_dim and state under a tile: masked columns
    ((2, 77, 4, 16, 16, 2), 32),        # off the chunk, two groups
    ((1, 130, 4, 32, 32, 4), 64),       # a group per head
    ((2, 200, 2, 64, 16, 1), 128),      # a chunk of two output tiles, a short last chunk
    ((1, 1, 2, 8, 8, 1), 64),           # one step
])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_forward_matches_the_float64_recurrence(shape, chunk, dtype):
    check(shape, dtype, chunk)


def test_without_d_and_initial_state():
    check((2, 90, 4, 16, 8, 2), torch.float32, 32, D=False, init=False)


@pytest.mark.skipif(DEV != "cuda", reason="the Mamba-2 defaults (chunk 256) are slow in the interpreter")
def test_mamba2_default_sizes():
    check((2, 700, 4, 64, 128, 1), torch.bfloat16, 256)
    check((1, 513, 8, 64, 64, 2), torch.float32, 256)


GRAD_TOL = {torch.float32: 1e-4, torch.float16: 5e-3, torch.bfloat16: 3e-2}


@pytest.mark.parametrize("shape, chunk, kw", [
    ((1, 40, 2, 8, 4, 1), 32, {}),
    ((2, 77, 4, 16, 16, 2), 32, {}),
    ((1, 100, 2, 16, 16, 1), 64, {"D": False, "init": False}),
    ((1, 130, 4, 32, 32, 4), 64, {}),
    # one step: each batch row's dB is C times one scalar, a sum that can cancel, so a 16-bit
    # rounding is amplified by 1/|cancellation|; four rows keep the norm-wise error well-conditioned
    ((4, 1, 2, 8, 8, 1), 64, {}),
])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("with_final", [True, False])
def test_gradients_match_the_float64_recurrence(shape, chunk, kw, dtype, with_final):
    """The fused backward: the gradients of x, Δ, A, B, C, D and S_0 for a loss on y (and S_L)."""
    inputs = make(*shape, dtype, **kw)
    leaves = [t.clone().requires_grad_() if t is not None else None for t in inputs]
    y, S = st.ssd_triton(*leaves[:5], D=leaves[5], initial_state=leaves[6], return_final_state=True,
                         chunk_size=chunk)
    # the cotangents in the outputs' dtypes, so that the oracle sees exactly what the kernel sees
    gy, gS = torch.randn_like(y), torch.randn_like(S)
    torch.autograd.backward([y, S] if with_final else [y], [gy, gS] if with_final else [gy])
    ref = [t.detach().double().requires_grad_() if t is not None else None for t in inputs]
    yr, Sr = ssd_reference(*ref[:5], D=ref[5], initial_state=ref[6], return_final_state=True)
    torch.autograd.backward([yr, Sr] if with_final else [yr],
                            [gy.double(), gS.double()] if with_final else [gy.double()])
    for name, a, r in zip(("x", "dt", "A", "B", "C", "D", "initial_state"), leaves, ref):
        if a is None:
            continue
        assert a.grad is not None and a.grad.dtype == a.dtype and not torch.isnan(a.grad).any(), name
        assert rel(a.grad, r.grad) < GRAD_TOL[dtype], (name, shape, dtype, rel(a.grad, r.grad))


@pytest.mark.parametrize("dc_pass", [0, 1])
def test_both_ways_to_dc_match_the_float64_recurrence(monkeypatch, dc_pass):
    """dC by its own pass (the default) and by atomic additions from the pairs, with two heads per
    group and a length off the chunk."""
    monkeypatch.setattr(st, "DC_PASS", dc_pass)
    for dtype in (torch.float32, torch.float16):
        test_gradients_match_the_float64_recurrence((2, 77, 4, 16, 16, 2), 32, {}, dtype, True)


def test_mixed_dtypes_take_the_float32_matmuls():
    """16-bit x with float32 B and C (the 16-bit matmuls need one dtype on both sides): the
    forward and the gradients still match the float64 recurrence, to float16's rounding of x."""
    x, dt, A, B, C, D, h0 = make(2, 70, 4, 16, 16, 2, torch.float16, seed=5)
    B, C = B.float(), C.float()
    assert not st._low_precision(x, B) and st._low_precision(x, x)
    leaves = [t.clone().requires_grad_() for t in (x, dt, A, B, C, D, h0)]
    y = st.ssd_triton(*leaves[:5], D=leaves[5], initial_state=leaves[6], chunk_size=32)
    gy = torch.randn_like(y)
    y.backward(gy)
    ref = [t.detach().double().requires_grad_() for t in (x, dt, A, B, C, D, h0)]
    yr = ssd_reference(*ref[:5], D=ref[5], initial_state=ref[6])
    yr.backward(gy.double())
    assert rel(y, yr) < TOL[torch.float16]
    for name, a, r in zip(("x", "dt", "A", "B", "C", "D", "initial_state"), leaves, ref):
        assert rel(a.grad, r.grad) < GRAD_TOL[torch.float16], (name, rel(a.grad, r.grad))


def test_float64_goes_to_the_chunked_backend():
    x, dt, A, B, C, D, h0 = make(1, 50, 2, 8, 8, 1, torch.float32, seed=3)
    d = [t.double() for t in (x, dt, A, B, C, D, h0)]
    y64 = st.ssd_triton(*d[:5], D=d[5], initial_state=d[6], chunk_size=32)
    assert y64.dtype == torch.float64
    assert torch.equal(y64, ssd_chunked(*d[:5], D=d[5], initial_state=d[6], chunk_size=32))
    with torch.no_grad():                                # without gradients: no autograd node
        assert st.ssd_triton(x.requires_grad_(), dt, A, B, C, D=D, chunk_size=32).grad_fn is None


@pytest.mark.skipif(DEV != "cuda", reason="the dispatcher runs triton only on CUDA")
def test_the_dispatcher_runs_triton_by_name(monkeypatch):
    calls = []
    real = st.ssd_triton
    monkeypatch.setattr(st, "ssd_triton", lambda *a, **k: calls.append(1) or real(*a, **k))
    x, dt, A, B, C, D, h0 = make(1, 64, 2, 16, 16, 1, torch.float32, seed=1)
    ssd_scan(x, dt, A, B, C, D=D, backend="auto")
    assert not calls                                      # auto is chunked
    ssd_scan(x, dt, A, B, C, D=D, backend="triton")
    assert calls


def test_strided_inputs_as_the_mamba2_mixer_passes_them():
    """The mixer hands x as a view of its (batch, d_inner, L) activations and B, C as slices of
    one tensor: the kernels read them by their strides."""
    b, L, h, p, n, g = 2, 70, 4, 8, 16, 2
    x0, dt, A, B0, C0, D, h0 = make(b, L, h, p, n, g, torch.float32, seed=5)
    x = x0.reshape(b, L, h * p).transpose(1, 2).contiguous().transpose(1, 2).reshape(b, L, h, p)
    BC = torch.cat([B0, C0], dim=-1)
    B, C = BC[..., :n], BC[..., n:]
    assert not x.is_contiguous() and not B.is_contiguous()
    y = st.ssd_triton(x, dt, A, B, C, D=D, initial_state=h0, chunk_size=32)
    ref = ssd_reference(*(t.double() for t in (x0, dt, A, B0, C0)), D=D.double(), initial_state=h0.double())
    assert rel(y, ref) < TOL[torch.float32]


def test_a_mamba2_model_on_the_fused_scan(tmp_path):
    """A Mamba-2 language model with scan_backend="triton": its logits and every parameter's
    gradient equal those of the same weights on the chunked scan (float32)."""
    from tokendyn.model import MambaConfig, MambaLM

    torch.manual_seed(0)
    cfg = dict(d_model=32, n_layer=2, vocab_size=50, layer="mamba2", head_dim=8, n_groups=2, d_state=16, chunk_size=16)
    fused = MambaLM(MambaConfig(**cfg, scan_backend="triton")).to(DEV)
    plain = MambaLM(MambaConfig(**cfg, scan_backend="chunked")).to(DEV)
    plain.load_state_dict(fused.state_dict())
    ids = torch.randint(0, 50, (2, 40), device=DEV)
    outs = []
    for model in (fused, plain):
        logits = model(ids)
        logits.float().square().mean().backward()
        outs.append((logits.detach(), {n: p.grad for n, p in model.named_parameters()}))
    assert rel(outs[0][0], outs[1][0]) < 1e-5
    for name, g in outs[1][1].items():
        assert rel(outs[0][1][name], g) < 1e-4, name
