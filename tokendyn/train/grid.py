"""What the seed-grid experiments share (``train lm-scenarios`` in :mod:`.scenarios`, ``train
reorder`` in :mod:`.reordering`): checking the settings and scale asked for, naming runs,
collecting the complete runs of an output folder, the identity every run of one comparison
must share, and reading a committed summary.

An experiment's output folder holds ``runs/<setting>-seed<k>/`` (run.json, result.json when
complete, checkpoints while running).
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import ConfigError
from . import state as runstate


def choose_settings(asked, known, default=None) -> list[str]:
    """The settings asked for (``default``, or all of ``known``, when none), in ``known``'s order;
    :class:`ConfigError` for an unknown one."""
    asked = list(asked) or list(default or known)
    unknown = [s for s in asked if s not in known]
    if unknown:
        raise ConfigError(f"unknown setting(s) {', '.join(map(repr, unknown))}; choose from {', '.join(known)}.")
    return [s for s in known if s in asked]


def choose_scale(scale: str, scales: dict) -> dict:
    """The parameters of ``scale``; :class:`ConfigError` for an unknown one."""
    if scale not in scales:
        raise ConfigError(f"unknown scale {scale!r}; choose one of {', '.join(scales)}.")
    return scales[scale]


def choose_seeds(seeds) -> list[int]:
    """The distinct seeds, sorted; :class:`ConfigError` unless there is at least one and none is
    negative."""
    seeds = sorted({int(s) for s in seeds})
    if not seeds or min(seeds) < 0:
        raise ConfigError("seeds must be non-negative integers, at least one.")
    return seeds


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


def collect(out: Path) -> dict:
    """Complete runs under OUT/runs: {setting: [(seed, run.json, result.json, run_dir), ...]} by seed."""
    found: dict[str, list] = {}
    for run_dir in sorted((Path(out) / "runs").glob("*-seed*")):
        result = run_dir / runstate.RESULT
        if not result.is_file():
            continue
        setting, seed = run_dir.name.rsplit("-seed", 1)
        found.setdefault(setting, []).append((int(seed), json.loads((run_dir / runstate.RUN).read_text()),
                                              json.loads(result.read_text()), run_dir))
    return {s: sorted(v, key=lambda r: r[0]) for s, v in found.items()}


def shared_identity(ident: dict, setting_keys: tuple[str, ...]) -> dict:
    """What every run of one comparison shares: run.json less the seeds and the model fields
    ``setting_keys`` that the settings vary."""
    ident = json.loads(json.dumps(ident))
    ident.pop("params", None)          # a constraint's parameterisation has its own count
    for key in setting_keys:
        ident["model"].pop(key, None)
    ident["train"].pop("seed", None)
    ident["task"].pop("seed", None)
    return ident


def load_summary(path: Path) -> dict | None:
    """A committed summary JSON (e.g. results/lm_scenarios.json), or None when absent or unreadable."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
