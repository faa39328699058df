"""The Mamba-2 (SSD) family's settings, and how they map onto mamba_ssm's and transformers' configs.

:class:`Mamba2Settings` holds the keyword arguments of mamba_ssm's ``Mamba2`` mixer (its ``ssm_cfg``
entries with ``layer = "Mamba2"``) under tokendyn's option names, with mamba_ssm's defaults; the
mixer is :class:`tokendyn.model.mamba2_mixer.Mamba2Mixer`, which registers the two as the family
``"mamba2"``. Everything here works on plain values and dicts (no tensors), so it is testable
without a model.

Sizes (docs/THEORY.md section 4a): D = d_inner = expand·d_model channels in H = D / head_dim heads
of P = head_dim channels; B and C in G = n_groups groups of N = d_state, head k reading group
k // (H/G).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from ..errors import CheckpointError, ConfigError
from .families import Interop


def _positive_int(name: str, value) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}.")


def _number(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise ConfigError(f"{name} must be a number, got {value!r}.")
    return float(value)


@dataclass(frozen=True)
class Mamba2Settings:
    """The SSD mixer's settings (mamba_ssm ``Mamba2``'s keyword arguments and defaults).

    d_state: N per group; d_conv: taps of the causal conv over (x, B, C); expand: D = expand·d_model;
    head_dim: P (mamba_ssm ``headdim``), must divide D; n_groups: G (``ngroups``), must divide the
    head count H = D / P; chunk_size: steps per chunk of the chunked scan (the function does not
    depend on it); dt_min, dt_max, dt_init_floor: the initialisation of Δ's bias; dt_limit_min,
    dt_limit_max: Δ is clamped to [dt_limit_min, dt_limit_max] after the softplus (None: no upper
    limit; mamba_ssm's ``dt_limit = (0, inf)``); conv_bias: a bias in the conv; bias: biases in
    in_proj and out_proj; rmsnorm: the gated RMSNorm before out_proj (False: y·silu(z) only);
    norm_before_gate: norm(y)·silu(z) instead of norm(y·silu(z)) (mamba_ssm's default False).
    """

    d_state: int = 128
    d_conv: int = 4
    expand: int = 2
    head_dim: int = 64
    n_groups: int = 1
    chunk_size: int = 256
    dt_min: float = 0.001
    dt_max: float = 0.1
    dt_init_floor: float = 1e-4
    dt_limit_min: float = 0.0
    dt_limit_max: float | None = None
    conv_bias: bool = True
    bias: bool = False
    rmsnorm: bool = True
    norm_before_gate: bool = False

    def __post_init__(self):
        for name in ("d_state", "d_conv", "head_dim", "n_groups", "chunk_size"):
            _positive_int(name, getattr(self, name))
        if isinstance(self.expand, bool) or not (isinstance(self.expand, (int, float)) and self.expand > 0):
            raise ConfigError(f"expand must be a positive number, got {self.expand!r}.")
        lo, hi = _number("dt_min", self.dt_min), _number("dt_max", self.dt_max)
        if not 0 < lo <= hi:
            raise ConfigError(f"need 0 < dt_min <= dt_max, got dt_min={self.dt_min}, dt_max={self.dt_max}.")
        if _number("dt_init_floor", self.dt_init_floor) < 0:
            raise ConfigError(f"dt_init_floor must be >= 0, got {self.dt_init_floor}.")
        low = _number("dt_limit_min", self.dt_limit_min)
        high = math.inf if self.dt_limit_max is None else _number("dt_limit_max", self.dt_limit_max)
        if not 0 <= low < high:
            raise ConfigError(f"need 0 <= dt_limit_min < dt_limit_max, got {self.dt_limit_min} and "
                              f"{self.dt_limit_max}.")
        for name in ("conv_bias", "bias", "rmsnorm", "norm_before_gate"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name} must be true or false, got {getattr(self, name)!r}.")

    def check(self, config) -> None:
        """D = expand·d_model is a whole number of heads, and the groups divide the heads."""
        d_inner = self.expand * config.d_model
        if d_inner != int(d_inner) or int(d_inner) < 1:
            raise ConfigError(f"expand {self.expand!r} times d_model {config.d_model} must be a positive whole "
                              "number (d_inner).")
        d_inner = int(d_inner)
        if d_inner % self.head_dim:
            raise ConfigError(f"head_dim {self.head_dim} does not divide d_inner {d_inner} (expand {self.expand} "
                              f"x d_model {config.d_model}), so the channels do not split into heads.")
        heads = d_inner // self.head_dim
        if heads % self.n_groups:
            raise ConfigError(f"n_groups {self.n_groups} does not divide the {heads} heads (d_inner {d_inner} / "
                              f"head_dim {self.head_dim}).")

    def sizes(self, d_model: int) -> dict[str, int]:
        """d_inner (D), d_state (N), n_heads (H) and conv_dim (D + 2·G·N, the conv's channels)."""
        d_inner = int(self.expand * d_model)
        return {"d_inner": d_inner, "d_state": self.d_state, "n_heads": d_inner // self.head_dim,
                "conv_dim": d_inner + 2 * self.n_groups * self.d_state}

    @property
    def dt_limit(self) -> tuple[float, float]:
        """(low, high) of Δ after the softplus; high is inf without an upper limit."""
        return float(self.dt_limit_min), math.inf if self.dt_limit_max is None else float(self.dt_limit_max)


def _where(source: str) -> str:
    return f"config.json in {source}"


def _limit_fields(limit, source: str, name: str) -> dict:
    """(low, high) as written by mamba_ssm or transformers (inf, "Infinity" or None for no upper
    limit) -> dt_limit_min, dt_limit_max."""
    if not isinstance(limit, (list, tuple)) or len(limit) != 2:
        raise CheckpointError(f"{_where(source)} has {name} {limit!r}; expected two numbers (low, high).")
    # transformers writes a non-finite float as {"__float__": "Infinity"}
    low, high = (v["__float__"] if isinstance(v, dict) and "__float__" in v else v for v in limit)
    try:
        high = None if high is None or math.isinf(float(high)) else float(high)
        return {"dt_limit_min": float(low), "dt_limit_max": high}
    except (TypeError, ValueError):
        raise CheckpointError(f"{_where(source)} has {name} {limit!r}; expected two numbers (low, high).") from None


# ---- mamba_ssm (state-spaces) ------------------------------------------------------------------

# mamba_ssm Mamba2 keyword -> Mamba2Settings field, where the names differ
_SSM_RENAMES = {"headdim": "head_dim", "ngroups": "n_groups"}
# keywords that describe how mamba_ssm runs or initialises, not what it computes
_SSM_IGNORED = {"layer", "use_mem_eff_path", "layer_idx", "device", "dtype", "process_group", "sequence_parallel",
                "conv_init", "A_init_range"}


def read_ssm_cfg(ssm_cfg: dict, source: str) -> dict:
    """Mamba2Settings keywords from mamba_ssm's ``ssm_cfg`` (``layer = "Mamba2"``); refuses the
    layouts tokendyn does not implement (a d_ssm narrower than d_inner, a D per channel)."""
    fields = {f.name for f in dataclasses.fields(Mamba2Settings)} - {"dt_limit_min", "dt_limit_max", "head_dim",
                                                                     "n_groups"}
    known = fields | set(_SSM_RENAMES) | _SSM_IGNORED | {"dt_limit", "d_ssm", "D_has_hdim"}
    unknown = sorted(set(ssm_cfg) - known)
    if unknown:
        raise CheckpointError(f"{_where(source)} has ssm_cfg fields tokendyn does not know for Mamba-2: "
                              f"{', '.join(unknown)}.")
    if ssm_cfg.get("D_has_hdim", False):
        raise CheckpointError(f"{_where(source)} has D_has_hdim true (a skip term per channel); tokendyn's Mamba-2 "
                              "has one D per head.")
    out = {k: v for k, v in ssm_cfg.items() if k in fields}
    out.update({new: ssm_cfg[old] for old, new in _SSM_RENAMES.items() if old in ssm_cfg})
    if "dt_limit" in ssm_cfg:
        out.update(_limit_fields(ssm_cfg["dt_limit"], source, "ssm_cfg.dt_limit"))
    if ssm_cfg.get("d_ssm") is not None:
        # a d_ssm narrower than d_inner adds a gated MLP beside the scan: another mixer
        raise CheckpointError(f"{_where(source)} has d_ssm {ssm_cfg['d_ssm']!r}; tokendyn's Mamba-2 runs the scan "
                              "over the whole d_inner (d_ssm null).")
    return out


def write_ssm_cfg(settings: Mamba2Settings, config) -> dict:
    """mamba_ssm's ``ssm_cfg`` for these settings (its keyword names; ``layer`` is added by the
    layout writer)."""
    out = {f.name: getattr(settings, f.name) for f in dataclasses.fields(settings)
           if f.name not in ("dt_limit_min", "dt_limit_max", "head_dim", "n_groups")}
    out["headdim"], out["ngroups"] = settings.head_dim, settings.n_groups
    if settings.dt_limit != (0.0, math.inf):
        out["dt_limit"] = [settings.dt_limit[0], settings.dt_limit[1]]
    return out


# ---- transformers ------------------------------------------------------------------------------

# transformers Mamba2Config field -> (Mamba2Settings field, transformers' default): a config.json
# that omits a field means what it means to transformers
_HF_FIELDS = {
    "state_size": ("d_state", 128),
    "conv_kernel": ("d_conv", 4),
    "expand": ("expand", 2),
    "head_dim": ("head_dim", 64),
    "n_groups": ("n_groups", 8),
    "chunk_size": ("chunk_size", 256),
    "time_step_min": ("dt_min", 0.001),
    "time_step_max": ("dt_max", 0.1),
    "time_step_floor": ("dt_init_floor", 1e-4),
    "use_conv_bias": ("conv_bias", True),
    "use_bias": ("bias", False),
}

# the model-wide fields whose default in transformers' Mamba2Config differs from its MambaConfig
HF_MODEL_DEFAULTS = {"hidden_size": 4096, "num_hidden_layers": 64, "tie_word_embeddings": False,
                     "vocab_size": 32768}


def read_hf(cfg: dict, source: str) -> dict:
    """Mamba2Settings keywords from transformers' ``Mamba2Config`` (config.json); refuses a
    num_heads that is not expand·hidden_size / head_dim, as transformers itself does."""
    act = cfg.get("hidden_act", "silu")
    if act != "silu":
        raise CheckpointError(f"{_where(source)} has hidden_act {act!r}; Mamba-2 as tokendyn implements it uses silu.")
    if cfg.get("norm_before_gate", False) or not cfg.get("rms_norm", True):
        raise CheckpointError(f"{_where(source)} asks for a norm other than transformers' gated RMSNorm "
                              "norm(y * silu(z)), which tokendyn does not read from this layout.")
    out = {name: cfg.get(hf_name, default) for hf_name, (name, default) in _HF_FIELDS.items()}
    if "time_step_limit" in cfg:
        out.update(_limit_fields(cfg["time_step_limit"], source, "time_step_limit"))
    heads = cfg.get("num_heads")
    hidden = cfg.get("hidden_size", HF_MODEL_DEFAULTS["hidden_size"])
    try:
        expected = int(out["expand"] * hidden) // int(out["head_dim"])
    except (TypeError, ValueError, ZeroDivisionError):
        expected = None
    if heads is not None and heads != expected:
        raise CheckpointError(f"{_where(source)} has num_heads {heads!r}, but expand x hidden_size / head_dim is "
                              f"{expected}.")
    return out


def write_hf(settings: Mamba2Settings, config) -> dict[str, Any]:
    """The Mamba-2 fields of transformers' ``Mamba2Config`` for a model of ``config``; refuses what
    transformers' Mamba2 cannot compute (a norm other than norm(y·silu(z)), a non-integer expand)."""
    if not settings.rmsnorm or settings.norm_before_gate:
        raise CheckpointError("transformers' Mamba2 has only the gated RMSNorm norm(y * silu(z)), and this model has "
                              f"rmsnorm={settings.rmsnorm}, norm_before_gate={settings.norm_before_gate}.")
    if float(settings.expand) != int(settings.expand):
        raise CheckpointError(f"transformers' Mamba2Config needs an integer expand, and this model has expand "
                              f"{settings.expand!r}.")
    sizes = settings.sizes(config.d_model)
    low, high = settings.dt_limit
    return {
        "num_heads": int(sizes["n_heads"]),
        "head_dim": int(settings.head_dim),
        "state_size": int(settings.d_state),
        "expand": int(settings.expand),
        "conv_kernel": int(settings.d_conv),
        "n_groups": int(settings.n_groups),
        "chunk_size": int(settings.chunk_size),
        "time_step_min": float(settings.dt_min),
        "time_step_max": float(settings.dt_max),
        "time_step_floor": float(settings.dt_init_floor),
        "time_step_limit": [low, high],
        "use_bias": bool(settings.bias),
        "use_conv_bias": bool(settings.conv_bias),
        "hidden_act": "silu",
    }


INTEROP = Interop(state_spaces_layer="Mamba2", read_ssm_cfg=read_ssm_cfg, write_ssm_cfg=write_ssm_cfg,
                  hf_model_type="mamba2", hf_architecture="Mamba2ForCausalLM", read_hf=read_hf, write_hf=write_hf,
                  hf_defaults=HF_MODEL_DEFAULTS)
