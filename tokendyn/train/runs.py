"""The run folders of a seed-grid experiment's OUT (``runs/<setting>-seed<k>/``): which runs are
complete, which are still to train, and where each came from. Read by the runner
(:mod:`.grid`) and the summary writer (:mod:`.summary`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import NamedTuple

from ..errors import DataError
from ..outputs import write_file
from . import state as runstate


class Run(NamedTuple):
    """A complete run: its seed, run.json, result.json and directory."""

    seed: int
    ident: dict
    result: dict
    dir: Path


def run_name(setting: str, seed: int) -> str:
    return f"{setting}-seed{seed}"


def pending_runs(out: Path, settings, seeds, log):
    """(setting, seed, run_dir, resume) for every run of the grid not yet complete under
    OUT/runs, setting by setting; complete ones are logged as skipped. ``resume``: the run was
    started before (its run.json exists) and continues from its last checkpoint."""
    for setting in settings:
        for seed in seeds:
            run_dir = Path(out) / "runs" / run_name(setting, seed)
            if (run_dir / runstate.RESULT).is_file():
                log(f"{run_name(setting, seed)}: complete, skipped")
                continue
            yield setting, seed, run_dir, (run_dir / runstate.RUN).is_file()


# what every experiment's summary reads from a complete run's records
RUN_KEYS = ("model", "train", "task")
RESULT_KEYS = ("test", "tokens_seen", "wall_s", "train_s", "val_curve")


def _read_record(path: Path, keys: tuple[str, ...]) -> dict:
    """A run's JSON record (run.json, result.json) as a dict with ``keys``; DataError (one
    sentence) when it is missing, unreadable, not a JSON object or short of a key, as in a
    damaged or half-copied run folder."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path} cannot be read as a run record ({type(exc).__name__}); restore it or remove "
                        f"the run folder {path.parent.name} to train that run again.") from None
    if not isinstance(record, dict):
        raise DataError(f"{path} is not a run record (a JSON object); restore it or remove the run folder "
                        f"{path.parent.name}.")
    missing = [k for k in keys if k not in record]
    if missing:
        raise DataError(f"{path} lacks {', '.join(missing)}, so it is not a complete run's record; restore it or "
                        f"remove the run folder {path.parent.name}.")
    return record


def collect(out: Path) -> dict[str, list[Run]]:
    """Complete runs under OUT/runs: {setting: [Run, ...] by seed}."""
    found: dict[str, list[Run]] = {}
    for run_dir in sorted((Path(out) / "runs").glob("*-seed*")):
        result = run_dir / runstate.RESULT
        if not result.is_file():
            continue
        setting, seed = run_dir.name.rsplit("-seed", 1)
        if not seed.isdigit():
            continue                      # not a run folder of this layout (SETTING-seedK)
        found.setdefault(setting, []).append(Run(int(seed), _read_record(run_dir / runstate.RUN, RUN_KEYS),
                                                 _read_record(result, RESULT_KEYS), run_dir))
    return {s: sorted(v, key=lambda r: r.seed) for s, v in found.items()}


def shared_identity(ident: dict, setting_keys) -> dict:
    """What every run of one comparison shares: run.json less the seeds and the model fields
    ``setting_keys`` that the settings vary."""
    ident = json.loads(json.dumps(ident))
    ident.pop("params", None)          # a constraint's parameterisation has its own count
    for key in setting_keys:
        ident.get("model", {}).pop(key, None)
    for part in ("train", "task"):
        ident.get(part, {}).pop("seed", None)
    return ident


RUN_PROVENANCE = "provenance.json"
PROVENANCE_KEYS = ("device", "date", "commit", "command")


def record_provenance(run_dir: Path, provenance: dict | None, device, wall_s: float) -> None:
    """RUN_DIR/provenance.json: the device, date, commit and command of the call that finished the
    run, and its wall time. It travels with the run when result folders are merged, so a summary
    of runs from several calls or machines says where each came from."""
    prov = provenance or {}
    record = {k: prov.get(k) for k in PROVENANCE_KEYS}
    record["device"] = record["device"] or str(device)
    record["wall_s"] = round(wall_s, 2)
    write_file(Path(run_dir) / RUN_PROVENANCE, json.dumps(record, indent=1) + "\n")


def read_provenance(run_dir: Path) -> dict | None:
    """A run's provenance.json (:func:`record_provenance`), or None (absent or unreadable)."""
    try:
        return json.loads((Path(run_dir) / RUN_PROVENANCE).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
