"""Image classification through the one training loop: the task, `tokendyn train image`
(exact resume, one-sentence errors) and the reorder experiment's grid and files."""

from __future__ import annotations

import json

import pytest
import torch
from image_helpers import write_fashion, write_idx
from train_helpers import run_cli

from tokendyn.data.images import load_fashion_mnist
from tokendyn.train.images import ImageClassificationTask


@pytest.fixture
def fashion(tmp_path):
    d = tmp_path / "fm"
    d.mkdir()
    write_fashion(d, n_train=40, n_test=10)
    return d


def image_args(data_dir, out, *extra):
    """`tokendyn train image` options of a run that takes a second or two on one CPU core."""
    return ["train", "image", "--data-dir", str(data_dir), "--d-model", "8", "--n-layer", "2", "--d-state", "4",
            "--patch-size", "7", "--epochs", "2", "--batch-size", "8", "--device", "cpu", "--no-progress",
            "--out", str(out), *extra]


def test_task_batches_are_pure_and_cover_each_epoch(fashion):
    data = load_fashion_mnist(fashion)
    task = ImageClassificationTask(data, batch_size=6, seed=1, val_fraction=0.25, crop_padding=2, flip=True)
    assert task.steps_per_epoch == 30 // 6
    x, y = task.train_batch(3, 0, 1)
    assert x.shape == (6, 1, 28, 28) and x.dtype == torch.float32 and y.shape == (6,)
    parts = [task.train_batch(3, i, 3) for i in range(3)]
    assert torch.equal(torch.cat([p[0] for p in parts]), x) and torch.equal(torch.cat([p[1] for p in parts]), y)
    assert torch.equal(task.train_batch(3, 0, 1)[0], x)                 # a pure function of the step
    order = task.epoch_order(0)
    assert sorted(order.tolist()) == list(range(30))                    # every image once per epoch
    ev = task.evaluate(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10)), "test")
    assert ev["images"] == 10 and 0 <= ev["accuracy"] <= 1


@pytest.mark.parametrize("reorder", ["none", "hard"])
def test_train_image_resumes_exactly(tmp_path, capsys, fashion, reorder):
    a, b = tmp_path / "a", tmp_path / "b"
    extra = ("--reorder", reorder, "--crop-padding", "1")
    code, err = run_cli(image_args(fashion, a, *extra), capsys)
    assert code == 0, err
    code, err = run_cli(image_args(fashion, b, *extra, "--stop-after-steps", "3"), capsys)
    assert code == 0 and "stopped after step 3" in err
    args = image_args(fashion, b, *extra, "--resume", str(b))
    args.remove("--out"), args.remove(str(b))
    code, err = run_cli(args, capsys)
    assert code == 0, err
    ra, rb = (json.loads((d / "result.json").read_text()) for d in (a, b))
    assert ra["test"] == rb["test"] and ra["val_curve"] == rb["val_curve"]
    assert len(ra["val_curve"]) == 2                                     # one validation per epoch
    weights = "checkpoint/model.safetensors"
    assert (a / weights).read_bytes() == (b / weights).read_bytes()
    # the checkpoint is an ordinary classifier checkpoint: info reads it
    code, err = run_cli(["info", a / "checkpoint", "--json", tmp_path / "info.json"], capsys)
    assert code == 0, err
    info = json.loads((tmp_path / "info.json").read_text())
    assert info["config"]["variants"]["reorder"]["reorder"] == reorder and info["config"]["patch_size"] == 7


