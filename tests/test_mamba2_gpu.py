"""The Mamba-2 family on a CUDA device against the CPU float64 oracle: the forward through both SSD
backends (values and gradients), the one-token step and greedy generation (eager and replayed from
a CUDA graph), in float32, bfloat16 and float64. Skipped without a GPU (marker ``gpu``)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from tokendyn.model import MambaConfig, MambaLM, generate

pytestmark = pytest.mark.gpu

VOCAB = 50
# relative error against float64 (largest |difference| / largest |value|) per dtype
TOL = {torch.float64: 1e-10, torch.float32: 1e-4, torch.bfloat16: 5e-2}


def _model(seed=0, **options) -> MambaLM:
    options = {"head_dim": 8, "d_state": 16, "n_groups": 2, "chunk_size": 16, **options}
    torch.manual_seed(seed)
    model = MambaLM(MambaConfig(d_model=32, n_layer=3, vocab_size=VOCAB, layer="mamba2", **options))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return model.eval()


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double().cpu(), b.double().cpu()
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.mark.parametrize("backend", ["reference", "chunked"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_forward_on_cuda_matches_the_cpu_float64_oracle(dtype, backend):
    cpu = _model().double()
    gpu = copy.deepcopy(cpu).to("cuda", dtype)
    gpu.set_scan_backend(backend)
    ids = torch.randint(0, VOCAB, (2, 77))                   # 77: not a multiple of the chunk
    with torch.no_grad():
        assert _rel(gpu(ids.cuda()), cpu(ids)) <= TOL[dtype]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_gradients_on_cuda_match_the_cpu_float64_oracle(dtype):
    cpu = _model(1).double().train()
    gpu = copy.deepcopy(cpu).to("cuda", dtype).train()
    ids = torch.randint(0, VOCAB, (2, 40))
    for m, x in ((cpu, ids), (gpu, ids.cuda())):
        logits = m(x[:, :-1])
        F.cross_entropy(logits.reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1)).backward()
    for (name, a), b in zip(cpu.named_parameters(), gpu.parameters()):
        assert _rel(b.grad, a.grad) <= (1e-9 if dtype == torch.float64 else 1e-3), name


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_step_and_generation_on_cuda(dtype):
    cpu = _model(2).double()
    gpu = copy.deepcopy(cpu).to("cuda", dtype)
    ids = torch.randint(0, VOCAB, (3, 10))
    with torch.no_grad():
        full = cpu(ids)
        cache = gpu.allocate_cache(3)
        steps = torch.stack([gpu.step_(ids[:, t].cuda(), cache) for t in range(10)], 1)
    assert _rel(steps, full) <= TOL[dtype]
    prompt = ids[:, :4].cuda()
    eager = generate(gpu, prompt, 8, cuda_graph=False)
    graphed = generate(gpu, prompt, 8, cuda_graph=True)
    assert torch.equal(eager, graphed)
    if dtype == torch.float64:
        assert torch.equal(eager.cpu(), generate(cpu, ids[:, :4], 8))
