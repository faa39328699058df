"""Every selective-scan backend against a float64 oracle (THEORY.md section 1).

The oracle is the sequential reference run in float64 on the same (dtype-rounded)
inputs; the reference itself is checked against the unrolled "hidden attention" form
y_l = Σ_j P_lj u_j, and last states against a closed form, both computed without
the recurrence.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.profiler import ProfilerActivity, profile

from tokendyn.ops import _linear_scan, available_backends, selective_scan, selective_scan_reference
from tokendyn.ops._linear_scan import linear_scan_
from tokendyn.ops.chunked import ChunkedScanFn, selective_scan_chunked

CPU_BACKENDS = available_backends("cpu")
# Relative error (max abs error / max abs oracle) allowed per input dtype. bfloat16
# outputs are rounded to 8 significant bits (2^-8 ≈ 0.004 relative).
FWD_TOL = {torch.float64: 1e-10, torch.float32: 2e-5, torch.bfloat16: 1.6e-2}
GRAD_TOL = {torch.float64: 1e-9, torch.float32: 1e-4}
NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")


def make_inputs(batch, dim, state, length, *, dtype=torch.float32, seed=0, use_z=True,
                use_D=True, use_bias=True, softplus=True, device="cpu"):
    """Random inputs in the contract's layout with Mamba-like magnitudes.

    With softplus the raw delta is N(-2, 1) (Δ ≈ 0.13 typical); without it delta is
    already positive (and so is the bias). A = -exp(N(0, 0.5)): negative, as the
    contract expects.
    """
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    delta = rnd(batch, dim, length) - 2.0
    if not softplus:
        delta = F.softplus(delta)
    ins = {
        "u": rnd(batch, dim, length),
        "delta": delta,
        "A": -torch.exp(0.5 * rnd(dim, state)),
        "B": rnd(batch, state, length),
        "C": rnd(batch, state, length),
        "D": rnd(dim) if use_D else None,
        "z": rnd(batch, dim, length) if use_z else None,
        # Without softplus Δ + bias must stay ≥ 0 (the contract's regime), so the bias is too.
        "delta_bias": (0.5 * rnd(dim) if softplus else 0.1 * rnd(dim).abs()) if use_bias else None,
    }
    return {k: (None if v is None else v.to(device=device, dtype=dtype)) for k, v in ins.items()}


def as64(ins):
    return {k: (None if v is None else v.detach().to(torch.float64)) for k, v in ins.items()}


def rel_err(x, ref):
    x, ref = x.detach().to(torch.float64).cpu(), ref.detach().to(torch.float64).cpu()
    return ((x - ref).abs().max() / ref.abs().max().clamp_min(1e-30)).item()


def attention_form(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False):
    """y_l = Σ_{j≤l} P_lj u_j with P from THEORY.md section 1; O(L²), float64, no recurrence."""
    if delta_bias is not None:
        delta = delta + delta_bias[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    cum = delta.cumsum(-1)                                            # (b, d, L): Σ_{k≤l} Δ_k
    gap = cum[..., :, None] - cum[..., None, :]                       # (b, d, l, j): Σ_{j<k≤l} Δ_k
    causal = torch.ones(gap.shape[-2:], dtype=torch.bool).tril()
    gap = torch.where(causal, gap, torch.zeros_like(gap))             # j > l is masked below
    decay = torch.exp(A[None, :, None, None, :] * gap[..., None])     # (b, d, l, j, n)
    P = torch.einsum("bnl,bdljn,bdj,bnj->bdlj", C, decay, delta, B) * causal
    y = torch.einsum("bdlj,bdj->bdl", P, u)
    if D is not None:
        y = y + D[:, None] * u
    if z is not None:
        y = y * F.silu(z)
    return y


def closed_form_last_state(u, delta, A, B, delta_bias=None, delta_softplus=False):
    """h_L[b, d, n] = Σ_l exp(A[d, n] Σ_{k>l} Δ_k) Δ_l B_l[n] u_l, float64, no recurrence."""
    if delta_bias is not None:
        delta = delta + delta_bias[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    after = delta.sum(-1, keepdim=True) - delta.cumsum(-1)            # Σ_{k>l} Δ_k ≥ 0
    return torch.einsum("bdln,bdl,bnl->bdn", torch.exp(after[..., None] * A[None, :, None, :]),
                        delta * u, B)


# ----------------------------------------------------------------------------- oracle checks

@settings(max_examples=15)
@given(length=st.integers(1, 24), dim=st.integers(1, 3), state=st.integers(1, 4),
       flags=st.tuples(st.booleans(), st.booleans(), st.booleans(), st.booleans()),
       seed=st.integers(0, 2**31 - 1))
def test_reference_matches_attention_form(length, dim, state, flags, seed):
    use_z, use_D, use_bias, softplus = flags
    ins = make_inputs(2, dim, state, length, dtype=torch.float64, seed=seed, use_z=use_z,
                      use_D=use_D, use_bias=use_bias, softplus=softplus)
    got = selective_scan_reference(**ins, delta_softplus=softplus)
    assert rel_err(got, attention_form(**ins, delta_softplus=softplus)) < 1e-12


# ----------------------------------------------------------------------------- forward

@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@settings(max_examples=12)
@given(length=st.one_of(st.integers(1, 70), st.integers(70, 1000)),
       dim=st.sampled_from([1, 3, 8]), state=st.sampled_from([1, 4, 16]),
       batch=st.integers(1, 2),
       flags=st.tuples(st.booleans(), st.booleans(), st.booleans(), st.booleans()),
       seed=st.integers(0, 2**31 - 1))
def test_forward_matches_float64_oracle(backend, dtype, length, dim, state, batch, flags, seed):
    use_z, use_D, use_bias, softplus = flags
    ins = make_inputs(batch, dim, state, length, dtype=dtype, seed=seed, use_z=use_z,
                      use_D=use_D, use_bias=use_bias, softplus=softplus)
    out, last = selective_scan(**ins, delta_softplus=softplus, return_last_state=True, backend=backend)
    want, want_last = selective_scan_reference(**as64(ins), delta_softplus=softplus, return_last_state=True)
    assert out.dtype == dtype and out.shape == (batch, dim, length)
    assert last.shape == (batch, dim, state)
    assert rel_err(out, want) < FWD_TOL[dtype]
    assert rel_err(last, want_last) < FWD_TOL[torch.float32]   # the state is kept in float32


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("length", [1, 2, 33, 100])
def test_float64_stays_float64(backend, length):
    ins = make_inputs(2, 3, 5, length, dtype=torch.float64, seed=length)
    out, last = selective_scan(**ins, delta_softplus=True, return_last_state=True, backend=backend)
    assert out.dtype == torch.float64 and last.dtype == torch.float64
    assert rel_err(out, attention_form(**ins, delta_softplus=True)) < FWD_TOL[torch.float64]


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@settings(max_examples=10)
@given(length=st.integers(1, 300), state=st.integers(1, 6), seed=st.integers(0, 2**31 - 1),
       softplus=st.booleans())
def test_last_state_matches_closed_form(backend, length, state, seed, softplus):
    ins = make_inputs(2, 3, state, length, dtype=torch.float32, seed=seed, softplus=softplus)
    _, last = selective_scan(**ins, delta_softplus=softplus, return_last_state=True, backend=backend)
    i64 = as64(ins)
    want = closed_form_last_state(i64["u"], i64["delta"], i64["A"], i64["B"], i64["delta_bias"], softplus)
    assert rel_err(last, want) < 1e-5


@settings(max_examples=15)
@given(length=st.integers(1, 400), chunk=st.integers(1, 40),
       budget=st.sampled_from([1, 50, 400, 1 << 20]), seed=st.integers(0, 2**31 - 1))
def test_chunked_any_chunk_and_group_size(length, chunk, budget, seed):
    """Chunk and group boundaries anywhere (non-multiples, one step, many groups)."""
    ins = make_inputs(1, 2, 3, length, dtype=torch.float64, seed=seed)
    out, last = selective_scan_chunked(**ins, delta_softplus=True, return_last_state=True,
                                       chunk=chunk, group_elements=budget)
    want, want_last = selective_scan_reference(**ins, delta_softplus=True, return_last_state=True)
    assert rel_err(out, want) < 1e-11 and rel_err(last, want_last) < 1e-11


# ----------------------------------------------------------------------------- the inner scan

def plain_scan(a, x, h0, reverse):
    steps = range(x.shape[0] - 1, -1, -1) if reverse else range(x.shape[0])
    out, h = torch.empty_like(x), h0 if h0 is not None else torch.zeros_like(x[0])
    for t in steps:
        h = a[t] * h + x[t]
        out[t] = h
    return out


@settings(max_examples=30)
@given(length=st.integers(1, 200), chunk=st.integers(1, 17), reverse=st.booleans(),
       with_h0=st.booleans(), seq_max=st.sampled_from([0, 3, 24]), seed=st.integers(0, 2**31 - 1))
def test_linear_scan_matches_plain_loop(length, chunk, reverse, with_h0, seq_max, seed):
    g = torch.Generator().manual_seed(seed)
    a = torch.rand(length, 2, 3, generator=g, dtype=torch.float64)
    x = torch.randn(length, 2, 3, generator=g, dtype=torch.float64)
    h0 = torch.randn(2, 3, generator=g, dtype=torch.float64) if with_h0 else None
    want = plain_scan(a, x, h0, reverse)
    old = _linear_scan._SEQUENTIAL_MAX
    _linear_scan._SEQUENTIAL_MAX = seq_max          # force the chunked path on short inputs
    try:
        got = linear_scan_(a.clone(), x.clone(), h0, reverse=reverse, chunk=chunk)
    finally:
        _linear_scan._SEQUENTIAL_MAX = old
    assert torch.allclose(got, want, rtol=1e-12, atol=1e-12)


# ----------------------------------------------------------------------------- gradients

def grads(fn, ins, softplus, weights, **kw):
    leaves = {k: v.detach().clone().requires_grad_(True) for k, v in ins.items() if v is not None}
    full = {k: leaves.get(k) for k in NAMES}
    out, last = fn(**full, delta_softplus=softplus, return_last_state=True, **kw)
    loss = (out.to(torch.float64) * weights[0]).sum() + (last.to(torch.float64) * weights[1]).sum()
    return dict(zip(leaves, torch.autograd.grad(loss, list(leaves.values()))))


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@settings(max_examples=8)
@given(length=st.integers(1, 300), state=st.sampled_from([1, 4, 16]),
       flags=st.tuples(st.booleans(), st.booleans(), st.booleans(), st.booleans()),
       seed=st.integers(0, 2**31 - 1))
def test_gradients_match_float64_reference(backend, length, state, flags, seed):
    use_z, use_D, use_bias, softplus = flags
    ins = make_inputs(2, 3, state, length, dtype=torch.float32, seed=seed, use_z=use_z,
                      use_D=use_D, use_bias=use_bias, softplus=softplus)
    g = torch.Generator().manual_seed(seed + 1)
    weights = (torch.randn(2, 3, length, generator=g, dtype=torch.float64),
               torch.randn(2, 3, state, generator=g, dtype=torch.float64))

    def fn(**kw):
        return selective_scan(**kw, backend=backend)

    got = grads(fn, ins, softplus, weights)
    want = grads(selective_scan_reference, as64(ins), softplus, weights)
    assert set(got) == set(want)
    for name in want:
        assert rel_err(got[name], want[name]) < GRAD_TOL[torch.float32], name


@pytest.mark.parametrize("length,chunk,budget", [(1, 4, 1 << 20), (7, 3, 1 << 20), (40, 4, 30), (61, 5, 1)])
def test_chunked_gradcheck_float64(length, chunk, budget):
    """Several chunks and groups, odd lengths; every input differentiable."""
    ins = make_inputs(1, 2, 3, length, dtype=torch.float64, seed=length)
    names = [k for k in NAMES if ins[k] is not None]
    tensors = [ins[k].clone().requires_grad_(True) for k in names]

    def fn(*ts):
        out, last = selective_scan_chunked(**dict(zip(names, ts)), delta_softplus=True,
                                           return_last_state=True, chunk=chunk, group_elements=budget)
        return out, last

    assert torch.autograd.gradcheck(fn, tensors, fast_mode=True)


def test_chunked_gradient_of_last_state_only():
    """A loss on h_L alone (y unused) reaches every input through the adjoint carry."""
    ins = make_inputs(2, 3, 4, 90, dtype=torch.float64, seed=3, use_z=False, use_D=False)
    w = torch.randn(2, 3, 4, dtype=torch.float64)
    res = []
    for fn, kw in ((selective_scan_chunked, {"chunk": 4, "group_elements": 200}), (selective_scan_reference, {})):
        leaves = {k: ins[k].clone().requires_grad_(True) for k in ("u", "delta", "A", "B", "C")}
        _, last = fn(**leaves, delta_bias=ins["delta_bias"], delta_softplus=True, return_last_state=True, **kw)
        gs = torch.autograd.grad((last * w).sum(), list(leaves.values()), allow_unused=True)
        res.append([torch.zeros_like(t) if g is None else g for g, t in zip(gs, leaves.values())])
    for name, got, want in zip(("u", "delta", "A", "B"), *res):
        assert rel_err(got, want) < 1e-11, name
    assert not res[0][4].any()                      # h_L does not depend on C


# ----------------------------------------------------------------------------- long sequences

def realistic(length, dim=4, state=16, seed=0, dtype=torch.float32):
    """Δ = softplus(N(-4, 1)), A = -(1..state) per channel (S4D-real), as in trained Mamba."""
    g = torch.Generator().manual_seed(seed)
    return {
        "u": torch.randn(1, dim, length, generator=g).to(dtype),
        "delta": (torch.randn(1, dim, length, generator=g) - 4).to(dtype),
        "A": -torch.arange(1, state + 1, dtype=torch.float32).repeat(dim, 1).to(dtype),
        "B": torch.randn(1, state, length, generator=g).to(dtype),
        "C": torch.randn(1, state, length, generator=g).to(dtype),
        "D": torch.ones(dim, dtype=dtype),
    }


@pytest.mark.slow
def test_long_sequence_is_finite_and_correct():
    L = 65_536
    ins = realistic(L)
    out, last = selective_scan_chunked(**ins, delta_softplus=True, return_last_state=True)
    assert torch.isfinite(out).all() and torch.isfinite(last).all()
    # Causal: a prefix of the output depends on the prefix of the input only.
    P = 2048
    pre = {k: (v[..., :P] if v.dim() == 3 else v) for k, v in ins.items()}
    want = selective_scan_reference(**as64(pre), delta_softplus=True)
    assert rel_err(out[..., :P], want) < 2e-5
    i64 = as64(ins)
    want_last = closed_form_last_state(i64["u"], i64["delta"], i64["A"], i64["B"], None, True)
    assert rel_err(last, want_last) < 1e-4


@pytest.mark.slow
def test_long_sequence_strong_decay_and_backward_finite():
    """Large Δ and |A|: decays underflow to exactly 0 — never inf/NaN, also in the backward."""
    L = 65_536
    ins = realistic(L, dim=2, seed=1)
    ins["delta"] = ins["delta"] + 6.0                       # Δ ≈ softplus(N(2, 1)) ≈ 2: exp(-32) per step
    leaves = {k: v.clone().requires_grad_(True) for k, v in ins.items()}
    out = selective_scan_chunked(**leaves, delta_softplus=True)
    assert torch.isfinite(out).all()
    out.square().mean().backward()
    for name, t in leaves.items():
        assert torch.isfinite(t.grad).all(), name


# ----------------------------------------------------------------------------- memory

def _largest_allocation(fn):
    """(fn's result, the largest single CPU allocation in bytes any op made while it ran)."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        result = fn()
    return result, max((e.self_cpu_memory_usage for e in prof.events()), default=0)


def test_chunked_never_materialises_all_states():
    """Forward saves no (batch, dim, length, state)-sized tensor, and neither pass creates one."""
    batch, dim, state, length = 2, 8, 32, 2048
    budget = 1 << 15                                             # 64 steps per group
    full = batch * dim * length * state
    ins = make_inputs(batch, dim, state, length, seed=5)
    leaves = {k: v.clone().requires_grad_(True) for k, v in ins.items()}
    saved = []

    def pack(t):
        saved.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out, fwd_largest = _largest_allocation(
            lambda: selective_scan_chunked(**leaves, delta_softplus=True, group_elements=budget))
    _, bwd_largest = _largest_allocation(lambda: out.sum().backward())
    # Saved: inputs, O(batch·(dim + state)·length), and one (b, n, d) state per group.
    n_groups = math.ceil(length / (budget // (batch * dim * state)))
    inputs = batch * max(dim, state) * length
    assert max(saved) <= max(n_groups * batch * dim * state, inputs), saved
    assert sum(saved) < full / 2, saved
    # Temporaries: at most one group's (group_len, b, n, d) float32 tensor, or an input-sized one.
    bound = 4 * max(budget, inputs)
    assert 0 < fwd_largest <= bound and 0 < bwd_largest <= bound, (fwd_largest, bwd_largest)
    assert full >= 8 * max(budget, inputs)                       # all states would exceed the bound 8×


def test_chunked_fn_saves_group_states_only():
    ins = make_inputs(1, 4, 8, 512, seed=9)
    u, delta, A, B, C = (ins[k].clone().requires_grad_(True) for k in ("u", "delta", "A", "B", "C"))
    y, _ = ChunkedScanFn.apply(u, F.softplus(delta), A, B, C, 16, 32 * 4 * 8)
    starts = y.grad_fn.saved_tensors[-1]
    assert starts.shape == (512 // 32, 1, 8, 4)              # one (b, n, d) state per group


# ----------------------------------------------------------------------------- GPU

@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_backends_match_oracle(dtype):
    for backend in available_backends("cuda"):
        for length in (1, 77, 1000, 4099):
            ins = make_inputs(2, 16, 16, length, dtype=dtype, seed=length, device="cuda")
            out, last = selective_scan(**ins, delta_softplus=True, return_last_state=True, backend=backend)
            want, want_last = selective_scan_reference(**as64({k: (v.cpu() if v is not None else None)
                                                                for k, v in ins.items()}),
                                                       delta_softplus=True, return_last_state=True)
            assert rel_err(out, want) < FWD_TOL[dtype], (backend, length)
            assert rel_err(last, want_last) < FWD_TOL[torch.float32], (backend, length)
