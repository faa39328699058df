"""Image classification as a task of the one training loop (:mod:`tokendyn.train.task`), and
:func:`train_image`, one run of it (what ``tokendyn train image`` and the reorder experiment run).

Training batches: each epoch is a seeded permutation of the training images, cut into
batches of ``batch_size`` (the last partial batch dropped); batch ``step`` is a pure function
of (seed, step), so a resumed run sees the batches of an uninterrupted one. Augmentation
(random crop with zero padding, left-right flip) draws from a generator seeded by
(seed, step) too. The images may sit on the GPU (``data_device``): batches are then cut and
augmented there, with no host-to-device copy per step.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from ..data.images import ImageDataset, ImageSplit, ImageTransform
from ..errors import ConfigError
from ..model import ClassifierConfig, HybridClassifier, HybridConfig, MambaClassifier
from ..model.config import takes_flat_options
from ..model.hybrid import HybridStages
from ..model.reorder import sharpness
from ..model.reorder_mixer import recorded_orders
from .loop import (
    TrainConfig,
    TrainResult,
    check_batch_fits,
    check_duration,
    check_model_fits,
    model_identity,
    per_pass,
    train,
    training_device,
)
from .task import Task, autocast_context, batch_generator, slice_rows


class ImageClassificationTask(Task):
    """Arguments:
        data: the :class:`ImageDataset` (train and test splits).
        batch_size: images per optimiser step.
        seed: seeds the epoch permutations and the augmentation.
        val_fraction: share of the training split held out for validation (split with seed 0,
            the same for every seed of an experiment).
        crop_padding, flip, normalize: the :class:`ImageTransform` options (augmentation only
            on training batches).
        data_device: where the uint8 images are kept and batches are made.
        eval_batch: images per evaluation forward pass.
        tokens_per_example: tokens the model makes of one image (for the tokens-seen count).
    """

    name = "image-classification"
    metric = "accuracy"

    def __init__(self, data: ImageDataset, batch_size: int, seed: int = 0, val_fraction: float = 0.1,
                 crop_padding: int = 0, flip: bool = False, normalize: bool = True, data_device="cpu",
                 eval_batch: int = 1000, tokens_per_example: int = 1):
        for name, v in (("batch_size", batch_size), ("eval_batch", eval_batch)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ConfigError(f"{name} must be a positive integer, got {v!r}.")
        if crop_padding < 0:
            raise ConfigError(f"crop_padding must be >= 0, got {crop_padding}.")
        train, val = data.split_validation(val_fraction, seed=0)
        if len(train) < batch_size:
            raise ConfigError(f"the batch of {batch_size} images is larger than the {len(train)} training images.")
        device = torch.device(data_device)
        self.splits: dict[str, ImageSplit] = {"train": train.to(device), "validation": val.to(device),
                                              "test": data.test.to(device)}
        self.data = data
        self.transform = ImageTransform(data.mean, data.std, normalize=normalize, crop_padding=crop_padding,
                                        flip=flip)
        self.examples_per_step = batch_size
        self.tokens_per_example = tokens_per_example
        self.seed = seed
        self.val_fraction = val_fraction
        self.eval_batch = eval_batch
        self.steps_per_epoch = len(train) // batch_size
        self._order: tuple[int, torch.Tensor] | None = None

    def epoch_order(self, epoch: int) -> torch.Tensor:
        """(n_train,) the permutation of the training images in epoch ``epoch`` (cached)."""
        if self._order is None or self._order[0] != epoch:
            g = batch_generator(self.seed, -1 - epoch)     # negative "steps": a stream apart from augmentation
            self._order = (epoch, torch.randperm(len(self.splits["train"]), generator=g))
        return self._order[1]

    def train_batch(self, step: int, index: int, count: int):
        """(images (b, C, H, W) float32, labels (b,) int64): slice ``index`` of step ``step``'s batch."""
        epoch, k = divmod(step, self.steps_per_epoch)
        n = self.examples_per_step
        rows = slice_rows(n, index, count)
        idx = self.epoch_order(epoch)[k * n:(k + 1) * n][rows]
        split = self.splits["train"]
        idx = idx.to(split.images.device)
        # the whole global batch's augmentation drawn, this slice's part used
        draws = {key: v[..., rows] for key, v in self.transform.draw(n, batch_generator(self.seed, step)).items()}
        return self.transform(split.images[idx], augment=True, draws=draws), split.labels[idx]

    def loss(self, model, batch) -> torch.Tensor:
        x, y = batch
        with autocast_context(x.device, self.autocast):
            logits = model(x)
        return F.cross_entropy(logits.float(), y)

    @torch.no_grad()
    def evaluate(self, model, split: str) -> dict:
        """{"loss", "accuracy", "images"} on ``split`` ("validation" or "test")."""
        data = self.splits[split]
        device = next(model.parameters()).device
        was_training = model.training
        model.eval()
        total, correct = 0.0, 0
        for start in range(0, len(data), self.eval_batch):
            x = self.transform(data.images[start:start + self.eval_batch].to(device))
            y = data.labels[start:start + self.eval_batch].to(device)
            with autocast_context(device, self.autocast):
                logits = model(x).float()
            total += float(F.cross_entropy(logits, y, reduction="sum"))
            correct += int((logits.argmax(-1) == y).sum())
        model.train(was_training)
        n = len(data)
        return {"loss": total / n, "accuracy": correct / n, "images": n}

    def probe_input(self) -> torch.Tensor:
        """(1, C, H, W) the first validation image, normalised."""
        return self.transform(self.splits["validation"].images[:1]).cpu()

    def describe(self) -> dict:
        t = self.transform
        return {**super().describe(), "data": self.data.source, "classes": len(self.data.classes),
                "image_shape": list(self.data.image_shape), "train_images": len(self.splits["train"]),
                "validation_images": len(self.splits["validation"]), "test_images": len(self.splits["test"]),
                "val_fraction": self.val_fraction, "steps_per_epoch": self.steps_per_epoch,
                "crop_padding": t.crop_padding, "flip": t.flip, "normalize": t.normalize, "seed": self.seed}


