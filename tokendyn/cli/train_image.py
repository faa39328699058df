"""``tokendyn train image``: one image-classification run, on the ``train`` command group (the
token-reordering experiment, ``tokendyn train reorder``, is made from its description:
:mod:`tokendyn.experiments.reorder`)."""

from __future__ import annotations

import typer

from ..errors import ConfigError
from . import options as opt
from .train import _echo, report_run, run_directory, train_app


def _layers(text: str) -> list[int]:
    try:
        return [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise ConfigError(f"--reorder-layers must be comma-separated layer indices, got {text!r}.") from None


@train_app.command("image")
def image(
    out: opt.RunOut = None,
    resume: opt.Resume = None,
    data: opt.ImageData = "fashion-mnist",
    data_dir: opt.DataDir = None,
    download: opt.Download = False,
    image_size: opt.ImageSize = 32,
    channels: opt.ImageChannels = 3,
    patch_size: int = typer.Option(4, "--patch-size", help="Patch side; each patch is one token."),
    d_model: opt.DModel = 64,
    n_layer: opt.NLayer = 4,
    layer: opt.Layer = "mamba1",
    mixer_option: opt.MixerOption = None,
    d_state: opt.DState = None,
    expand: opt.Expand = None,
    bidirectional: bool = typer.Option(True, "--bidirectional/--unidirectional", help="Odd layers scan in reverse."),
    pooling: str = typer.Option("mean", "--pooling", help="mean or last."),
    positions: bool = typer.Option(True, "--positions/--no-positions", help="Learned position embedding."),
    reorder: opt.Reorder = None,
    reorder_tau: opt.ReorderTau = None,
    reorder_power: opt.ReorderPower = None,
    reorder_layers: opt.ReorderLayers = None,
    reorder_branches: opt.ReorderBranches = None,
    epochs: int = typer.Option(5, "--epochs"),
    checkpoint_every: int = typer.Option(0, "--checkpoint-every", help="Steps between checkpoints (0: each epoch)."),
    batch_size: opt.BatchSize = 256,
    lr: opt.Lr = 3e-3,
    warmup: opt.Warmup = 0.05,
    weight_decay: opt.WeightDecay = 0.05,
    crop_padding: int = typer.Option(0, "--crop-padding", help="Random-crop augmentation with this zero padding."),
    flip: bool = typer.Option(False, "--flip", help="Random left-right flips."),
    normalize: bool = typer.Option(True, "--normalize/--no-normalize", help="Per-channel mean/std normalisation."),
    val_fraction: float = typer.Option(0.1, "--val-fraction", help="Training images held out for validation."),
    seed: opt.Seed = 0,
    no_autocast: opt.NoAutocast = False,
    cuda_graph: opt.CudaGraph = False,
    device: opt.Device = "auto",
    backend: opt.Backend = "auto",
    stop_after_steps: opt.StopAfterSteps = None,
    progress: opt.Progress = True,
) -> None:
    """Train a Mamba image classifier (patch tokens): metrics.jsonl, checkpoints, result.json in the run dir."""
    from ..data.images import load_images
    from ..train.images import ImageModelSpec, TrainConfig, train_image

    run_dir = run_directory(out, resume)
    options = opt.mixer_options(mixer_option, d_state=d_state, expand=expand, reorder=reorder, reorder_tau=reorder_tau,
                                reorder_power=reorder_power, reorder_branches=reorder_branches,
                                reorder_layers=None if reorder_layers is None else _layers(reorder_layers))
    spec = ImageModelSpec(d_model=d_model, n_layer=n_layer, patch_size=patch_size, bidirectional=bidirectional,
                          pooling=pooling, positions=positions, layer=layer, mixer=options)
    cfg = TrainConfig(lr=lr, warmup=warmup, weight_decay=weight_decay, seed=seed, autocast=not no_autocast,
                      cuda_graph=cuda_graph)
    dataset = load_images(data, data_dir, size=image_size, channels=channels, download=download)
    spec.config(dataset.image_shape, dataset.n_classes, scan_backend=backend)   # refuse a bad model first
    result, _ = train_image(dataset, spec, cfg, batch_size=batch_size, epochs=epochs, out=run_dir,
                            resume=resume is not None, device=device, crop_padding=crop_padding, flip=flip,
                            normalize=normalize, val_fraction=val_fraction, stop_after_steps=stop_after_steps,
                            checkpoint_every=checkpoint_every, progress=progress, scan_backend=backend, log=_echo)
    report_run(result, run_dir, "accuracy", 4)
