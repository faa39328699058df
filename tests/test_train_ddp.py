"""Two CPU processes with DDP (gloo) train to the same losses as one process with the same
global batch."""

from __future__ import annotations

import json
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

pytestmark = pytest.mark.slow

STEPS = 4


def _data():
    g = torch.Generator().manual_seed(0)
    return {s: torch.randint(0, 60, (800,), generator=g) for s in ("train", "validation", "test")}


def _run(out_file: str, micro_batch: int = 0) -> None:
    from tokendyn.model import MambaConfig, MambaLM
    from tokendyn.train import LanguageModelTask, TrainConfig, train

    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = MambaLM(MambaConfig(d_model=16, n_layer=2, vocab_size=60, d_state=4))
    task = LanguageModelTask(_data(), 60, context=16, batch_size=8, eval_tokens=64)
    run_dir = out_file + ".run"
    res = train(model, task, TrainConfig(steps=STEPS, log_every=1, micro_batch=micro_batch), out=run_dir,
                device="cpu", progress=False)
    if int(os.environ.get("RANK", "0")) == 0:
        records = [json.loads(line) for line in open(os.path.join(run_dir, "metrics.jsonl"))]
        losses = [r["loss"] for r in records if r["kind"] == "train"]
        with open(out_file, "w") as f:
            json.dump({"losses": losses, "test": res.test["loss"],
                       "weight": model.backbone.layers[0].mixer.x_proj.weight.flatten()[:20].tolist()}, f)


def _worker(rank: int, world: int, port: int, out_file: str) -> None:
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank),
                       "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank)})
    _run(out_file, micro_batch=2)   # 2 processes × 2 accumulation steps × 2 sequences = 8
    import torch.distributed as dist

    # rank 0 writes the result file after training; both ranks then leave the group together, so
    # that neither tears its connections down while the other still has them open (under load a
    # rank that left first was seen to abort at exit)
    dist.barrier()
    dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_match_one(tmp_path):
    single = tmp_path / "single.json"
    _run(str(single))
    double = tmp_path / "ddp.json"
    mp.spawn(_worker, args=(2, _free_port(), str(double)), nprocs=2, join=True)
    a, b = json.loads(single.read_text()), json.loads(double.read_text())
    assert len(a["losses"]) == len(b["losses"]) == STEPS
    assert b["losses"] == pytest.approx(a["losses"], rel=1e-5, abs=1e-5)
    assert b["test"] == pytest.approx(a["test"], rel=1e-5)
    assert b["weight"] == pytest.approx(a["weight"], rel=1e-4, abs=1e-6)


def _cli_worker(rank: int, world: int, port: int, text: str, run_dir: str, out_dir: str) -> None:
    import torch.distributed as dist

    from tokendyn.cli import main

    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank),
                       "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank)})
    torch.set_num_threads(1)
    try:
        main(["train", "lm", "--text", text, "--out", run_dir, "--vocab-size", "260", "--d-model", "16",
              "--n-layer", "1", "--context", "16", "--batch-size", "4", "--steps", "2", "--eval-every", "2",
              "--eval-tokens", "64", "--device", "cpu", "--no-progress"])
        code = 0
    except SystemExit as exc:
        code = exc.code
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump({"code": code, "in_group": dist.is_initialized()}, f)


def test_command_leaves_the_process_group(tmp_path):
    """A training command run by each of two processes (as under torchrun) finishes, and each
    process has left the group it joined: nothing is torn down at interpreter exit."""
    text = tmp_path / "t.txt"
    text.write_text("In the beginning the tokens moved along the flow of the layer. " * 400)
    mp.spawn(_cli_worker, args=(2, _free_port(), str(text), str(tmp_path / "run"), str(tmp_path)), nprocs=2,
             join=True)
    for rank in (0, 1):
        assert json.loads((tmp_path / f"rank{rank}.json").read_text()) == {"code": 0, "in_group": False}
    assert (tmp_path / "run" / "result.json").is_file()
