"""The Mamba-2 (SSD) scan's backends against a float64 oracle (docs/scan.md, "The Mamba-2 (SSD)
scan"), its one-token step, its matrix form, its input checks and the GPU benchmark's CPU smoke mode.

The oracle is the reference recurrence run in float64 on the same (dtype-rounded) inputs; the
reference itself is checked against the unrolled matrix form y = M x + D x and its final state
against a closed form, neither of which uses the recurrence.
"""

from __future__ import annotations

import json
import os
import sys

import pytest
import torch
import torch.nn.functional as F
from bench_helpers import load_benchmark
from error_helpers import one_sentence
from hypothesis import example, given, settings
from hypothesis import strategies as st
from torch.profiler import ProfilerActivity, profile

from tokendyn.errors import (
    BackendUnavailableError,
    ConfigError,
    ScanInputError,
    TokendynError,
    UnknownBackendError,
)
from tokendyn.ops import (
    resolve_ssd_backend,
    ssd_backend_names,
    ssd_chunked,
    ssd_matrix,
    ssd_reference,
    ssd_scan,
    ssd_step,
)
from tokendyn.ops.ssd_reference import segsum

BACKENDS = ["reference", "chunked"]
# Relative error (max abs error / max abs oracle) allowed per input dtype; bfloat16 outputs are
# rounded to 8 significant bits (2^-8 ≈ 0.004 relative).
FWD_TOL = {torch.float64: 1e-11, torch.float32: 2e-5, torch.bfloat16: 1.6e-2}
GRAD_TOL = {torch.float64: 1e-10, torch.float32: 1e-4}
NAMES = ("x", "dt", "A", "B", "C", "D", "initial_state")