def test_bad_input_is_one_sentence_and_exit_2(tmp_path, capsys, fashion):
    cases = [
        (image_args(fashion, tmp_path / "r1", "--reorder", "sideways"), "unknown reorder mode"),
        (image_args(fashion, tmp_path / "r2", "--reorder", "soft", "--reorder-tau", "0"), "reorder_tau"),
        (image_args(fashion, tmp_path / "r3", "--reorder", "soft", "--reorder-tau", "-1"), "reorder_tau"),
        (image_args(fashion, tmp_path / "r4", "--reorder-branches", "z"), "reorder_branches"),
        (image_args(fashion, tmp_path / "r5", "--reorder", "hard", "--reorder-layers", "5"), "reorder_layers"),
        (image_args(fashion, tmp_path / "r6", "--patch-size", "5"), "patch size 5"),
        (image_args(tmp_path / "nothing", tmp_path / "r7"), "no Fashion-MNIST IDX files"),
        (["train", "reorder", "--settings", "sorted", "--out", tmp_path / "g"], "unknown setting"),
        (["train", "reorder", "--scale", "huge", "--out", tmp_path / "g"], "unknown scale"),
    ]
    folder = tmp_path / "images"
    (folder / "a").mkdir(parents=True)
    (folder / "b").mkdir(parents=True)
    cases.append((image_args(folder, tmp_path / "r8", "--data", "folder"), "no image files"))
    broken = tmp_path / "broken"
    (broken / "a").mkdir(parents=True)
    (broken / "b").mkdir(parents=True)
    (broken / "a" / "x.png").write_bytes(b"not an image")
    one = tmp_path / "one"
    (one / "a").mkdir(parents=True)
    (one / "a" / "x.png").write_bytes(b"not read: one class is refused first")
    cases.append((image_args(one, tmp_path / "r12", "--data", "folder"), "needs at least two"))
    cases.append((image_args(broken, tmp_path / "r9", "--data", "folder"), "cannot be read"))
    labels = tmp_path / "labels"
    labels.mkdir()
    write_fashion(labels, n_train=20, n_test=5, label_max=12)
    cases.append((image_args(labels, tmp_path / "r10"), "labels outside 0..9"))
    size = tmp_path / "size"
    size.mkdir()
    write_fashion(size, n_train=20, n_test=5)
    write_idx(size / "train-images-idx3-ubyte.gz", torch.zeros(20, 28, 28, dtype=torch.uint8), compress=True,
              extra=b"\x00" * 7)
    cases.append((image_args(size, tmp_path / "r11"), "bytes of data but its header"))
    for args, match in cases:
        code, err = run_cli(args, capsys)
        assert code == 2 and match in err and err.count("\n") == 1, (args, err)


TINY = {"train_images": 0, "test_images": 0, "batch_size": 9, "epochs": 2, "lr": 3e-3, "crop_padding": 0,
        "target_acc": 0.1, "sharpness_images": 4,
        "model": {"dims": [2, 4, 4], "depths": [0, 2, 1], "strides": [2, 2], "d_state": 2, "d_conv": 3, "expand": 1,
                  "mlp_ratio": 1.0}}


