"""Configuration dataclasses for the Mamba-1 language model and sequence classifier.

Field names and defaults follow state-spaces ``mamba_ssm`` (``MambaConfig`` plus the
``Mamba`` mixer's keyword arguments, flattened), so a mamba_ssm ``config.json`` maps
onto :class:`MambaConfig` field by field (its ``ssm_cfg`` entries become top-level
fields here).
"""

from __future__ import annotations

import math
from dataclasses import KW_ONLY, asdict, dataclass, fields

from ..errors import ConfigError
from ..ops import check_backend_name

# Keyword arguments of the mixer, shared by both configs (mamba_ssm's ``ssm_cfg``).
MIXER_FIELDS = ("d_state", "d_conv", "expand", "dt_rank", "dt_min", "dt_max", "dt_init",
                "dt_scale", "dt_init_floor", "conv_bias", "bias", "scan_backend")

POOLINGS = ("mean", "last")


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

    def __post_init__(self):
        _check_mixer_fields(self)
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
    """A Mamba-1 classifier for sequences of continuous vectors (batch, L, input_dim).

    ``pooling``: ``"mean"`` averages the final-normalised tokens over the sequence,
    ``"last"`` takes the last token (the only one that has seen the whole causal
    sequence).
    """

    input_dim: int
    n_classes: int
    d_model: int
    n_layer: int
    _: KW_ONLY
    pooling: str = "mean"

    def __post_init__(self):
        _check_mixer_fields(self)
        for name in ("input_dim", "n_classes"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}.")
        if self.pooling not in POOLINGS:
            raise ConfigError(f"pooling must be one of {', '.join(POOLINGS)}, got {self.pooling!r}.")
