"""The three checkpoint layouts tokendyn reads: which one a config.json is, how its
fields map onto :class:`~tokendyn.model.MambaConfig`, and how tensor names map onto
tokendyn's (which are mamba_ssm's ``MambaLMHeadModel`` names).

Layouts:
    ``tokendyn``         config.json with MambaConfig's own fields and ``"format": "tokendyn"``.
    ``state-spaces``     mamba_ssm's config.json (d_model, n_layer, vocab_size, ssm_cfg, ...).
    ``hf-transformers``  transformers' ``MambaForCausalLM`` config.json (hidden_size, state_size, ...).

Everything here works on plain dicts so that detection and translation are testable
without building a model.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from ..errors import CheckpointError

TOKENDYN = "tokendyn"
STATE_SPACES = "state-spaces"
HF_TRANSFORMERS = "hf-transformers"
LAYOUTS = (TOKENDYN, STATE_SPACES, HF_TRANSFORMERS)

# 2: "kind" (lm | classifier) instead of the class name "architecture"; variant fields
FORMAT_VERSION = 2

# Tensor names: tokendyn (= mamba_ssm) <-> transformers. Only the embedding differs.
_EMBED_TOKENDYN = "backbone.embedding."
_EMBED_HF = "backbone.embeddings."

# state-spaces ssm_cfg fields that describe how mamba_ssm runs, not what it computes.
_SSM_CFG_IGNORED = {"use_fast_path", "layer_idx", "device", "dtype", "layer"}
# ssm_cfg fields whose names are the same in MambaConfig.
_SSM_CFG_FIELDS = (
    "d_state", "d_conv", "expand", "dt_rank", "dt_min", "dt_max", "dt_init",
    "dt_scale", "dt_init_floor", "conv_bias", "bias",
)

# transformers MambaConfig field -> (MambaConfig field, transformers' default).
# The defaults are transformers' own, so a config.json that omits a field means
# what it means to transformers.
_HF_FIELDS = {
    "hidden_size": ("d_model", 768),
    "num_hidden_layers": ("n_layer", 32),
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
    "residual_in_fp32": ("residual_in_fp32", True),
    "layer_norm_epsilon": ("norm_epsilon", 1e-5),
    "tie_word_embeddings": ("tie_embeddings", True),
}


def _where(source: str) -> str:
    return f"config.json in {source}"


def detect_layout(cfg: dict[str, Any], source: str) -> str:
    """Name the layout of a parsed config.json; refuse Mamba-2, hybrids and unknown models."""
    if cfg.get("format") == TOKENDYN:
        return TOKENDYN
    model_type = cfg.get("model_type")
    architectures = cfg.get("architectures") or []
    if not isinstance(architectures, list):
        architectures = [architectures]
    if model_type == "mamba2" or any("Mamba2" in str(a) for a in architectures):
        raise CheckpointError(
            f"{_where(source)} describes a Mamba-2 model; tokendyn reads only Mamba-1 (selective scan) checkpoints."
        )
    if model_type == "mamba" or "MambaForCausalLM" in architectures:
        return HF_TRANSFORMERS
    if model_type is not None:
        raise CheckpointError(
            f"{_where(source)} has model_type {model_type!r}, which is not a Mamba-1 model tokendyn can read."
        )
    if {"d_model", "n_layer", "vocab_size"} <= cfg.keys():
        ssm_cfg = cfg.get("ssm_cfg") or {}
        if isinstance(ssm_cfg, dict) and str(ssm_cfg.get("layer", "Mamba1")) != "Mamba1":
            raise CheckpointError(
                f"{_where(source)} has ssm_cfg.layer {ssm_cfg.get('layer')!r}; tokendyn reads only Mamba-1 "
                "(selective scan) checkpoints."
            )
        return STATE_SPACES
    if {"hidden_size", "num_hidden_layers", "state_size"} <= cfg.keys():
        return HF_TRANSFORMERS
    raise CheckpointError(
        f"{_where(source)} matches no known layout: expected \"format\": \"tokendyn\", mamba_ssm's "
        "d_model/n_layer/vocab_size, or transformers' model_type \"mamba\"."
    )


def config_fields(config_cls) -> set[str]:
    """The dataclass field names of MambaConfig."""
    return {f.name for f in dataclasses.fields(config_cls)}


def config_kwargs_tokendyn(cfg: dict[str, Any], config_cls, source: str) -> dict[str, Any]:
    """MambaConfig keyword arguments from tokendyn's own config.json."""
    version = cfg.get("format_version", FORMAT_VERSION)
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(
            f"{_where(source)} has format_version {version!r}, newer than this tokendyn reads ({FORMAT_VERSION})."
        )
    known = config_fields(config_cls)
    kwargs = {k: v for k, v in cfg.items() if k not in ("format", "format_version", "architecture", "kind")}
    unknown = sorted(set(kwargs) - known)
    if unknown:
        raise CheckpointError(
            f"{_where(source)} has fields {config_cls.__name__} does not know: {', '.join(unknown)}."
        )
    return kwargs


