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

from ..errors import CheckpointError, ConfigError, DataError
from ..outputs import WRITE_ERRNOS, write_file

CHECKPOINT = "checkpoint"
TMP = ".checkpoint-tmp"
OLD = ".checkpoint-old"
RUN = "run.json"
METRICS = "metrics.jsonl"
RESULT = "result.json"


def _canonical(obj):
    return json.loads(json.dumps(obj, sort_keys=True, default=str))


# identity entries that follow from others (hashes, counts, sizes): named only when nothing a user
# sets differs; and the option that sets an entry where its name is not the option's
_DERIVED = {"sha256", "sha256_tokens", "chars", "tokens", "params", "train_images", "validation_images",
            "test_images", "steps_per_epoch", "log_every", "checkpoint_every", "eval_every", "composition",
            "tokenizer"}
_TEXT = "the training data (--text, --corpus or --wikitext)"
_OPTION = {"examples_per_step": "--batch-size", "name": _TEXT, "sha256": _TEXT, "sha256_tokens": _TEXT, "chars": _TEXT,
           "data": "--data", "tokenizer": "--tokenizer", "autocast": "--no-autocast", "betas": "the AdamW betas",
           "classes": "the data's classes", "image_shape": "--image-size or --channels"}


def differences(a: dict, b: dict, prefix: str = "") -> list[tuple[str, object, object]]:
    """Every differing leaf of two nested dicts: (dotted key, value in a, value in b)."""
    out = []
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key, "(absent)"), b.get(key, "(absent)")
        if isinstance(va, dict) and isinstance(vb, dict):
            out += differences(va, vb, f"{prefix}{key}.")
        elif va != vb:
            out.append((f"{prefix}{key}", va, vb))
    return out


def option_name(key: str) -> str:
    """The command-line option that sets an identity entry (``model.d_model`` -> ``--d-model``)."""
    leaf = key.rsplit(".", 1)[-1]
    return _OPTION.get(leaf, "--" + leaf.replace("_", "-"))


def describe_difference(a: dict, b: dict) -> str | None:
    """The options whose values differ between two run identities, as '--opt: a there vs b now'
    (the settings a user gives first, derived entries such as data hashes only when nothing else
    differs), or None when equal."""
    diffs = differences(a, b)
    if not diffs:
        return None
    given = [d for d in diffs if not _DERIVED & set(d[0].split("."))] or diffs
    seen, parts = set(), []
    for key, va, vb in given:
        name = option_name(key)
        if name not in seen:
            seen.add(name)
            parts.append(f"{name}: {va!r} there vs {vb!r} now")
    return "; ".join(parts[:3]) + (f" and {len(parts) - 3} more" if len(parts) > 3 else "")


def holds_run(out: Path) -> bool:
    """True when ``out`` holds a run worth keeping: a checkpoint or a result (a run.json alone,
    from a run stopped before its first checkpoint, has nothing to resume)."""
    out = Path(out)
    return latest_checkpoint(out) is not None or (out / RESULT).exists()


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
        if holds_run(out):
            raise ConfigError(f"{out} already holds a training run; pass --resume {out} to continue it "
                              "or choose another --out.")
        created = not out.exists()
        out.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(out / TMP, ignore_errors=True)
        try:
            write_file(run_file, json.dumps(identity, indent=2, sort_keys=True) + "\n")
        except BaseException:
            remove_run(out, created)     # a full disk: no empty directory left for the retry to trip on
            raise
        return
    if not run_file.is_file():
        raise ConfigError(f"{out} holds no training run (no {RUN}) to resume.")
    try:
        saved = json.loads(run_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{run_file} is unreadable or not JSON ({exc}); the run cannot be resumed.") from exc
    diff = describe_difference(saved, identity)
    if diff:
        raise ConfigError(f"{out} was written with other settings ({diff}); resume it with the run's "
                          "settings or start a new run in another directory.")


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
    # a graphed step's learning rate is a device tensor: trainer.json keeps its value
    groups = [{k: float(v) if isinstance(v, torch.Tensor) else v for k, v in g.items()} for g in state["param_groups"]]
    return tensors, groups


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], groups: list) -> dict:
    state: dict[int, dict] = {}
    for name, value in tensors.items():
        idx, key = name.split(".", 1)
        state.setdefault(int(idx), {})[key] = value
    return {"state": state, "param_groups": groups}


def save_checkpoint(out: Path, model, optimizer, trainer: dict, tokenizer_json: str | None = None) -> Path:
    """Write the latest checkpoint atomically (module docstring). Returns OUT/checkpoint.

    A write that fails (a full disk) removes the partial OUT/.checkpoint-tmp and raises
    DataError; the previous checkpoint stays whole."""
    from ..model import save_model
    from ..model.checkpoint_io import write_safetensors

    out = Path(out)
    tmp, final, old = out / TMP, out / CHECKPOINT, out / OLD
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        save_model(model, tmp)
        if tokenizer_json is not None:
            write_file(tmp / "tokenizer.json", tokenizer_json)
        tensors, groups = _flatten_optimizer(optimizer.state_dict())
        write_safetensors(tensors, tmp / "optimizer.safetensors")
        rng = {"cpu": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng.update({f"cuda{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
        write_safetensors(rng, tmp / "rng.safetensors")
        write_file(tmp / "trainer.json", json.dumps({**trainer, "param_groups": groups}, indent=1))
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        cause = exc.__context__ if isinstance(exc, DataError) else exc     # the writer's DataError wraps it
        if isinstance(cause, OSError) and cause.errno in WRITE_ERRNOS:
            raise DataError(f"cannot write the checkpoint in {out}: {cause.strerror}") from None
        raise
    if final.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)
    return final


def last_checkpoint_step(out: Path) -> int | None:
    """The step of OUT's latest checkpoint (None where there is none)."""
    ckpt = latest_checkpoint(out)
    if ckpt is None:
        return None
    try:
        return int(json.loads((ckpt / "trainer.json").read_text(encoding="utf-8"))["step"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def remove_run(out: Path, created: bool) -> None:
    """Remove what a new run wrote in ``out`` (run.json, metrics, checkpoints, the tokenizer and
    the monitor figure; ``created``: the directory too, when it is then empty), so that the same
    command can be run again into it."""
    out = Path(out)
    for name in (CHECKPOINT, TMP, OLD):
        shutil.rmtree(out / name, ignore_errors=True)
    for name in (RUN, METRICS, RESULT, "tokenizer.json", "monitor.png"):
        try:
            (out / name).unlink()
        except OSError:
            pass
    if created:
        try:
            out.rmdir()
        except OSError:
            pass


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
    write_file(Path(out) / METRICS, "".join(json.dumps(r) + "\n" for r in records))
