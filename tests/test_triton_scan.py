"""GPU correctness of the ``triton`` scan backend against the float64 reference.

Every check draws fresh random inputs, runs the kernels on NaN-poisoned output buffers
(so an element a kernel forgot to write fails), and compares outputs and all gradients
with the sequential reference on float64 copies by ‖x − ref‖ / ‖ref‖.
"""

from __future__ import annotations

import math
import os
import random

import pytest
import torch

from tokendyn.ops import resolve_backend, selective_scan, selective_scan_reference

pytestmark = [pytest.mark.gpu, pytest.mark.interpretable]

# ‖x − ref‖/‖ref‖ limits: float32 arithmetic lands far under 1e-3; half-precision inputs
# and outputs are rounded to 8 (bf16) or 11 (fp16) significant bits.
TOL = {torch.float32: 1e-4, torch.bfloat16: 1e-2, torch.float16: 5e-3}
NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")
# CUDA normally; TOKENDYN_TEST_DEVICE=cpu with TRITON_INTERPRET=1 runs the kernels in
# Triton's interpreter (slow; for checking kernel logic without a GPU)
DEV = os.environ.get("TOKENDYN_TEST_DEVICE", "cuda")
# the dispatcher and the models choose triton only for CUDA tensors
dispatch_needs_cuda = pytest.mark.skipif(DEV != "cuda", reason="the dispatcher picks triton only on CUDA")


@pytest.fixture
def ts(monkeypatch):
    """tokendyn.ops.triton_scan with every kernel-filled buffer poisoned with NaN."""
    from tokendyn.ops import triton_scan

    def poisoned(shape, dtype, device):
        return torch.full(shape, float("nan"), dtype=dtype, device=device)

    monkeypatch.setattr(triton_scan, "_empty", poisoned)
    return triton_scan


def make_inputs(b, d, l, n, dtype, *, z=True, D=True, bias=True, softplus=True, seed=None):
    """Random inputs in the ranges a trained Mamba layer sees (A < 0, Δ > 0 after softplus)."""
    dev = DEV
    g = torch.Generator(device=dev)
    g.manual_seed(seed if seed is not None else random.SystemRandom().randrange(2**31))

    def rn(*shape, scale=1.0, shift=0.0):
        return torch.randn(*shape, generator=g, device=dev) * scale + shift

    if softplus:
        delta = rn(b, d, l, scale=0.5, shift=-2.0)                 # softplus -> Δ around 0.13
    else:
        delta = torch.rand(b, d, l, generator=g, device=dev) * 0.2 + 1e-3
    A = -torch.exp(torch.rand(d, n, generator=g, device=dev) * math.log(max(n, 2)) * 1.5 - 0.5)
    tensors = {
        "u": rn(b, d, l).to(dtype),
        "delta": delta.to(dtype),
        "A": A,                                                     # float32, as in the models
        "B": rn(b, n, l).to(dtype),
        "C": rn(b, n, l).to(dtype),
        "D": rn(d) if D else None,
        "z": rn(b, d, l).to(dtype) if z else None,
        # without softplus Δ + bias must stay positive (else exp(ΔA) > 1 grows without bound)
        "delta_bias": (rn(d, scale=0.5) if softplus else torch.rand(d, generator=g, device=dev) * 0.05)
        if bias else None,
    }
    return tensors


def rel(x: torch.Tensor, ref: torch.Tensor) -> float:
    """‖x − ref‖ / ‖ref‖; where ref is exactly zero (dA at length 1: h_0 = 0), ‖x‖."""
    x, ref = x.double(), ref.double()
    den = ref.norm()
    return ((x - ref).norm() / den).item() if den > 0 else x.norm().item()


