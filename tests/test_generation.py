"""Recurrent inference: stepping token by token reproduces the parallel forward, a
prefilled cache continues it, and generation equals argmax over repeated forwards."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from lm_helpers import make_model

from tokendyn.errors import ConfigError
from tokendyn.model import InferenceCache, generate, sample_next
from tokendyn.ops import available_backends


def stepped_logits(model, ids):
    cache = model.allocate_cache(ids.shape[0])
    with torch.no_grad():
        return torch.stack([model.step(ids[:, t], cache) for t in range(ids.shape[1])], dim=1), cache


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-4)])
@pytest.mark.parametrize("length", [1, 3, 17])
def test_step_equals_full_forward(dtype, tol, length):
    model = make_model(dtype)
    ids = torch.randint(0, 29, (3, length))
    with torch.no_grad():
        full = model(ids)
    stepped, cache = stepped_logits(model, ids)
    assert cache.seqlen_offset == length
    rel = ((stepped - full).abs().max() / full.abs().max()).item()
    assert rel <= tol


@pytest.mark.parametrize("backend", available_backends())
@pytest.mark.parametrize("prompt", [1, 2, 9])
def test_prefill_then_step_continues_the_sequence(backend, prompt):
    model = make_model(torch.float64, seed=1, d_conv=4)
    model.set_scan_backend(backend)
    ids = torch.randint(0, 29, (2, 14))
    with torch.no_grad():
        full = model(ids)
        cache = InferenceCache.allocate(model, 2)
        head = model(ids[:, :prompt], cache=cache)            # parallel prefill fills the cache
        assert cache.seqlen_offset == prompt
        tail = [model.step(ids[:, t], cache) for t in range(prompt, 10)]
        rest = model(ids[:, 10:], cache=cache)                # several tokens into a filled cache
    got = torch.cat([head, torch.stack(tail, dim=1), rest], dim=1)
    torch.testing.assert_close(got, full, rtol=1e-9, atol=1e-9)


def test_prefill_state_equals_stepped_state():
    model = make_model(torch.float64, seed=2)
    ids = torch.randint(0, 29, (2, 7))
    _, stepped = stepped_logits(model, ids)
    filled = model.allocate_cache(2)
    with torch.no_grad():
        model(ids, cache=filled)
    for a, b in zip(stepped.tensors(), filled.tensors()):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    conv, ssm = stepped.states[0]
    assert ssm.shape == (2, 32, 4) and conv.shape == (2, 32, 4)


@settings(max_examples=6, deadline=None)
@given(d_conv=st.integers(1, 5), expand=st.integers(1, 3), length=st.integers(1, 8), bias=st.booleans(),
       rms=st.booleans(), fp32_residual=st.booleans(), seed=st.integers(0, 1000))
def test_step_equals_forward_across_configs(d_conv, expand, length, bias, rms, fp32_residual, seed):
    model = make_model(torch.float64, seed=seed, d_conv=d_conv, expand=expand, bias=bias, rms_norm=rms,
                       residual_in_fp32=fp32_residual)
    ids = torch.randint(0, 29, (2, length))
    with torch.no_grad():
        full = model(ids)
    torch.testing.assert_close(stepped_logits(model, ids)[0], full, rtol=1e-10, atol=1e-10)


def test_bfloat16_step_close_to_forward():
    model = make_model(torch.bfloat16, seed=3)
    ids = torch.randint(0, 29, (2, 8))
    with torch.no_grad():
        full = model(ids).float()
    stepped = stepped_logits(model, ids)[0].float()
    assert model.allocate_cache(1).states[0][1].dtype == torch.float32
    assert ((stepped - full).abs().max() / full.abs().max()).item() < 0.05


def test_greedy_generation_equals_argmax_of_full_forwards():
    model = make_model(torch.float32, seed=4)
    prompt = torch.randint(0, 29, (3, 4))
    out = generate(model, prompt, max_new_tokens=10)
    assert out.shape == (3, 14) and torch.equal(out[:, :4], prompt)
    seq = prompt
    with torch.no_grad():
        for _ in range(10):
            nxt = model(seq)[:, -1, :29].argmax(-1)
            seq = torch.cat([seq, nxt[:, None]], dim=1)
    assert torch.equal(out, seq)


def test_sampling_is_reproducible_and_respects_top_k_and_padding():
    model = make_model(torch.float32, seed=5, vocab_size=29)  # padded to 32
    prompt = torch.randint(0, 29, (4, 3))
    a = generate(model, prompt, 12, temperature=1.5, generator=torch.Generator().manual_seed(0))
    b = generate(model, prompt, 12, temperature=1.5, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a, b)
    assert int(a.max()) < 29
    assert torch.equal(generate(model, prompt, 6, temperature=1.0, top_k=1), generate(model, prompt, 6))
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2000, 29, generator=g)
    picks = sample_next(logits, temperature=1.0, top_k=3, generator=g)
    top3 = logits.topk(3, dim=-1).indices
    assert bool((picks[:, None] == top3).any(-1).all())
    # temperature sampling follows softmax: frequency of the argmax near its probability
    row = torch.tensor([[2.0, 0.0, -1.0]]).expand(20000, 3)
    freq = (sample_next(row, temperature=1.0, generator=g) == 0).float().mean().item()
    assert abs(freq - torch.softmax(row[0], 0)[0].item()) < 0.02


def test_generation_bad_arguments_and_internals_with_filled_cache():
    model = make_model(torch.float32)
    prompt = torch.randint(0, 29, (1, 3))
    with pytest.raises(ConfigError):
        generate(model, prompt, 3, temperature=-1.0)
    with pytest.raises(ConfigError):
        generate(model, prompt, 3, top_k=0)
    with pytest.raises(ConfigError):
        generate(model, prompt[0], 3)
    assert torch.equal(generate(model, prompt, 0), prompt)
    cache = model.allocate_cache(1)
    with torch.no_grad():
        model(prompt, cache=cache)
        with pytest.raises(ConfigError, match="output_internals"):
            model(prompt, cache=cache, output_internals=True)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-4)])
def test_cuda_step_and_generation(dtype, tol):
    model = make_model(dtype, seed=6).cuda()
    ids = torch.randint(0, 29, (2, 12), device="cuda")
    for backend in available_backends("cuda"):
        model.set_scan_backend(backend)
        with torch.no_grad():
            full = model(ids)
            cache = model.allocate_cache(2)
            head = model(ids[:, :5], cache=cache)
            tail = torch.stack([model.step(ids[:, t], cache) for t in range(5, 12)], dim=1)
        got = torch.cat([head, tail], dim=1)
        assert ((got - full).abs().max() / full.abs().max()).item() <= tol, backend
    out = generate(model, ids[:, :4], 6)
    seq = ids[:, :4]
    with torch.no_grad():
        for _ in range(6):
            seq = torch.cat([seq, model(seq)[:, -1, :29].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(out, seq)