# ---- one image-classification run -------------------------------------------------------------

@takes_flat_options("mixer")
@dataclass
class ImageModelSpec:
    """The classifier of a run: a :class:`MambaClassifier` over patch_size × patch_size patches.

    positions: a learned position embedding over the patches; layer: the mixer family; mixer: the
    options of the family and of its variants by name (for Mamba-1 e.g. ``{"d_state": 16,
    "reorder": "soft"}``: token reordering, THEORY.md section 6), checked by the config through the
    registry; an option may also be given as a keyword (``ImageModelSpec(reorder="hard")``).
    """

    d_model: int = 64
    n_layer: int = 4
    patch_size: int = 4
    bidirectional: bool = True
    pooling: str = "mean"
    positions: bool = True
    layer: str = "mamba1"
    mixer: dict = field(default_factory=dict)

    model_class = MambaClassifier

    def n_tokens(self, image_shape) -> int:
        """Tokens the model makes of one image: its patches."""
        return (image_shape[1] // self.patch_size) * (image_shape[2] // self.patch_size)

    def config(self, image_shape, n_classes: int, scan_backend: str = "auto") -> ClassifierConfig:
        c, h, w = image_shape
        p = self.patch_size
        if not isinstance(p, int) or p < 1 or h % p or w % p:
            raise ConfigError(f"the patch size {p} must divide the image size {h} x {w}.")
        n_tokens = (h // p) * (w // p)
        return ClassifierConfig(
            input_dim=c * p * p, n_classes=n_classes, d_model=self.d_model, n_layer=self.n_layer, patch_size=p,
            bidirectional=self.bidirectional, pooling=self.pooling, n_positions=n_tokens if self.positions else 0,
            scan_backend=scan_backend, layer=self.layer, options=dict(self.mixer))


@takes_flat_options("mixer")
@dataclass(kw_only=True)
class HybridModelSpec(HybridStages):
    """The classifier of a run: a :class:`~tokendyn.model.HybridClassifier` (convolutions, then
    Mamba stages; docs/models.md). dims, depths, strides, attention, n_heads, mlp_ratio: its
    stages (:class:`~tokendyn.model.hybrid.HybridStages`); layer: the Mamba blocks' family
    (default ``"mambavision"``); mixer: the options of the family and of its variants by name
    (e.g. ``{"reorder": "soft", "reorder_restore": False}``), or as keywords.
    """

    layer: str = "mambavision"
    mixer: dict = field(default_factory=dict)

    model_class = HybridClassifier

    def n_tokens(self, image_shape) -> int:
        """Tokens of one image at the first Mamba stage (after the stride-2 stem and strides[0])."""
        s = self.strides[0] if isinstance(self.strides, (list, tuple)) and self.strides else 1
        # a 3 × 3 conv with padding 1 and stride k makes ceil(n / k) of n pixels
        return math.prod(math.ceil(math.ceil(n / 2) / s) for n in image_shape[1:])

    def config(self, image_shape, n_classes: int, scan_backend: str = "auto") -> HybridConfig:
        return HybridConfig(in_channels=image_shape[0], n_classes=n_classes, **self.stages(),
                            scan_backend=scan_backend, layer=self.layer, options=dict(self.mixer))


class SharpnessProbe:
    """A training callback: at step 0 and every ``every`` steps, the sharpness of each reordering
    layer's ordering on a fixed batch of images (THEORY.md section 6), recorded in metrics.jsonl as
    ``{"kind": "sharpness", "step", "layers": {layer: {"mode", "sharpness", "uniform", "tokens"}}}``.

    sharpness: the mean largest row weight of SoftSort's P̂ (1 for the exact sort), uniform: 1/L.
    images: (n, C, H, W) float, already normalised.
    """

    def __init__(self, images: torch.Tensor, every: int):
        self.images = images
        self.every = every

    @torch.no_grad()
    def measure(self, model) -> dict:
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        with recorded_orders(model) as orders:
            model(self.images.to(device))
        model.train(was_training)
        out = {}
        for name, record in orders.items():
            for kind, value in record:
                L = value.shape[-1]
                out[name] = {"mode": kind, "sharpness": sharpness(value) if kind == "soft" else 1.0,
                             "uniform": 1.0 / L, "tokens": int(L)}
        return out

    def __call__(self, step: int, model, record) -> None:
        layers = self.measure(model)
        if layers:
            record({"kind": "sharpness", "step": step, "layers": layers})


def train_image(data: ImageDataset, spec: ImageModelSpec, cfg: TrainConfig, *, batch_size: int = 256,
                epochs: int | None = None, out: Path | None = None, resume: bool = False, device="auto",
                crop_padding: int = 0, flip: bool = False, normalize: bool = True, val_fraction: float = 0.1,
                data_on_device: bool = True, stop_after_steps: int | None = None, progress: bool = True,
                scan_backend: str = "auto", sharpness_images: int = 0, identity: dict | None = None,
                checkpoint_every: int = 0, log=None) -> tuple[TrainResult, MambaClassifier | HybridClassifier]:
    """Build a classifier (``spec.model_class``, seeded by ``cfg.seed``) and train it on ``data``
    through :func:`tokendyn.train.loop.train`; returns (result, model).

    spec: an :class:`ImageModelSpec` (patch tokens) or a :class:`HybridModelSpec` (convolutions,
    then Mamba stages). epochs: when given, ``cfg.steps`` becomes epochs × steps per epoch and
    validation (and a checkpoint) come once per epoch, so the validation curve is per epoch;
    checkpoint_every: a checkpoint every that many steps instead (0: once per epoch), so that a
    run stopped mid-epoch loses little (a resumed run makes the batches of an uninterrupted one).
    sharpness_images > 0: a :class:`SharpnessProbe` on that many validation images at every
    validation (or every epoch). identity: more entries for run.json (a resumed run must match).
    """
    if not isinstance(checkpoint_every, int) or checkpoint_every < 0:
        raise ConfigError(f"checkpoint_every must be a non-negative integer, got {checkpoint_every!r}.")
    dev = training_device(device)
    config = spec.config(data.image_shape, data.n_classes, scan_backend=scan_backend)
    n_params = check_model_fits(spec.model_class, config, device)
    n_tokens = spec.n_tokens(data.image_shape)
    if epochs is not None and isinstance(epochs, int):
        check_duration(n_params, float(epochs) * len(data.train) * (1 - val_fraction) * n_tokens, device,
                       f"--epochs {epochs:,} of {len(data.train):,} images")
    else:
        check_duration(n_params, float(cfg.steps) * batch_size * n_tokens, device,
                       f"{cfg.steps:,} steps of {batch_size} images")
    check_batch_fits(config, per_pass(batch_size, cfg.micro_batch) * n_tokens, 0, device,
                     f"--batch-size {batch_size} of {n_tokens:,} tokens ({config.n_layer} layers of "
                     f"{config.d_model})")
    torch.manual_seed(cfg.seed)
    model = spec.model_class(config)
    task = ImageClassificationTask(data, batch_size, seed=cfg.seed, val_fraction=val_fraction,
                                   crop_padding=crop_padding, flip=flip, normalize=normalize,
                                   data_device=dev if data_on_device else "cpu",
                                   tokens_per_example=spec.n_tokens(data.image_shape))
    if epochs is not None:
        if not isinstance(epochs, int) or epochs < 1:
            raise ConfigError(f"epochs must be a positive integer, got {epochs!r}.")
        spe = task.steps_per_epoch
        cfg = dataclasses.replace(cfg, steps=epochs * spe, eval_every=spe, checkpoint_every=checkpoint_every or spe,
                                  log_every=min(cfg.log_every or spe, spe))
    elif checkpoint_every:
        cfg = dataclasses.replace(cfg, checkpoint_every=checkpoint_every)
    callbacks = []
    if sharpness_images > 0:
        probe = task.transform(task.splits["validation"].images[:sharpness_images]).cpu()
        callbacks.append(SharpnessProbe(probe, cfg.eval_every or task.steps_per_epoch))
    identity = {"model": model_identity(config),
                "data": data.source, "epochs": epochs, **(identity or {})}
    if model.kind != "classifier":      # a patch classifier's run.json stays as it was
        identity["model_kind"] = model.kind
    result = train(model, task, cfg, out, identity=identity, resume=resume, device=dev, callbacks=callbacks,
                   stop_after_steps=stop_after_steps, progress=progress, log=log)
    return result, model
