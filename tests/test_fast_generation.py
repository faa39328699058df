"""The in-place one-token step and CUDA-graph decoding.

CPU: the in-place step (MambaMixer.step_, MambaLM.step_) equals the copying step and the full
forward in float64, writes into the cache's own storage, and generate(cuda_graph=False) gives
the tokens of a plain loop over model.step. GPU: tokens replayed from a captured graph equal the
eager path's, for float32 and bfloat16 models, and one graph serves later calls.
"""

from __future__ import annotations

import copy
import os

import pytest
import torch
from lm_helpers import VOCAB, make_model

from tokendyn.errors import ConfigError
from tokendyn.model import generate, sample_next


def plain_generate(model, prompt, n, temperature=0.0, top_k=None, generator=None):
    """Generation as a loop over the copying model.step, the oracle of the fast paths."""
    cache = model.allocate_cache(prompt.shape[0])
    with torch.no_grad():
        logits = model(prompt, cache=cache)[:, -1, :VOCAB]
        out = [prompt]
        for i in range(n):
            token = sample_next(logits, temperature, top_k, generator)
            out.append(token[:, None])
            if i + 1 < n:
                logits = model.step(token, cache)[:, :VOCAB]
    return torch.cat(out, dim=1)


@pytest.mark.parametrize("io_constraint", ["none", "positive"])
def test_in_place_step_equals_step_and_full_forward(io_constraint):
    model = make_model(io_constraint=io_constraint, d_conv=3)
    ids = torch.randint(0, VOCAB, (3, 9))
    with torch.no_grad():
        full = model(ids)
        copied, in_place = model.allocate_cache(3), model.allocate_cache(3)
        ptrs = [t.data_ptr() for t in in_place.tensors()]
        a = torch.stack([model.step(ids[:, t], copied) for t in range(9)], dim=1)
        b = torch.stack([model.step_(ids[:, t], in_place) for t in range(9)], dim=1)
    assert [t.data_ptr() for t in in_place.tensors()] == ptrs
    assert torch.equal(a, b)
    torch.testing.assert_close(b, full, rtol=1e-10, atol=1e-10)
    for x, y in zip(copied.tensors(), in_place.tensors()):
        assert torch.equal(x, y)


def test_mixer_step_keeps_its_inputs_and_step_in_place_writes_them():
    mixer = make_model().backbone.layers[0].mixer
    conv, ssm = mixer.allocate_state(2)
    conv.normal_()
    ssm.normal_()
    hidden = torch.randn(2, 16, dtype=torch.float64)
    conv0, ssm0 = conv.clone(), ssm.clone()
    out, new_conv, new_ssm = mixer.step(hidden, conv, ssm)
    assert torch.equal(conv, conv0) and torch.equal(ssm, ssm0)
    assert torch.equal(mixer.step_(hidden, conv, ssm), out)
    assert torch.equal(conv, new_conv) and torch.equal(ssm, new_ssm)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_eager_generation_equals_the_plain_loop(dtype):
    model = make_model(dtype, seed=3)
    prompt = torch.randint(0, VOCAB, (2, 5))
    assert torch.equal(generate(model, prompt, 9, cuda_graph=False), plain_generate(model, prompt, 9))
    assert torch.equal(generate(model, prompt, 9), plain_generate(model, prompt, 9))      # None: eager on CPU
    a = generate(model, prompt, 7, temperature=0.9, top_k=5, generator=torch.Generator().manual_seed(2),
                 cuda_graph=False)
    b = plain_generate(model, prompt, 7, temperature=0.9, top_k=5, generator=torch.Generator().manual_seed(2))
    assert torch.equal(a, b)


def test_cuda_graph_on_cpu_is_refused():
    model = make_model(torch.float32)
    with pytest.raises(ConfigError, match="CUDA device"):
        generate(model, torch.randint(0, VOCAB, (1, 3)), 4, cuda_graph=True)


# ---- GPU ----------------------------------------------------------------------------------------

