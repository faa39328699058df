"""--cuda-graph: a training step as CUDA graphs (tokendyn.train.loop.GraphedStep). On the GPU the
graphed run follows the eager one (every step's loss, the weights at the end), with gradient
accumulation, dropout and a resume; on the CPU the option is refused in one sentence and its
bookkeeping (identity, a checkpoint's learning rate) is checked."""

from __future__ import annotations

import json

import pytest
import torch
from error_helpers import one_sentence

from tokendyn.errors import ConfigError
from tokendyn.model import MambaConfig, MambaLM
from tokendyn.train import LanguageModelTask, TrainConfig, train
from tokendyn.train.state import _flatten_optimizer


def _ids(vocab=40, n=4000):
    return {s: torch.randint(0, vocab, (n,), generator=torch.Generator().manual_seed(i))
            for i, s in enumerate(("train", "validation", "test"))}


def _run(device, graph: bool, steps=12, micro=0, dropout=0.0, out=None, stop=None, resume=False, autocast=False):
    torch.manual_seed(0)
    model = MambaLM(MambaConfig(d_model=32, n_layer=2, vocab_size=40, d_state=8, final_dropout=dropout))
    task = LanguageModelTask(_ids(), 40, context=32, batch_size=8, eval_tokens=256)
    cfg = TrainConfig(steps=steps, micro_batch=micro, log_every=1, eval_every=0, checkpoint_every=4,
                      autocast=autocast, cuda_graph=graph, lr=3e-3)
    res = train(model, task, cfg, out=out, device=device, progress=False, stop_after_steps=stop, resume=resume)
    return res, model


def test_identity_names_the_option_only_when_on():
    assert "cuda_graph" not in TrainConfig().identity()
    assert TrainConfig(cuda_graph=True).identity()["cuda_graph"] is True
    with pytest.raises(ConfigError):
        TrainConfig(cuda_graph="yes")


def test_refused_on_the_cpu_before_anything_is_written(tmp_path):
    with pytest.raises(ConfigError) as info:
        _run("cpu", True, out=tmp_path / "run")
    assert "--cuda-graph needs one CUDA device" in str(info.value)
    one_sentence(info.value)
    assert not (tmp_path / "run").exists()


def test_a_device_learning_rate_is_saved_as_a_number():
    p = torch.nn.Parameter(torch.zeros(3))
    opt = torch.optim.AdamW([p], lr=torch.tensor(0.01))
    p.grad = torch.ones(3)
    opt.step()
    tensors, groups = _flatten_optimizer(opt.state_dict())
    assert groups[0]["lr"] == pytest.approx(0.01) and isinstance(groups[0]["lr"], float)
    json.dumps(groups)


def _curve(out):
    return [r["loss"] for r in map(json.loads, (out / "metrics.jsonl").open()) if r["kind"] == "train"]


@pytest.mark.gpu
@pytest.mark.parametrize("micro", [0, 4])
def test_graphed_training_follows_eager(tmp_path, micro):
    """float32: every step's loss and the final weights of the graphed run equal the eager run's
    to float32 rounding (the capturable AdamW keeps its step count on the device)."""
    eager, m_eager = _run("cuda", False, micro=micro, out=tmp_path / "e")
    graph, m_graph = _run("cuda", True, micro=micro, out=tmp_path / "g")
    assert _curve(tmp_path / "g") == pytest.approx(_curve(tmp_path / "e"), rel=1e-4, abs=1e-5)
    for (name, a), b in zip(m_eager.state_dict().items(), m_graph.state_dict().values()):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5, msg=name)
    assert graph.test["loss"] == pytest.approx(eager.test["loss"], rel=1e-4)


@pytest.mark.gpu
def test_graphed_training_with_dropout_and_autocast_learns(tmp_path):
    res, _ = _run("cuda", True, steps=30, dropout=0.3, autocast=True, out=tmp_path / "d")
    curve = _curve(tmp_path / "d")
    assert all(map(torch.isfinite, map(torch.tensor, curve))) and curve[-1] < curve[0]


@pytest.mark.gpu
def test_a_graphed_run_resumes(tmp_path):
    """Stopped at step 8 (a checkpoint) and resumed with the graph captured anew: the same losses
    and weights as the uninterrupted graphed run, to float32 rounding."""
    _, whole = _run("cuda", True, out=tmp_path / "a")
    _run("cuda", True, out=tmp_path / "b", stop=8)
    _, resumed = _run("cuda", True, out=tmp_path / "b", resume=True)
    assert _curve(tmp_path / "b")[-4:] == pytest.approx(_curve(tmp_path / "a")[-4:], rel=1e-4, abs=1e-5)
    for a, b in zip(whole.state_dict().values(), resumed.state_dict().values()):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)
