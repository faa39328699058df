"""A training run's directory: identity, metrics, checkpoints written atomically, resume.

    OUT/run.json            what the run is (model, training and data settings); a resume
                            must ask for the same
    OUT/metrics.jsonl       one JSON object per line (train, validation, monitor, test records)
    OUT/checkpoint/         the latest checkpoint:
        config.json, model.safetensors    the model in tokendyn's layout (tokendyn.load_model)
        tokenizer.json                    the run's tokenizer, when it has one
        optimizer.safetensors             AdamW moments and step counts
        trainer.json                      step, tokens seen, optimizer param groups, timings
        rng.safetensors                   torch RNG states (CPU, CUDA)
    OUT/result.json         written when the run completes

A checkpoint is written into ``OUT/.checkpoint-tmp`` and renamed into place (the previous
one is first renamed to ``OUT/.checkpoint-old`` and removed after), so a run killed at any
moment leaves either the old or the new checkpoint whole. No file is ever unpickled:
tensors go through safetensors, everything else through JSON.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch

from ..errors import CheckpointError, ConfigError
from ..outputs import ordinary_mode

CHECKPOINT = "checkpoint"
TMP = ".checkpoint-tmp"
OLD = ".checkpoint-old"
RUN = "run.json"
METRICS = "metrics.jsonl"
RESULT = "result.json"


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to a temporary file beside ``path`` and rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _canonical(obj):
    return json.loads(json.dumps(obj, sort_keys=True, default=str))


def describe_difference(a: dict, b: dict, prefix: str = "") -> str | None:
    """The first differing key of two nested dicts, as 'key: a vs b', or None when equal."""
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key, "(absent)"), b.get(key, "(absent)")
        if isinstance(va, dict) and isinstance(vb, dict):
            diff = describe_difference(va, vb, f"{prefix}{key}.")
            if diff:
                return diff
        elif va != vb:
            return f"{prefix}{key}: {va!r} there vs {vb!r} now"
    return None


def prepare_run_dir(out: Path, identity: dict, resume: bool) -> None:
    """Create ``out`` for a new run, or check that a resumed one matches ``identity``.

    A new run refuses a directory that already holds a run (nothing is overwritten); a
    resume refuses a directory without one, or one written by a different configuration.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out} is a file, not a run directory; choose another --out.")
    identity = _canonical(identity)
    run_file = out / RUN
    if not resume:
        if run_file.exists() or (out / CHECKPOINT).exists():
            raise ConfigError(f"{out} already holds a training run; pass --resume {out} to continue it "
                              "or choose another --out.")
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run_file, json.dumps(identity, indent=2, sort_keys=True) + "\n")
        return
    if not run_file.is_file():
        raise ConfigError(f"{out} holds no training run (no {RUN}) to resume.")
    try:
        saved = json.loads(run_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{run_file} is unreadable or not JSON ({exc}); the run cannot be resumed.") from exc
    diff = describe_difference(saved, identity)
    if diff:
        raise ConfigError(f"{out} was written by a different configuration ({diff}); resume it with the "
                          "same settings or start a new run in another directory.")


def latest_checkpoint(out: Path) -> Path | None:
    """OUT/checkpoint, or the previous one left by a run killed between the two renames."""
    out = Path(out)
    for name in (CHECKPOINT, OLD):
        if (out / name / "trainer.json").is_file():
            return out / name
    return None


def _flatten_optimizer(state: dict) -> tuple[dict[str, torch.Tensor], list]:
    tensors = {}
    for idx, per_param in state["state"].items():
        for key, value in per_param.items():
            if not isinstance(value, torch.Tensor):
                value = torch.tensor(value)
            tensors[f"{idx}.{key}"] = value.detach().contiguous().cpu()
    return tensors, state["param_groups"]


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], groups: list) -> dict:
    state: dict[int, dict] = {}
    for name, value in tensors.items():
        idx, key = name.split(".", 1)
        state.setdefault(int(idx), {})[key] = value
    return {"state": state, "param_groups": groups}


def save_checkpoint(out: Path, model, optimizer, trainer: dict, tokenizer_json: str | None = None) -> Path:
    """Write the latest checkpoint atomically (module docstring). Returns OUT/checkpoint."""
    from safetensors.torch import save_file

    from ..model import save_model

    out = Path(out)
    tmp, final, old = out / TMP, out / CHECKPOINT, out / OLD
    shutil.rmtree(tmp, ignore_errors=True)
    save_model(model, tmp)
    if tokenizer_json is not None:
        (tmp / "tokenizer.json").write_text(tokenizer_json, encoding="utf-8")
    tensors, groups = _flatten_optimizer(optimizer.state_dict())
    save_file(tensors, str(tmp / "optimizer.safetensors"))
    ordinary_mode(tmp / "optimizer.safetensors")
    rng = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng.update({f"cuda{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    save_file(rng, str(tmp / "rng.safetensors"))
    ordinary_mode(tmp / "rng.safetensors")
    (tmp / "trainer.json").write_text(json.dumps({**trainer, "param_groups": groups}, indent=1), encoding="utf-8")
    if final.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(directory: Path, model, optimizer) -> dict:
    """Restore model, optimizer and RNG state from a checkpoint directory; returns trainer.json.

    Raises :class:`CheckpointError` (one sentence) when a file is missing, truncated or
    does not fit the model; nothing is modified on disk.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from ..model import load_model

    directory = Path(directory)
    try:
        trainer = json.loads((directory / "trainer.json").read_text(encoding="utf-8"))
        saved = load_model(directory)
        missing, unexpected = model.load_state_dict(saved.state_dict(), strict=False)
        if unexpected or [k for k in missing if k != "lm_head.weight"]:
            raise CheckpointError(f"the model in {directory} does not match this run's model.")
        tensors = load_file(str(directory / "optimizer.safetensors"))
        optimizer.load_state_dict(_unflatten_optimizer(tensors, trainer.pop("param_groups")))
        rng = load_file(str(directory / "rng.safetensors"))
    except CheckpointError as exc:
        raise CheckpointError(f"the checkpoint in {directory} cannot be resumed: {exc}") from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, SafetensorError, KeyError, ValueError,
            RuntimeError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CheckpointError(f"the checkpoint in {directory} is corrupt or incomplete ({first}); "
                              "it cannot be resumed.") from exc
    torch.set_rng_state(rng["cpu"])
    if torch.cuda.is_available():
        states = [rng[k] for k in sorted(rng) if k.startswith("cuda")]
        if len(states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(states)
    return trainer


def read_metrics(out: Path) -> list[dict]:
    """The records of OUT/metrics.jsonl (an unreadable last line, from a kill mid-write, is skipped)."""
    path = Path(out) / METRICS
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def truncate_metrics(out: Path, step: int) -> None:
    """Keep the records up to ``step`` (those after the checkpoint resumed from are redone;
    the test record, written after the last checkpoint, too)."""
    records = [r for r in read_metrics(out) if r.get("step", 0) <= step and r.get("kind") != "test"]
    atomic_write_text(Path(out) / METRICS, "".join(json.dumps(r) + "\n" for r in records))
