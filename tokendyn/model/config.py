"""Configuration dataclasses for the Mamba-1 language model and sequence classifier.

Field names and defaults follow state-spaces ``mamba_ssm`` (``MambaConfig`` plus the
``Mamba`` mixer's keyword arguments, flattened), so a mamba_ssm ``config.json`` maps
onto :class:`MambaConfig` field by field (its ``ssm_cfg`` entries become top-level
fields here).
"""

from __future__ import annotations

import math
from dataclasses import KW_ONLY, asdict, dataclass, field, fields

from ..errors import ConfigError
from ..ops import check_backend_name
from .reorder import check_reorder_settings

# Keyword arguments of the mixer, shared by both configs (mamba_ssm's ``ssm_cfg``).
MIXER_FIELDS = ("d_state", "d_conv", "expand", "dt_rank", "dt_min", "dt_max", "dt_init",
                "dt_scale", "dt_init_floor", "conv_bias", "bias", "scan_backend")

POOLINGS = ("mean", "last")

# Refinement 1 (THEORY.md section 5): the sign of the nonzero eigenvalues of M = S_Cᵀ S_B.
# "mixed" is the authors' mixed setting (no margin ε); "mixed_margin" is the same signs with ε
# (the project's variant, THEORY.md section 5)
IO_CONSTRAINTS = ("none", "positive", "negative", "mixed", "mixed_margin")


def resolve_dt_rank(dt_rank: int | str, d_model: int) -> int:
    """The rank R of the Δ projection: mamba_ssm's ceil(d_model/16) for ``"auto"``, else dt_rank."""
    return math.ceil(d_model / 16) if dt_rank == "auto" else int(dt_rank)


def _check_mixer_fields(cfg) -> None:
    """Raise :class:`ConfigError` for mixer settings that cannot build a model."""
    for name in ("d_model", "n_layer", "d_state", "d_conv"):
        value = getattr(cfg, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(f"{name} must be a positive integer, got {value!r}.")
    if not (isinstance(cfg.expand, (int, float)) and cfg.expand > 0) or int(cfg.expand * cfg.d_model) < 1:
        raise ConfigError(f"expand must be positive and give d_inner >= 1, got expand={cfg.expand!r}.")
    if cfg.dt_rank != "auto" and not (isinstance(cfg.dt_rank, int) and cfg.dt_rank >= 1):
        raise ConfigError(f"dt_rank must be 'auto' or a positive integer, got {cfg.dt_rank!r}.")
    if not 0 < cfg.dt_min <= cfg.dt_max:
        raise ConfigError(f"need 0 < dt_min <= dt_max, got dt_min={cfg.dt_min}, dt_max={cfg.dt_max}.")
    if cfg.dt_init not in ("random", "constant"):
        raise ConfigError(f"dt_init must be 'random' or 'constant', got {cfg.dt_init!r}.")
    if cfg.dt_init_floor < 0:
        raise ConfigError(f"dt_init_floor must be >= 0, got {cfg.dt_init_floor}.")
    check_backend_name(getattr(cfg, "scan_backend", "auto"))
    _check_variant_fields(cfg)


def _check_variant_fields(cfg) -> None:
    """The fields that choose the mixer family and its refinements (docs/models.md, "Variants")."""
    from .variants import mixer_families  # imported late: the registry imports the mixers, which import this

    layer = getattr(cfg, "layer", "mamba1")
    if layer not in mixer_families():
        raise ConfigError(f"unknown layer {layer!r}; choose one of {', '.join(mixer_families())}.")
    constraint = getattr(cfg, "io_constraint", "none")
    if constraint not in IO_CONSTRAINTS:
        raise ConfigError(f"unknown io_constraint {constraint!r}; choose one of {', '.join(IO_CONSTRAINTS)}.")
    margin = getattr(cfg, "io_margin", 0.7)
    if isinstance(margin, bool) or not isinstance(margin, (int, float)) or not 0 < margin < math.inf:
        raise ConfigError(f"io_margin must be a positive finite number, got {margin!r}.")
    d_inner = int(cfg.expand * cfg.d_model)
    if constraint != "none" and cfg.d_state > d_inner:
        raise ConfigError(f"io_constraint {constraint!r} needs d_state <= d_inner, got d_state {cfg.d_state} "
                          f"and d_inner {d_inner} (S_Cᵀ S_B has rank at most d_inner).")
    if hasattr(cfg, "reorder"):
        _check_reorder_fields(cfg)


def _check_reorder_fields(cfg) -> None:
    """The token-reordering fields (THEORY.md section 6)."""
    check_reorder_settings(cfg.reorder, cfg.reorder_tau, cfg.reorder_power, cfg.reorder_branches)
    layers = cfg.reorder_layers
    if not isinstance(layers, (list, tuple)) or not all(
            isinstance(i, int) and not isinstance(i, bool) for i in layers):
        raise ConfigError(f"reorder_layers must be a list of layer indices, got {layers!r}.")
    bad = [i for i in layers if not 0 <= i < cfg.n_layer]
    if bad:
        raise ConfigError(f"reorder_layers {bad} do not exist; the model has layers 0..{cfg.n_layer - 1}.")
    if cfg.reorder != "none" and not layers:
        raise ConfigError(f"reorder={cfg.reorder!r} needs at least one layer in reorder_layers.")


@dataclass(kw_only=True)
class _MixerSettings:
    """Fields and derived sizes shared by both configs (keyword-only: each config's
    own required fields come first, positionally)."""

    d_state: int = 16
    d_conv: int = 4
    expand: int = 2
    dt_rank: int | str = "auto"
    dt_min: float = 0.001
    dt_max: float = 0.1
    dt_init: str = "random"
    dt_scale: float = 1.0
    dt_init_floor: float = 1e-4
    conv_bias: bool = True
    bias: bool = False
    rms_norm: bool = True
    residual_in_fp32: bool = True
    norm_epsilon: float = 1e-5
    scan_backend: str = "auto"
    # the mixer family and its refinements, resolved by tokendyn.model.variants
    layer: str = "mamba1"
    io_constraint: str = "none"
    io_margin: float = 0.7
    # token reordering, THEORY.md section 6 (non-causal models only)
    reorder: str = "none"
    reorder_tau: float = 1.0
    reorder_power: float = 1.0
    reorder_layers: list[int] = field(default_factory=lambda: [0])
    reorder_branches: str = "xz"

    def reorders(self, layer_idx: int) -> bool:
        """Whether layer ``layer_idx`` reorders its tokens."""
        return self.reorder != "none" and layer_idx in self.reorder_layers

    @property
    def d_inner(self) -> int:
        """D in THEORY.md: the inner width expand·d_model."""
        return int(self.expand * self.d_model)

    @property
    def dt_rank_value(self) -> int:
        """The rank of the Δ projection (:func:`resolve_dt_rank`)."""
        return resolve_dt_rank(self.dt_rank, self.d_model)

    def mixer_kwargs(self) -> dict:
        """The mixer's keyword arguments (mamba_ssm's ``ssm_cfg`` plus the backend)."""
        return {name: getattr(self, name) for name in MIXER_FIELDS}

    def to_dict(self) -> dict:
        """A JSON-able dict of every field (round-trips through ``from_dict``)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict):
        """Build from a dict; unknown keys raise :class:`ConfigError` naming them."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown {cls.__name__} field(s): {', '.join(unknown)}.")
        return cls(**data)


