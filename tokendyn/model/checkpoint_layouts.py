"""The three checkpoint layouts tokendyn reads: which one a config.json is, how its
fields map onto :class:`~tokendyn.model.MambaConfig`, and how tensor names map onto
tokendyn's (which are mamba_ssm's ``MambaLMHeadModel`` names).

Layouts:
    ``tokendyn``         config.json with MambaConfig's own fields and ``"format": "tokendyn"``.
    ``state-spaces``     mamba_ssm's config.json (d_model, n_layer, vocab_size, ssm_cfg, ...).
    ``hf-transformers``  transformers' config.json (hidden_size, state_size, ...; ``model_type``).

The model-wide fields are translated here; the mixer's are the family's business: its
registration (:class:`~tokendyn.model.families.Interop`) says which ``ssm_cfg["layer"]`` and
which transformers ``model_type`` it is, and translates its settings both ways. Everything here
works on plain dicts so that detection and translation are testable without building a model.
"""

from __future__ import annotations

from typing import Any

from ..errors import CheckpointError
from .families import Family, family_for_hf, family_for_state_spaces, family_names, get_family

TOKENDYN = "tokendyn"
STATE_SPACES = "state-spaces"
HF_TRANSFORMERS = "hf-transformers"
LAYOUTS = (TOKENDYN, STATE_SPACES, HF_TRANSFORMERS)

# 2: "kind" (lm | classifier) instead of the class name "architecture"; variant fields
# 3: the family's settings nested under "mixer" and each variant's under "variants" (beside
#    "layer"); versions 1 and 2 had every option flat, and still load
FORMAT_VERSION = 3
FORMAT_KEYS = ("format", "format_version", "architecture", "kind")

# Tensor names: tokendyn (= mamba_ssm) <-> transformers. Only the embedding differs.
_EMBED_TOKENDYN = "backbone.embedding."
_EMBED_HF = "backbone.embeddings."

# mamba_ssm's ssm_cfg["layer"] when absent
STATE_SPACES_DEFAULT_LAYER = "Mamba1"

# transformers config field -> (MambaConfig field, transformers' default), for the fields every
# family shares; the defaults are transformers' own, so a config.json that omits a field means
# what it means to transformers
_HF_FIELDS = {
    "hidden_size": ("d_model", 768),
    "num_hidden_layers": ("n_layer", 32),
    "residual_in_fp32": ("residual_in_fp32", True),
    "layer_norm_epsilon": ("norm_epsilon", 1e-5),
    "tie_word_embeddings": ("tie_embeddings", True),
}


def _where(source: str) -> str:
    return f"config.json in {source}"


def _readable(attr: str) -> str:
    """The names of the families that have ``attr`` in their interop, e.g. "Mamba-1 ('Mamba1')"."""
    out = [f"{f.title} ({getattr(f.interop, attr)!r})" for f in map(get_family, family_names())
           if getattr(f.interop, attr) is not None]
    return ", ".join(out) or "none"


def _hf_family(cfg: dict[str, Any]) -> Family | None:
    architectures = cfg.get("architectures") or []
    if not isinstance(architectures, list):
        architectures = [architectures]
    model_type = cfg.get("model_type")
    return family_for_hf(model_type) if model_type is not None else family_for_hf(None, architectures)


def _state_spaces_family(cfg: dict[str, Any], source: str) -> Family:
    ssm_cfg = cfg.get("ssm_cfg") or {}
    layer = str(ssm_cfg.get("layer", STATE_SPACES_DEFAULT_LAYER)) if isinstance(ssm_cfg, dict) else \
        STATE_SPACES_DEFAULT_LAYER
    family = family_for_state_spaces(layer)
    if family is None or family.interop.read_ssm_cfg is None:
        raise CheckpointError(f"{_where(source)} has ssm_cfg.layer {layer!r}; tokendyn reads the state-spaces "
                              f"layout of {_readable('state_spaces_layer')} only.")
    return family


def detect_layout(cfg: dict[str, Any], source: str) -> str:
    """Name the layout of a parsed config.json; refuse mixers no registered family reads,
    hybrids and unknown models."""
    if cfg.get("format") == TOKENDYN:
        return TOKENDYN
    model_type = cfg.get("model_type")
    family = _hf_family(cfg)
    if family is not None:
        if family.interop.read_hf is None:
            raise CheckpointError(f"{_where(source)} describes a {family.title} model in transformers' layout, "
                                  "which tokendyn does not read.")
        return HF_TRANSFORMERS
    if model_type is not None:
        raise CheckpointError(f"{_where(source)} has model_type {model_type!r}, which no mixer family of tokendyn "
                              f"reads; it reads transformers' {_readable('hf_model_type')}.")
    if {"d_model", "n_layer", "vocab_size"} <= cfg.keys():
        _state_spaces_family(cfg, source)
        return STATE_SPACES
    if {"hidden_size", "num_hidden_layers", "state_size"} <= cfg.keys():
        return HF_TRANSFORMERS
    raise CheckpointError(
        f"{_where(source)} matches no known layout: expected \"format\": \"tokendyn\", mamba_ssm's "
        "d_model/n_layer/vocab_size, or transformers' model_type \"mamba\"."
    )


def config_kwargs_tokendyn(cfg: dict[str, Any], source: str) -> dict[str, Any]:
    """Config keyword arguments from tokendyn's own config.json: every key but the format's
    (``layer``, ``mixer``, ``variants`` nested as version 3 writes them, or the options flat as
    versions 1 and 2 did; the config sorts them and names any it does not know)."""
    version = cfg.get("format_version", FORMAT_VERSION)
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(
            f"{_where(source)} has format_version {version!r}, newer than this tokendyn reads ({FORMAT_VERSION})."
        )
    return {k: v for k, v in cfg.items() if k not in FORMAT_KEYS}


