"""A small hybrid image classifier in the spirit of MambaVision-T: convolutions first, then
stages of Mamba mixer blocks (and, optionally, self-attention blocks) over the feature map's
pixels as tokens.

    stem:      conv 3×3 stride 2 (C -> dims[0]) -> GroupNorm -> GELU -> conv 3×3 -> GroupNorm -> GELU
    stages[0]: depths[0] residual conv blocks at dims[0]               (H/2 × W/2)
    stages[k]: k ≥ 1, a Mamba stage: conv 3×3 with strides[k−1] (dims[k−1] -> dims[k]), then
               depths[k] blocks over the (H_k·W_k) pixels in raster order; each block is
               x += mixer(norm(x)); x += mlp(norm(x)); the mixer is the config's family (Mamba
               mixers get layer indices 0, 1, ... across the stages) or, with ``attention``, for
               the last depths[k] // 2 blocks of the stage, multi-head self-attention
    head:      norm -> mean over the tokens -> Linear(dims[−1], n_classes)

On 28 × 28 images with strides (1, 2): the first Mamba stage sees 14 × 14 = 196 tokens and the
second 7 × 7 = 49, like stages 3 and 4 of MambaVision-T (one window each). The authors reorder in
block 0 of each Mamba stage: ``reorder_layers`` = :meth:`HybridConfig.stage_first_layers`.
"""

from __future__ import annotations

import math
from dataclasses import KW_ONLY, dataclass, field, fields
from types import SimpleNamespace

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import ConfigError, DataError
from ..ops import check_backend_name
from .blocks import make_norm
from .checkpoint import register_model_kind, save_model
from .config import _BackboneSettings, _positive_int, takes_flat_options
from .families import build_mixer


def _int_list(name: str, value, minimum: int) -> list[int]:
    if not isinstance(value, (list, tuple)) or not value or not all(
            isinstance(v, int) and not isinstance(v, bool) and v >= minimum for v in value):
        raise ConfigError(f"{name} must be a non-empty list of integers >= {minimum}, got {value!r}.")
    return list(value)


