"""The Mamba-1 family's settings, and how they map onto mamba_ssm's and transformers' configs.

:class:`Mamba1Settings` has the keyword arguments of mamba_ssm's ``Mamba`` mixer (its ``ssm_cfg``
entries), with mamba_ssm's defaults; the mixer itself is :class:`tokendyn.model.mixer.MambaMixer`,
which registers the two together as the family ``"mamba1"``. Everything here works on plain
values and dicts (no tensors), so it is testable without a model.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from ..errors import CheckpointError, ConfigError
from .families import Interop

DT_INITS = ("random", "constant")


def resolve_dt_rank(dt_rank: int | str, d_model: int) -> int:
    """The rank R of the Δ projection: mamba_ssm's ceil(d_model/16) for ``"auto"``, else dt_rank."""
    return math.ceil(d_model / 16) if dt_rank == "auto" else int(dt_rank)


def _positive_int(name: str, value) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}.")


@dataclass(frozen=True)
class S6Settings:
    """The settings every S6 (one Δ per channel) mixer family shares, with their checks; each
    family derives its own class, with its defaults, its ``check`` and its ``sizes`` (two
    families' settings never compare equal nor pass for each other).

    d_state: N; d_conv: the conv's taps; expand: the inner width as a multiple of d_model;
    dt_rank: R, ``"auto"`` = ceil(d_model/16); dt_min, dt_max, dt_init (``"random"`` |
    ``"constant"``), dt_scale, dt_init_floor: the initialisation of Δ (docs/models.md);
    conv_bias: biases in the conv(s); bias: biases in in_proj and out_proj.
    """

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

    def __post_init__(self):
        _positive_int("d_state", self.d_state)
        _positive_int("d_conv", self.d_conv)
        if isinstance(self.expand, bool) or not (isinstance(self.expand, (int, float)) and self.expand > 0):
            raise ConfigError(f"expand must be positive and give d_inner >= 1, got expand={self.expand!r}.")
        if self.dt_rank != "auto" and not (isinstance(self.dt_rank, int) and self.dt_rank >= 1):
            raise ConfigError(f"dt_rank must be 'auto' or a positive integer, got {self.dt_rank!r}.")
        if not 0 < self.dt_min <= self.dt_max:
            raise ConfigError(f"need 0 < dt_min <= dt_max, got dt_min={self.dt_min}, dt_max={self.dt_max}.")
        if self.dt_init not in DT_INITS:
            raise ConfigError(f"dt_init must be 'random' or 'constant', got {self.dt_init!r}.")
        if self.dt_init_floor < 0:
            raise ConfigError(f"dt_init_floor must be >= 0, got {self.dt_init_floor}.")


@dataclass(frozen=True)
class Mamba1Settings(S6Settings):
    """The S6 mixer's settings (mamba_ssm ``Mamba``'s keyword arguments and defaults): the fields
    of :class:`S6Settings`; d_conv taps a causal conv and D = expand·d_model."""

    def check(self, config) -> None:
        """d_inner = expand·d_model must be at least 1."""
        if int(self.expand * config.d_model) < 1:
            raise ConfigError(f"expand must be positive and give d_inner >= 1, got expand={self.expand!r}.")

    def sizes(self, d_model: int) -> dict[str, int]:
        """d_inner (D), d_state (N) and dt_rank_value (R) of a mixer of width ``d_model``."""
        return {"d_inner": int(self.expand * d_model), "d_state": self.d_state,
                "dt_rank_value": resolve_dt_rank(self.dt_rank, d_model)}


# ---- mamba_ssm (state-spaces) ------------------------------------------------------------------

# ssm_cfg entries that describe how mamba_ssm runs, not what it computes
_SSM_CFG_IGNORED = {"use_fast_path", "layer_idx", "device", "dtype", "layer"}


def _where(source: str) -> str:
    return f"config.json in {source}"


def read_ssm_cfg(ssm_cfg: dict, source: str) -> dict:
    """Mamba1Settings keywords from mamba_ssm's ``ssm_cfg`` (its field names are ours)."""
    fields = {f.name for f in dataclasses.fields(Mamba1Settings)}
    unknown = sorted(set(ssm_cfg) - fields - _SSM_CFG_IGNORED)
    if unknown:
        raise CheckpointError(f"{_where(source)} has ssm_cfg fields tokendyn does not know for Mamba-1: "
                              f"{', '.join(unknown)}.")
    return {k: v for k, v in ssm_cfg.items() if k in fields}


def write_ssm_cfg(settings: Mamba1Settings, config) -> dict:
    """mamba_ssm's ``ssm_cfg`` for these settings (every field; mamba_ssm's default layer is Mamba1)."""
    return dataclasses.asdict(settings)


# ---- transformers ------------------------------------------------------------------------------

