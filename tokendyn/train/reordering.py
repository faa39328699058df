"""The reorder experiment (THEORY.md section 6): an image classifier without reordering
(``none``), with SoftSort (``soft``), with the exact sort (``hard``) and with the authors'
x-only SoftSort (``x_only``: the gate z left in the original order), several seeds each, with
the same data, model and budget; test accuracy per setting and validation curves per epoch.

Layout of OUT:

    runs/<setting>-seed<k>/   one training run each (tokendyn.train.state layout); a run with
                              result.json is complete and skipped by later calls, an
                              incomplete one is resumed from its checkpoint
    reorder.json              {"settings": {s: {"test_acc": [...], "val_curve": [...]}},
                               "config", "data", "device", "commit", "command"}
    reorder.md                mean ± std test accuracy, epochs to a stated validation accuracy
    reorder.png               validation accuracy per epoch, every run

Calls with different ``settings`` / ``seeds`` fill the same OUT; each call rewrites the
summary from every complete run found there (copy ``runs/*`` of split runs into one OUT and
call again to merge).
"""

from __future__ import annotations

import json
import math
import statistics
import time
from pathlib import Path

import torch

from ..data.images import ImageDataset, load_images
from ..errors import ConfigError
from . import grid
from . import state as runstate
from .figures import plot_seed_curves, save_figure
from .grid import collect, run_name
from .images import ImageModelSpec, train_image
from .loop import TrainConfig
from .seeds import seed_comparison

# setting -> the model's reorder fields
SETTINGS = {
    "none": {"reorder": "none"},
    "soft": {"reorder": "soft"},
    "hard": {"reorder": "hard"},
    "x_only": {"reorder": "soft", "reorder_branches": "x"},
}
DEFAULT_SEEDS = (0, 1, 2)
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
RESULT_FILES = ("reorder.json", "reorder.md", "reorder.png")


def check_settings(settings) -> list[str]:
    """The settings asked for, in canonical order; :class:`ConfigError` for an unknown one."""
    return grid.choose_settings(settings, SETTINGS)


def scale_params(scale: str) -> dict:
    return grid.choose_scale(scale, SCALES)


def prepare_data(scale: str, name: str = "fashion-mnist", root=None, size: int = 32, channels: int = 3) -> ImageDataset:
    """The scale's data: the first ``train_images`` / ``test_images`` of each split (0: all)."""
    p = scale_params(scale)
    data = load_images(name, root, size=size, channels=channels)
    n_train, n_test = p["train_images"], p["test_images"]
    if not n_train and not n_test:
        return data
    train = data.train.subset(torch.arange(min(n_train or len(data.train), len(data.train))))
    test = data.test.subset(torch.arange(min(n_test or len(data.test), len(data.test))))
    return ImageDataset(train, test, data.classes,
                        f"{data.source}, first {len(train)} training and {len(test)} test images",
                        mean=data.mean, std=data.std)


def run_grid(out: Path, scale: str = "quick", settings=(), seeds=DEFAULT_SEEDS, device="auto",
             data_name: str = "fashion-mnist", data_root=None, progress: bool = True, log=print,
             provenance: dict | None = None) -> dict:
    """Train every (setting, seed) not yet complete in OUT, then write the summary files.

    Returns the reorder.json document.
    """
    settings = check_settings(settings)
    seeds = grid.choose_seeds(seeds)
    p = scale_params(scale)
    out = Path(out)
    t0 = time.perf_counter()
    data = prepare_data(scale, data_name, data_root)
    log(f"data: {data.source}; loaded in {time.perf_counter() - t0:.1f} s")
    for setting, seed, run_dir, resume in grid.pending_runs(out, settings, seeds, log):
        spec = ImageModelSpec(**p["model"], **SETTINGS[setting])
        cfg = TrainConfig(lr=p["lr"], warmup=0.05, weight_decay=0.05, log_every=20, seed=seed)
        t = time.perf_counter()
        res, _ = train_image(data, spec, cfg, batch_size=p["batch_size"], epochs=p["epochs"], out=run_dir,
                             resume=resume, device=device, crop_padding=p["crop_padding"], progress=progress,
                             log=log)
        log(f"{run_name(setting, seed)}: test accuracy {res.test['accuracy']:.4f} in "
            f"{time.perf_counter() - t:.1f} s")
    return summarise(out, scale, provenance=provenance)


def _shared_identity(ident: dict) -> dict:
    """run.json less the seeds and the reordering fields (what every run must share)."""
    return grid.shared_identity(ident, ("reorder", "reorder_branches"))


def epoch_curve(result: dict, steps_per_epoch: int) -> list[list]:
    """[[epoch, validation accuracy], ...] from a run's result.json."""
    return [[round(step / steps_per_epoch, 3), acc] for step, acc in result["val_curve"]]


