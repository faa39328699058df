"""The Mamba-2 (SSD) family against a float64 oracle written here from docs/THEORY.md section 4a:
the mixer across settings, shapes and both SSD backends (values and gradients), the recurrent step
and generation against the full forward, and the settings' own checks."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from mixer_contract import check_mixer_contract

from tokendyn.errors import ConfigError
from tokendyn.model import MambaConfig, MambaLM, build_mixer, generate
from tokendyn.model.mamba2_mixer import Mamba2Mixer

D_MODEL = 8


def oracle(m: Mamba2Mixer, h: torch.Tensor) -> torch.Tensor:
    """The mixer written out token by token in float64: in_proj, causal conv + SiLU, Δ per head,
    the SSD recurrence per head with its group's B and C, the gated RMSNorm per group, out_proj."""
    p = {k: v.detach().to(torch.float64) for k, v in m.state_dict().items()}
    s = m.settings
    h = h.to(torch.float64)
    b, L, _ = h.shape
    D, H, P, G, N, K = m.d_inner, m.n_heads, m.head_dim, m.n_groups, m.d_state, m.d_conv
    zxbcdt = h @ p["in_proj.weight"].T + (p["in_proj.bias"] if s.bias else 0)
    z, xbc, dt = zxbcdt[..., :D], zxbcdt[..., D:D + m.conv_dim], zxbcdt[..., D + m.conv_dim:]
    w = p["conv1d.weight"][:, 0, :]                                          # (C, K)
    conv = torch.zeros_like(xbc)
    for t in range(L):
        for k in range(K):
            src = t - (K - 1) + k
            if src >= 0:
                conv[:, t] += w[:, k] * xbc[:, src]
    if s.conv_bias:
        conv = conv + p["conv1d.bias"]
    xbc = F.silu(conv)
    x, B, C = xbc[..., :D], xbc[..., D:D + G * N], xbc[..., D + G * N:]
    delta = F.softplus(dt + p["dt_bias"]).clamp(min=s.dt_limit[0], max=s.dt_limit[1])   # (b, L, H)
    A = -torch.exp(p["A_log"])
    y = torch.zeros(b, L, D, dtype=torch.float64)
    for k in range(H):
        g = k // (H // G)
        S = torch.zeros(b, P, N, dtype=torch.float64)
        for t in range(L):
            xk = x[:, t, k * P:(k + 1) * P]
            Bt, Ct = B[:, t, g * N:(g + 1) * N], C[:, t, g * N:(g + 1) * N]
            S = torch.exp(delta[:, t, k] * A[k])[:, None, None] * S + \
                (delta[:, t, k, None] * xk)[:, :, None] * Bt[:, None, :]
            y[:, t, k * P:(k + 1) * P] = (S * Ct[:, None, :]).sum(-1) + p["D"][k] * xk
    gate = F.silu(z)
    if s.rmsnorm:
        t_ = y if s.norm_before_gate else y * gate
        t_ = t_.reshape(b, L, G, D // G)
        t_ = (t_ / torch.sqrt(t_.pow(2).mean(-1, keepdim=True) + m.eps)).reshape(b, L, D) * p["norm.weight"]
        y = t_ * gate if s.norm_before_gate else t_
    else:
        y = y * gate
    return y @ p["out_proj.weight"].T + (p["out_proj.bias"] if s.bias else 0)


def _mixer(seed=0, d_model=D_MODEL, **options) -> Mamba2Mixer:
    options = {"head_dim": 4, "d_state": 5, "chunk_size": 4, **options}
    config = MambaConfig(d_model=d_model, n_layer=2, vocab_size=16, layer="mamba2", **options)
    torch.manual_seed(seed)
    m = build_mixer(config, 0).double()
    with torch.no_grad():      # away from the init (D and the norm start at exactly 1)
        for p in m.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return m


SETTINGS = {
    "default": {},
    "groups": dict(n_groups=2),
    "groups4": dict(n_groups=4, head_dim=2, d_conv=2),
    "before_gate": dict(norm_before_gate=True, n_groups=2),
    "no_norm": dict(rmsnorm=False),
    "biases": dict(bias=True, conv_bias=False, d_conv=1),
    "dt_limits": dict(dt_limit_min=0.05, dt_limit_max=0.3),
}


@pytest.mark.parametrize("backend", ["reference", "chunked"])
@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_mixer_matches_the_oracle(name, backend):
    m = _mixer(**SETTINGS[name])
    m.scan_backend = backend
    h = torch.randn(2, 11, D_MODEL, dtype=torch.float64)      # 11: not a multiple of the chunk (4)
    with torch.no_grad():
        torch.testing.assert_close(m(h), oracle(m, h), rtol=1e-10, atol=1e-12)
    if backend == "chunked":       # the contract's step and state checks, once per setting
        check_mixer_contract(m, D_MODEL)


@settings(max_examples=12, deadline=None)
@given(length=st.integers(1, 9), heads=st.sampled_from([1, 2, 4]), groups=st.sampled_from([1, 2]),
       chunk=st.integers(1, 5), seed=st.integers(0, 100))
def test_mixer_matches_the_oracle_across_shapes(length, heads, groups, chunk, seed):
    groups = min(groups, heads)
    m = _mixer(seed, head_dim=2 * D_MODEL // heads, n_groups=groups, chunk_size=chunk, d_state=3)
    h = torch.randn(1, length, D_MODEL, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        torch.testing.assert_close(m(h), oracle(m, h), rtol=1e-10, atol=1e-12)


def test_gradients_of_the_backends_agree():
    grads = {}
    h0 = torch.randn(2, 9, D_MODEL, dtype=torch.float64)
    for backend in ("reference", "chunked"):
        m = _mixer(n_groups=2)
        m.scan_backend = backend
        h = h0.clone().requires_grad_(True)
        (m(h) * torch.linspace(-1, 1, D_MODEL, dtype=torch.float64)).sum().backward()
        grads[backend] = [h.grad] + [p.grad for p in m.parameters()]
    for a, b in zip(grads["reference"], grads["chunked"]):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)


def test_gradcheck_of_the_mixer():
    m = _mixer(n_groups=2, d_state=2)
    h = torch.randn(1, 3, D_MODEL, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: m(x), (h,))


def test_float32_follows_float64():
    m = _mixer(n_groups=2)
    h = torch.randn(2, 40, D_MODEL, dtype=torch.float64)
    with torch.no_grad():
        ref = m(h)
        got = m.float()(h.float())
    assert ((got.double() - ref).abs().max() / ref.abs().max()).item() < 1e-5


def _lm(seed=0, **options) -> MambaLM:
    options = {"head_dim": 4, "d_state": 5, "chunk_size": 4, "n_groups": 2, **options}
    torch.manual_seed(seed)
    model = MambaLM(MambaConfig(d_model=D_MODEL, n_layer=3, vocab_size=30, layer="mamba2", **options)).double()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


@pytest.mark.parametrize("d_conv", [1, 3, 5])
def test_steps_and_prefill_equal_the_full_forward(d_conv):
    model = _lm(d_conv=d_conv)
    ids = torch.randint(0, 30, (2, 12))
    with torch.no_grad():
        full = model(ids)
        cache = model.allocate_cache(2)
        steps = torch.stack([model.step(ids[:, t], cache) for t in range(12)], 1)
        torch.testing.assert_close(steps, full, rtol=1e-10, atol=1e-10)
        for prompt in (2, 7):        # shorter and longer than d_conv
            cache = model.allocate_cache(2)
            first = model(ids[:, :prompt], cache=cache)
            rest = torch.stack([model.step(ids[:, t], cache) for t in range(prompt, 12)], 1)
            torch.testing.assert_close(torch.cat([first, rest], 1), full, rtol=1e-10, atol=1e-10)


def test_greedy_generation_is_argmax_of_full_forwards():
    model = _lm(1)
    ids = torch.randint(0, 30, (2, 5))
    out = generate(model, ids, 6)
    seq = ids
    with torch.no_grad():
        for _ in range(6):
            nxt = model(seq)[:, -1, :model.config.vocab_size].argmax(-1)
            seq = torch.cat([seq, nxt[:, None]], 1)
    assert torch.equal(out, seq)


def test_training_step_reaches_every_parameter():
    model = _lm(2).float().train()
    ids = torch.randint(0, 30, (2, 10))
    logits = model(ids[:, :-1])
    F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1)).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