@pytest.mark.slow
def test_reorder_grid_writes_the_table_and_skips_complete_runs(tmp_path, monkeypatch, fashion):
    from tokendyn.experiments.reorder import EXPERIMENT
    from tokendyn.train.grid import run_grid

    monkeypatch.setitem(EXPERIMENT.scales, "tiny", TINY)
    settings = ("none", "authors", "hard", "gated_soft")
    lines = []
    prov = {"device": "cpu (test)", "commit": "0" * 40, "command": "pytest", "date": "today", "torch": "x"}
    doc = run_grid(EXPERIMENT, tmp_path / "out", scale="tiny", settings=settings, seeds=(0, 1), device="cpu",
                   options={"data_dir": fashion}, progress=False, log=lines.append, provenance=prov)
    assert set(doc) >= {"settings", "comparisons", "config", "data", "data_details", "seeds", "tokens_seen",
                        "device", "commit", "command", "date", "torch"}          # the whole provenance
    assert list(doc["settings"]) == list(settings)
    for s, v in doc["settings"].items():
        assert len(v["test_acc"]) == 2 and v["seeds"] == [0, 1] and len(v["wall_s"]) == 2
        assert v["test_acc_std"] is not None and "val_flat" not in v           # no flatness rule here
        assert [[e for e, _ in c] for c in v["val_curves"]] == [[1.0, 2.0]] * 2
        assert [e for e, _ in v["val_curve"]] == [1.0, 2.0]                   # the mean over the seeds
        # steps to the target: a step of the curve or None; the area: the mean of the two epochs' accuracy
        spe = doc["config"]["task"]["steps_per_epoch"]
        assert all(t in (None, spe, 2 * spe) for t in v["steps_to_target"])
        assert v["val_auc"] == [pytest.approx((c[0][1] + c[1][1]) / 2) for c in v["val_curves"]]
        reorders = s != "none"
        # sharpness per seed at step 0 and after each epoch, between 1/L and 1 (1 for the exact sort)
        assert [[e for e, _ in c] for c in v["sharpness"]] == ([[0.0, 1.0, 2.0]] * 2 if reorders else [[], []])
        if reorders:
            assert all(u <= x <= 1 for c, u in zip(v["sharpness"], v["sharpness_uniform"]) for _, x in c)
            assert (v["sharpness_final"] == [1.0, 1.0]) == (s == "hard")
            # block 0 of each Mamba stage (layers 0 and 2): 7 × 7 and 4 × 4 tokens of 28 × 28 images
            assert sorted(v["sharpness_layers"][0]) == ["stages.1.blocks.0.mixer", "stages.2.blocks.0.mixer"]
            assert v["sharpness_uniform"][0] == pytest.approx((1 / 49 + 1 / 16) / 2)
    assert doc["commit"] == "0" * 40 and doc["device"] == "cpu (test)"
    assert doc["config"]["epochs"] == 2 and doc["config"]["target_acc"] == 0.1 and doc["config"]["params"] > 0
    assert doc["config"]["reorder_layers"] == [0, 2]
    assert doc["config"]["setting_fields"]["authors"]["reorder_restore"] is False
    assert {"authors_minus_none", "authors_minus_none_val_auc", "hard_minus_none"} <= set(doc["comparisons"])
    assert "gated_soft_minus_gated_none" not in doc["comparisons"]        # gated_none did not run
    assert doc["comparisons"]["authors_minus_none"]["origin"] == "paper"
    assert doc["comparisons"]["hard_minus_none"]["origin"] == "project"
    assert doc["comparisons"]["hard_minus_none"]["outcome"] == "not run"    # two seeds of three: not settled
    assert doc["comparisons"]["hard_minus_none"]["note"].startswith("not settled")
    md = (tmp_path / "out" / "reorder.md").read_text()
    assert "| hard | 2 |" in md and "steps to validation accuracy ≥ 0.1" in md and "(the paper's claim)" in md
    assert "Sharpness of the ordering per epoch" in md
    for figure in ("reorder.png", "reorder_sharpness.png"):
        assert (tmp_path / "out" / figure).stat().st_size > 0
    # the models really differ by setting: the authors' block, and Mamba-1's gated block
    cfgs = {s: json.loads((tmp_path / "out" / "runs" / f"{s}-seed0" / "run.json").read_text())["model"]
            for s in doc["settings"]}
    assert (cfgs["authors"]["layer"], cfgs["authors"]["reorder_branches"], cfgs["authors"]["reorder_restore"],
            cfgs["authors"]["reorder_layers"]) == ("mambavision", "x", False, [0, 2])
    assert (cfgs["gated_soft"]["layer"], cfgs["gated_soft"]["reorder_branches"]) == ("mamba1", "xz")
    assert cfgs["hard"]["reorder"] == "hard" and cfgs["none"]["reorder"] == "none"
    # a second call trains nothing and rewrites the same table
    lines.clear()
    again = run_grid(EXPERIMENT, tmp_path / "out", scale="tiny", settings=settings, seeds=(0, 1), device="cpu",
                     options={"data_dir": fashion}, progress=False, log=lines.append, provenance=prov)
    assert sum("complete, skipped" in line for line in lines) == 8
    assert again["settings"] == doc["settings"]