def config_kwargs_state_spaces(cfg: dict[str, Any], source: str) -> dict[str, Any]:
    """MambaConfig keyword arguments from mamba_ssm's config.json (no attention or MLP layers); the
    family from ``ssm_cfg["layer"]``, its settings from the family's reader."""
    if cfg.get("d_intermediate", 0) not in (0, None):
        raise CheckpointError(
            f"{_where(source)} has d_intermediate {cfg['d_intermediate']!r}; tokendyn reads only pure Mamba "
            "models without MLP blocks (d_intermediate 0)."
        )
    if cfg.get("attn_layer_idx"):
        raise CheckpointError(
            f"{_where(source)} lists attention layers (attn_layer_idx); tokendyn reads only pure Mamba models."
        )
    ssm_cfg = cfg.get("ssm_cfg") or {}
    if not isinstance(ssm_cfg, dict):
        raise CheckpointError(f"{_where(source)} has an ssm_cfg that is not a JSON object.")
    family = _state_spaces_family(cfg, source)
    kwargs: dict[str, Any] = {
        "d_model": cfg["d_model"],
        "n_layer": cfg["n_layer"],
        "vocab_size": cfg["vocab_size"],
        "layer": family.name,
        "mixer": family.interop.read_ssm_cfg(ssm_cfg, source),
    }
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
    """MambaConfig keyword arguments from transformers' config.json: the family from
    ``model_type`` (transformers' Mamba when the config names none), its settings from the
    family's reader.

    transformers does not pad the vocabulary: its ``vocab_size`` is the embedding's row
    count (already padded by whoever converted the weights, or not). So tokendyn takes
    the vocabulary size from the embedding tensor itself and pads nothing
    (``pad_vocab_size_multiple = 1``), which makes the logits the same width as
    transformers'.
    """
    family = _hf_family(cfg) or family_for_hf("mamba")
    if family is None or family.interop.read_hf is None:
        raise CheckpointError(f"{_where(source)} names no model_type tokendyn reads.")
    kwargs: dict[str, Any] = {"layer": family.name, "mixer": family.interop.read_hf(cfg, source)}
    defaults = family.interop.hf_defaults
    for hf_name, (name, default) in _HF_FIELDS.items():
        kwargs[name] = cfg.get(hf_name, defaults.get(hf_name, default))
    vocab = cfg.get("vocab_size", defaults.get("vocab_size", 50280))
    if embedding_rows is not None and vocab != embedding_rows:
        raise CheckpointError(
            f"{_where(source)} says vocab_size {vocab!r} but backbone.embeddings.weight has {embedding_rows} rows."
        )
    kwargs["vocab_size"] = vocab
    kwargs["pad_vocab_size_multiple"] = 1
    kwargs["rms_norm"] = True  # transformers' Mamba models have RMSNorm only
    return kwargs


def _writer(config, attr: str, layout: str):
    family = config.family
    writer = getattr(family.interop, attr)
    if writer is None:
        raise CheckpointError(f"a model of layer {family.name!r} cannot be written in {layout} layout.")
    return family, writer


def config_to_hf(config) -> dict[str, Any]:
    """transformers config fields (as config.json) for a tokendyn MambaConfig: the model-wide ones
    here, the mixer's from the family's writer.

    ``vocab_size`` is the padded vocabulary (the embedding's row count), because that is
    what transformers builds its embedding and lm_head from.
    """
    family, write = _writer(config, "write_hf", "transformers'")
    if not config.rms_norm:
        raise CheckpointError(
            f"transformers' {family.interop.hf_architecture} has RMSNorm only, so a model with rms_norm=False "
            "cannot be exported to it."
        )
    return {
        "architectures": [family.interop.hf_architecture],
        "model_type": family.interop.hf_model_type,
        "hidden_size": int(config.d_model),
        "num_hidden_layers": int(config.n_layer),
        "vocab_size": int(config.padded_vocab_size),
        **write(config.mixer, config),
        "layer_norm_epsilon": float(config.norm_epsilon),
        "residual_in_fp32": bool(config.residual_in_fp32),
        "tie_word_embeddings": bool(config.tie_embeddings),
        "use_cache": True,
    }


def config_to_state_spaces(config) -> dict[str, Any]:
    """mamba_ssm ``MambaConfig`` fields (as config.json) for a tokendyn MambaConfig.

    The fields the state-spaces hub checkpoints carry (d_model, n_layer, vocab_size, ssm_cfg
    with the mixer's keyword arguments — from the family's writer, plus ``layer`` where it is not
    mamba_ssm's default Mamba1 —, rms_norm, residual_in_fp32, fused_add_norm,
    pad_vocab_size_multiple) plus tie_embeddings; ``vocab_size`` is the unpadded vocabulary,
    since mamba_ssm pads it itself. Inverse of :func:`config_kwargs_state_spaces`. mamba_ssm's
    config has no norm epsilon (its models use 1e-5), so another value is refused.
    """
    family, write = _writer(config, "write_ssm_cfg", "mamba_ssm's")
    if float(config.norm_epsilon) != 1e-5:
        raise CheckpointError(
            f"mamba_ssm's MambaConfig has no norm epsilon (it uses 1e-5), and this model has {config.norm_epsilon}."
        )
    ssm_cfg = write(config.mixer, config)
    if family.interop.state_spaces_layer != STATE_SPACES_DEFAULT_LAYER:
        ssm_cfg["layer"] = family.interop.state_spaces_layer
    return {
        "d_model": int(config.d_model),
        "n_layer": int(config.n_layer),
        "vocab_size": int(config.vocab_size),
        "ssm_cfg": ssm_cfg,
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
