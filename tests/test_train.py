"""tokendyn.train: schedule, optimiser groups, batches, exact resume, the regime monitor,
and the one-sentence errors of `tokendyn train lm`."""

from __future__ import annotations

import json
import math
import warnings

import pytest
import torch
from train_helpers import cache, run_cli, tiny_args, write_text  # noqa: F401 -- fixtures used by name

from tokendyn.model import MambaConfig, MambaLM
from tokendyn.train import LanguageModelTask, RegimeMonitor, TrainConfig, lr_at, param_groups
from tokendyn.train.monitor import ConvergentRegimeWarning


def test_lr_schedule():
    cfg = TrainConfig(steps=101, lr=1.0, warmup=0.1, min_lr_ratio=0.1)
    warm = math.ceil(0.1 * 101)
    assert [lr_at(s, cfg) for s in range(warm)] == pytest.approx([(s + 1) / warm for s in range(warm)])
    assert lr_at(warm, cfg) == pytest.approx(1.0)
    assert lr_at(100, cfg) == pytest.approx(0.1)
    mid = int(warm + (100 - warm) / 2)
    assert lr_at(mid, cfg) == pytest.approx(0.1 + 0.45 * (1 + math.cos(math.pi * (mid - warm) / (100 - warm))))
    lrs = [lr_at(s, cfg) for s in range(warm, 101)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))