def check_against_reference(fn, tensors, dtype, softplus, *, last_state=True, tol=None):
    """Run ``fn`` and the float64 reference on the same inputs; compare out, h_L, grads."""
    tol = tol if tol is not None else TOL[dtype]
    xs = {k: (v.clone().requires_grad_() if v is not None else None) for k, v in tensors.items()}
    x64 = {k: (v.detach().double().requires_grad_() if v is not None else None) for k, v in tensors.items()}
    out, last = fn(**xs, delta_softplus=softplus, return_last_state=True)
    ref_out, ref_last = selective_scan_reference(**x64, delta_softplus=softplus, return_last_state=True)
    assert out.dtype == tensors["u"].dtype and out.shape == tensors["u"].shape
    assert torch.isfinite(out).all() and torch.isfinite(last).all()
    errors = {"out": rel(out, ref_out), "last_state": rel(last, ref_last)}
    gout = torch.randn_like(out)
    loss = (out.float() * gout.float()).sum()
    ref_loss = (ref_out * gout.double()).sum()
    if last_state:
        glast = torch.randn_like(last)
        loss = loss + (last * glast).sum()
        ref_loss = ref_loss + (ref_last * glast.double()).sum()
    loss.backward()
    ref_loss.backward()
    for name in NAMES:
        if xs[name] is None:
            continue
        grad = xs[name].grad
        assert grad is not None, f"no gradient for {name}"
        assert grad.dtype == xs[name].dtype
        assert torch.isfinite(grad).all(), f"non-finite gradient for {name}"
        errors["d" + name] = rel(grad, x64[name].grad)
    print("relative errors:", {k: f"{v:.2e}" for k, v in errors.items()})
    bad = {k: v for k, v in errors.items() if not v < tol}
    assert not bad, f"relative errors over {tol}: {bad} (all: {errors})"
    return errors


# (batch, dim, length, state, z, D, bias, softplus): lengths 1 ... 4099, states 1 ... 16,
# every optional term switched off somewhere
CASES = [
    (1, 4, 1, 1, True, True, True, True),
    (2, 8, 7, 4, True, False, True, True),
    (2, 16, 127, 16, False, True, False, True),
    (1, 24, 1000, 8, True, True, True, False),
    (2, 40, 2048, 16, True, True, True, True),
    (1, 8, 4099, 5, False, False, False, True),
    (3, 33, 300, 3, True, True, False, False),
]


def _case_id(c) -> str:
    return "x".join(map(str, c[:4])) + "-" + "".join("zDbs"[i] for i in range(4) if c[4 + i])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_matches_float64_reference(ts, case, dtype):
    b, d, l, n, z, D, bias, softplus = case
    tensors = make_inputs(b, d, l, n, dtype, z=z, D=D, bias=bias, softplus=softplus)
    check_against_reference(ts.selective_scan_triton, tensors, dtype, softplus)


# launch shapes the benchmark sweeps: the result must not depend on them
CONFIGS = [
    dict(block_d=1, chunk=64, fwd_warps=1, bwd_block_d=1, bwd_warps=1),
    dict(block_d=2, chunk=128, fwd_warps=2, bwd_block_d=2, bwd_warps=2),
    dict(block_d=4, chunk=256, fwd_warps=4, bwd_block_d=4, bwd_warps=4),
    dict(block_d=8, chunk=256, fwd_warps=8, bwd_block_d=4, bwd_warps=4),
    dict(block_d=8, chunk=128, fwd_warps=4, bwd_block_d=8, bwd_warps=8),
    dict(block_d=16, chunk=64, fwd_warps=4, bwd_block_d=16, bwd_warps=4),
    dict(block_d=4, chunk=512, fwd_warps=8, bwd_block_d=2, bwd_warps=8),
    dict(block_d=8, chunk=128, fwd_warps=2, bwd_block_d=4, bwd_warps=1),
    dict(block_d=16, chunk=64, fwd_warps=4, bwd_block_d=4, bwd_warps=1, segments=5, bwd_segments=3),
    dict(block_d=4, chunk=128, fwd_warps=1, bwd_block_d=2, bwd_warps=1, segments=7, bwd_segments=7),
    # the forward in longer chunks than the backward (it saves h every backward chunk)
    dict(block_d=2, chunk=64, fwd_chunk=256, fwd_warps=2, bwd_block_d=2, bwd_warps=1),
    dict(block_d=1, chunk=128, fwd_chunk=1024, fwd_warps=4, bwd_block_d=2, bwd_warps=1),
    dict(block_d=2, chunk=16, fwd_chunk=128, fwd_warps=2, bwd_block_d=2, bwd_warps=1, segments=3, bwd_segments=2),
]


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: "-".join(f"{v}" for v in c.values()))
def test_launch_shapes_agree(ts, cfg):
    tensors = make_inputs(2, 37, 777, 16, torch.float32)
    with ts.scan_config(**cfg):
        check_against_reference(ts.selective_scan_triton, tensors, torch.float32, True)