def test_init_follows_mamba_ssm():
    torch.manual_seed(0)
    model = MambaLM(MambaConfig(d_model=16, n_layer=4, vocab_size=30, layer="mamba2", head_dim=8, d_state=4))
    m = model.backbone.layers[0].mixer
    dt = F.softplus(m.dt_bias)
    assert (dt >= 1e-3 * 0.999).all() and (dt <= 0.1 * 1.001).all()
    A = m.A_log.exp()
    assert (A >= 1).all() and (A <= 16).all()
    assert torch.equal(m.D, torch.ones_like(m.D)) and torch.equal(m.norm.weight, torch.ones(32))
    bound = 1 / math.sqrt(32) / math.sqrt(4)          # kaiming-uniform bound of out_proj, ÷ √n_layer
    assert m.out_proj.weight.abs().max() <= bound


@pytest.mark.parametrize("options,fragment", [
    (dict(head_dim=5), "head_dim 5 does not divide d_inner 16"),
    (dict(head_dim=4, n_groups=3), "n_groups 3 does not divide the 4 heads"),
    (dict(head_dim=4, expand=1.3), "must be a positive whole number"),
    (dict(d_state=0), "d_state must be a positive integer"),
    (dict(dt_limit_min=0.5, dt_limit_max=0.1), "dt_limit_min < dt_limit_max"),
    (dict(norm_before_gate="yes"), "norm_before_gate must be true or false"),
    (dict(head_dim=4, io_constraint="positive"), "io_constraint"),
])
def test_bad_settings_are_one_sentence(options, fragment):
    with pytest.raises(ConfigError) as info:
        MambaConfig(d_model=D_MODEL, n_layer=1, vocab_size=10, layer="mamba2", **options)
    msg = str(info.value)
    assert fragment in msg and "\n" not in msg and msg.endswith(".")