def make_inputs(batch, length, heads, hdim, groups, state, *, dtype=torch.float32, seed=0,
                use_D=True, use_init=True, device="cpu"):
    """Random inputs in the contract's layout with Mamba-2-like magnitudes: Δ = softplus(N(-2, 1))
    (≈ 0.13), A = -exp(N(0, 0.5)) (negative), x, B, C, D and the initial state N(0, 1)."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    ins = {
        "x": rnd(batch, length, heads, hdim),
        "dt": F.softplus(rnd(batch, length, heads) - 2.0),
        "A": -torch.exp(0.5 * rnd(heads)),
        "B": rnd(batch, length, groups, state),
        "C": rnd(batch, length, groups, state),
        "D": rnd(heads) if use_D else None,
        "initial_state": rnd(batch, heads, hdim, state) if use_init else None,
    }
    return {k: (None if v is None else v.to(device=device, dtype=dtype)) for k, v in ins.items()}


def as64(ins):
    return {k: (None if v is None else v.detach().to(torch.float64).cpu()) for k, v in ins.items()}


def rel_err(x, ref):
    x, ref = x.detach().to(torch.float64).cpu(), ref.detach().to(torch.float64).cpu()
    if ref.numel() == 0:
        return 0.0
    return ((x - ref).abs().max() / ref.abs().max().clamp_min(1e-30)).item()


@st.composite
def shapes(draw, max_batch=2):
    """(batch, length, heads, head_dim, groups, state, chunk): lengths around chunk boundaries
    (0, 1, T-1, T, T+1, several chunks and a tail) and anywhere up to 70; several groups."""
    chunk = draw(st.sampled_from([1, 4, 8, 16]))
    length = draw(st.one_of(
        st.sampled_from([0, 1, max(chunk - 1, 0), chunk, chunk + 1, 2 * chunk + 3, 3 * chunk]),
        st.integers(0, 70)))
    groups = draw(st.sampled_from([1, 2, 3]))
    heads = groups * draw(st.sampled_from([1, 2]))
    return (draw(st.integers(1, max_batch)), length, heads, draw(st.sampled_from([1, 3, 4])), groups,
            draw(st.sampled_from([1, 2, 5, 8])), chunk)


def matrix_form(x, dt, A, B, C, D=None, initial_state=None):
    """y = M x + D x with M from :func:`ssd_matrix` (no recurrence); zero initial state only."""
    assert initial_state is None
    y = torch.einsum("bhts,bshp->bthp", ssd_matrix(dt, A, B, C), x)
    return y if D is None else y + x * D[:, None]


def closed_form_final_state(x, dt, A, B, C, D=None, initial_state=None):
    """S_L = exp(A Σ_r Δ_r) S_0 + Σ_s exp(A Σ_{r>s} Δ_r) Δ_s x_s ⊗ B_s, float64, no recurrence."""
    heads = x.shape[2]
    Bh = B.repeat_interleave(heads // B.shape[2], dim=2)                         # (b, l, h, n)
    after = dt.sum(1, keepdim=True) - dt.cumsum(1)                               # Σ_{r>s} Δ_r
    S = torch.einsum("blh,blhp,blhn->bhpn", torch.exp(after * A) * dt, x, Bh)
    if initial_state is not None:
        S = S + torch.exp(dt.sum(1) * A)[..., None, None] * initial_state
    return S


# ----------------------------------------------------------------------------- oracle checks

@settings(max_examples=20)
@given(shape=shapes(), use_D=st.booleans(), seed=st.integers(0, 2**31 - 1))
def test_reference_matches_matrix_and_closed_forms(shape, use_D, seed):
    batch, length, heads, hdim, groups, state, _ = shape
    ins = make_inputs(batch, length, heads, hdim, groups, state, dtype=torch.float64, seed=seed,
                      use_D=use_D, use_init=False)
    y, last = ssd_reference(**ins, return_final_state=True)
    assert rel_err(y, matrix_form(**ins)) < 1e-12
    init = make_inputs(batch, 1, heads, hdim, groups, state, dtype=torch.float64, seed=seed + 1)["initial_state"]
    _, last = ssd_reference(**{**ins, "initial_state": init}, return_final_state=True)
    assert rel_err(last, closed_form_final_state(**{**ins, "initial_state": init})) < 1e-12


def test_segsum_is_the_causal_segment_sum():
    a = torch.tensor([[1.0, 2.0, 4.0, 8.0]], dtype=torch.float64)
    inf = float("-inf")
    want = torch.tensor([[[0, inf, inf, inf], [2, 0, inf, inf], [6, 4, 0, inf], [14, 12, 8, 0]]],
                        dtype=torch.float64)
    assert torch.equal(segsum(a), want)


# ----------------------------------------------------------------------------- forward

@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@settings(max_examples=20)
@given(shape=shapes(), flags=st.tuples(st.booleans(), st.booleans()), seed=st.integers(0, 2**31 - 1))
def test_forward_matches_float64_oracle(backend, dtype, shape, flags, seed):
    batch, length, heads, hdim, groups, state, chunk = shape
    use_D, use_init = flags
    ins = make_inputs(batch, length, heads, hdim, groups, state, dtype=dtype, seed=seed, use_D=use_D,
                      use_init=use_init)
    y, last = ssd_scan(**ins, return_final_state=True, backend=backend, chunk_size=chunk)
    want, want_last = ssd_reference(**as64(ins), return_final_state=True)
    assert y.dtype == dtype and y.shape == (batch, length, heads, hdim)
    assert last.dtype == torch.float32 and last.shape == (batch, heads, hdim, state)
    assert rel_err(y, want) < FWD_TOL[dtype]
    assert rel_err(last, want_last) < FWD_TOL[torch.float32]       # the state is kept in float32


@pytest.mark.parametrize("length", [0, 1, 63, 64, 65, 130])
def test_default_chunk_boundaries(length):
    """The default chunk of 64 around its boundary, float32, several groups and an initial state."""
    ins = make_inputs(2, length, 4, 8, 2, 16, seed=length)
    y, last = ssd_scan(**ins, return_final_state=True)
    want, want_last = ssd_reference(**as64(ins), return_final_state=True)
    assert rel_err(y, want) < FWD_TOL[torch.float32] and rel_err(last, want_last) < FWD_TOL[torch.float32]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("length", [1, 5, 33])
def test_float64_stays_float64(backend, length):
    ins = make_inputs(2, length, 4, 3, 2, 5, dtype=torch.float64, seed=length, use_init=False)
    y, last = ssd_scan(**ins, return_final_state=True, backend=backend, chunk_size=8)
    assert y.dtype == torch.float64 and last.dtype == torch.float64
    assert rel_err(y, matrix_form(**ins)) < FWD_TOL[torch.float64]


@settings(max_examples=20)
@given(length=st.integers(0, 100), chunk=st.integers(1, 40), seed=st.integers(0, 2**31 - 1))
def test_chunked_any_chunk_size(length, chunk, seed):
    """Chunk boundaries anywhere (non-multiples, one-step chunks, a chunk longer than the input)."""
    ins = make_inputs(1, length, 4, 2, 2, 3, dtype=torch.float64, seed=seed)
    y, last = ssd_chunked(**ins, return_final_state=True, chunk_size=chunk)
    want, want_last = ssd_reference(**ins, return_final_state=True)
    assert rel_err(y, want) < FWD_TOL[torch.float64] and rel_err(last, want_last) < FWD_TOL[torch.float64]


@pytest.mark.parametrize("backend", BACKENDS)
def test_length_zero(backend):
    ins = make_inputs(2, 0, 4, 3, 2, 5, dtype=torch.float32)
    init = ins["initial_state"].clone().requires_grad_(True)
    y, last = ssd_scan(**{**ins, "initial_state": init}, return_final_state=True, backend=backend)
    assert y.shape == (2, 0, 4, 3) and torch.equal(last, init)
    assert last.data_ptr() != init.data_ptr()                       # the caller's tensor is not handed back
    (last * 2).sum().backward()
    assert torch.equal(init.grad, torch.full_like(init, 2.0))
    _, zero = ssd_scan(**{**ins, "initial_state": None}, return_final_state=True, backend=backend)
    assert zero.shape == (2, 4, 3, 5) and not zero.any()


@pytest.mark.parametrize("backend", BACKENDS)
@settings(max_examples=15)
@given(shape=shapes(), cut=st.floats(0, 1), seed=st.integers(0, 2**31 - 1))
def test_split_sequence_through_the_final_state(backend, shape, cut, seed):
    """Scanning a prefix, then the rest from the prefix's final state, is the whole scan."""
    batch, length, heads, hdim, groups, state, chunk = shape
    ins = make_inputs(batch, length, heads, hdim, groups, state, dtype=torch.float64, seed=seed)
    k = round(cut * length)
    part = [{n: (v[:, sl] if v is not None and n in ("x", "dt", "B", "C") else v) for n, v in ins.items()}
            for sl in (slice(0, k), slice(k, None))]
    y1, s1 = ssd_scan(**part[0], return_final_state=True, backend=backend, chunk_size=chunk)
    y2, s2 = ssd_scan(**{**part[1], "initial_state": s1}, return_final_state=True, backend=backend,
                      chunk_size=chunk)
    y, s = ssd_reference(**ins, return_final_state=True)
    assert rel_err(torch.cat([y1, y2], 1), y) < FWD_TOL[torch.float64]
    assert rel_err(s2, s) < FWD_TOL[torch.float64]