def test_reproduce_reorder_section(tmp_path, monkeypatch, fashion):
    """The reorder section of `tokendyn reproduce` at quick scale (shrunk here): this run's table
    (the default settings) and the committed full table, each labelled; the paper's two claims
    (accuracy, convergence speed) are checks."""
    from tokendyn.experiments.reorder import EXPERIMENT
    from tokendyn.reproduce import Context
    from tokendyn.reproduce.experiment import run_section

    monkeypatch.setenv("TOKENDYN_FASHION_MNIST", str(fashion))
    monkeypatch.setitem(EXPERIMENT.scales, "smoke", {**TINY, "epochs": 1, "train_images": 40, "test_images": 10,
                                                     "batch_size": 12})
    committed = tmp_path / "reorder.json"
    committed.write_text(json.dumps({
        "settings": {s: {"test_acc": [0.9 + i / 100, 0.91, 0.9 + i / 50], "val_auc": [0.8, 0.81 + i / 100, 0.8],
                         "val_curves": [[[1.0, 0.8], [2.0, 0.88]]] * 3, "seeds": [0, 1, 2],
                         "steps_to_target": [210, 420, None], "wall_s": [9.0, 9.5, 9.9]}
                     for i, s in enumerate(("none", "authors"))},
        "config": {"scale": "full", "model": {"dims": [32, 64, 128], "depths": [2, 4, 4], "strides": [1, 2],
                                              "attention": True, "d_state": 8, "d_conv": 3, "expand": 1},
                   "epochs": 2, "target_acc": 0.85, "task": {"steps_per_epoch": 210, "examples_per_step": 256}},
        "data": "Fashion-MNIST", "device": "NVIDIA H100", "commit": "abc", "command": "x"}))
    ctx = Context(out=tmp_path / "rep", scale="quick", device=torch.device("cpu"), command="test")
    res = run_section(EXPERIMENT, ctx, committed)
    assert "**This run** (smoke scale" in res.markdown and "**Committed full-scale run**" in res.markdown
    assert "NVIDIA H100" in res.markdown and res.markdown.count("| authors |") >= 2
    assert "| 315 ± 148; 2/3 |" in res.markdown          # steps to 0.85 in the committed table
    assert set(res.summary["test_acc"]) == {"none", "authors", "hard"}
    assert len(res.summary["val_auc"]["authors"]) == 2 and len(res.summary["steps_to_target"]["none"]) == 2
    assert all(len(v) == 2 for v in res.summary["test_acc"].values())
    outcomes = {c.claim: c.outcome for c in res.checks}
    # both of the paper's claims are checks on the committed grid (accuracy: t = +2.1; the area: t < 1);
    # hard is not in it
    assert outcomes["Paper (section 6, MambaVision block): reordering tokens by importance improves test "
                    "accuracy."] == "pass"
    assert any("converge faster" in c and o == "fail" for c, o in outcomes.items())
    assert any(c.startswith("Project's variant") and "exact sort" in c and o == "not run"
               for c, o in outcomes.items())
    assert (tmp_path / "rep" / "reorder" / "reorder.png").is_file()


def test_train_image_on_an_image_folder(tmp_path, capsys):
    from PIL import Image

    for c, colour in (("red", (220, 20, 20)), ("blue", (20, 20, 220))):
        for split, n in (("train", 10), ("val", 3)):
            d = tmp_path / "imgs" / split / c
            d.mkdir(parents=True)
            for i in range(n):
                Image.new("RGB", (12 + i, 10), colour).save(d / f"{i}.png")
    out = tmp_path / "run"
    code, err = run_cli(["train", "image", "--data", "folder", "--data-dir", tmp_path / "imgs", "--image-size", "8",
                         "--patch-size", "4", "--d-model", "8", "--n-layer", "2", "--d-state", "4", "--epochs", "2",
                         "--batch-size", "4", "--val-fraction", "0.2", "--reorder", "soft", "--flip",
                         "--crop-padding", "1", "--device", "cpu", "--no-progress", "--out", out], capsys)
    assert code == 0, err
    result = json.loads((out / "result.json").read_text())
    assert result["test"]["images"] == 6 and len(result["val_curve"]) == 2
    run = json.loads((out / "run.json").read_text())
    assert run["task"]["image_shape"] == [3, 8, 8] and run["model"]["input_dim"] == 48


def interrupt_at(monkeypatch, step: int):
    """Ctrl-C while the task serves ``step`` (ImageClassificationTask.train_batch raises
    KeyboardInterrupt there); returns the function that puts the task back."""
    real = ImageClassificationTask.train_batch

    def interrupted(self, at, index, count):
        if at == step:
            raise KeyboardInterrupt
        return real(self, at, index, count)

    monkeypatch.setattr(ImageClassificationTask, "train_batch", interrupted)
    return lambda: monkeypatch.setattr(ImageClassificationTask, "train_batch", real)


