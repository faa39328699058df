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

import time
from pathlib import Path

from ..errors import Interrupted
from .experiment import Experiment, choose_seeds
from .runs import pending_runs, record_provenance, run_name
from .summary import summarise


def run_grid(exp: Experiment, out: Path, scale: str = "quick", settings=(), seeds=None, device="auto",
             options: dict | None = None, progress: bool = True, log=print, provenance: dict | None = None,
             cuda_graph: bool = False,
             analyse: bool = True) -> dict:
    """Train every (setting, seed) of ``exp`` not yet complete in OUT, then write the summary files.

    settings: names (default: the description's defaults); seeds: default the description's;
    options: the experiment's data options (the command's --text, --data-dir, ...); provenance:
    merged whole into the summary; analyse: draw the figures made from the trained runs.
    Returns the summary (STEM.json's document).
    """
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
                            progress=progress, log=log, cuda_graph=cuda_graph)
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
