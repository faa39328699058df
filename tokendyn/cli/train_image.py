"""``tokendyn train image`` (one image-classification run) and ``tokendyn train reorder`` (the
token-reordering experiment), on the ``train`` command group."""

from __future__ import annotations

from pathlib import Path

import typer

from ..errors import ConfigError
from .train import _echo, command_line, grid_choices, report_run, train_app


def _layers(text: str) -> list[int]:
    try:
        return [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise ConfigError(f"--reorder-layers must be comma-separated layer indices, got {text!r}.") from None


@train_app.command("image")
def image(
    out: Path = typer.Option(None, "--out", help="Run directory (metrics.jsonl, checkpoint/, result.json)."),
    resume: Path = typer.Option(None, "--resume", help="Continue the run in this directory from its last checkpoint."),
    data: str = typer.Option("fashion-mnist", "--data", help="fashion-mnist or folder (ImageFolder layout)."),
    data_dir: Path = typer.Option(None, "--data-dir", help="Directory of the data: Fashion-MNIST's IDX files "
                                  "(default: the Debian package's), or the image folder."),
    download: bool = typer.Option(False, "--download", help="Fetch Fashion-MNIST with torchvision when the IDX "
                                  "files are missing (needs torchvision and a network)."),
    image_size: int = typer.Option(32, "--image-size", help="Image-folder images are resized to this square size."),
    channels: int = typer.Option(3, "--channels", help="Image-folder images as 1 (grey) or 3 (RGB) channels."),
    patch_size: int = typer.Option(4, "--patch-size", help="Patch side; each patch is one token."),
    d_model: int = typer.Option(64, "--d-model"),
    n_layer: int = typer.Option(4, "--n-layer"),
    d_state: int = typer.Option(16, "--d-state"),
    expand: int = typer.Option(2, "--expand"),
    bidirectional: bool = typer.Option(True, "--bidirectional/--unidirectional", help="Odd layers scan in reverse."),
    pooling: str = typer.Option("mean", "--pooling", help="mean or last."),
    positions: bool = typer.Option(True, "--positions/--no-positions", help="Learned position embedding."),
    reorder: str = typer.Option("none", "--reorder",
                                help="Token reordering: none, soft (SoftSort) or hard (exact sort)."),
    reorder_tau: float = typer.Option(1.0, "--reorder-tau", help="SoftSort temperature τ (> 0)."),
    reorder_power: float = typer.Option(1.0, "--reorder-power", help="SoftSort power p (> 0)."),
    reorder_layers: str = typer.Option("0", "--reorder-layers", help="Comma-separated layers that reorder."),
    reorder_branches: str = typer.Option("xz", "--reorder-branches", help="xz (x and gate z) or x (the authors' "
                                         "x-only ablation)."),
    epochs: int = typer.Option(5, "--epochs"),
    batch_size: int = typer.Option(256, "--batch-size", help="Images per optimiser step."),
    lr: float = typer.Option(3e-3, "--lr"),
    warmup: float = typer.Option(0.05, "--warmup"),
    weight_decay: float = typer.Option(0.05, "--weight-decay"),
    crop_padding: int = typer.Option(0, "--crop-padding", help="Random-crop augmentation with this zero padding."),
    flip: bool = typer.Option(False, "--flip", help="Random left-right flips."),
    normalize: bool = typer.Option(True, "--normalize/--no-normalize", help="Per-channel mean/std normalisation."),
    val_fraction: float = typer.Option(0.1, "--val-fraction", help="Training images held out for validation."),
    seed: int = typer.Option(0, "--seed"),
    no_autocast: bool = typer.Option(False, "--no-autocast", help="Train in float32 on CUDA too."),
    device: str = typer.Option("auto", "--device", help="cpu, cuda or auto."),
    backend: str = typer.Option("auto", "--backend", help="Selective-scan backend."),
    stop_after_steps: int = typer.Option(None, "--stop-after-steps", help="Stop after this many steps, as if "
                                         "interrupted; --resume continues."),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
) -> None:
    """Train a Mamba image classifier (patch tokens): metrics.jsonl, checkpoints and result.json \
in the run directory."""
    from ..data.images import load_images
    from ..train.images import ImageModelSpec, train_image
    from ..train.loop import TrainConfig, is_main_process

    if resume is not None and out is not None and Path(out) != Path(resume):
        raise ConfigError("--out and --resume name different directories; pass one of them.")
    run_dir = resume or out
    if run_dir is None:
        raise ConfigError("pass --out DIR for a new run or --resume DIR to continue one.")
    spec = ImageModelSpec(d_model=d_model, n_layer=n_layer, d_state=d_state, expand=expand, patch_size=patch_size,
                          bidirectional=bidirectional, pooling=pooling, positions=positions, reorder=reorder,
                          reorder_tau=reorder_tau, reorder_power=reorder_power,
                          reorder_layers=_layers(reorder_layers), reorder_branches=reorder_branches)
    cfg = TrainConfig(lr=lr, warmup=warmup, weight_decay=weight_decay, seed=seed, autocast=not no_autocast)
    dataset = load_images(data, data_dir, size=image_size, channels=channels, download=download)
    spec.config(dataset.image_shape, dataset.n_classes, scan_backend=backend)   # refuse a bad model first
    result, _ = train_image(dataset, spec, cfg, batch_size=batch_size, epochs=epochs, out=run_dir,
                            resume=resume is not None, device=device, crop_padding=crop_padding, flip=flip,
                            normalize=normalize, val_fraction=val_fraction, stop_after_steps=stop_after_steps,
                            progress=progress, scan_backend=backend, log=_echo)
    if not is_main_process():  # under torchrun one process reports
        return
    report_run(result, run_dir, f"validation accuracy {result.validation.get('accuracy', float('nan')):.4f}, "
                                f"test accuracy {result.test.get('accuracy', float('nan')):.4f}")


@train_app.command("reorder")
def reorder_experiment(
    out: Path = typer.Option(Path("reorder-out"), "--out", help="Directory for runs/ and the reorder.* files; "
                             "complete runs found there are skipped, incomplete ones resumed."),
    scale: str = typer.Option("quick", "--scale", help="quick (CPU), full (one GPU) or smoke (seconds per run)."),
    settings: list[str] = typer.Option([], "--settings", help="Settings to run (repeatable or comma-separated; "
                                       "default: none, soft, hard, x_only)."),
    seeds: str = typer.Option("0,1,2", "--seeds", help="Comma-separated seeds."),
    data: str = typer.Option("fashion-mnist", "--data", help="fashion-mnist or folder."),
    data_dir: Path = typer.Option(None, "--data-dir", help="Directory of the data (see tokendyn train image)."),
    device: str = typer.Option("auto", "--device", help="cpu, cuda or auto."),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
) -> None:
    """Image classifiers without reordering, with SoftSort, with the exact sort and with the x-only
    ablation, several seeds each: reorder.json, a markdown table and a figure in OUT."""
    from ..reproduce import provenance
    from ..train import reordering
    from ..train.loop import resolve_device

    names, seed_list = grid_choices(reordering, settings, seeds, scale)
    dev = resolve_device(device)
    reordering.run_grid(out, scale=scale, settings=names, seeds=seed_list, device=dev, data_name=data,
                        data_root=data_dir, progress=progress, log=_echo, provenance=provenance(command_line()))
    typer.echo((out / "reorder.md").read_text())
    typer.echo(f"written: {', '.join(str(out / f) for f in ('reorder.json', 'reorder.md', 'reorder.png'))}")