def test_strong_decay_stays_finite():
    """Δ ≈ 5 and A = -16: decays of e^-80 per step underflow to 0 — no inf or NaN, forward or backward."""
    ins = make_inputs(1, 300, 2, 4, 1, 8, seed=7)
    ins["dt"] = ins["dt"] + 5.0
    ins["A"] = torch.full((2,), -16.0)
    leaves = {k: v.clone().requires_grad_(True) for k, v in ins.items()}
    y, last = ssd_chunked(**leaves, return_final_state=True, chunk_size=64)
    assert torch.isfinite(y).all() and torch.isfinite(last).all()
    want = ssd_reference(**as64(ins))
    assert rel_err(y, want) < FWD_TOL[torch.float32]
    (y.square().mean() + last.sum()).backward()
    for name, t in leaves.items():
        assert torch.isfinite(t.grad).all(), name


def _backward_bytes(length):
    """Bytes the backward of a chunked scan (chunk 4) allocates in all, at ``length``."""
    ins = make_inputs(1, length, 2, 8, 1, 8)
    leaves = {k: v.clone().requires_grad_(True) for k, v in ins.items()}
    y, last = ssd_chunked(**leaves, return_final_state=True, chunk_size=4)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        (y.sum() + last.sum()).backward()
    return sum(max(e.self_cpu_memory_usage, 0) for e in prof.events())


