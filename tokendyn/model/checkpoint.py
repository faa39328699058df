"""Load, save, inspect and export checkpoints of tokendyn's models.

A checkpoint is a directory with ``config.json`` and weights. Three layouts are read
(see :mod:`tokendyn.model.checkpoint_layouts`): tokendyn's own, state-spaces
``mamba_ssm``'s and HF transformers' ``MambaForCausalLM``. tokendyn writes its own
layout (:func:`save_model`) and the transformers layout (:func:`export_hf`).

Every problem with the input raises :class:`~tokendyn.errors.CheckpointError` with
one sentence that names it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError, ConfigError, TokendynError
from ..resources import check_memory
from . import checkpoint_layouts as layouts
from .checkpoint_io import SAFETENSORS, TORCH_BIN, read_json, read_tensors, weight_files, write_safetensors

__all__ = ["CheckpointInfo", "load_model", "save_model", "inspect_checkpoint", "export_hf", "export_state_spaces"]

_DTYPES = {
    "float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
    "float64": torch.float64, "fp64": torch.float64, "double": torch.float64,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
}


@dataclass
class CheckpointInfo:
    """What a checkpoint directory holds.

    layout: one of ``"tokendyn"``, ``"state-spaces"``, ``"hf-transformers"``.
    config: the :class:`~tokendyn.model.MambaConfig` (or ClassifierConfig) it describes; its
    ``layer`` names the mixer family.
    n_params: number of parameters, tied embedding/lm_head counted once.
    files: file names inside the directory that were read (config first).
    path: the directory. kind: ``"lm"`` (language model) or ``"classifier"``; with the
    config it identifies the model (mixer family and variants included).
    """

    layout: str
    config: Any
    n_params: int
    files: list[str] = field(default_factory=list)
    path: str = ""
    kind: str = "lm"

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict: layout, kind, family (the mixer family's name), variants (those that
        modify some layer), config (as config.json records it: the family's and the variants'
        settings nested), n_params, files, path."""
        return {
            "layout": self.layout,
            "kind": self.kind,
            "family": self.config.layer,
            "variants": self.config.active_variants(),
            "config": self.config.to_dict(),
            "n_params": self.n_params,
            "files": list(self.files),
            "path": self.path,
        }


# tokendyn's layout holds either kind of model; config.json's "kind" says which, and the
# config (layer, mixer, variants) says how its mixers are built.
LM, CLASSIFIER = "lm", "classifier"
# what the first writer stored instead of "kind": the Python class name
_LEGACY_ARCHITECTURES = {"MambaLM": LM, "MambaClassifier": CLASSIFIER}
# kind -> (config class, model class); the model modules register themselves
_KINDS: dict[str, tuple[type, type]] = {}


def register_model_kind(model_cls: type, config_cls: type) -> None:
    """Let checkpoints of ``model_cls.kind`` ("lm", "classifier") be saved and loaded."""
    _KINDS[model_cls.kind] = (config_cls, model_cls)


def _config_cls(kind: str = LM):
    return _KINDS[kind][0]


def _model_cls(kind: str = LM):
    return _KINDS[kind][1]


@dataclass
class _Checked:
    """A checkpoint after every check: tensors by tokendyn name, exactly the expected set."""

    layout: str
    kind: str
    config: Any
    tensors: dict[str, torch.Tensor]
    directory: Path
    files: list[Path]


def _checkpoint_dir(path) -> Path:
    p = Path(path).expanduser()
    if not p.exists():
        raise CheckpointError(f"Checkpoint path {p} does not exist.")
    if p.is_file():  # a file inside the checkpoint (config.json, weights) names its directory
        p = p.parent
    if not (p / "config.json").is_file():
        raise CheckpointError(f"{p} has no config.json, so it is not a checkpoint directory tokendyn can read.")
    return p


def _make_config(config_cls, kwargs: dict[str, Any], source: Path):
    try:
        return config_cls(**kwargs)
    except TokendynError as exc:
        raise CheckpointError(f"config.json in {source} is not a valid Mamba configuration: {exc}") from exc
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"config.json in {source} is not a valid Mamba configuration ({exc}).") from exc