def test_checkpoint_every_resumes_a_run_killed_mid_epoch_bit_exactly(tmp_path, capsys, fashion, monkeypatch):
    """Killed at step 3 of a 4-step epoch, --checkpoint-every 2: the resumed run starts from the
    step-2 checkpoint and ends with the weights of an uninterrupted run, bit for bit; the message
    of the interruption says so."""
    a, b = tmp_path / "a", tmp_path / "b"
    extra = ("--checkpoint-every", "2", "--crop-padding", "1", "--flip")
    assert run_cli(image_args(fashion, a, *extra), capsys)[0] == 0
    restore = interrupt_at(monkeypatch, 3)
    code, err = run_cli(image_args(fashion, b, *extra), capsys)
    assert code == 130 and "the checkpoint of step 2" in err and f"--resume {b}" in err, err
    assert json.loads((b / "checkpoint" / "trainer.json").read_text())["step"] == 2
    restore()
    args = image_args(fashion, b, *extra, "--resume", str(b))
    args.remove("--out"), args.remove(str(b))
    code, err = run_cli(args, capsys)
    assert code == 0 and "resumed from" in err and "at step 2" in err, err
    for name in ("model.safetensors", "optimizer.safetensors"):
        assert (a / "checkpoint" / name).read_bytes() == (b / "checkpoint" / name).read_bytes(), name


def test_without_a_checkpoint_an_interrupted_run_leaves_nothing(tmp_path, capsys, fashion, monkeypatch):
    """Killed before the first checkpoint (once per epoch by default): nothing is kept, and the
    same command then runs into the same directory."""
    out = tmp_path / "run"
    restore = interrupt_at(monkeypatch, 1)
    code, err = run_cli(image_args(fashion, out), capsys)
    assert code == 130 and "first checkpoint" in err and err.count("\n") == 1, err
    assert not out.exists()
    restore()
    code, err = run_cli(image_args(fashion, out, "--stop-after-steps", "1"), capsys)
    assert code == 0, err


@pytest.mark.gpu
def test_train_image_with_cuda_graph(tmp_path, capsys, fashion):
    """--cuda-graph on the image task (its batches may already be on the device): the run
    finishes, with the eager run's losses to float32 rounding."""
    curves = []
    for name, extra in (("e", []), ("g", ["--cuda-graph"])):
        args = image_args(fashion, tmp_path / name, "--no-autocast", "--epochs", "3", *extra)
        args[args.index("--device") + 1] = "cuda"
        code, err = run_cli(args, capsys)
        assert code == 0, err
        curves.append([r["loss"] for r in map(json.loads, (tmp_path / name / "metrics.jsonl").open())
                       if r["kind"] == "train"])
    assert curves[1] == pytest.approx(curves[0], rel=1e-4, abs=1e-5)


@pytest.mark.gpu
def test_reorder_grid_with_cuda_graph(tmp_path, monkeypatch, fashion):
    """The reorder grid's kinds of block, on the full scale's hybrid classifier (convolutional
    stages, MambaVision mixers, attention; no sorting, the authors' soft sort, the hard sort, the
    gated Mamba-1 block's soft sort with restore), train with --cuda-graph as they do eagerly: the
    graphs capture every block the GPU grid runs (bf16 autocast; the capturable AdamW moves the
    last digits, so the losses agree to a percent). The τ variants differ from authors in a number
    only."""
    from tokendyn.experiments.reorder import EXPERIMENT
    from tokendyn.train.grid import run_grid

    full = EXPERIMENT.scales["full"]
    monkeypatch.setitem(EXPERIMENT.scales, "graph-test",
                        {**full, "batch_size": 8, "epochs": 2, "sharpness_images": 4, "target_acc": 0.1})
    settings = ("none", "authors", "hard", "gated_soft")
    assert set(settings) <= set(EXPERIMENT.grid_settings)
    losses = {}
    for mode in (False, True):
        out = tmp_path / f"graph{int(mode)}"
        run_grid(EXPERIMENT, out, scale="graph-test", settings=settings, seeds=(0,), device="cuda",
                 options={"data_dir": fashion}, progress=False, log=lambda *a: None, cuda_graph=mode)
        runs = out / "runs"
        losses[mode] = {s: [r["loss"] for r in map(json.loads, (runs / f"{s}-seed0" / "metrics.jsonl").open())
                            if r["kind"] == "train"] for s in settings}
        ident = json.loads((runs / f"{settings[0]}-seed0" / "run.json").read_text())
        assert ident["train"].get("cuda_graph", False) is mode
    for s in settings:
        assert losses[True][s] == pytest.approx(losses[False][s], rel=2e-2), s