# transformers MambaConfig field -> (Mamba1Settings field, transformers' default): a config.json
# that omits a field means what it means to transformers
_HF_FIELDS = {
    "state_size": ("d_state", 16),
    "conv_kernel": ("d_conv", 4),
    "expand": ("expand", 2),
    "time_step_rank": ("dt_rank", "auto"),
    "time_step_min": ("dt_min", 0.001),
    "time_step_max": ("dt_max", 0.1),
    "time_step_init_scheme": ("dt_init", "random"),
    "time_step_scale": ("dt_scale", 1.0),
    "time_step_floor": ("dt_init_floor", 1e-4),
    "use_conv_bias": ("conv_bias", True),
    "use_bias": ("bias", False),
}


def read_hf(cfg: dict, source: str) -> dict:
    """Mamba1Settings keywords from transformers' ``MambaConfig`` (config.json)."""
    act = cfg.get("hidden_act", "silu")
    if act != "silu":
        raise CheckpointError(f"{_where(source)} has hidden_act {act!r}; Mamba-1 as tokendyn implements it uses silu.")
    return {name: cfg.get(hf_name, default) for hf_name, (name, default) in _HF_FIELDS.items()}


def write_hf(settings: Mamba1Settings, config) -> dict[str, Any]:
    """The Mamba-1 fields of transformers' ``MambaConfig`` for a model of ``config``; refuses a
    non-integer expand (transformers computes d_inner as expand·d_model in integers)."""
    expand = settings.expand
    if float(expand) != int(expand):
        raise CheckpointError(f"transformers' MambaConfig needs an integer expand, and this model has expand "
                              f"{expand!r}.")
    sizes = settings.sizes(config.d_model)
    if sizes["d_inner"] != int(expand) * config.d_model:
        raise CheckpointError("transformers computes d_inner as expand * d_model, which this model's d_inner is not.")
    return {
        "state_size": int(settings.d_state),
        "conv_kernel": int(settings.d_conv),
        "expand": int(expand),
        "intermediate_size": int(sizes["d_inner"]),
        "time_step_rank": int(sizes["dt_rank_value"]),
        "time_step_min": float(settings.dt_min),
        "time_step_max": float(settings.dt_max),
        "time_step_init_scheme": str(settings.dt_init),
        "time_step_scale": float(settings.dt_scale),
        "time_step_floor": float(settings.dt_init_floor),
        "use_bias": bool(settings.bias),
        "use_conv_bias": bool(settings.conv_bias),
        "hidden_act": "silu",
    }


# ---- the tensors of a Mamba-1 model -------------------------------------------------------------

def expected_shapes(config) -> dict[str, tuple[int, ...]]:
    """Every tensor a Mamba-1 LM with ``config`` stores, by tokendyn name, with its shape.

    Shapes follow mamba_ssm: in_proj (2·D, d_model), conv1d (D, 1, d_conv),
    x_proj (dt_rank + 2·N, D), dt_proj (D, dt_rank), A_log (D, N), D (D,),
    out_proj (d_model, D), where D = d_inner and N = d_state. ``lm_head.weight``
    is listed only when the embeddings are not tied.
    """
    d_model, d_inner, n = int(config.d_model), int(config.d_inner), int(config.d_state)
    r, k = int(config.dt_rank_value), int(config.d_conv)
    shapes: dict[str, tuple[int, ...]] = {"backbone.embedding.weight": (int(config.padded_vocab_size), d_model)}
    for i in range(int(config.n_layer)):
        p = f"backbone.layers.{i}."
        shapes[p + "mixer.in_proj.weight"] = (2 * d_inner, d_model)
        if config.bias:
            shapes[p + "mixer.in_proj.bias"] = (2 * d_inner,)
        shapes[p + "mixer.conv1d.weight"] = (d_inner, 1, k)
        if config.conv_bias:
            shapes[p + "mixer.conv1d.bias"] = (d_inner,)
        shapes[p + "mixer.x_proj.weight"] = (r + 2 * n, d_inner)
        shapes[p + "mixer.dt_proj.weight"] = (d_inner, r)
        shapes[p + "mixer.dt_proj.bias"] = (d_inner,)
        shapes[p + "mixer.A_log"] = (d_inner, n)
        shapes[p + "mixer.D"] = (d_inner,)
        shapes[p + "mixer.out_proj.weight"] = (d_model, d_inner)
        if config.bias:
            shapes[p + "mixer.out_proj.bias"] = (d_model,)
        shapes[p + "norm.weight"] = (d_model,)
        if not config.rms_norm:
            shapes[p + "norm.bias"] = (d_model,)
    shapes["backbone.norm_f.weight"] = (d_model,)
    if not config.rms_norm:
        shapes["backbone.norm_f.bias"] = (d_model,)
    if not config.tie_embeddings:
        shapes["lm_head.weight"] = (int(config.padded_vocab_size), d_model)
    return shapes


INTEROP = Interop(state_spaces_layer="Mamba1", read_ssm_cfg=read_ssm_cfg, write_ssm_cfg=write_ssm_cfg,
                  hf_model_type="mamba", hf_architecture="MambaForCausalLM", read_hf=read_hf, write_hf=write_hf)