def test_chunked_backward_is_linear_in_length():
    """Four times the chunks, about four times the memory traffic of the backward (the scan over
    chunks once wrote every chunk's gradient into a zero tensor of all chunks: quadratic, 14×)."""
    ratio = _backward_bytes(1024) / _backward_bytes(256)
    assert 3 < ratio < 6, ratio


# ----------------------------------------------------------------------------- gradients

def grads(fn, ins, weights, **kw):
    leaves = {k: v.detach().clone().requires_grad_(True) for k, v in ins.items() if v is not None}
    y, last = fn(**{k: leaves.get(k) for k in NAMES}, return_final_state=True, **kw)
    loss = (y.to(torch.float64) * weights[0]).sum() + (last.to(torch.float64) * weights[1]).sum()
    if not loss.requires_grad:          # length 0 from a zero state: the outputs depend on nothing
        return {k: torch.zeros_like(v) for k, v in leaves.items()}
    gs = torch.autograd.grad(loss, list(leaves.values()), allow_unused=True, materialize_grads=True)
    return dict(zip(leaves, gs))


@settings(max_examples=25)
@given(shape=shapes(), flags=st.tuples(st.booleans(), st.booleans()), seed=st.integers(0, 2**31 - 1))
@example(shape=(1, 11, 1, 1, 1, 2, 4), flags=(True, True), seed=237)     # A's gradient cancels to -4e-4
def test_chunked_gradients_match_float64_reference(shape, flags, seed):
    """Gradients of all of x, Δ, A, B, C, D and the initial state, for a loss on y and S_L."""
    batch, length, heads, hdim, groups, state, chunk = shape
    use_D, use_init = flags
    ins = make_inputs(batch, length, heads, hdim, groups, state, seed=seed, use_D=use_D, use_init=use_init)
    g = torch.Generator().manual_seed(seed + 1)
    weights = (torch.randn(batch, length, heads, hdim, generator=g, dtype=torch.float64),
               torch.randn(batch, heads, hdim, state, generator=g, dtype=torch.float64))
    got = grads(ssd_chunked, ins, weights, chunk_size=chunk)
    want = grads(ssd_reference, as64(ins), weights)
    # a gradient that is a sum over many positions (A's, D's) can cancel to a small value, whose
    # float32 relative error is then large in any float32 computation: the bound is the tolerance or
    # a few times the float32 recurrence's own error, whichever is larger
    plain = grads(ssd_reference, ins, weights)
    assert set(got) == set(want)
    for name in want:
        assert got[name].dtype == ins[name].dtype, name
        bound = max(GRAD_TOL[torch.float32], 4 * rel_err(plain[name], want[name]))
        assert rel_err(got[name], want[name]) < bound, name


