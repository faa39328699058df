"""The reorder experiment (THEORY.md section 6): an image classifier without reordering
(``none``), with SoftSort (``soft``), with the exact sort (``hard``) and with the authors' x-only
SoftSort (``x_only``: the gate z left in the original order), several seeds each, with the same
data, model and budget; test accuracy per setting, validation curves per epoch, and the epochs
each setting takes to a stated validation accuracy.

Files in OUT (beside runs/): reorder.json, reorder.md, reorder.png. ``tokendyn train reorder``
and the report's section "reorder" run it.
"""

from __future__ import annotations

from functools import partial

import torch

from ..data.images import ImageDataset, load_images
from ..train.experiment import Column, Comparison, Experiment, FigureSpec, Metric
from ..train.figures import plot_val_curves
from ..train.images import ImageModelSpec, train_image
from ..train.loop import TrainConfig
from ..train.seeds import format_mean_std, mean_std

# setting -> the model's reorder fields
SETTINGS = {
    "none": {"reorder": "none"},
    "soft": {"reorder": "soft"},
    "hard": {"reorder": "hard"},
    "x_only": {"reorder": "soft", "reorder_branches": "x"},
}
# Data, model and budget per scale. smoke: a 2-core CPU in about 10 s per run (the reorder
# section of tokendyn reproduce); quick: a CPU in about a minute per run; full: one H200 GPU,
# the 12-run grid in a few minutes (docs/training.md has measured times).
SCALES = {
    "smoke": {"train_images": 2000, "test_images": 1000, "model": {"d_model": 32, "n_layer": 2, "d_state": 8},
              "batch_size": 64, "epochs": 2, "lr": 6e-3, "crop_padding": 0, "target_acc": 0.6},
    "quick": {"train_images": 6000, "test_images": 2000, "model": {"d_model": 32, "n_layer": 2, "d_state": 8},
              "batch_size": 100, "epochs": 3, "lr": 5e-3, "crop_padding": 0, "target_acc": 0.75},
    "full": {"train_images": 0, "test_images": 0, "model": {"d_model": 128, "n_layer": 4, "d_state": 16},
             "batch_size": 512, "epochs": 12, "lr": 3e-3, "crop_padding": 2, "target_acc": 0.85},
}


def prepare(p: dict, options: dict, size: int = 32, channels: int = 3) -> ImageDataset:
    """The scale's data (--data, --data-dir): the first ``train_images`` / ``test_images`` of each
    split (0: all)."""
    data = load_images(options.get("data") or "fashion-mnist", options.get("data_dir"), size=size, channels=channels)
    n_train, n_test = p["train_images"], p["test_images"]
    if not n_train and not n_test:
        return data
    train = data.train.subset(torch.arange(min(n_train or len(data.train), len(data.train))))
    test = data.test.subset(torch.arange(min(n_test or len(data.test), len(data.test))))
    return ImageDataset(train, test, data.classes,
                        f"{data.source}, first {len(train)} training and {len(test)} test images",
                        mean=data.mean, std=data.std)


def train(data, p: dict, overrides: dict, seed: int, run_dir, *, resume, device, progress, log):
    """One run of the grid: a classifier of the scale with the setting's reorder fields."""
    spec = ImageModelSpec(**p["model"], **overrides)
    cfg = TrainConfig(lr=p["lr"], warmup=0.05, weight_decay=0.05, log_every=20, seed=seed)
    result, _ = train_image(data, spec, cfg, batch_size=p["batch_size"], epochs=p["epochs"], out=run_dir,
                            resume=resume, device=device, crop_padding=p["crop_padding"], progress=progress, log=log)
    return result


def epoch_curve(run) -> list[list]:
    """[[epoch, validation accuracy], ...] of a run."""
    spe = run.ident["task"]["steps_per_epoch"]
    return [[round(step / spe, 3), acc] for step, acc in run.result["val_curve"]]


def epochs_to(curve: list[list], target: float) -> float | None:
    """The first epoch whose validation accuracy is ≥ target, or None when never."""
    return next((e for e, acc in curve if acc >= target), None)


def _reach(doc: dict, v: dict) -> str:
    reach = [epochs_to(c, doc["config"]["target_acc"]) for c in v["val_curves"]]
    hit = [e for e in reach if e is not None]
    return (format_mean_std(*mean_std(hit), 1) if hit else "never") + f"; {len(hit)}/{len(reach)}"


def describe(doc: dict) -> str:
    cfg = doc["config"]
    m = cfg["model"]
    return (f"MambaClassifier d_model {m['d_model']}, {m['n_layer']} layers, d_state {m['d_state']}, "
            f"{m['patch_size']}x{m['patch_size']} patches, {cfg['epochs']} epochs of "
            f"{cfg['task']['steps_per_epoch']} steps (batch {cfg['task']['examples_per_step']})")


EXPERIMENT = Experiment(
    name="reorder",
    stem="reorder",
    title="Token reordering in an image classifier",
    section="reorder",
    help="Image classifiers without reordering, with SoftSort, with the exact sort and with the x-only "
         "ablation, several seeds each: reorder.json, a markdown table and a figure in OUT.",
    settings=SETTINGS,
    default_settings=tuple(SETTINGS),
    scales=SCALES,
    metric=Metric(key="test_acc", result="accuracy", label="test accuracy", curve_label="validation accuracy",
                  higher_is_better=True, digits=4),
    comparisons=(
        Comparison("hard", "none", "better",
                   "Paper (section 6): reordering tokens by importance (hard) improves test accuracy."),
        Comparison("soft", "none", "better",
                   "Paper (section 6): reordering tokens by importance (soft, SoftSort) improves test accuracy."),
    ),
    figures=(FigureSpec("reorder.png", "validation accuracy",
                        partial(plot_val_curves, xlabel="epoch", title="token reordering, {scale} scale",
                                target_key="target_acc")),),
    colours={"none": "k", "soft": "tab:blue", "hard": "tab:red", "x_only": "tab:green"},
    options=("data", "data_dir"),
    prepare=prepare,
    data_label=lambda data: data.source,
    train=train,
    describe=describe,
    curve=epoch_curve,
    config_fields=lambda run, p: {"epochs": run.ident["epochs"], "target_acc": p["target_acc"]},
    columns=(Column(lambda doc: f"epochs to validation accuracy ≥ {doc['config']['target_acc']} (mean ± std; "
                                "reached)", _reach),),
    report_note="The smoke scale trains tiny classifiers on 2,000 images for two epochs: its numbers show that the "
                "pipeline runs, not how the settings compare. Differences are read against the seed spread.",
)