# the length split into segments scanned by separate programs, forced on at tiny shapes:
# (batch, dim, length, state, flags, launch shape); chunks of 16 steps, so 40 steps are 3
# chunks (the last one partial), 100 steps 7 chunks in segments of 3, 3, 1 (forward) and
# 4, 3 (backward), 33 steps end with a one-step chunk that is a segment of its own
SPLIT_CASES = [
    (2, 5, 40, 3, "zDbs", dict(chunk=16, block_d=2, bwd_block_d=2, segments=3, bwd_segments=3)),
    (1, 6, 100, 4, "", dict(chunk=16, segments=3, bwd_segments=2)),
    (2, 4, 64, 5, "zb", dict(chunk=16, segments=4, bwd_segments=4)),
    (1, 3, 33, 2, "Ds", dict(chunk=16, segments=2, bwd_segments=3)),
    (1, 4, 50, 1, "zDbs", dict(chunk=16, block_d=4, bwd_block_d=1, segments=4, bwd_segments=2)),
    (2, 3, 90, 16, "zDbs", dict(chunk=32, segments=3, bwd_segments=3)),
    # forward chunks of 32 and 64 steps over backward chunks of 16: 4 and 2 forward chunks,
    # in 2 segments, each saving 2 and 4 states
    (1, 6, 100, 4, "zDbs", dict(chunk=16, fwd_chunk=32, segments=3, bwd_segments=2)),
    (2, 3, 90, 16, "zDs", dict(chunk=16, fwd_chunk=64, segments=2, bwd_segments=3)),
]


def _split_id(c) -> str:
    return "x".join(map(str, c[:4])) + "-" + (c[4] or "none") + f"-s{c[5]['segments']}b{c[5]['bwd_segments']}"


@pytest.mark.parametrize("case", SPLIT_CASES, ids=_split_id)
def test_split_sequence_matches_float64_reference(ts, case):
    b, d, l, n, flags, cfg = case
    softplus = "s" in flags
    tensors = make_inputs(b, d, l, n, torch.float32, z="z" in flags, D="D" in flags, bias="b" in flags,
                          softplus=softplus)
    with ts.scan_config(**cfg):
        check_against_reference(ts.selective_scan_triton, tensors, torch.float32, softplus)


@pytest.mark.parametrize("dtype", [torch.bfloat16], ids=str)
def test_split_sequence_without_last_state_gradient(ts, dtype):
    """h_L returned but not used by the loss (no dlast), half-precision inputs."""
    tensors = make_inputs(2, 5, 70, 4, dtype)
    with ts.scan_config(chunk=16, segments=5, bwd_segments=3):
        check_against_reference(ts.selective_scan_triton, tensors, dtype, True, last_state=False)


def test_split_matches_unsplit(ts):
    """The same inputs with and without the split: equal up to float32 rounding (the split
    changes only the order in which the carries are summed)."""
    tensors = make_inputs(1, 4, 80, 3, torch.float32)
    results = []
    for seg in (1, 5):
        xs = {k: (v.clone().requires_grad_() if v is not None else None) for k, v in tensors.items()}
        with ts.scan_config(chunk=16, segments=seg, bwd_segments=seg):
            out, last = ts.selective_scan_triton(**xs, delta_softplus=True, return_last_state=True)
            (out.sum() + last.sum()).backward()
        results.append((out.detach(), last.detach(), {k: v.grad for k, v in xs.items() if v is not None}))
    (o1, l1, g1), (o2, l2, g2) = results
    assert rel(o2, o1) < 1e-5 and rel(l2, l1) < 1e-5
    for k in g1:
        assert rel(g2[k], g1[k]) < 1e-5, k