def _kind(raw: dict[str, Any], directory: Path) -> str:
    if "kind" in raw:
        kind = raw["kind"]
        if kind not in _KINDS:
            raise CheckpointError(f"config.json in {directory} names kind {kind!r}; tokendyn knows "
                                  f"{', '.join(_KINDS)}.")
        return kind
    arch = raw.get("architecture", "MambaLM")
    if arch not in _LEGACY_ARCHITECTURES:
        raise CheckpointError(
            f"config.json in {directory} names architecture {arch!r}; tokendyn knows "
            f"{', '.join(_LEGACY_ARCHITECTURES)}."
        )
    return _LEGACY_ARCHITECTURES[arch]


def _expected(kind: str, config) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every tensor a model of ``kind`` and ``config`` stores (a tied head
    once, as the embedding). The model is built on the meta device: no memory, no
    arithmetic, and whatever variant the config selects is covered with no case for it."""
    with torch.device("meta"):
        model = _model_cls(kind)(config)
    return {k: tuple(v.shape) for k, v in _state_for_saving(model).items()}


def _read(path) -> _Checked:
    """Find, read and check a checkpoint (layout, config, shapes, completeness, finiteness)."""
    directory = _checkpoint_dir(path)
    raw = read_json(directory / "config.json")
    layout = layouts.detect_layout(raw, str(directory))
    kind = _kind(raw, directory) if layout == layouts.TOKENDYN else LM
    files = weight_files(directory)
    if layout == layouts.TOKENDYN and files[0].suffix != ".safetensors":
        raise CheckpointError(f"{directory} is in tokendyn's layout but has no {SAFETENSORS}.")
    tensors = read_tensors(files)

    config_cls = _config_cls(kind)
    if layout == layouts.HF_TRANSFORMERS:
        tensors = {layouts.hf_name_to_tokendyn(k): v for k, v in tensors.items()}
        emb = tensors.get("backbone.embedding.weight")
        rows = int(emb.shape[0]) if emb is not None and emb.dim() == 2 else None
        kwargs = layouts.config_kwargs_hf(raw, rows, str(directory))
    elif layout == layouts.STATE_SPACES:
        kwargs = layouts.config_kwargs_state_spaces(raw, str(directory))
    else:
        kwargs = layouts.config_kwargs_tokendyn(raw, str(directory))
    config = _make_config(config_cls, kwargs, directory)
    if kind != "hybrid":        # the hybrid's Mamba blocks sit in its stages, not in backbone.layers
        _check_depth(tensors, config, directory)
    tied = bool(getattr(config, "tie_embeddings", False))
    tensors = _check_tensors(tensors, _expected(kind, config), tied, directory)
    return _Checked(layout, kind, config, tensors, directory, files)


def _check_depth(tensors: dict[str, torch.Tensor], config, directory: Path) -> None:
    """A config deeper than the weights is refused from the tensor names alone, before the model
    of that depth is built to list what it expects (n_layer 16,384 would take long)."""
    present = {name.split(".")[2] for name in tensors if name.startswith("backbone.layers.")}
    if config.n_layer > len(present):
        raise CheckpointError(f"config.json in {directory} says n_layer {config.n_layer:,}, but the weights hold "
                              f"{len(present)} layer(s).")


def _check_tensors(
    tensors: dict[str, torch.Tensor], expected: dict[str, tuple[int, ...]], tied: bool, directory: Path
) -> dict[str, torch.Tensor]:
    tensors = dict(tensors)
    if tied and "lm_head.weight" in tensors and "lm_head.weight" not in expected:
        # Written by mamba_ssm (torch.save keeps both names) or by an HF save that kept it:
        # fine if it really is the embedding, a contradiction otherwise.
        head = tensors.pop("lm_head.weight")
        emb = tensors.get("backbone.embedding.weight")
        if emb is not None and (head.shape != emb.shape or not torch.equal(head, emb)):
            raise CheckpointError(
                f"{directory} says the embeddings are tied, but lm_head.weight differs from the embedding."
            )
    missing = [k for k in expected if k not in tensors]
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise CheckpointError(f"{directory} is missing weight tensors: {', '.join(missing[:3])}{more}.")
    unexpected = [k for k in tensors if k not in expected]
    if unexpected:
        more = f" and {len(unexpected) - 3} more" if len(unexpected) > 3 else ""
        raise CheckpointError(
            f"{directory} has weight tensors this configuration does not use: {', '.join(unexpected[:3])}{more}."
        )
    for name, shape in expected.items():
        t = tensors[name]
        if tuple(t.shape) != shape:
            raise CheckpointError(
                f"Tensor {name} in {directory} has shape {tuple(t.shape)}, but config.json implies {shape}."
            )
        if not t.is_floating_point():
            raise CheckpointError(f"Tensor {name} in {directory} has dtype {t.dtype}, not a floating-point type.")
        finite = torch.isfinite(t)
        if not bool(finite.all()):
            bad = int((~finite).sum())
            raise CheckpointError(
                f"Tensor {name} in {directory} has {bad} NaN or infinite value{'s' if bad != 1 else ''}."
            )
    return tensors


def _n_params(tensors: dict[str, torch.Tensor]) -> int:
    return int(sum(t.numel() for t in tensors.values()))


def inspect_checkpoint(path) -> CheckpointInfo:
    """Read and check a checkpoint directory without building a language model.

    Every check :func:`load_model` makes is made here too (layout, shapes, missing or
    extra tensors, NaN/inf), so a checkpoint that inspects cleanly loads.
    """
    c = _read(path)
    names = ["config.json"] + [f.name for f in c.files]
    return CheckpointInfo(c.layout, c.config, _n_params(c.tensors), names, str(c.directory), c.kind)


def _resolve_dtype(dtype) -> torch.dtype:
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        if not dtype.is_floating_point:
            raise ConfigError(f"dtype {dtype} is not a floating-point type.")
        return dtype
    key = str(dtype).removeprefix("torch.").lower()
    if key not in _DTYPES:
        raise ConfigError(f"Unknown dtype {dtype!r}; use one of float32, float64, float16, bfloat16.")
    return _DTYPES[key]


def load_model(path, device="cpu", dtype=None):
    """Load a model from a checkpoint directory in any of the three layouts.

    Args:
        path: the checkpoint directory (or a file inside it).
        device: where the model goes (``"cpu"``, ``"cuda"``, a ``torch.device``).
        dtype: parameter dtype (torch.dtype or name); ``None`` means float32 whatever
            the file stores.

    Returns:
        A :class:`~tokendyn.model.MambaLM` (or, for a tokendyn checkpoint of a
        classifier, a :class:`~tokendyn.model.MambaClassifier`) in eval mode, with
        ``checkpoint_layout`` (``"tokendyn"``, ``"state-spaces"`` or
        ``"hf-transformers"``) and ``checkpoint_path`` set. ``model(input_ids)`` with
        input_ids (batch, L) gives logits (batch, L, config.padded_vocab_size); for a
        transformers checkpoint that width equals transformers' ``vocab_size``.
    """
    target_dtype = _resolve_dtype(dtype)
    c = _read(path)
    # the model is made in float32 beside the tensors read, then moved
    check_memory(4 * _n_params(c.tensors), "cpu", f"the model in {c.directory} ({_n_params(c.tensors):,} parameters)")
    model = _model_cls(c.kind)(c.config)
    state = model.state_dict()
    tensors = dict(c.tensors)
    if getattr(c.config, "tie_embeddings", False) and "lm_head.weight" in state and "lm_head.weight" not in tensors:
        tensors["lm_head.weight"] = tensors["backbone.embedding.weight"]
    # the tensors were checked against the names and shapes this very class makes
    model.load_state_dict(tensors, strict=True)
    model = model.to(device=torch.device(device), dtype=target_dtype).eval()
    model.checkpoint_layout = c.layout
    model.checkpoint_path = str(c.directory)
    return model


def _state_for_saving(model) -> dict[str, torch.Tensor]:
    state = dict(model.state_dict())
    if getattr(model.config, "tie_embeddings", False):
        # Tied weights are stored once (safetensors refuses two names for one storage);
        # the loader ties them again.
        state.pop("lm_head.weight", None)
    return state


def _kind_of(model) -> str:
    kind = getattr(model, "kind", None)
    if kind not in _KINDS:
        raise CheckpointError(
            f"save_model writes tokendyn's models ({', '.join(_KINDS)}), not a {type(model).__name__}."
        )
    return kind


def _plain_state(model) -> dict[str, torch.Tensor]:
    """The state dict of the plain model (no variant) that computes what ``model`` computes:
    every mixer's entries replaced by its ``plain_state_dict()`` (the mixer contract; for
    Mamba-1's variants: the effective x_proj weight, and none of the variant's own parameters).
    A tied head is left out."""
    state = _state_for_saving(model)
    for i, layer in enumerate(model.backbone.layers):
        prefix = f"backbone.layers.{i}.mixer."
        state = {k: v for k, v in state.items() if not k.startswith(prefix)}
        state.update({prefix + k: v for k, v in layer.mixer.plain_state_dict().items()})
    return state


def save_model(model, path) -> Path:
    """Write ``model`` in tokendyn's layout: ``path/config.json`` + ``path/model.safetensors``.

    config.json holds ``"format": "tokendyn"``, ``"format_version"`` (3), ``"kind"`` (``"lm"`` or
    ``"classifier"``) and every config field, the mixer family's settings nested under ``mixer``
    beside its name ``layer``, and each variant's under ``variants`` (:meth:`MambaConfig.to_dict`);
    a tied lm_head is stored once, as the embedding.
    Returns the directory.
    """
    kind = _kind_of(model)
    directory = Path(path).expanduser()
    state = _state_for_saving(model)
    directory.mkdir(parents=True, exist_ok=True)
    write_safetensors(state, directory / SAFETENSORS)
    meta = {
        "format": layouts.TOKENDYN,
        "format_version": layouts.FORMAT_VERSION,
        "kind": kind,
        **model.config.to_dict(),
        # the scan backend is a choice of the machine that runs the model, not a
        # property of the weights: a checkpoint saved on a GPU must load anywhere
        "scan_backend": "auto",
    }
    (directory / "config.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return directory


def export_hf(model, path) -> Path:
    """Write a :class:`~tokendyn.model.MambaLM` in transformers' layout (Mamba-1: a ``MambaForCausalLM``
    directory; the family's interop writes its part of the config).

    ``transformers.MambaForCausalLM.from_pretrained(path)`` then computes the same
    logits (batch, L, padded_vocab_size). The vocabulary is written padded, since
    transformers' vocab_size is the embedding's row count. A model with a variant mixer
    (e.g. ``io_constraint``) is written as the plain Mamba-1 model that computes the same
    function: each mixer's effective x_proj weight, none of the variant's own parameters
    (so loading the export gives an unconstrained model with the same logits). Raises
    CheckpointError for models transformers cannot represent (classifiers, LayerNorm,
    non-integer expand). Returns the directory.
    """
    if _kind_of(model) != LM:
        raise CheckpointError(
            "Only a language model (MambaLM) can be exported to transformers' MambaForCausalLM layout."
        )
    hf_config = layouts.config_to_hf(model.config)
    state = _plain_state(model)
    hf_config["dtype"] = str(state["backbone.embedding.weight"].dtype).removeprefix("torch.")
    directory = Path(path).expanduser()
    directory.mkdir(parents=True, exist_ok=True)
    write_safetensors({layouts.tokendyn_name_to_hf(k): v for k, v in state.items()}, directory / SAFETENSORS)
    (directory / "config.json").write_text(json.dumps(hf_config, indent=2) + "\n", encoding="utf-8")
    return directory


def export_state_spaces(model, path) -> Path:
    """Write a :class:`~tokendyn.model.MambaLM` in state-spaces ``mamba_ssm``'s layout.

    ``path/config.json`` holds mamba_ssm's MambaConfig fields (:func:`~tokendyn.model.
    checkpoint_layouts.config_to_state_spaces`) and ``path/pytorch_model.bin`` the state dict
    as ``MambaLMHeadModel.state_dict()`` has it (``lm_head.weight`` included even when tied,
    since mamba_ssm loads strictly), plain tensors only. Like :func:`export_hf`, a variant is
    written as the plain Mamba-1 model computing the same function (each mixer's effective
    x_proj weight). Returns the directory.
    """
    if _kind_of(model) != LM:
        raise CheckpointError("Only a language model (MambaLM) can be exported to mamba_ssm's MambaLMHeadModel layout.")
    config = layouts.config_to_state_spaces(model.config)
    state = _plain_state(model)
    if model.config.tie_embeddings:
        state["lm_head.weight"] = state["backbone.embedding.weight"]
    directory = Path(path).expanduser()
    directory.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.detach().to("cpu").contiguous() for k, v in state.items()}, directory / TORCH_BIN)
    (directory / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    return directory