@pytest.mark.gpu
@pytest.mark.interpretable
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("io_constraint", ["none", "positive"])
def test_fused_in_place_step_matches_the_plain_step(dtype, io_constraint, monkeypatch):
    """The model's step on the fused kernels (forced on, so Triton's interpreter can run it on
    the CPU) against the same step in plain PyTorch: the kernels' wiring (strides, dtypes)."""
    from tokendyn.model.mixer import MambaMixer

    dev = os.environ.get("TOKENDYN_TEST_DEVICE", "cuda")
    model = make_model(dtype, seed=9, device=dev, d_model=24, d_state=16, scan_backend="reference",
                       io_constraint=io_constraint)
    oracle = copy.deepcopy(model).double()        # the same weights in float64
    ids = torch.randint(0, VOCAB, (3, 5), device=dev)

    def stepped(m):
        cache = m.allocate_cache(3)
        with torch.no_grad():
            return torch.stack([m.step_(ids[:, t], cache) for t in range(5)], dim=1).double(), cache

    truth, _ = stepped(oracle)
    want, plain = stepped(model)
    monkeypatch.setattr(MambaMixer, "fuses_kernels", lambda self, x: True)
    got, fused = stepped(model)

    def rel(a, b):
        return ((a.double() - b.double()).norm() / b.double().norm()).item()

    if dtype == torch.float32:
        assert rel(got, want) <= 1e-5
        assert all(rel(a, b) <= 1e-5 for a, b in zip(fused.tensors()[1::2], plain.tensors()[1::2]))
    else:
        # bfloat16 roundings differ between the paths, so compare each with float64. Triton's
        # interpreter rounds float32 -> bfloat16 by truncation (CUDA: to nearest), hence the wider bound.
        factor = 3.0 if dev == "cpu" else 2.0
        assert rel(got, truth) <= factor * rel(want, truth) + 1e-3


def gpu_model(dtype, seed=0, **kw):
    # d_inner 48: not a multiple of the kernels' channel blocks
    return make_model(dtype, seed=seed, device="cuda", d_model=24, d_state=16, scan_backend="auto", **kw)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("batch", [1, 3])
def test_graph_tokens_equal_eager_tokens(dtype, batch):
    from tokendyn.model.cuda_graph import clear_graphs

    model = gpu_model(dtype, seed=batch)
    prompt = torch.randint(0, VOCAB, (batch, 11), device="cuda")
    eager = generate(model, prompt, 40, cuda_graph=False)
    graph = generate(model, prompt, 40, cuda_graph=True)
    assert torch.equal(graph, eager)
    assert torch.equal(generate(model, prompt, 40), graph)    # None: the graph on CUDA
    g1, g2 = (torch.Generator(device="cuda").manual_seed(5) for _ in range(2))
    a = generate(model, prompt, 20, temperature=1.2, top_k=7, generator=g1, cuda_graph=False)
    b = generate(model, prompt, 20, temperature=1.2, top_k=7, generator=g2, cuda_graph=True)
    assert torch.equal(a, b)
    clear_graphs(model)


@pytest.mark.gpu
def test_one_graph_serves_later_calls_and_follows_the_weights():
    from tokendyn.model.cuda_graph import _REGISTRY, graph_decoder

    model = gpu_model(torch.float32, seed=7)
    p1 = torch.randint(0, VOCAB, (2, 6), device="cuda")
    p2 = torch.randint(0, VOCAB, (2, 13), device="cuda")
    first = generate(model, p1, 25, cuda_graph=True)
    decoder = graph_decoder(model, 2)
    second = generate(model, p2, 25, cuda_graph=True)
    assert graph_decoder(model, 2) is decoder                      # reused, not captured again
    assert torch.equal(first, generate(model, p1, 25, cuda_graph=False))
    assert torch.equal(second, generate(model, p2, 25, cuda_graph=False))
    # weights changed in place: the same graph sees them
    other = gpu_model(torch.float32, seed=8)
    model.load_state_dict(other.state_dict())
    assert torch.equal(generate(model, p1, 25, cuda_graph=True), generate(other, p1, 25, cuda_graph=False))
    assert graph_decoder(model, 2) is decoder
    # new storage (a dtype change): the graph is captured again
    model.to(torch.bfloat16)
    assert torch.equal(generate(model, p1, 25, cuda_graph=True), generate(model, p1, 25, cuda_graph=False))
    assert graph_decoder(model, 2) is not decoder
    assert len(_REGISTRY[model][1]) == 1


@pytest.mark.gpu
def test_in_place_step_does_not_sync_the_device():
    """A decoding step launches work and returns: no host-device synchronisation (the copying
    step's id check syncs; the in-place step trusts its ids)."""
    model = gpu_model(torch.bfloat16, seed=11)
    cache = model.allocate_cache(2)
    ids = torch.randint(0, VOCAB, (2,), device="cuda")
    with torch.no_grad():
        model.step_(ids, cache)                   # first call: kernel compilation
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            for _ in range(3):
                ids = model.step_(ids, cache)[:, :VOCAB].argmax(-1)
        finally:
            torch.cuda.set_sync_debug_mode(0)
