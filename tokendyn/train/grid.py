"""The one runner of the seed-grid experiments (:class:`~tokendyn.train.experiment.Experiment`):
every (setting, seed) of a grid trained into its own run directory, then the summary written.

Layout of an experiment's OUT:

    runs/<setting>-seed<k>/   one training run each (tokendyn.train.state's layout); a run with
                              result.json is complete and skipped by later calls, an incomplete
                              one (run.json, no result.json) is resumed from its checkpoint
    STEM.json, STEM.md, ...   the summary (:mod:`.summary`) of every complete run found there

Calls with different settings / seeds fill the same OUT; every call rewrites the summary from all
complete runs found there, so partial result directories merge by copying their ``runs/*`` into
one OUT and calling again (or calling :func:`tokendyn.train.summary.summarise`).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import NamedTuple

from ..errors import Interrupted
from ..outputs import write_file
from . import state as runstate
from .experiment import Experiment, choose_seeds


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


def collect(out: Path) -> dict[str, list[Run]]:
    """Complete runs under OUT/runs: {setting: [Run, ...] by seed}."""
    found: dict[str, list[Run]] = {}
    for run_dir in sorted((Path(out) / "runs").glob("*-seed*")):
        result = run_dir / runstate.RESULT
        if not result.is_file():
            continue
        setting, seed = run_dir.name.rsplit("-seed", 1)
        found.setdefault(setting, []).append(Run(int(seed), json.loads((run_dir / runstate.RUN).read_text()),
                                                 json.loads(result.read_text()), run_dir))
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


def run_grid(exp: Experiment, out: Path, scale: str = "quick", settings=(), seeds=None, device="auto",
             options: dict | None = None, progress: bool = True, log=print, provenance: dict | None = None,
             analyse: bool = True) -> dict:
    """Train every (setting, seed) of ``exp`` not yet complete in OUT, then write the summary files.

    settings: names (default: the description's defaults); seeds: default the description's;
    options: the experiment's data options (the command's --text, --data-dir, ...); provenance:
    merged whole into the summary; analyse: draw the figures made from the trained runs.
    Returns the summary (STEM.json's document).
    """
    from .summary import summarise

    settings = exp.choose_settings(settings)
    seeds = choose_seeds(exp.default_seeds if seeds is None else seeds)
    p = exp.scale(scale)
    out = Path(out)
    t0 = time.perf_counter()
    data = exp.prepare(p, dict(options or {}))
    log(f"data: {exp.data_label(data)}; prepared in {time.perf_counter() - t0:.1f} s")
    for setting, seed, run_dir, resume in pending_runs(out, settings, seeds, log):
        t = time.perf_counter()
        try:
            res = exp.train(data, p, exp.settings[setting], seed, run_dir, resume=resume, device=device,
                            progress=progress, log=log)
        except Interrupted:
            # the grid, not `train lm --resume`, is what the user runs again
            raise Interrupted(f"the complete runs in {out / 'runs'} are kept, and running the same command "
                              f"again resumes {run_name(setting, seed)} from its last checkpoint and runs the "
                              "rest.") from None
        wall = time.perf_counter() - t
        if not getattr(res, "stopped_early", False):
            record_provenance(run_dir, provenance, device, wall)
        log(f"{run_name(setting, seed)}: {exp.metric.label} {res.test[exp.metric.result]:.{exp.metric.digits}f} in "
            f"{wall:.1f} s")
    return summarise(exp, out, scale, device=str(device), provenance=provenance, log=log, data=data,
                     analyse=analyse, call_runs=[run_name(s, k) for s in settings for k in seeds], started=t0)
