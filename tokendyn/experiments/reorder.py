"""The reorder experiment (THEORY.md section 6): a small hybrid image classifier in the spirit of
MambaVision-T (:class:`~tokendyn.model.HybridClassifier`: convolutions, then two Mamba stages of
196 and 49 tokens on 28 × 28 images) with and without token reordering, several seeds each, with
the same data, model and budget.

Settings. The paper's: ``none`` (MambaVision blocks, no reordering) and ``authors`` (the authors'
block exactly: SoftSort with τ = 1, p = 1 on x after its conv + SiLU, z unsorted, no restore,
in block 0 of each Mamba stage). The project's own variants, labelled as such: ``hard`` (the
authors' block with the exact sort), ``tau0.1`` and ``tau0.01`` (the authors' block with a
sharper SoftSort), and a pair in the gated Mamba-1 block: ``gated_none`` and ``gated_soft``
(SoftSort on x and the gate z, restored before out_proj).

Measured per run: test accuracy; the validation curve per epoch, the steps to the scale's stated
validation accuracy and the area under the validation curve (convergence speed); the sharpness
of each reordering layer's P̂ per epoch (mean largest row weight against 1/L). Files in OUT
(beside runs/): reorder.json, reorder.md, reorder.png, reorder_sharpness.png. ``tokendyn train
reorder``, ``scripts/grid_gpu.sh reorder`` and the report's section "reorder" run it.
"""

from __future__ import annotations

import statistics
from functools import partial

import torch

from ..data.images import ImageDataset, load_images
from ..model.hybrid import stage_first_layers
from ..train import state as runstate
from ..train.experiment import Column, Comparison, Experiment, FigureSpec, Metric
from ..train.figures import plot_seed_curves, plot_val_curves
from ..train.images import HybridModelSpec, train_image
from ..train.loop import TrainConfig
from ..train.seeds import format_mean_std, mean_std

# the layers that reorder: block 0 of each Mamba stage (resolved from the scale's depths)
STAGE_FIRST = "block 0 of each Mamba stage"
AUTHORS = {"layer": "mambavision", "reorder": "soft", "reorder_tau": 1.0, "reorder_power": 1.0,
           "reorder_branches": "x", "reorder_restore": False, "reorder_layers": STAGE_FIRST}