def config_kwargs_state_spaces(cfg: dict[str, Any], source: str) -> dict[str, Any]:
    """MambaConfig keyword arguments from mamba_ssm's config.json (Mamba-1, no attention or MLP layers)."""
    if cfg.get("d_intermediate", 0) not in (0, None):
        raise CheckpointError(
            f"{_where(source)} has d_intermediate {cfg['d_intermediate']!r}; tokendyn reads only pure Mamba-1 "
            "models without MLP blocks (d_intermediate 0)."
        )
    if cfg.get("attn_layer_idx"):
        raise CheckpointError(
            f"{_where(source)} lists attention layers (attn_layer_idx); tokendyn reads only pure Mamba-1 models."
        )
    ssm_cfg = cfg.get("ssm_cfg") or {}
    if not isinstance(ssm_cfg, dict):
        raise CheckpointError(f"{_where(source)} has an ssm_cfg that is not a JSON object.")
    unknown = sorted(set(ssm_cfg) - set(_SSM_CFG_FIELDS) - _SSM_CFG_IGNORED)
    if unknown:
        raise CheckpointError(
            f"{_where(source)} has ssm_cfg fields tokendyn does not know for Mamba-1: {', '.join(unknown)}."
        )
    kwargs: dict[str, Any] = {
        "d_model": cfg["d_model"],
        "n_layer": cfg["n_layer"],
        "vocab_size": cfg["vocab_size"],
    }
    for key in _SSM_CFG_FIELDS:
        if key in ssm_cfg:
            kwargs[key] = ssm_cfg[key]
    # mamba_ssm's defaults for these top-level fields (MambaConfig in mamba_ssm.models.config_mamba);
    # fused_add_norm only chooses a kernel, it does not change the function.
    kwargs["rms_norm"] = cfg.get("rms_norm", True)
    kwargs["residual_in_fp32"] = cfg.get("residual_in_fp32", True)
    kwargs["pad_vocab_size_multiple"] = cfg.get("pad_vocab_size_multiple", 8)
    kwargs["tie_embeddings"] = cfg.get("tie_embeddings", True)
    if "norm_epsilon" in cfg:
        kwargs["norm_epsilon"] = cfg["norm_epsilon"]
    return kwargs


def config_kwargs_hf(cfg: dict[str, Any], embedding_rows: int | None, source: str) -> dict[str, Any]:
    """MambaConfig keyword arguments from transformers' config.json.

    transformers does not pad the vocabulary: its ``vocab_size`` is the embedding's row
    count (already padded by whoever converted the weights, or not). So tokendyn takes
    the vocabulary size from the embedding tensor itself and pads nothing
    (``pad_vocab_size_multiple = 1``), which makes the logits the same width as
    transformers'.
    """
    act = cfg.get("hidden_act", "silu")
    if act != "silu":
        raise CheckpointError(f"{_where(source)} has hidden_act {act!r}; Mamba-1 as tokendyn implements it uses silu.")
    kwargs: dict[str, Any] = {}
    for hf_name, (name, default) in _HF_FIELDS.items():
        kwargs[name] = cfg.get(hf_name, default)
    vocab = cfg.get("vocab_size", 50280)
    if embedding_rows is not None and vocab != embedding_rows:
        raise CheckpointError(
            f"{_where(source)} says vocab_size {vocab!r} but backbone.embeddings.weight has {embedding_rows} rows."
        )
    kwargs["vocab_size"] = vocab
    kwargs["pad_vocab_size_multiple"] = 1
    kwargs["rms_norm"] = True  # transformers' Mamba has RMSNorm only
    return kwargs