def mamba_blocks(depth: int, attention: bool) -> int:
    """Mamba blocks of a Mamba stage of ``depth`` blocks: all, or with ``attention`` all but the
    last depth // 2 (which are self-attention, as in MambaVision)."""
    return depth - (depth // 2 if attention else 0)


def stage_first_layers(depths, attention: bool) -> list[int]:
    """The layer index of block 0 of each Mamba stage (depths: the Mamba stages' depths), with the
    Mamba mixers numbered 0, 1, ... across the stages: the authors' reordering layers."""
    firsts, n = [], 0
    for depth in depths:
        firsts.append(n)
        n += mamba_blocks(depth, attention)
    return firsts


@dataclass(kw_only=True)
class HybridStages:
    """The stages of a hybrid classifier, as :class:`HybridConfig` describes them (dims, depths,
    strides, attention, n_heads, mlp_ratio), shared by the config and the training spec."""

    dims: list[int] = field(default_factory=lambda: [32, 48, 64])
    depths: list[int] = field(default_factory=lambda: [1, 2, 2])
    strides: list[int] = field(default_factory=lambda: [1, 2])
    attention: bool = False
    n_heads: int = 2
    mlp_ratio: float = 2.0

    def stages(self) -> dict:
        """The stage fields by name."""
        return {f.name: getattr(self, f.name) for f in fields(HybridStages)}


@takes_flat_options("options")
@dataclass
class HybridConfig(_BackboneSettings, HybridStages):
    """The hybrid classifier (module docstring). ``layer`` (default ``"mambavision"``), ``mixer``
    and ``variants`` are the Mamba blocks' family and settings, as in the other configs.

    in_channels: C of the images; n_classes; dims: widths of the conv stage, then of each Mamba
    stage; depths: blocks per stage (same length as dims); strides: the stride entering each Mamba
    stage (len(dims) − 1 entries); attention: the last depth // 2 blocks of each Mamba stage are
    self-attention (n_heads heads, which must divide the stage's width); mlp_ratio: the MLP's
    hidden width over the stage's width.

    ``n_layer`` is the number of Mamba mixer blocks (their layer indices run over the stages) and
    ``d_model`` the narrowest Mamba stage's width (what the family's checks read).
    """

    in_channels: int
    n_classes: int
    _: KW_ONLY
    layer: str = "mambavision"

    def __post_init__(self, options: dict | None = None):
        for name in ("in_channels", "n_classes"):
            _positive_int(name, getattr(self, name))
        self.dims = _int_list("dims", self.dims, 1)
        self.depths = _int_list("depths", self.depths, 0)
        self.strides = _int_list("strides", self.strides, 1)
        if len(self.dims) < 2 or len(self.depths) != len(self.dims) or len(self.strides) != len(self.dims) - 1:
            raise ConfigError(f"need dims of at least 2 stages, depths of the same length and one stride per Mamba "
                              f"stage; got dims {self.dims}, depths {self.depths}, strides {self.strides}.")
        if not isinstance(self.attention, bool):
            raise ConfigError(f"attention must be true or false, got {self.attention!r}.")
        _positive_int("n_heads", self.n_heads)
        if self.attention and any(d % self.n_heads for d in self.dims[1:]):
            raise ConfigError(f"n_heads {self.n_heads} must divide every Mamba stage's width {self.dims[1:]}.")
        r = self.mlp_ratio
        if isinstance(r, bool) or not isinstance(r, (int, float)) or not r > 0:
            raise ConfigError(f"mlp_ratio must be a number > 0, got {r!r}.")
        if any(self.mamba_blocks(k) < 1 for k in range(1, len(self.dims))):
            raise ConfigError(f"every Mamba stage needs at least one Mamba block, got depths {self.depths[1:]}"
                              f"{' with attention' if self.attention else ''}.")
        super().__post_init__(options)

    def mamba_blocks(self, stage: int) -> int:
        """Mamba blocks of Mamba stage ``stage`` (≥ 1): its depth less the attention blocks."""
        return mamba_blocks(self.depths[stage], self.attention)

    def stage_first_layers(self) -> list[int]:
        """The layer index of block 0 of each Mamba stage (the authors' reordering layers)."""
        return stage_first_layers(self.depths[1:], self.attention)

    @property
    def n_layer(self) -> int:
        return sum(self.mamba_blocks(k) for k in range(1, len(self.dims)))

    @property
    def d_model(self) -> int:
        return min(self.dims[1:])

    def stage_config(self, stage: int) -> SimpleNamespace:
        """What :func:`build_mixer` reads for a mixer of Mamba stage ``stage``: this config with
        d_model the stage's width."""
        return SimpleNamespace(d_model=self.dims[stage], n_layer=self.n_layer, layer=self.layer, mixer=self.mixer,
                               variants=self.variants, scan_backend=self.scan_backend)


class ConvBlock(nn.Module):
    """x + GN(conv(GELU(GN(conv(x))))), 3 × 3 convs: (batch, C, H, W) -> (batch, C, H, W)."""

    def __init__(self, dim: int):
        super().__init__()
        self.conv1, self.norm1 = nn.Conv2d(dim, dim, 3, padding=1), nn.GroupNorm(1, dim)
        self.conv2, self.norm2 = nn.Conv2d(dim, dim, 3, padding=1), nn.GroupNorm(1, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.norm2(self.conv2(F.gelu(self.norm1(self.conv1(x)))))


class SelfAttention(nn.Module):
    """Multi-head self-attention over all tokens (no mask): (batch, L, dim) -> (batch, L, dim)."""

    def __init__(self, dim: int, n_heads: int):
        super().__init__()
        self.n_heads = n_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, L, d = x.shape
        q, k, v = self.qkv(x).view(b, L, 3, self.n_heads, d // self.n_heads).permute(2, 0, 3, 1, 4)
        return self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, L, d))


class TokenBlock(nn.Module):
    """x += mixer(norm1(x)); x += mlp(norm2(x)), x (batch, L, dim); ``mixer`` a Mamba mixer (the
    mixer contract) or :class:`SelfAttention`."""

    def __init__(self, mixer: nn.Module, dim: int, mlp_ratio: float, rms_norm: bool, eps: float):
        super().__init__()
        hidden = max(1, round(mlp_ratio * dim))
        self.norm1, self.mixer = make_norm(dim, rms_norm, eps), mixer
        self.norm2 = make_norm(dim, rms_norm, eps)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.mixer(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class MambaStage(nn.Module):
    """conv 3 × 3 with ``stride`` (dim_in -> dim), then the blocks over the pixels as tokens:
    (batch, dim_in, H, W) -> (batch, dim, H', W')."""

    def __init__(self, config: HybridConfig, stage: int, first_layer: int):
        super().__init__()
        dim = config.dims[stage]
        self.down = nn.Conv2d(config.dims[stage - 1], dim, 3, stride=config.strides[stage - 1], padding=1)
        view = config.stage_config(stage)
        blocks = []
        for i in range(config.depths[stage]):
            mixer = (build_mixer(view, layer_idx=first_layer + i) if i < config.mamba_blocks(stage)
                     else SelfAttention(dim, config.n_heads))
            blocks.append(TokenBlock(mixer, dim, config.mlp_ratio, config.rms_norm, config.norm_epsilon))
        self.blocks = nn.ModuleList(blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.down(x)
        b, c, h, w = x.shape
        t = x.flatten(2).transpose(1, 2)                     # (b, H·W, C), raster order
        for block in self.blocks:
            t = block(t)
        return t.transpose(1, 2).reshape(b, c, h, w)


class HybridClassifier(nn.Module):
    """``model(images)``: (batch, C, H, W) float -> logits (batch, n_classes) (module docstring).

    Parameters: ``stem.*``, ``stages.0.{i}.*`` (conv blocks), ``stages.{k}.down.*`` and
    ``stages.{k}.blocks.{i}.{norm1,mixer,norm2,mlp}.*`` (k ≥ 1), ``norm.*``, ``head.*``.
    """

    kind = "hybrid"  # with the config, what a checkpoint records to rebuild this model

    def __init__(self, config: HybridConfig):
        super().__init__()
        self.config = config
        d0 = config.dims[0]
        self.stem = nn.Sequential(nn.Conv2d(config.in_channels, d0, 3, stride=2, padding=1), nn.GroupNorm(1, d0),
                                  nn.GELU(), nn.Conv2d(d0, d0, 3, padding=1), nn.GroupNorm(1, d0), nn.GELU())
        stages: list[nn.Module] = [nn.Sequential(*(ConvBlock(d0) for _ in range(config.depths[0])))]
        for k, first in zip(range(1, len(config.dims)), config.stage_first_layers()):
            stages.append(MambaStage(config, k, first))
        self.stages = nn.ModuleList(stages)
        self.norm = make_norm(config.dims[-1], config.rms_norm, config.norm_epsilon)
        self.head = nn.Linear(config.dims[-1], config.n_classes)
        self._init_weights()

    @torch.no_grad()
    def _init_weights(self) -> None:
        """Linear biases 0 (but a mixer's Δ bias), then each Mamba mixer's own part (out_proj ÷ √n_layer)."""
        for m in self.modules():
            if isinstance(m, nn.Linear) and m.bias is not None and not getattr(m.bias, "_no_reinit", False):
                nn.init.zeros_(m.bias)
        for m in self.mixers():
            m.init_weights_(self.config.n_layer)

    def mixers(self) -> list[nn.Module]:
        """The Mamba mixers, by layer index."""
        return [b.mixer for s in self.stages[1:] for b in s.blocks if not isinstance(b.mixer, SelfAttention)]

    def set_scan_backend(self, backend: str) -> None:
        """Route every mixer's scan through ``backend`` (a ``tokendyn.ops`` backend name)."""
        check_backend_name(backend)
        for m in self.mixers():
            m.scan_backend = backend
        self.config.scan_backend = backend

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def save(self, path) -> None:
        """Write ``path``/config.json and ``path``/model.safetensors (tokendyn layout)."""
        save_model(self, path)

    def example_input(self, n_tokens: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """A standard-normal square image (1, C, s, s) whose first Mamba stage has about
        ``n_tokens`` tokens (s = 2·⌊√n_tokens⌋·strides[0])."""
        side = 2 * max(1, math.isqrt(max(1, n_tokens))) * self.config.strides[0]
        x = torch.randn((1, self.config.in_channels, side, side), generator=generator)
        return x.to(next(self.parameters()).device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dim() != 4 \
                or x.shape[1] != self.config.in_channels:
            raise DataError(f"the hybrid classifier's input must be float images (batch, {self.config.in_channels}, "
                            f"H, W), got {tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}.")
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
        tokens = self.norm(x.flatten(2).transpose(1, 2))
        return self.head(tokens.mean(dim=1))


register_model_kind(HybridClassifier, HybridConfig)