@pytest.mark.parametrize("length,chunk,groups", [(1, 4, 1), (7, 3, 2), (20, 4, 1), (13, 16, 2)])
def test_chunked_gradcheck_float64(length, chunk, groups):
    """Several chunks, a tail, one chunk longer than the input; every input differentiable."""
    ins = make_inputs(1, length, 2, 2, groups, 3, dtype=torch.float64, seed=length)
    tensors = [ins[k].clone().requires_grad_(True) for k in NAMES]

    def fn(*ts):
        return ssd_chunked(*ts[:6], initial_state=ts[6], return_final_state=True, chunk_size=chunk)

    assert torch.autograd.gradcheck(fn, tensors, fast_mode=True)


def test_bfloat16_gradients_flow():
    """bfloat16 leaves get bfloat16 gradients close to the float64 reference's (loose: rounded inputs)."""
    ins = make_inputs(2, 40, 4, 4, 2, 8, dtype=torch.bfloat16, seed=3)
    weights = (torch.randn(2, 40, 4, 4, dtype=torch.float64), torch.randn(2, 4, 4, 8, dtype=torch.float64))
    got = grads(ssd_chunked, ins, weights, chunk_size=16)
    want = grads(ssd_reference, as64(ins), weights)
    for name in want:
        assert got[name].dtype == torch.bfloat16 and rel_err(got[name], want[name]) < 3e-2, name


# ----------------------------------------------------------------------------- step and matrix

@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@settings(max_examples=12)
@given(shape=shapes(), use_D=st.booleans(), seed=st.integers(0, 2**31 - 1))
def test_step_by_step_equals_the_scan(dtype, shape, use_D, seed):
    batch, length, heads, hdim, groups, state, chunk = shape
    ins = make_inputs(batch, length, heads, hdim, groups, state, dtype=dtype, seed=seed, use_D=use_D)
    y, last = ssd_chunked(**ins, return_final_state=True, chunk_size=chunk)
    s = ins["initial_state"].to(last.dtype)
    ys = []
    for t in range(length):
        before = s.clone()
        y_t, s_new = ssd_step(s, ins["x"][:, t], ins["dt"][:, t], ins["A"], ins["B"][:, t], ins["C"][:, t],
                              ins["D"])
        assert torch.equal(s, before)                                # the step returns, never overwrites
        ys.append(y_t)
        s = s_new
    stepped = torch.stack(ys, 1) if ys else y
    assert stepped.dtype == dtype and s.dtype == last.dtype
    tol = FWD_TOL[dtype] * 10 if dtype == torch.float64 else FWD_TOL[dtype]
    assert rel_err(stepped, y) < tol and rel_err(s, last) < tol


def test_step_keeps_the_state_dtype():
    ins = make_inputs(2, 1, 4, 3, 2, 5, dtype=torch.bfloat16)
    state = ins["initial_state"].float()
    y, new = ssd_step(state, ins["x"][:, 0], ins["dt"][:, 0], ins["A"], ins["B"][:, 0], ins["C"][:, 0], ins["D"])
    assert y.dtype == torch.bfloat16 and new.dtype == torch.float32
    want, want_s = ssd_reference(**as64(ins), return_final_state=True)
    assert rel_err(y, want[:, 0]) < FWD_TOL[torch.bfloat16] and rel_err(new, want_s) < FWD_TOL[torch.bfloat16]


@settings(max_examples=15)
@given(shape=shapes(), seed=st.integers(0, 2**31 - 1))
def test_matrix_reproduces_the_chunked_scan(shape, seed):
    batch, length, heads, hdim, groups, state, chunk = shape
    ins = make_inputs(batch, length, heads, hdim, groups, state, seed=seed, use_init=False)
    M = ssd_matrix(ins["dt"], ins["A"], ins["B"], ins["C"])
    assert M.shape == (batch, heads, length, length) and M.dtype == torch.float32
    assert not M.triu(1).any()                                        # causal: nothing above the diagonal
    y = torch.einsum("bhts,bshp->bthp", M, ins["x"]) + ins["x"] * ins["D"][:, None]
    assert rel_err(y, ssd_chunked(**ins, chunk_size=chunk)) < FWD_TOL[torch.float32]