@dataclass
class MambaConfig(_MixerSettings):
    """A Mamba-1 language model (mamba_ssm ``MambaLMHeadModel`` with ``d_intermediate=0``).

    ``vocab_size`` is the tokenizer's size; the embedding and head have
    ``padded_vocab_size`` rows (rounded up to ``pad_vocab_size_multiple``).
    ``scan_backend`` names the ``tokendyn.ops.selective_scan`` backend the mixers use.
    """

    d_model: int
    n_layer: int
    vocab_size: int
    _: KW_ONLY
    pad_vocab_size_multiple: int = 8
    tie_embeddings: bool = True
    # dropout on the final hidden states before the head (the authors' language models: 0.3);
    # active in training only
    final_dropout: float = 0.0

    def __post_init__(self):
        _check_mixer_fields(self)
        p = self.final_dropout
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p < 1:
            raise ConfigError(f"final_dropout must be a number in [0, 1), got {p!r}.")
        if self.reorder != "none":
            raise ConfigError(f"reorder={self.reorder!r} breaks causality, so a causal language model cannot use "
                              "it; token reordering is for non-causal models such as the classifier.")
        if not isinstance(self.vocab_size, int) or self.vocab_size < 1:
            raise ConfigError(f"vocab_size must be a positive integer, got {self.vocab_size!r}.")
        if not isinstance(self.pad_vocab_size_multiple, int) or self.pad_vocab_size_multiple < 1:
            raise ConfigError(
                f"pad_vocab_size_multiple must be a positive integer, got {self.pad_vocab_size_multiple!r}.")

    @property
    def padded_vocab_size(self) -> int:
        """Rows of the embedding and the head: vocab_size rounded up to the multiple."""
        m = self.pad_vocab_size_multiple
        return -(-self.vocab_size // m) * m


@dataclass
class ClassifierConfig(_MixerSettings):
    """A Mamba-1 classifier for sequences of continuous vectors (batch, L, input_dim), or for
    images cut into patches.

    ``pooling``: ``"mean"`` averages the final-normalised tokens over the sequence,
    ``"last"`` takes the last token (the only one that has seen the whole causal
    sequence). ``patch_size`` > 0: the input is images (batch, C, H, W), H and W multiples of
    the patch size, cut into non-overlapping patch_size × patch_size patches in raster order,
    each one token of input_dim = C·patch_size² values (28 × 28 with 4 × 4 patches: 49 tokens).
    ``bidirectional``: odd-numbered layers scan the sequence in reverse, so every token sees
    every other one after two layers (no extra parameters). ``n_positions`` > 0: a learned
    position embedding for up to that many tokens is added to the input embedding.
    """

    input_dim: int
    n_classes: int
    d_model: int
    n_layer: int
    _: KW_ONLY
    pooling: str = "mean"
    patch_size: int = 0
    bidirectional: bool = False
    n_positions: int = 0

    def __post_init__(self):
        _check_mixer_fields(self)
        for name in ("input_dim", "n_classes"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}.")
        if self.pooling not in POOLINGS:
            raise ConfigError(f"pooling must be one of {', '.join(POOLINGS)}, got {self.pooling!r}.")
        for name in ("patch_size", "n_positions"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ConfigError(f"{name} must be an integer >= 0, got {value!r}.")
        if self.patch_size and self.input_dim % (self.patch_size ** 2):
            raise ConfigError(f"input_dim {self.input_dim} must be channels x patch_size^2 "
                              f"(a multiple of {self.patch_size ** 2}) for patch_size {self.patch_size}.")
        if not isinstance(self.bidirectional, bool):
            raise ConfigError(f"bidirectional must be true or false, got {self.bidirectional!r}.")

    @property
    def image_channels(self) -> int:
        """C of the images a patch classifier takes (input_dim / patch_size²); 0 for sequences."""
        return self.input_dim // self.patch_size ** 2 if self.patch_size else 0