def config_to_hf(config) -> dict[str, Any]:
    """transformers ``MambaConfig`` fields (as config.json) for a tokendyn MambaConfig.

    ``vocab_size`` is the padded vocabulary (the embedding's row count), because that is
    what transformers builds its embedding and lm_head from.
    """
    if not config.rms_norm:
        raise CheckpointError(
            "transformers' MambaForCausalLM has RMSNorm only, so a model with rms_norm=False cannot be exported to it."
        )
    expand = config.expand
    if float(expand) != int(expand):
        raise CheckpointError(
            f"transformers' MambaConfig needs an integer expand, and this model has expand {expand!r}."
        )
    if config.d_inner != int(expand) * config.d_model:
        raise CheckpointError("transformers computes d_inner as expand * d_model, which this model's d_inner is not.")
    return {
        "architectures": ["MambaForCausalLM"],
        "model_type": "mamba",
        "hidden_size": int(config.d_model),
        "num_hidden_layers": int(config.n_layer),
        "vocab_size": int(config.padded_vocab_size),
        "state_size": int(config.d_state),
        "conv_kernel": int(config.d_conv),
        "expand": int(expand),
        "intermediate_size": int(config.d_inner),
        "time_step_rank": int(config.dt_rank_value),
        "time_step_min": float(config.dt_min),
        "time_step_max": float(config.dt_max),
        "time_step_init_scheme": str(config.dt_init),
        "time_step_scale": float(config.dt_scale),
        "time_step_floor": float(config.dt_init_floor),
        "use_bias": bool(config.bias),
        "use_conv_bias": bool(config.conv_bias),
        "layer_norm_epsilon": float(config.norm_epsilon),
        "residual_in_fp32": bool(config.residual_in_fp32),
        "tie_word_embeddings": bool(config.tie_embeddings),
        "hidden_act": "silu",
        "use_cache": True,
    }


def config_to_state_spaces(config) -> dict[str, Any]:
    """mamba_ssm ``MambaConfig`` fields (as config.json) for a tokendyn MambaConfig.

    The fields the state-spaces hub checkpoints carry (d_model, n_layer, vocab_size, ssm_cfg
    with the ``Mamba`` mixer's keyword arguments, rms_norm, residual_in_fp32, fused_add_norm,
    pad_vocab_size_multiple) plus tie_embeddings; ``vocab_size`` is the unpadded vocabulary,
    since mamba_ssm pads it itself. Inverse of :func:`config_kwargs_state_spaces`. mamba_ssm's
    config has no norm epsilon (its models use 1e-5), so another value is refused.
    """
    if float(config.norm_epsilon) != 1e-5:
        raise CheckpointError(
            f"mamba_ssm's MambaConfig has no norm epsilon (it uses 1e-5), and this model has {config.norm_epsilon}."
        )
    return {
        "d_model": int(config.d_model),
        "n_layer": int(config.n_layer),
        "vocab_size": int(config.vocab_size),
        "ssm_cfg": {key: getattr(config, key) for key in _SSM_CFG_FIELDS},
        "rms_norm": bool(config.rms_norm),
        "residual_in_fp32": bool(config.residual_in_fp32),
        "fused_add_norm": True,  # a kernel choice in mamba_ssm, the same function either way
        "pad_vocab_size_multiple": int(config.pad_vocab_size_multiple),
        "tie_embeddings": bool(config.tie_embeddings),
    }


def hf_name_to_tokendyn(name: str) -> str:
    """``backbone.embeddings.weight`` -> ``backbone.embedding.weight``; other names are equal."""
    if name.startswith(_EMBED_HF):
        return _EMBED_TOKENDYN + name[len(_EMBED_HF):]
    return name


def tokendyn_name_to_hf(name: str) -> str:
    """Inverse of :func:`hf_name_to_tokendyn`."""
    if name.startswith(_EMBED_TOKENDYN):
        return _EMBED_HF + name[len(_EMBED_TOKENDYN):]
    return name


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