def test_param_groups_no_decay_on_alog_d_biases_norms():
    model = MambaLM(MambaConfig(d_model=16, n_layer=2, vocab_size=50, d_state=4))
    decay, no_decay = param_groups(model, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    ids = {id(p) for p in no_decay["params"]}
    names = {n for n, p in model.named_parameters() if id(p) in ids}
    for i in range(2):
        for part in ("mixer.A_log", "mixer.D", "mixer.dt_proj.bias", "mixer.conv1d.bias", "norm.weight"):
            assert f"backbone.layers.{i}.{part}" in names
    assert "backbone.norm_f.weight" in names
    decayed = {n for n, p in model.named_parameters() if id(p) not in ids}
    assert "backbone.layers.0.mixer.x_proj.weight" in decayed and "backbone.embedding.weight" in decayed
    assert len(ids) + len(decay["params"]) == len(list(model.parameters()))


def test_lm_task_batches_are_pure_and_slice():
    ids = {s: torch.arange(1000) % 97 for s in ("train", "validation", "test")}
    task = LanguageModelTask(ids, 97, context=16, batch_size=8, seed=3, eval_tokens=100)
    x, y = task.train_batch(5, 0, 1)
    assert x.shape == (8, 16) and torch.equal(y[:, :-1], x[:, 1:])
    parts = [task.train_batch(5, i, 4) for i in range(4)]
    assert torch.equal(torch.cat([p[0] for p in parts]), x)
    assert torch.equal(task.train_batch(5, 0, 1)[0], x)           # a pure function of the step
    assert not torch.equal(task.train_batch(6, 0, 1)[0], x)
    w = task.eval_windows("validation")
    assert w.shape == (6, 17) and torch.equal(w[1, 0], w[0, -1])    # targets do not overlap


def _read(out):
    return json.loads((out / "result.json").read_text())


@pytest.mark.parametrize("setting", ["none", "positive"])
def test_resume_continues_exactly(tmp_path, capsys, cache, setting):  # noqa: F811 -- `cache` is a fixture
    text = write_text(tmp_path / "t.txt")
    a, b = tmp_path / "a", tmp_path / "b"
    assert run_cli(tiny_args(text, a, "--io-constraint", setting), capsys)[0] == 0
    code, err = run_cli(tiny_args(text, b, "--stop-after-steps", "6", "--io-constraint", setting), capsys)
    assert code == 0 and "stopped after step 6" in err
    assert not (b / "result.json").exists()
    assert json.loads((b / "checkpoint" / "trainer.json").read_text())["step"] == 6
    args = tiny_args(text, b, "--resume", str(b), "--io-constraint", setting)
    args.remove("--out"), args.remove(str(b))
    code, err = run_cli(args, capsys)
    assert code == 0, err
    ra, rb = _read(a), _read(b)
    assert ra["final_loss"] == rb["final_loss"]
    assert ra["test"] == rb["test"] and ra["val_curve"] == rb["val_curve"]
    weights = "checkpoint/model.safetensors"
    assert (a / weights).read_bytes() == (b / weights).read_bytes()
    # the metrics log of the resumed run holds the uninterrupted one's records
    strip = [{k: v for k, v in r.items() if k != "elapsed_s"} for r in map(json.loads, (a / "metrics.jsonl").open())]
    stripb = [{k: v for k, v in r.items() if k != "elapsed_s"} for r in map(json.loads, (b / "metrics.jsonl").open())]
    # (the interrupted run also logged its last step before stopping)
    assert [r for r in strip if r["kind"] != "train"] == [r for r in stripb if r["kind"] != "train"]
    assert all(r in stripb for r in strip)
    kinds = {r["kind"] for r in strip}
    assert {"train", "validation", "monitor", "test"} <= kinds
    # the run directory holds what analyze needs: the checkpoint and its tokenizer
    assert (a / "checkpoint" / "tokenizer.json").is_file() and (a / "monitor.png").is_file()
    from tokendyn.data.text import find_tokenizer

    assert find_tokenizer(a / "checkpoint") == a / "checkpoint" / "tokenizer.json"


def test_gradient_accumulation_matches_one_pass(tmp_path):
    ids = {s: torch.randint(0, 40, (600,), generator=torch.Generator().manual_seed(i))
           for i, s in enumerate(("train", "validation", "test"))}
    from tokendyn.train import train

    losses = []
    for micro in (0, 2):
        torch.manual_seed(0)
        model = MambaLM(MambaConfig(d_model=16, n_layer=1, vocab_size=40, d_state=4))
        task = LanguageModelTask(ids, 40, context=16, batch_size=4, eval_tokens=64)
        res = train(model, task, TrainConfig(steps=3, micro_batch=micro, log_every=1), device="cpu", progress=False)
        losses.append(res.final_loss)
    assert losses[0] == pytest.approx(losses[1], rel=1e-5, abs=1e-6)



def test_eval_test_records_a_test_curve_and_changes_no_training_number(tmp_path):
    """eval_test: a test record at every evaluation but the last (whose test record follows the
    loop); the trained weights are those of a run without it; identity names it only when on."""
    ids = {s: torch.randint(0, 40, (600,), generator=torch.Generator().manual_seed(i))
           for i, s in enumerate(("train", "validation", "test"))}
    from tokendyn.train import train

    weights, kinds = [], []
    for on in (False, True):
        torch.manual_seed(0)
        model = MambaLM(MambaConfig(d_model=16, n_layer=1, vocab_size=40, d_state=4, final_dropout=0.3))
        task = LanguageModelTask(ids, 40, context=16, batch_size=4, eval_tokens=64)
        out = tmp_path / str(on)
        train(model, task, TrainConfig(steps=6, eval_every=2, eval_test=on), out, device="cpu", progress=False)
        weights.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
        records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        kinds.append([(r["kind"], r["step"]) for r in records if r["kind"] in ("test", "test_curve")])
    assert torch.equal(weights[0], weights[1])
    assert kinds == [[("test", 6)], [("test_curve", 2), ("test_curve", 4), ("test", 6)]]
    assert "eval_test" not in TrainConfig().identity() and TrainConfig(eval_test=True).identity()["eval_test"]

def _oracle_signature(S_B, S_C):
    M = S_C.double().T @ S_B.double()
    ev = torch.linalg.eigvalsh(0.5 * (M + M.T))
    tol = 1e-8 * ev.abs().max()
    return int((ev > tol).sum()), int((ev < -tol).sum())


def test_monitor_records_signature_growth_and_warns_once():
    torch.manual_seed(0)
    model = MambaLM(MambaConfig(d_model=16, n_layer=3, vocab_size=50, d_state=4))
    r, n = model.config.dt_rank_value, model.config.d_state
    with torch.no_grad():                   # layer 1: S_B = −S_C, so M = −S_Cᵀ S_C ⪯ 0
        w = model.backbone.layers[1].mixer.x_proj.weight
        w[r:r + n] = -w[r + n:r + 2 * n]
    probe = torch.randint(0, 50, (1, 24))
    records = []
    mon = RegimeMonitor(probe, every=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        mon(0, model, records.append)
        mon(1, model, records.append)
    conv = [w for w in caught if issubclass(w.category, ConvergentRegimeWarning)]
    assert len(conv) == 1 and "layer 1 entered" in str(conv[0].message)
    entry = records[0]
    assert entry["kind"] == "monitor" and len(entry["layers"]) == 3
    for i, row in enumerate(entry["layers"]):
        p = model.backbone.layers[i].mixer.io_parameters()
        assert (row["positive"], row["negative"]) == _oracle_signature(p["S_B"], p["S_C"])
    assert entry["layers"][1]["regime"] == "convergence" and entry["layers"][0]["regime"] == "divergence"
    from tokendyn.analysis.trajectories import measure_dynamics

    growth = measure_dynamics(model, probe[0])[0].layer_growth()
    assert [row["growth"] for row in entry["layers"]] == pytest.approx(growth.tolist())
    assert sum(r.get("kind") == "warning" for r in records) == 1


# ---- bad input: one sentence, exit status 2, nothing already written lost ----------------


def test_bad_text_files(tmp_path, capsys, cache):  # noqa: F811 -- `cache` is a fixture
    (tmp_path / "empty.txt").write_text(" \n")
    (tmp_path / "bin.txt").write_bytes(b"\xff\xfe\x00abc" * 10)
    for name, words in (("empty.txt", "empty"), ("bin.txt", "not UTF-8"), ("missing.txt", "does not exist")):
        code, err = run_cli(tiny_args(tmp_path / name, tmp_path / "o"), capsys)
        assert code == 2 and words in err and err.count("\n") == 1, err
    assert not (tmp_path / "o").exists()


def test_unknown_setting(tmp_path, capsys, cache):  # noqa: F811 -- `cache` is a fixture
    text = write_text(tmp_path / "t.txt")
    code, err = run_cli(tiny_args(text, tmp_path / "o", "--io-constraint", "sideways"), capsys)
    assert code == 2 and "sideways" in err and err.count("\n") == 1
    assert not (tmp_path / "o").exists()
    code, err = run_cli(["train", "lm-scenarios", "--settings", "none,sideways", "--out", tmp_path / "s"], capsys)
    assert code == 2 and "sideways" in err and err.count("\n") == 1
    assert not (tmp_path / "s").exists()


def test_constraint_needs_d_state_at_most_d_inner(tmp_path, capsys, cache):  # noqa: F811 -- `cache` is a fixture
    text = write_text(tmp_path / "t.txt")
    code, err = run_cli(tiny_args(text, tmp_path / "o", "--io-constraint", "positive", "--d-state", "40"), capsys)
    assert code == 2 and "d_state" in err and err.count("\n") == 1
    assert not (tmp_path / "o").exists()


def test_mixer_options_and_layer(tmp_path, capsys, cache):  # noqa: F811 -- `cache` is a fixture
    """--mixer-option NAME=VALUE sets any option of the family or its variants (the same as the old
    flags); a bad one, one given twice and an unknown family end in one sentence."""
    import json

    text = write_text(tmp_path / "t.txt")
    run = tmp_path / "o"
    code, err = run_cli(tiny_args(text, run, "--steps", "4", "--mixer-option", "d_conv=3", "--mixer-option",
                                  "io_constraint=negative", "--io-margin", "0.5", "--monitor-every", "0"), capsys)
    assert code == 0, err
    raw = json.loads((run / "checkpoint" / "config.json").read_text())
    assert raw["layer"] == "mamba1" and raw["mixer"]["d_conv"] == 3 and raw["mixer"]["d_state"] == 4
    assert raw["variants"]["io_constraint"] == {"io_constraint": "negative", "io_margin": 0.5}
    for extra, words in ((("--mixer-option", "d_conv"), "NAME=VALUE"),
                         (("--mixer-option", "d_state=5"), "given twice"),
                         (("--mixer-option", "colour=red"), "unknown MambaConfig field(s): colour"),
                         (("--layer", "mamba9"), "unknown layer 'mamba9'")):
        code, err = run_cli(tiny_args(text, tmp_path / "bad", *extra), capsys)
        assert code == 2 and words in err and err.count("\n") == 1, err
        assert not (tmp_path / "bad").exists()


def _snapshot(directory):
    return {p.relative_to(directory): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def test_resume_refuses_other_configuration_and_corrupt_checkpoint(tmp_path, capsys, cache):  # noqa: F811 -- `cache` is a fixture
    text = write_text(tmp_path / "t.txt")
    run = tmp_path / "run"
    assert run_cli(tiny_args(text, run, "--stop-after-steps", "4"), capsys)[0] == 0
    before = _snapshot(run)
    # a new run into a directory that holds one
    code, err = run_cli(tiny_args(text, run), capsys)
    assert code == 2 and "--resume" in err and err.count("\n") == 1
    # another configuration
    args = tiny_args(text, run, "--resume", str(run), "--d-model", "24")
    code, err = run_cli(args, capsys)
    assert code == 2 and "other settings (--d-model: 16 there vs 24 now" in err and err.count("\n") == 1, err
    # an option that changes the data (the token hash): the option is named, not the hash
    code, err = run_cli(tiny_args(text, run, "--resume", str(run), "--vocab-size", "280"), capsys)
    assert code == 2 and "--vocab-size" in err and "sha256" not in err, err
    assert _snapshot(run) == before
    # a corrupt checkpoint
    model_file = run / "checkpoint" / "model.safetensors"
    model_file.write_bytes(model_file.read_bytes()[:100])
    before = _snapshot(run)
    code, err = run_cli(tiny_args(text, run, "--resume", str(run)), capsys)
    assert code == 2 and "checkpoint" in err and err.count("\n") == 1, err
    assert _snapshot(run) == before
    (run / "checkpoint" / "optimizer.safetensors").write_bytes(b"garbage")
    code, err = run_cli(tiny_args(text, run, "--resume", str(run)), capsys)
    assert code == 2 and err.count("\n") == 1
    # a file where the run directory should be
    (tmp_path / "file").write_text("keep")
    code, err = run_cli(tiny_args(text, tmp_path / "file"), capsys)
    assert code == 2 and "is an existing file" in err and (tmp_path / "file").read_text() == "keep"
    # nothing to resume
    code, err = run_cli(tiny_args(text, tmp_path / "none", "--resume", str(tmp_path / "none")), capsys)
    assert code == 2 and "no training run" in err


@pytest.mark.slow
def test_resume_after_sigkill(tmp_path, capsys, cache):  # noqa: F811 -- `cache` is a fixture
    """A run killed (SIGKILL) at an arbitrary moment after its first checkpoint resumes and ends
    with the uninterrupted run's loss and weights."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    text = write_text(tmp_path / "t.txt")
    steps = ["--steps", "100", "--checkpoint-every", "3", "--eval-every", "50", "--monitor-every", "50"]
    a, b = tmp_path / "a", tmp_path / "b"
    assert run_cli(tiny_args(text, a, *steps), capsys)[0] == 0      # also fills the tokenizer cache
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1]),
                                                        os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "tokendyn", *tiny_args(text, b, *steps)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline and proc.poll() is None:
        try:      # the checkpoint directory may be mid-rename
            if json.loads((b / "checkpoint" / "trainer.json").read_text())["step"] >= 6:
                break
        except (OSError, ValueError):
            pass
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    if (b / "result.json").exists():
        pytest.skip("the run finished before it could be killed")
    code, err = run_cli(tiny_args(text, b, *steps, "--resume", str(b)), capsys)
    assert code == 0, err
    assert _read(a)["final_loss"] == _read(b)["final_loss"] and _read(a)["test"] == _read(b)["test"]
    weights = "checkpoint/model.safetensors"
    assert (a / weights).read_bytes() == (b / weights).read_bytes()


def test_a_model_too_large_for_memory_is_refused_before_allocating():
    """Weights, gradients and AdamW moments of a d_model 10^6 model would need hundreds of TiB: the
    check counts parameters on the meta device and refuses in one sentence, allocating nothing."""
    from tokendyn.errors import ConfigError
    from tokendyn.model import MambaConfig, MambaLM
    from tokendyn.train.loop import check_model_fits

    with pytest.raises(ConfigError, match="parameters .* needs about .* more than"):
        check_model_fits(MambaLM, MambaConfig(d_model=1_000_000, n_layer=4, vocab_size=4096), "cpu")
    check_model_fits(MambaLM, MambaConfig(d_model=32, n_layer=2, vocab_size=300), "cpu")   # fits


def test_a_diverging_loss_ends_in_one_sentence(tmp_path, capsys, cache):  # noqa: F811 -- `cache` is a fixture
    """An absurd learning rate makes the loss nan: the command names the step and the remedy,
    without a traceback, and exits 2."""
    text = write_text(tmp_path / "t.txt")
    code, err = run_cli(tiny_args(text, tmp_path / "o", "--lr", "1e30"), capsys)
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    # the regime monitor (every 4 steps) or the loss check (every 10) meets it first
    assert ("the training loss became nan" in err or "stopped being finite numbers" in err), err
    assert "lower the learning rate" in err


def test_a_run_that_could_not_finish_in_a_year_is_refused_before_allocation():
    """The time floor: 6 FLOP per parameter and token at a rate far above any device's."""
    from error_helpers import one_sentence

    from tokendyn.errors import ConfigError
    from tokendyn.train.loop import MAX_RUN_S, PEAK_FLOPS, check_duration

    n_params = 10**7
    just_within = MAX_RUN_S * PEAK_FLOPS["cpu"] / (6 * n_params)
    check_duration(n_params, just_within * 0.99, "cpu", "--steps 1")
    with pytest.raises(ConfigError, match=r"--steps 2 would take at least 2 years on cpu") as info:
        check_duration(n_params, just_within * 2.01, "cpu", "--steps 2")
    one_sentence(info.value)
    with pytest.raises(ConfigError, match="at least 402 days"):
        check_duration(n_params, just_within * 1.1, "cpu", "--steps 3")