def summarise(out: Path, scale: str, provenance: dict | None = None) -> dict:
    """Write reorder.json / .md / .png from the complete runs in OUT; returns the document."""
    out = Path(out)
    runs = collect(out)
    if not runs:
        raise ConfigError(f"{out} holds no complete reorder run.")
    if len({json.dumps(_shared_identity(r[1]), sort_keys=True) for rows in runs.values() for r in rows}) > 1:
        raise ConfigError(f"the runs in {out} differ in data, model size or budget; they cannot share one table.")
    first = next(iter(runs.values()))[0]
    spe = first[1]["task"]["steps_per_epoch"]
    settings = {s: {"test_acc": [r[2]["test"]["accuracy"] for r in runs[s]],
                    "val_curve": [epoch_curve(r[2], spe) for r in runs[s]]}
                for s in SETTINGS if s in runs}
    model = {k: v for k, v in first[1]["model"].items() if k not in ("reorder", "reorder_branches")}
    prov = provenance or {}
    doc = {
        "settings": settings,
        "config": {"scale": scale, "model": model, "train": first[1]["train"], "task": first[1]["task"],
                   "epochs": first[1]["epochs"], "target_acc": scale_params(scale)["target_acc"],
                   "setting_fields": {s: SETTINGS[s] for s in settings},
                   "seeds": {s: [r[0] for r in runs[s]] for s in settings},
                   "wall_s": {s: [round(r[2]["wall_s"], 2) for r in runs[s]] for s in settings}},
        "data": first[1]["data"],
        "device": prov.get("device", ""),
        "commit": prov.get("commit"),
        "command": prov.get("command"),
        "date": prov.get("date"),
    }
    runstate.atomic_write_text(out / "reorder.json", json.dumps(doc, indent=1) + "\n")
    runstate.atomic_write_text(out / "reorder.md", markdown_table(doc))
    save_figure(plot_curves(doc), out / "reorder.png")
    return doc


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (nan for one value)."""
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else float("nan"))


def epochs_to(curve: list[list], target: float) -> float | None:
    """The first epoch whose validation accuracy is ≥ target, or None when never."""
    return next((e for e, acc in curve if acc >= target), None)


def _pm(mean: float, std: float, digits: int) -> str:
    return f"{mean:.{digits}f} ± " + ("n/a" if math.isnan(std) else f"{std:.{digits}f}")


def markdown_table(doc: dict) -> str:
    """Mean ± std test accuracy per setting, epochs to the target validation accuracy, and each
    setting's difference from ``none`` against the seed spread."""
    cfg = doc["config"]
    m, target = cfg["model"], cfg["target_acc"]
    lines = [f"Test accuracy, {cfg['scale']} scale: MambaClassifier d_model {m['d_model']}, {m['n_layer']} layers, "
             f"d_state {m['d_state']}, {m['patch_size']}x{m['patch_size']} patches, {cfg['epochs']} epochs of "
             f"{cfg['task']['steps_per_epoch']} steps (batch {cfg['task']['examples_per_step']}); "
             f"data: {doc['data']}; device: {doc['device']}.", "",
             f"| setting | seeds | test accuracy (mean ± std) | per seed | epochs to validation accuracy "
             f"≥ {target} (mean ± std; reached) | test − none (± seed spread) | s per run |",
             "|---|---|---|---|---|---|---|"]
    base = doc["settings"].get("none")
    for s, v in doc["settings"].items():
        mean, std = mean_std(v["test_acc"])
        reach = [epochs_to(c, target) for c in v["val_curve"]]
        hit = [e for e in reach if e is not None]
        reach_txt = (_pm(*mean_std(hit), 1) if hit else "never") + f"; {len(hit)}/{len(reach)}"
        diff = ""
        if base is not None and s != "none":
            d, spread, _ = seed_comparison(v["test_acc"], base["test_acc"])
            diff = f"{d:+.4f} (± {'n/a' if spread is None else f'{spread:.4f}'})"
        wall = statistics.fmean(cfg["wall_s"][s]) if cfg.get("wall_s", {}).get(s) else float("nan")
        lines.append(f"| {s} | {len(v['test_acc'])} | {_pm(mean, std, 4)} | "
                     + ", ".join(f"{a:.4f}" for a in v["test_acc"]) + f" | {reach_txt} | {diff} | {wall:.1f} |")
    return "\n".join(lines) + "\n"


def plot_curves(doc: dict):
    """Validation accuracy per epoch: thin lines per seed, a thick line for the mean."""
    colours = {"none": "k", "soft": "tab:blue", "hard": "tab:red", "x_only": "tab:green"}
    return plot_seed_curves({s: v["val_curve"] for s, v in doc["settings"].items()}, colours,
                            xlabel="epoch", ylabel="validation accuracy",
                            title=f"token reordering, {doc['config']['scale']} scale",
                            target=doc["config"]["target_acc"])


def load_committed(path: Path) -> dict | None:
    """A committed reorder.json (e.g. results/reorder.json), or None when absent or unreadable."""
    return grid.load_summary(path)
