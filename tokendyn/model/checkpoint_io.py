"""Reading and writing the tensor files of a checkpoint directory, safely.

Weights come from ``model.safetensors`` (or shards listed in
``model.safetensors.index.json``) or from ``pytorch_model.bin`` (or its shards),
which is read with ``torch.load(weights_only=True)`` so that a pickle can never run
code. Every failure becomes a :class:`~tokendyn.errors.CheckpointError` naming the file.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import torch

from ..errors import CheckpointError
from ..outputs import write_file

SAFETENSORS = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
TORCH_BIN = "pytorch_model.bin"
TORCH_BIN_INDEX = "pytorch_model.bin.index.json"


def _reason(exc: BaseException) -> str:
    """The first line of an exception's text, without a trailing period (it goes inside a sentence)."""
    lines = str(exc).strip().splitlines()
    first = lines[0] if lines else type(exc).__name__
    return first.split(". ")[0].rstrip(".")


def read_json(path: Path) -> dict:
    """Parse a JSON object from ``path``."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"Cannot read {path}: {_reason(exc)}.") from exc
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path} is not valid JSON ({exc.msg} at line {exc.lineno}).") from exc
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} holds a JSON {type(data).__name__}, not an object.")
    return data


def weight_files(directory: Path) -> list[Path]:
    """The tensor files of a checkpoint directory, safetensors first.

    Returns one file, or the shards named by an index file (sorted by name).
    """
    for single, index in ((SAFETENSORS, SAFETENSORS_INDEX), (TORCH_BIN, TORCH_BIN_INDEX)):
        if (directory / single).is_file():
            return [directory / single]
        if (directory / index).is_file():
            return _shards(directory, directory / index)
    raise CheckpointError(
        f"{directory} has no weights: expected {SAFETENSORS}, {SAFETENSORS_INDEX}, {TORCH_BIN} or {TORCH_BIN_INDEX}."
    )


def _shards(directory: Path, index_path: Path) -> list[Path]:
    weight_map = read_json(index_path).get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointError(f"{index_path} has no weight_map.")
    root = directory.resolve()
    shards: list[Path] = []
    for name in sorted(set(map(str, weight_map.values()))):
        shard = (directory / str(name)).resolve()
        # An index must not point outside its own directory.
        if shard.parent != root:
            raise CheckpointError(f"{index_path} names shard {name!r}, which is not a file in {directory}.")
        if not shard.is_file():
            raise CheckpointError(f"{index_path} names shard {name!r}, which does not exist.")
        shards.append(shard)
    return shards


def read_tensors(files: list[Path]) -> dict[str, torch.Tensor]:
    """All tensors of ``files`` on the CPU, by name; a name may appear in one file only."""
    tensors: dict[str, torch.Tensor] = {}
    for path in files:
        part = _read_safetensors(path) if path.suffix == ".safetensors" else _read_torch_bin(path)
        for name, tensor in part.items():
            if name in tensors:
                raise CheckpointError(f"Tensor {name} appears in more than one weights file (again in {path.name}).")
            tensors[name] = tensor
    return tensors


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except Exception as exc:  # safetensors raises its own error type (and OSError) for bad files
        raise CheckpointError(
            f"Cannot read {path}: it is truncated or not a safetensors file ({_reason(exc)})."
        ) from exc


def _read_torch_bin(path: Path) -> dict[str, torch.Tensor]:
    try:
        # weights_only=True: the unpickler accepts tensors and plain containers only,
        # so a crafted file cannot run code while loading.
        data = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"Refusing to load {path}: it contains Python objects other than tensors, which could run code."
        ) from exc
    except Exception as exc:  # a truncated zip or a file that is not a torch save at all
        raise CheckpointError(
            f"Cannot read {path}: it is truncated or not a PyTorch weights file ({_reason(exc)})."
        ) from exc
    # Some training scripts wrap the state dict once.
    if isinstance(data, dict) and len(data) == 1:
        (key, inner), = data.items()
        if key in ("state_dict", "model") and isinstance(inner, dict):
            data = inner
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} holds a {type(data).__name__}, not a dictionary of tensors.")
    bad = [str(k) for k, v in data.items() if not (isinstance(k, str) and isinstance(v, torch.Tensor))]
    if bad:
        raise CheckpointError(f"{path} has entries that are not named tensors: {', '.join(bad[:3])}.")
    return data


def write_safetensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    """Write ``tensors`` (no two sharing storage) to ``path`` with transformers' metadata."""
    from safetensors.torch import save

    plain = {name: t.detach().to("cpu").contiguous() for name, t in tensors.items()}
    # safetensors refuses tensors that share memory; the caller drops tied duplicates,
    # and anything else that still shares storage (views of one buffer) gets its own copy.
    seen: set[int] = set()
    for name, t in plain.items():
        ptr = t.untyped_storage().data_ptr()
        if t.numel() and ptr in seen:
            plain[name] = t.clone()
        seen.add(ptr)
    # serialised in memory and written by the one file writer: a full disk is an OSError naming
    # the file (safetensors' own writer reports it as its own error type) and no half file remains
    write_file(path, save(plain, metadata={"format": "pt"}))