def test_config_reads_the_family_options_and_sizes():
    config = MambaConfig(d_model=D_MODEL, n_layer=1, vocab_size=10, layer="mamba2", head_dim=4, n_groups=2)
    assert (config.d_inner, config.n_heads, config.d_state, config.head_dim) == (16, 4, 128, 4)
    assert MambaConfig.from_dict(config.to_dict()) == config


def test_io_parameters_give_the_layers_own_ssd_flow_and_attention():
    """The analysis' view of a Mamba-2 layer: the SSDSystem from io_parameters is the layer's scan
    of its own projections of h (conv, gate, norm and D dropped), and each channel's hidden
    attention times its scan input is the scan's output on that channel (without D)."""
    from tokendyn.analysis.forms import form_of
    from tokendyn.ops import ssd_scan

    model = _lm(4)
    m = model.backbone.layers[1].mixer
    params = m.io_parameters()
    assert params.form == "ssd" and params.sizes == (m.n_groups * m.d_state, m.d_inner)
    D, H, P, G, N = m.d_inner, m.n_heads, m.head_dim, m.n_groups, m.d_state
    h = torch.randn(2, 7, D_MODEL, dtype=torch.float64)
    W = m.in_proj.weight.detach()
    x, B, C, dt = (h @ W[D:2 * D].T, h @ W[2 * D:2 * D + G * N].T, h @ W[2 * D + G * N:2 * D + 2 * G * N].T,
                   h @ W[-H:].T)
    y = ssd_scan(x.reshape(2, 7, H, P), F.softplus(dt + m.dt_bias.detach()), -m.A_log.detach().exp(),
                 B.reshape(2, 7, G, N), C.reshape(2, 7, G, N))
    expected = y.reshape(2, 7, D) @ m.out_proj.weight.detach().T
    system = form_of(params).system(params)
    torch.testing.assert_close(system.vector_field(h), expected, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(system.vector_field_naive(h), expected, rtol=1e-10, atol=1e-12)

    ids = torch.randint(0, 30, (1, 9))
    with torch.no_grad():
        inner = model(ids, output_internals=True).internals[1]
    assert inner.h.shape == (1, 9, D_MODEL)
    chans = [0, 5, 13, 15, 14]
    maps = form_of(params).attention(params, inner, chans)                              # (5, L, L)
    xs = inner.x.transpose(1, 2).reshape(1, 9, H, P)
    ys = ssd_scan(xs, inner.delta[:, ::P].transpose(1, 2), params["A"], inner.B.transpose(1, 2).reshape(1, 9, G, N),
                  inner.C.transpose(1, 2).reshape(1, 9, G, N)).reshape(1, 9, D)
    for k, c in enumerate(chans):
        torch.testing.assert_close(maps[k] @ inner.x[0, c], ys[0, :, c], rtol=1e-10, atol=1e-12)


def test_the_analysis_memory_estimate_counts_every_group_of_b_and_c():
    """B and C are (L, G·N) in Mamba-2: the estimate that refuses a too-large --max-tokens grows with
    G (at one group it is the Mamba-1 formula's B, C term), by 2·G·N floats per token and layer."""
    from tokendyn.analysis.analyze import estimate_memory

    one, eight = (MambaConfig(d_model=64, n_layer=3, vocab_size=32, layer="mamba2", head_dim=16,
                              n_groups=g, d_state=16) for g in (1, 8))
    L = 1000
    grown = estimate_memory(eight, L, n_maps=2) - estimate_memory(one, L, n_maps=2)
    assert grown == 3 * L * 2 * (8 - 1) * 16 * 4
    plain = MambaConfig(d_model=64, n_layer=3, vocab_size=32)
    assert estimate_memory(plain, L, n_maps=2) > 0