@pytest.mark.parametrize("length", [1, 16, 100, 777])
def test_forward_chunk_saves_the_backward_chunks_states(ts, length):
    """A forward in chunks of 4× the backward's saves the same states, at the end of every
    backward chunk (the last one partial), as a forward in the backward's chunks: the states the
    backward reads do not depend on the forward's chunk, and neither does the output."""
    t = make_inputs(2, 5, length, 4, torch.float32)
    runs = []
    for fwd_chunk in (0, 64):
        with ts.scan_config(chunk=16, fwd_chunk=fwd_chunk, block_d=2):
            runs.append(ts.scan_forward(t["u"], t["delta"], t["A"], t["B"], t["C"], t["D"], t["z"],
                                        t["delta_bias"], True))
    (o1, s1), (o2, s2) = runs
    assert s2.chunk == s1.chunk == 16 and s2.states.shape == s1.states.shape == (2, 5, -(-length // 16), 4)
    assert rel(o2, o1) < 1e-6 and rel(s2.states, s1.states) < 1e-6


def test_segment_rule():
    """plan_launch (pure, no launch): a grid short of warps (long sequences at small batch) is
    split into at least min_split segments, fuller grids are not, and every segment gets
    whole chunks."""
    from tokendyn.ops.triton_scan import MAX_SEGMENTS, ScanConfig, plan_launch

    sms = 132
    cfg = ScanConfig()
    rule = dict(sms=sms, warps_per_sm=cfg.warps_per_sm, split_below=cfg.split_below_warps_per_sm,
                min_split=cfg.min_split)
    # (1, 2048, 65536) with chunks of 128, default forward: 256 programs of 4 warps, ~7.8 per SM
    long = plan_launch(1, 2048, 512, cfg.block_d, cfg.fwd_warps, cfg.segments, **rule)
    assert long.segments >= cfg.min_split and long.block_d == cfg.block_d and long.warps == cfg.fwd_warps
    assert long.segments * (2048 // cfg.block_d) * cfg.fwd_warps >= cfg.warps_per_sm * sms
    # the backward is split only when asked (bwd_segments = 0 applies the rule)
    assert plan_launch(1, 2048, 512, cfg.bwd_block_d, cfg.bwd_warps, cfg.bwd_segments, **rule).segments == 1
    assert plan_launch(1, 2048, 512, cfg.bwd_block_d, cfg.bwd_warps, 0, **rule).segments > 1
    # (2, 1536, 8192) at ~11.6 warps per SM and the main shape (8, 1536, 2048) stay unsplit
    assert plan_launch(2, 1536, 64, cfg.block_d, cfg.fwd_warps, 0, **rule).segments == 1
    assert plan_launch(8, 1536, 16, cfg.block_d, cfg.fwd_warps, 0, **rule).segments == 1
    assert plan_launch(8, 1536, 16, cfg.bwd_block_d, cfg.bwd_warps, 0, **rule).segments == 1
    # forced counts: clipped to the chunks, reduced to what whole chunks need
    assert plan_launch(1, 8, 3, 16, 4, 10, **rule).segments == 3
    for n_chunks in range(1, 40):
        for want in range(1, 45):
            lp = plan_launch(2, 64, n_chunks, 16, 4, want, **rule)
            assert 1 <= lp.segments <= min(want, n_chunks, MAX_SEGMENTS)
            # no segment empty, none missing
            assert (lp.segments - 1) * lp.chunks_per_segment < n_chunks <= lp.segments * lp.chunks_per_segment
    # short sequences at batch 1 cannot be split enough: fewer channels per program instead
    short = plan_launch(1, 256, 2, 16, 4, 0, **rule)
    assert short.segments == 2 and short.block_d < 16 and short.warps < 4


def test_long_sequence_rule():
    """shape_config (pure, no launch): long sequences whose forward grid is short of warps take
    the long launch shape, the shapes of training keep the configured one, and the rule can be
    turned off or moved."""
    from tokendyn.ops.triton_scan import LONG_SHAPE, ScanConfig, shape_config

    sms, cfg = 132, ScanConfig()
    for b, d, l in [(2, 1536, 8192), (1, 2048, 65536)]:        # 11.6 and 7.8 warps per SM
        got = shape_config(b, d, l, sms, cfg)
        assert {k: getattr(got, k) for k in LONG_SHAPE} == LONG_SHAPE
        assert got.segments == cfg.segments and got.warps_per_sm == cfg.warps_per_sm
    for b, d, l in [(8, 1536, 2048), (16, 2048, 1024), (4, 5120, 2048), (4, 1536, 8192), (1, 2048, 2048)]:
        assert shape_config(b, d, l, sms, cfg) is cfg
    assert shape_config(1, 2048, 65536, sms, ScanConfig(long_below_warps_per_sm=0)).block_d == cfg.block_d
    assert shape_config(1, 2048, 4095, sms, cfg) is cfg and shape_config(1, 2048, 4096, sms, cfg).block_d == 2
    # a fuller grid of the configured shape (more warps per program) keeps it
    assert shape_config(2, 1536, 8192, sms, ScanConfig(fwd_warps=8)).block_d == cfg.block_d


def test_long_shape_matches_float64_reference(ts):
    """The long launch shape, forced on a small input, through the forward and the backward: the
    forward saves a state every 256 steps, and outputs and gradients match the float64 reference."""
    tensors = make_inputs(2, 37, 777, 16, torch.float32)
    with ts.scan_config(long_min_length=16, long_below_warps_per_sm=1_000_000):
        t = tensors
        _, saved = ts.scan_forward(t["u"], t["delta"], t["A"], t["B"], t["C"], t["D"], t["z"],
                                   t["delta_bias"], True)
        assert saved.chunk == 256 and saved.states.shape[2] == 4
        check_against_reference(ts.selective_scan_triton, tensors, torch.float32, True)


@pytest.mark.parametrize("bad", [dict(block_d=3), dict(chunk=8), dict(chunk=96), dict(fwd_warps=3),
                                 dict(bwd_warps=0), dict(segments=-1), dict(bwd_block_d=0), dict(min_split=0),
                                 dict(fwd_chunk=64), dict(fwd_chunk=384), dict(fwd_chunk=-256),
                                 dict(long_below_warps_per_sm=-1), dict(long_min_length=0)])
def test_bad_launch_shape_refused(bad):
    """A launch shape Triton cannot compile is refused in one sentence, before any launch."""
    from tokendyn.errors import ConfigError
    from tokendyn.ops.triton_scan import ScanConfig, scan_config

    with pytest.raises(ConfigError, match="scan launch shape"):
        ScanConfig(**bad)
    with pytest.raises(ConfigError, match="scan launch shape"):
        with scan_config(**bad):
            pass


def test_repeatable_without_races(ts):
    """Same inputs twice: forward and the per-channel gradients bit for bit (no races);
    dA, dB, dC are atomic sums, so equal up to summation order (dB, dC then rounded to
    bfloat16, where a different order can flip the last bit)."""
    tensors = make_inputs(4, 96, 1500, 16, torch.bfloat16)
    runs = []
    for _ in range(2):
        xs = {k: (v.clone().requires_grad_() if v is not None else None) for k, v in tensors.items()}
        out = ts.selective_scan_triton(**xs, delta_softplus=True)
        out.backward(torch.ones_like(out))
        runs.append((out.detach(), {k: v.grad for k, v in xs.items() if v is not None}))
    (o1, g1), (o2, g2) = runs
    assert torch.equal(o1, o2)
    for k in ("u", "delta", "z"):
        assert torch.equal(g1[k], g2[k]), k
    for k in ("D", "delta_bias"):
        assert torch.equal(g1[k], g2[k]), k
    assert rel(g1["A"], g2["A"]) < 1e-5
    for k in ("B", "C"):
        assert rel(g1[k], g2[k]) < 1e-3, k


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") == "1", reason="hours in Triton's interpreter")
def test_length_65536_against_float64_chunked(ts):
    """The longest case: the float64 chunked backend (itself checked against the reference)
    is the oracle, since the sequential loop is slow at this length."""
    from tokendyn.ops.chunked import selective_scan_chunked

    tensors = make_inputs(1, 32, 65536, 16, torch.bfloat16)

    def oracle(**kw):
        return selective_scan_chunked(**kw)

    xs = {k: (v.clone().requires_grad_() if v is not None else None) for k, v in tensors.items()}
    x64 = {k: (v.detach().double().requires_grad_() if v is not None else None) for k, v in tensors.items()}
    out, last = ts.selective_scan_triton(**xs, delta_softplus=True, return_last_state=True)
    ref, ref_last = oracle(**x64, delta_softplus=True, return_last_state=True)
    assert rel(out, ref) < TOL[torch.bfloat16] and rel(last, ref_last) < 1e-4
    g = torch.randn_like(out)
    (out.float() * g.float()).sum().backward()
    (ref * g.double()).sum().backward()
    for k in NAMES:
        if xs[k] is not None:
            assert rel(xs[k].grad, x64[k].grad) < TOL[torch.bfloat16], k


def test_noncontiguous_inputs(ts):
    """Inputs laid out as the models produce them (transposed views) give the same result."""
    b, d, l, n = 2, 48, 333, 16
    t = make_inputs(b, d, l, n, torch.float32)
    dt_view = t["delta"].transpose(1, 2).contiguous().transpose(1, 2)     # stride(-1) = d
    B_view = t["B"].transpose(1, 2).contiguous().transpose(1, 2)
    z_big = torch.cat([t["z"], t["u"]], dim=1)[:, :d]                    # a slice: row stride 2d*l
    t2 = dict(t, delta=dt_view, B=B_view, z=z_big)
    a = ts.selective_scan_triton(**t, delta_softplus=True)
    c = ts.selective_scan_triton(**t2, delta_softplus=True)
    assert rel(c, a) < 1e-6


@dispatch_needs_cuda
def test_auto_picks_triton_and_dispatch_matches(ts):
    if DEV == "cuda":
        assert resolve_backend("auto", "cuda") == "triton"
    t = make_inputs(2, 16, 100, 8, torch.float32)
    a = selective_scan(**t, delta_softplus=True, backend="auto" if DEV == "cuda" else "triton")
    c = selective_scan_reference(**{k: (v.double() if v is not None else None) for k, v in t.items()},
                                 delta_softplus=True)
    assert rel(a, c) < TOL[torch.float32]


def test_float64_delegates_exactly(ts):
    t = make_inputs(1, 8, 50, 4, torch.float32)
    t64 = {k: (v.double() if v is not None else None) for k, v in t.items()}
    a = ts.selective_scan_triton(**t64, delta_softplus=True)
    assert a.dtype == torch.float64
    assert rel(a, selective_scan_reference(**t64, delta_softplus=True)) < 1e-12


@dispatch_needs_cuda
def test_model_uses_triton_and_matches_reference():
    """A small MambaLM on the triton backend: logits and parameter gradients as with the
    sequential reference backend."""
    from tokendyn.model import MambaConfig, MambaLM

    torch.manual_seed(random.SystemRandom().randrange(2**31))
    cfg = MambaConfig(d_model=64, n_layer=2, vocab_size=100, scan_backend="triton")
    model = MambaLM(cfg).to(DEV)
    ids = torch.randint(0, 100, (2, 200), device=DEV)
    logits = model(ids)
    logits.float().logsumexp(-1).sum().backward()
    grads = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    for layer in model.backbone.layers:
        layer.mixer.scan_backend = "reference"
    ref = model(ids)
    ref.float().logsumexp(-1).sum().backward()
    assert rel(logits, ref) < 1e-4
    for k, p in model.named_parameters():
        if p.grad is not None:
            assert rel(grads[k], p.grad) < 1e-3, k