def test_matrix_entries():
    """M[t, s] = C_t·B_s exp(A Σ_{r=s+1..t} Δ_r) Δ_s, entry by entry, two groups of two heads."""
    ins = make_inputs(1, 5, 4, 1, 2, 3, dtype=torch.float64, seed=11)
    dt, A, B, C = ins["dt"][0], ins["A"], ins["B"][0], ins["C"][0]
    M = ssd_matrix(ins["dt"], A, ins["B"], ins["C"])[0]
    for h in range(4):
        for t in range(5):
            for s in range(t + 1):
                want = C[t, h // 2] @ B[s, h // 2] * torch.exp(A[h] * dt[s + 1:t + 1, h].sum()) * dt[s, h]
                assert torch.allclose(M[h, t, s], want, rtol=1e-13, atol=0)


# ----------------------------------------------------------------------------- bad input

def good(batch=2, length=5, heads=4, hdim=3, groups=2, state=6, **over):
    t = make_inputs(batch, length, heads, hdim, groups, state)
    t.update(over)
    return t


@pytest.mark.parametrize("name,bad,pattern", [
    ("x", torch.randn(2, 5, 4), r"ssd_scan: x must be \(batch, length, heads, head_dim\), got shape \(2, 5, 4\)"),
    ("B", torch.randn(2, 5, 3, 6), r"the head count 4 is not divisible by n_groups 3 \(B has shape \(2, 5, 3, 6\)"),
    ("B", torch.randn(2, 5, 12), r"B must be \(batch, length, n_groups, state\), got shape \(2, 5, 12\)"),
    ("B", torch.randn(2, 4, 2, 6), r"B must have shape \(2, 5, 2, 6\), got \(2, 4, 2, 6\)"),
    ("C", torch.randn(2, 5, 2, 7), r"C must have shape \(2, 5, 2, 6\), got \(2, 5, 2, 7\) \(x is \(batch=2, "
                                   r"length=5, heads=4, head_dim=3\), B has n_groups=2, state=6\)"),
    ("C", torch.randn(2, 5, 1, 6), r"C must have shape \(2, 5, 2, 6\), got \(2, 5, 1, 6\)"),
    ("dt", torch.rand(2, 5, 4, 1), r"dt must have shape \(2, 5, 4\), got \(2, 5, 4, 1\)"),
    ("dt", torch.rand(2, 6, 4), r"dt must have shape \(2, 5, 4\), got \(2, 6, 4\)"),
    ("A", -torch.rand(4, 6), r"A must have shape \(4,\), got \(4, 6\)"),
    ("D", torch.randn(4, 3), r"D must have shape \(4,\), got \(4, 3\)"),
    ("initial_state", torch.randn(2, 4, 6, 3), r"initial_state must have shape \(2, 4, 3, 6\), got \(2, 4, 6, 3\)"),
])
def test_scan_wrong_shapes(name, bad, pattern):
    with pytest.raises(ScanInputError, match=pattern) as info:
        ssd_scan(**good(**{name: bad}))
    one_sentence(info.value)


@pytest.mark.parametrize("name", ["x", "B", "initial_state"])
def test_scan_wrong_dtypes_and_types(name):
    with pytest.raises(ScanInputError, match=rf"ssd_scan: {name} has dtype torch.int64; expected a real floating"):
        ssd_scan(**good(**{name: good()[name].long()}))
    with pytest.raises(ScanInputError, match=rf"ssd_scan: {name} must be a torch.Tensor, got list") as info:
        ssd_scan(**good(**{name: [1.0]}))
    one_sentence(info.value)


def test_scan_mismatched_devices():
    # The meta device needs no hardware: shapes and devices are checked before any work.
    with pytest.raises(ScanInputError, match=r"all tensors must be on one device, got \['cpu', 'meta'\]") as info:
        ssd_scan(**good(C=torch.empty(2, 5, 2, 6, device="meta")))
    one_sentence(info.value)


def test_backend_names_and_chunk_size():
    assert ssd_backend_names() == ["reference", "chunked", "triton", "auto"]
    assert resolve_ssd_backend("auto") == "chunked" and resolve_ssd_backend("auto", "cpu") == "chunked"
    with pytest.raises(UnknownBackendError, match=r"unknown ssd scan backend 'fused'; choose one of "
                                                  r"reference, chunked, triton, auto") as info:
        ssd_scan(**good(), backend="fused")
    one_sentence(info.value)
    if os.environ.get("TRITON_INTERPRET") != "1" and not torch.cuda.is_available():
        with pytest.raises(BackendUnavailableError, match="the triton ssd backend needs a CUDA device") as info:
            ssd_scan(**good(), backend="triton")
        one_sentence(info.value)
    with pytest.raises(ConfigError, match=r"chunk_size must be a positive number of steps, got 0") as info:
        ssd_scan(**good(), chunk_size=0)
    one_sentence(info.value)


def test_step_and_matrix_wrong_shapes():
    t = good(length=1)
    step = {"state": t["initial_state"], "x": t["x"][:, 0], "dt": t["dt"][:, 0], "A": t["A"],
            "B": t["B"][:, 0], "C": t["C"][:, 0], "D": t["D"]}
    cases = [
        ({"state": torch.randn(2, 4, 3)}, r"ssd_step: state must be \(batch, heads, head_dim, state\), got shape"),
        ({"B": torch.randn(2, 3, 6)}, r"ssd_step: the head count 4 is not divisible by n_groups 3"),
        ({"x": torch.randn(2, 4, 2)}, r"ssd_step: x must have shape \(2, 4, 3\), got \(2, 4, 2\)"),
        ({"C": torch.randn(2, 2, 5)}, r"ssd_step: C must have shape \(2, 2, 6\), got \(2, 2, 5\)"),
        ({"dt": torch.rand(2, 1, 4)}, r"ssd_step: dt must have shape \(2, 4\), got \(2, 1, 4\)"),
    ]
    for over, pattern in cases:
        with pytest.raises(ScanInputError, match=pattern) as info:
            ssd_step(**{**step, **over})
        one_sentence(info.value)
    with pytest.raises(ScanInputError, match=r"ssd_matrix: dt must be \(batch, length, heads\), got shape \(2, 5\)"):
        ssd_matrix(torch.rand(2, 5), t["A"], t["B"], t["C"])
    with pytest.raises(ScanInputError, match=r"ssd_matrix: the head count 4 is not divisible by n_groups 3") as info:
        ssd_matrix(torch.rand(2, 1, 4), t["A"], torch.randn(2, 1, 3, 6), torch.randn(2, 1, 3, 6))
    one_sentence(info.value)
    with pytest.raises(TokendynError):                                # one exception tree
        ssd_scan(**good(x=torch.randn(3)))


# ----------------------------------------------------------------------------- the benchmark

@pytest.fixture(scope="module")
def bench():
    return load_benchmark("ssd_gpu")


def test_gpu_benchmark_cpu_smoke(bench, tmp_path):
    """benchmarks/ssd_gpu.py --cpu-smoke: tiny shapes on the CPU, no peer; it checks agreement with
    the float64 run first and writes its JSON."""
    out = tmp_path / "ssd.json"
    assert bench.main(["--cpu-smoke", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["complete"] is True and data["peer"] is None
    for key in ("device", "date", "commit", "command"):
        assert key in data["provenance"], key
    assert "--cpu-smoke" in data["provenance"]["command"]
    rows = data["rows"]
    assert len(rows) == len(bench.SMOKE_SHAPES) and all(r["check"]["ok"] for r in rows)
    for r in rows:
        assert r["chunked"]["fwd_ms"] > 0 and r["chunked"]["fwdbwd_ms"] > 0
        assert r["ratio_fwd"] is None and r["ratio_fwdbwd"] is None   # no peer on the CPU
    for bad in (["--rounds", "0"], ["--chunk-size", "0"]):
        with pytest.raises(SystemExit):
            bench.parse_args(bad)


def test_gpu_benchmark_loads_the_peer_from_its_source(bench, tmp_path, monkeypatch):
    """--peer-source: the Triton SSD is imported from a source tree by its path alone, without the
    package's __init__ (which would load CUDA extensions); a tree without the package says so."""
    tree = tmp_path / "mamba_ssm-9.9"
    (tree / "mamba_ssm" / "ops" / "triton").mkdir(parents=True)
    (tree / "mamba_ssm" / "__init__.py").write_text('__version__ = "9.9"\nraise ImportError("CUDA")\n')
    for sub in ("ops", "ops/triton"):
        (tree / "mamba_ssm" / sub / "__init__.py").write_text("")
    (tree / "mamba_ssm" / "ops" / "triton" / "ssd_combined.py").write_text(
        "def mamba_chunk_scan_combined(*args, **kwargs):\n    return 'peer'\n")
    def forget_peer():   # an installed or fake mamba_ssm must not leak into or out of the test
        for name in [m for m in sys.modules if m == "mamba_ssm" or m.startswith("mamba_ssm.")]:
            monkeypatch.delitem(sys.modules, name)

    forget_peer()
    try:
        fn, desc = bench.load_peer(str(tree))
        assert fn() == "peer" and "9.9" in desc and "CUDA extensions not built" in desc
    finally:
        for name in [m for m in sys.modules if m == "mamba_ssm" or m.startswith("mamba_ssm.")]:
            del sys.modules[name]
    fn, desc = bench.load_peer(str(tmp_path / "nowhere"))
    assert fn is None and "no mamba_ssm" in desc


def test_gpu_benchmark_row_with_a_peer(bench):
    """One row's bookkeeping with a stand-in peer (the chunked backend at another chunk size)."""
    args = bench.parse_args(["--rounds", "2", "--round-ms", "1"])
    impls = bench.contenders(args, lambda x, dt, A, B, C, chunk_size, D: ssd_chunked(x, dt, A, B, C, D=D,
                                                                                      chunk_size=7))
    row = bench.run_row((1, 30, 2, 4, 4, 1), torch.float32, impls, args, torch.device("cpu"), print)
    assert row["check"]["ok"] and row["check"]["y_chunked_vs_mamba_ssm"] < 1e-6
    assert set(row["check"]["mamba_ssm_vs_float64"]) == {"y", "dx", "ddt", "dA", "dB", "dC", "dD"}
    assert row["ratio_fwdbwd"] == pytest.approx(row["chunked"]["fwdbwd_ms"] / row["mamba_ssm"]["fwdbwd_ms"])
    assert len(row["mamba_ssm"]["fwd_rounds_ms"]) == 2


# ----------------------------------------------------------------------------- GPU

@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_chunked_matches_oracle(dtype):
    for length in (1, 77, 333):
        ins = make_inputs(2, length, 8, 16, 2, 16, dtype=dtype, seed=length, device="cuda")
        y, last = ssd_scan(**ins, return_final_state=True)
        want, want_last = ssd_reference(**as64(ins), return_final_state=True)
        assert rel_err(y, want) < FWD_TOL[dtype], length
        assert rel_err(last, want_last) < FWD_TOL[torch.float32], length
        if dtype == torch.float32:
            weights = (torch.randn(2, length, 8, 16, dtype=torch.float64),
                       torch.randn(2, 8, 16, 16, dtype=torch.float64))
            got = grads(ssd_chunked, ins, tuple(w.cuda() for w in weights))
            want_g = grads(ssd_reference, as64(ins), weights)
            for name in want_g:
                assert rel_err(got[name], want_g[name]) < GRAD_TOL[torch.float32], (name, length)