# setting -> the model fields it overrides
SETTINGS = {
    "none": {"layer": "mambavision", "reorder": "none"},
    "authors": AUTHORS,
    "hard": {**AUTHORS, "reorder": "hard"},
    "tau0.1": {**AUTHORS, "reorder_tau": 0.1},
    "tau0.01": {**AUTHORS, "reorder_tau": 0.01},
    # Mamba-1's other variant, io_constraint, is named (off) so that its fields, which a MambaVision
    # model does not have, are among the fields the settings vary
    "gated_none": {"layer": "mamba1", "io_constraint": "none", "io_margin": 0.7, "reorder": "none"},
    "gated_soft": {"layer": "mamba1", "io_constraint": "none", "io_margin": 0.7, "reorder": "soft",
                   "reorder_tau": 1.0, "reorder_power": 1.0, "reorder_branches": "xz", "reorder_restore": True,
                   "reorder_layers": STAGE_FIRST},
}
# what `tokendyn train reorder` and the report's section run unless told: the paper's two settings
# and the exact sort (the GPU script runs all)
DEFAULT_SETTINGS = ("none", "authors", "hard")
# mixer options of every scale: the authors' (d_state 8, d_conv 3, expand 1), for either family
MIXER = {"d_state": 8, "d_conv": 3, "expand": 1}
# Data, model and budget per scale. smoke: a 2-core CPU in a few seconds per run (the reorder
# section of tokendyn reproduce); quick: a CPU in about a minute per run; full: one GPU, a few
# minutes per run (docs/training.md has the measured times). Every scale has two Mamba stages of
# two Mamba blocks each, so block 0 of each stage is layer 0 and layer 2.
SCALES = {
    "smoke": {"train_images": 1200, "test_images": 500,
              "model": {"dims": [8, 16, 24], "depths": [1, 2, 2], "strides": [1, 2], **MIXER},
              "batch_size": 50, "epochs": 2, "lr": 6e-3, "crop_padding": 0, "target_acc": 0.4,
              "sharpness_images": 64},
    "quick": {"train_images": 6000, "test_images": 2000,
              "model": {"dims": [16, 32, 48], "depths": [1, 2, 2], "strides": [1, 2], **MIXER},
              "batch_size": 100, "epochs": 3, "lr": 5e-3, "crop_padding": 0, "target_acc": 0.75,
              "sharpness_images": 128},
    "full": {"train_images": 0, "test_images": 0,
             "model": {"dims": [32, 64, 128], "depths": [2, 4, 4], "strides": [1, 2], "attention": True,
                       "n_heads": 4, "mlp_ratio": 4.0, **MIXER},
             "batch_size": 256, "epochs": 15, "lr": 2e-3, "crop_padding": 2, "target_acc": 0.88,
             "sharpness_images": 256},
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


def model_spec(p: dict, overrides: dict) -> HybridModelSpec:
    """The classifier of scale ``p`` with a setting's fields (``reorder_layers`` = STAGE_FIRST
    resolved from the scale's depths)."""
    fields = dict(overrides)
    if fields.get("reorder_layers") == STAGE_FIRST:
        m = p["model"]
        fields["reorder_layers"] = stage_first_layers(m["depths"][1:], m.get("attention", False))
    return HybridModelSpec(**p["model"], **fields)


def train_config(p: dict, seed: int, cuda_graph: bool = False) -> TrainConfig:
    """The optimiser settings of a run of scale ``p``."""
    return TrainConfig(lr=p["lr"], warmup=0.05, weight_decay=0.05, log_every=20, seed=seed, cuda_graph=cuda_graph)


def train(data, p: dict, overrides: dict, seed: int, run_dir, *, resume, device, progress, log, cuda_graph=False):
    """One run of the grid: the scale's hybrid classifier with the setting's fields (cuda_graph:
    TrainConfig.cuda_graph)."""
    cfg = train_config(p, seed, cuda_graph)
    result, _ = train_image(data, model_spec(p, overrides), cfg, batch_size=p["batch_size"], epochs=p["epochs"],
                            out=run_dir, resume=resume, device=device, crop_padding=p["crop_padding"],
                            progress=progress, sharpness_images=p["sharpness_images"],
                            identity={"target_acc": p["target_acc"]}, log=log)
    return result


# ---- per-run measurements --------------------------------------------------------------------

def epoch_curve(run) -> list[list]:
    """[[epoch, validation accuracy], ...] of a run."""
    spe = run.ident["task"]["steps_per_epoch"]
    return [[round(step / spe, 3), acc] for step, acc in run.result["val_curve"]]


def epochs_to(curve: list[list], target: float) -> float | None:
    """The first epoch (or step) of ``curve`` whose validation accuracy is ≥ target, or None."""
    return next((e for e, acc in curve if acc >= target), None)


def curve_area(curve: list[list]) -> float | None:
    """The area under a validation curve [[x, accuracy], ...] divided by its x span (trapezoids):
    the mean validation accuracy over training, higher for a curve that rises sooner. One point:
    its value; none: None."""
    if not curve:
        return None
    if len(curve) == 1:
        return float(curve[0][1])
    area = sum((b[0] - a[0]) * (a[1] + b[1]) / 2 for a, b in zip(curve, curve[1:]))
    return area / (curve[-1][0] - curve[0][0])


def sharpness_records(run_dir) -> list[dict]:
    """The run's sharpness records (metrics.jsonl, kind "sharpness"), by step."""
    return [r for r in runstate.read_metrics(run_dir) if r.get("kind") == "sharpness"]


def run_fields(run, target: float | None = None) -> dict:
    """Per seed: steps_to_target (the first step whose validation accuracy is ≥ the scale's
    target; None when never), val_auc (:func:`curve_area` of the per-epoch curve), sharpness
    ([[epoch, mean over the reordering layers of P̂'s mean largest row weight], ...]; empty
    without reordering), sharpness_final (its last value), sharpness_layers ({layer: [[epoch,
    value], ...]}) and sharpness_uniform (the mean of 1/L over those layers)."""
    spe = run.ident["task"]["steps_per_epoch"]
    records = sharpness_records(run.dir)
    per_epoch = [[round(r["step"] / spe, 3), statistics.fmean(v["sharpness"] for v in r["layers"].values())]
                 for r in records]
    layers: dict[str, list] = {}
    for r in records:
        for name, v in r["layers"].items():
            layers.setdefault(name, []).append([round(r["step"] / spe, 3), v["sharpness"]])
    uniform = (statistics.fmean(v["uniform"] for v in records[-1]["layers"].values()) if records else None)
    return {"steps_to_target": None if target is None else epochs_to(run.result["val_curve"], target),
            "val_auc": curve_area(epoch_curve(run)), "sharpness": per_epoch,
            "sharpness_final": per_epoch[-1][1] if per_epoch else None, "sharpness_layers": layers,
            "sharpness_uniform": uniform}


# ---- tables and figures ----------------------------------------------------------------------

def _reach(doc: dict, v: dict) -> str:
    steps = v.get("steps_to_target") or []
    hit = [s for s in steps if s is not None]
    return (format_mean_std(*mean_std(hit), 0) if hit else "never") + f"; {len(hit)}/{len(steps)}"


def _auc(doc: dict, v: dict) -> str:
    vals = [a for a in v.get("val_auc") or [] if a is not None]
    return format_mean_std(*mean_std(vals), 4) if vals else "n/a"


def _sharp(doc: dict, v: dict) -> str:
    vals = [s for s in v.get("sharpness_final") or [] if s is not None]
    if not vals:
        return "no reordering"
    uniform = next((u for u in v.get("sharpness_uniform") or [] if u is not None), None)
    return format_mean_std(*mean_std(vals), 4) + (f" (1/L: {uniform:.4f})" if uniform else "")


def describe(doc: dict) -> str:
    cfg = doc["config"]
    m = cfg["model"]
    if "dims" not in m:        # a summary of the earlier patch classifier (results/reorder_patch49)
        return f"patch classifier {m}, {cfg.get('epochs')} epochs"
    attention = ", self-attention in the second half of each Mamba stage" if m.get("attention") else ""
    return (f"HybridClassifier dims {m['dims']}, depths {m['depths']}, strides {m['strides']}{attention}, "
            f"d_state {m['d_state']}, d_conv {m['d_conv']}, expand {m['expand']}, {cfg['epochs']} epochs of "
            f"{cfg['task']['steps_per_epoch']} steps (batch {cfg['task']['examples_per_step']})")


def plot_sharpness(exp, doc: dict):
    """P̂'s mean largest row weight per epoch for every setting that reorders (each seed faint, the
    mean bold; the exact sort is 1), with the mean 1/L of the reordering layers (rows uniform) dotted."""
    curves = {s: v["sharpness"] for s, v in doc["settings"].items() if v.get("sharpness") and all(v["sharpness"])}
    uniform = next((u for v in doc["settings"].values() for u in v.get("sharpness_uniform") or [] if u), None)
    fig = plot_seed_curves(curves, exp.colours, xlabel="epoch", ylabel="mean largest row weight of P̂",
                           title=f"sharpness of the ordering, {doc['config']['scale']} scale (dotted: 1/L)",
                           log_y=True, target=uniform)
    if not curves:
        fig.axes[0].text(0.5, 0.5, "no setting reorders", ha="center", transform=fig.axes[0].transAxes)
    return fig


def sections(doc: dict) -> str:
    """The sharpness of P̂ per epoch, per setting (mean over seeds)."""
    rows = []
    for s, v in doc["settings"].items():
        per_seed = [c for c in v.get("sharpness") or [] if c]
        if not per_seed:
            continue
        n = min(len(c) for c in per_seed)
        means = [statistics.fmean(c[i][1] for c in per_seed) for i in range(n)]
        rows.append(f"| {s} | " + ", ".join(f"{per_seed[0][i][0]:g}: {m:.4f}" for i, m in enumerate(means)) + " |")
    if not rows:
        return ""
    uniform = next((u for v in doc["settings"].values() for u in v.get("sharpness_uniform") or [] if u), None)
    return "\n".join([f"Sharpness of the ordering per epoch (mean largest row weight of P̂ over the probe images "
                      f"and the reordering layers, mean of the seeds; 1 for the exact sort; uniform rows: "
                      f"{'n/a' if uniform is None else f'{uniform:.4f}'}):", "",
                      "| setting | epoch: sharpness |", "| --- | --- |", *rows]) + "\n"


def config_fields(run, p: dict) -> dict:
    return {"epochs": run.ident["epochs"], "target_acc": p["target_acc"], "sharpness_images": p["sharpness_images"],
            "reorder_layers": stage_first_layers(p["model"]["depths"][1:], p["model"].get("attention", False))}


def report_extras(doc: dict, committed: dict | None, scale: str, how: str) -> tuple[list, dict]:
    """No checks beyond the comparisons; the report's summary gets this run's convergence and
    sharpness per setting and seed."""
    keys = ("steps_to_target", "val_auc", "sharpness_final")
    return [], {key: {s: v.get(key) for s, v in doc["settings"].items()} for key in keys}


AUC = Metric(key="val_auc", result="val_auc", label="area under the validation curve",
             curve_label="validation accuracy", higher_is_better=True, digits=4)
SHARPNESS = Metric(key="sharpness_final", result="sharpness_final", label="sharpness of P̂ after training",
                   curve_label="sharpness", higher_is_better=True, digits=4)
PAPER = "Paper (section 6, MambaVision block): "
PROJECT = "Project's variant, not in the paper: "
COMPARISONS = (
    Comparison("authors", "none", "better", f"{PAPER}reordering tokens by importance improves test accuracy."),
    Comparison("authors", "none", "better", f"{PAPER}reordering tokens by importance makes training converge faster "
               "(a larger area under the validation-accuracy curve).", metric=AUC),
    Comparison("hard", "none", "better", f"{PROJECT}the exact sort in the authors' block improves test accuracy.",
               origin="project"),
    Comparison("tau0.1", "none", "better", f"{PROJECT}SoftSort at τ = 0.1 in the authors' block improves test "
               "accuracy.", origin="project"),
    Comparison("tau0.1", "authors", "better", f"{PROJECT}τ = 0.1 makes P̂ sharper than the authors' τ = 1.",
               origin="project", metric=SHARPNESS),
    Comparison("gated_soft", "gated_none", "better", f"{PROJECT}SoftSort on x and the gate z, restored, in the gated "
               "Mamba-1 block improves test accuracy over the same block without reordering.", origin="project"),
)

EXPERIMENT = Experiment(
    name="reorder",
    stem="reorder",
    title="Token reordering in a hybrid image classifier (MambaVision-style block)",
    section="reorder",
    help="Hybrid image classifiers (convolutions, then Mamba stages) without reordering, with the authors' "
         "reordering block and with the project's variants, several seeds each: reorder.json, a markdown table "
         "and figures in OUT.",
    settings=SETTINGS,
    default_settings=DEFAULT_SETTINGS,
    scales=SCALES,
    metric=Metric(key="test_acc", result="accuracy", label="test accuracy", curve_label="validation accuracy",
                  higher_is_better=True, digits=4),
    comparisons=COMPARISONS,
    figures=(FigureSpec("reorder.png", "validation accuracy",
                        partial(plot_val_curves, xlabel="epoch", title="token reordering, {scale} scale",
                                target_key="target_acc")),
             FigureSpec("reorder_sharpness.png", "sharpness of P̂", plot_sharpness)),
    colours={"none": "k", "authors": "tab:blue", "hard": "tab:red", "tau0.1": "tab:purple", "tau0.01": "tab:pink",
             "gated_none": "tab:grey", "gated_soft": "tab:green"},
    default_seeds=(0, 1, 2, 3, 4),
    grid_settings=tuple(SETTINGS),
    options=("data", "data_dir"),
    prepare=prepare,
    data_label=lambda data: data.source,
    train=train,
    describe=describe,
    curve=epoch_curve,
    run_fields=lambda run: run_fields(run, run.ident.get("target_acc")),
    config_fields=config_fields,
    columns=(Column(lambda doc: f"steps to validation accuracy ≥ {doc['config']['target_acc']} (mean ± std; "
                                "reached)", _reach),
             Column(lambda doc: "area under the validation curve (mean ± std)", _auc),
             Column(lambda doc: "sharpness of P̂ after training (mean ± std)", _sharp)),
    sections=sections,
    report_extras=report_extras,
    report_note="The smoke scale trains tiny classifiers on 1,200 images for two epochs: its numbers show that the "
                "pipeline runs, not how the settings compare. Differences are read against the seed spread.",
    full_run="run `PARALLEL=4 bash scripts/grid_gpu.sh reorder OUT BUDGET_S` (or `tokendyn train reorder --scale "
             "full --device cuda --settings none,authors,hard,tau0.1,tau0.01,gated_none,gated_soft --seeds 0,1,2,3,4`)",
)
