"""Experiments as data: one :class:`Experiment` describes a seed-grid experiment (its settings and
their model overrides, scales, metric and its direction, the comparisons it tests and the claims
they check, figures, default seeds, result files), and one runner (:mod:`.grid`), one summary
writer (:mod:`.summary`), one CLI command builder (``tokendyn.cli.experiments``) and one report
section builder (``tokendyn.reproduce.experiment``) turn any description into the grid, its files,
its command and its section. The descriptions live in :mod:`tokendyn.experiments`, one module each.

A description's hooks are plain functions (the run of one (setting, seed), the data, a sentence
of the table); everything else is data.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .seeds import resolve_words, seed_comparison, seeds_to_resolve

ORIGINS = {"paper": "the paper's claim", "project": "the project's own"}


@dataclass(frozen=True)
class Metric:
    """The number a setting is judged by.

    key: its per-setting key in the summary (``settings.<s>.<key>``, ``<key>_mean``, ``<key>_std``);
    result: its key in a run's ``result.json`` ``test`` record and in the values of its
    ``val_curve``; label / curve_label: in words (the table, the figure); higher_is_better: its
    direction; digits: decimals in the tables.
    """

    key: str
    result: str
    label: str
    curve_label: str
    higher_is_better: bool
    digits: int = 3

    def improvement(self, before: float, after: float) -> float:
        """The relative improvement from ``before`` to ``after`` (positive: better), direction-aware."""
        return ((after - before) if self.higher_is_better else (before - after)) / abs(before)


@dataclass(frozen=True)
class Comparison:
    """A claim that ``setting`` is ``expect`` ("better" or "worse") than ``other`` on the metric.

    The claim holds when the difference of means is at least ``min_t`` seed spreads in the
    claimed direction (Welch's t) with at least ``min_seeds`` seeds on each side. origin: "paper"
    (the paper's claim) or "project" (the project's addition, or a variant of its own). metric:
    the per-seed value compared, when it is not the experiment's metric (e.g. the area under the
    validation curve for a claim about convergence speed).
    """

    setting: str
    other: str
    expect: str
    claim: str
    origin: str = "paper"
    min_t: float = 2.0
    min_seeds: int = 3
    metric: Metric | None = None

    def __post_init__(self):
        if self.expect not in ("better", "worse"):
            raise ConfigError(f"a comparison expects 'better' or 'worse', got {self.expect!r}.")
        if self.origin not in ORIGINS:
            raise ConfigError(f"a comparison's origin is one of {', '.join(ORIGINS)}, got {self.origin!r}.")

    @property
    def name(self) -> str:
        return f"{self.setting}_minus_{self.other}" + (f"_{self.metric.key}" if self.metric else "")

    @property
    def short(self) -> str:
        return f"{self.setting} {self.expect} than {self.other}" + (f" ({self.metric.label})" if self.metric else "")

    def tolerance(self) -> str:
        return (f"{self.setting} {self.expect} than {self.other} by ≥ {self.min_t:g} seed spreads "
                f"(Welch t ≥ {self.min_t:g}), full scale, ≥ {self.min_seeds} seeds, every validation curve flat "
                "where the experiment has a flatness rule")

    def judge(self, settings: dict, metric: Metric) -> dict:
        """The comparison on a summary's ``settings``: {"diff", "spread", "t", "outcome", "note"};
        diff and t are ``setting`` − ``other``; outcome "pass", "fail", or "not run" where either
        setting is absent, and, with the numbers measured, where the grid cannot settle the claim
        (fewer than ``min_seeds`` seeds, or validation curves still falling: the note says which).
        ``seeds_to_resolve``: where |t| < ``min_t``, the seeds per setting at which a difference of
        the measured size would reach it at the measured spread (:func:`seeds_to_resolve`), else None.
        ``metric``: the experiment's, used unless the comparison has its own. Seeds without a value
        (None) are left out."""
        metric = self.metric or metric
        if self.setting not in settings or self.other not in settings:
            return {"diff": None, "spread": None, "t": None, "outcome": "not run",
                    "note": f"the grid has no {self.setting if self.setting not in settings else self.other} runs"}
        a, b = ([x for x in settings[s].get(metric.key) or () if x is not None] for s in (self.setting, self.other))
        if not a or not b:
            return {"diff": None, "spread": None, "t": None, "outcome": "not run",
                    "note": f"no run has a value of {metric.label}"}
        diff, spread, t = seed_comparison(a, b)
        # within min_t spreads: the seeds per setting that would resolve a difference this size
        more = seeds_to_resolve(a, b, self.min_t) if t is not None and abs(t) < self.min_t else None
        # a grid with too few seeds, or whose runs are not trained yet (validation curves still
        # falling: their order may change), measures the comparison but cannot settle the claim
        flat = [f for s in (self.setting, self.other) for f in settings[s].get("val_flat") or ()]
        falling = sum(not f for f in flat)
        notes = [f"fewer than {self.min_seeds} seeds per setting"] if min(len(a), len(b)) < self.min_seeds else []
        if falling:
            notes.append(f"{falling} of {len(flat)} runs' validation curves still falling at the end (not flat)")
        unsettled = "not settled: " + "; ".join(notes) if notes else ""
        if t is None:
            return {"diff": diff, "spread": spread, "t": None, "outcome": "not run" if notes else "fail",
                    "note": unsettled or "identical results: no spread to compare with", "seeds_to_resolve": None}
        if notes:
            return {"diff": diff, "spread": spread, "t": t, "outcome": "not run", "note": unsettled,
                    "seeds_to_resolve": more}
        sign = 1 if (self.expect == "better") == metric.higher_is_better else -1
        return {"diff": diff, "spread": spread, "t": t, "outcome": "pass" if sign * t >= self.min_t else "fail",
                "note": "", "seeds_to_resolve": more}

    def check(self, source: dict | None, label: str, metric: Metric, how: str):
        """The comparison as a report check on ``source`` (a summary, or None: not run, ``how`` says
        what would run it); ``label`` names the grid in the measurement."""
        from ..report import Check

        # a claim about models (the paper's, or the project's own): a failure is a finding, not a fault
        if source is None:
            return Check.not_run(self.claim, self.tolerance(), how, kind="claim")
        v = self.judge(source.get("settings", {}), metric)
        if v["diff"] is None:
            return Check.not_run(self.claim, self.tolerance(), how, kind="claim")
        ok = None if v["outcome"] == "not run" else v["outcome"] == "pass"
        note = f"{v['note']}; {how}" if ok is None else v["note"]
        if v.get("seeds_to_resolve"):
            note = "; ".join(filter(None, [note, resolve_words(v["seeds_to_resolve"], self.min_t)]))
        if v["t"] is None:
            return Check.judged(self.claim, self.tolerance(),
                                f"{self.setting} − {self.other}: {v['diff']:+.4g}, no seed spread ({label})", ok,
                                note, kind="claim")
        return Check.judged(self.claim, self.tolerance(), f"{self.setting} − {self.other}: {v['diff']:+.4g} ± "
                            f"{v['spread']:.2g} (t = {v['t']:+.2f}; {label})", ok, note, kind="claim")


@dataclass(frozen=True)
class Flatness:
    """When a run's validation curve has flattened: the metric improves by less than ``min_gain``
    (relative) over the last ``last`` share of the run, comparing the validation point at or just
    before (1 − last) of the run's end with the last point."""

    last: float = 0.2
    min_gain: float = 0.02

    @property
    def gain_key(self) -> str:
        return f"val_gain_last{round(100 * self.last)}"

    def gain(self, curve: list[list], metric: Metric) -> float | None:
        """The relative improvement over the last share of ``curve`` ([[x, value], ...]); None when
        no point lies at or before the cut."""
        if not curve:
            return None
        cut = (1 - self.last) * curve[-1][0]
        before = [p for p in curve[:-1] if p[0] <= cut + 1e-9]
        return metric.improvement(before[-1][1], curve[-1][1]) if before else None

    def flat(self, gain: float | None) -> bool | None:
        return None if gain is None else gain < self.min_gain


@dataclass(frozen=True)
class EarlyStopping:
    """The test metric at each run's best validation point, as early stopping would keep the model:
    a second reading of the comparisons (the project's addition), for runs that overfit before
    their last step. It reads the runs' ``test_curve`` records (``TrainConfig.eval_test``); a run
    without them has no value.

    key: the per-setting key in the summary (the best steps go under ``best_val_step``).
    """

    key: str = "test_at_best_val"
    words: str = "at each run's best validation step (early stopping; the project's addition)"

    def metric(self, metric: Metric) -> Metric:
        """``metric`` read at the best validation step: its key and label."""
        return replace(metric, key=self.key, label=f"{metric.label} at the best validation step")

    def comparison(self, c: Comparison) -> Comparison:
        """``c`` read at the best validation step: the project's own reading of the claim."""
        return replace(c, claim=f"{c.claim} Read {self.words}.", origin="project")

    @staticmethod
    def read(run_dir: Path, metric: Metric) -> tuple[int | None, float | None]:
        """(best validation step, the test metric there) from ``run_dir``/metrics.jsonl; (step, None)
        where the test split was not evaluated at that step; (None, None) with no validation."""
        path = Path(run_dir) / "metrics.jsonl"
        records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []
        val = [(r["step"], r[metric.result]) for r in records if r.get("kind") == "validation"]
        if not val:
            return None, None
        pick = max if metric.higher_is_better else min
        step = pick(val, key=lambda p: p[1])[0]
        test = {r["step"]: r[metric.result] for r in records if r.get("kind") in ("test_curve", "test")}
        return step, test.get(step)


@dataclass(frozen=True)
class FigureSpec:
    """A figure of the experiment's output folder. draw: (experiment, summary) -> matplotlib
    figure, drawn by the summary writer; None: drawn from the runs by the experiment's ``analyse``."""

    file: str
    caption: str
    draw: Callable[[Any, dict], Any] | None = None


@dataclass(frozen=True)
class Column:
    """An extra column of the experiment's table: header(summary) and cell(summary, setting values)."""

    header: Callable[[dict], str]
    cell: Callable[[dict, dict], str]


@dataclass(frozen=True)
class Experiment:
    """A seed-grid experiment as data (the module docstring says what is built from it).

    Arguments:
        name: the command (``tokendyn train NAME``) and the registry key.
        stem: the result files' stem (``STEM.json``, ``STEM.md``).
        title: the report section's title; section: its name in ``tokendyn reproduce`` (None: none).
        help: the command's help, one paragraph.
        settings: setting -> the model fields it overrides; default_settings: what runs unless told.
        baseline: the setting every other one is set against in the table (None: no column).
        scales: scale -> its model, data and budget (the hooks read them).
        metric, comparisons, flatness: what is measured, the claims checked, when a curve is flat.
        early_stopping: also read the metric and the comparisons at each run's best validation step.
        figures: the figures of the output folder; colours: setting -> colour in them.
        default_seeds: the seeds run unless told.
        grid_settings: the settings of the full-scale grid that ``scripts/grid_gpu.sh`` runs unless
            told (None: default_settings).
        options: names of the command's data options (``tokendyn.cli.options.DATA``) that reach
            ``prepare`` as a dict.
        prepare(params, options) -> data: the data a scale trains on.
        data_label(data) -> str: the data in a log line.
        train(data, params, overrides, seed, run_dir, *, resume, device, progress, log, cuda_graph) ->
            TrainResult: one run into run_dir (tokendyn.train.state's layout); cuda_graph: the
            command's --cuda-graph, for TrainConfig.cuda_graph.
        describe(summary) -> str: the model and budget, in the table's first sentence.
        curve(run) -> [[x, value], ...]: a run's validation curve (default: result.json's val_curve).
        run_fields(run) -> dict: more per-seed values of a setting (lists in the summary).
        config_fields(run, params) -> dict: more ``config`` entries.
        columns: extra table columns; sections(summary) -> str: markdown after the tables.
        analyse(out, runs, data, log): figures drawn from the trained runs (data None: not at hand).
        report_extras(summary, committed, scale, how) -> (checks, summary entries): the section's
            checks beyond the comparisons.
        report_note: the section's closing words; full_run: how to run the full-scale grid.
    """

    name: str
    stem: str
    title: str
    help: str
    settings: dict[str, dict]
    default_settings: tuple[str, ...]
    scales: dict[str, dict]
    metric: Metric
    prepare: Callable
    data_label: Callable
    train: Callable
    describe: Callable
    comparisons: tuple[Comparison, ...] = ()
    figures: tuple[FigureSpec, ...] = ()
    colours: dict[str, str] = field(default_factory=dict)
    baseline: str | None = "none"
    default_seeds: tuple[int, ...] = (0, 1, 2)
    grid_settings: tuple[str, ...] | None = None
    section: str | None = None
    options: tuple[str, ...] = ()
    flatness: Flatness | None = None
    early_stopping: EarlyStopping | None = None
    curve: Callable | None = None
    run_fields: Callable | None = None
    config_fields: Callable | None = None
    columns: tuple[Column, ...] = ()
    sections: Callable | None = None
    analyse: Callable | None = None
    report_extras: Callable | None = None
    report_note: str = ""
    full_run: str = ""

    @property
    def result_files(self) -> tuple[str, ...]:
        """The files a call writes into OUT beside runs/."""
        return (f"{self.stem}.json", f"{self.stem}.md", *(f.file for f in self.figures))

    @property
    def setting_keys(self) -> tuple[str, ...]:
        """The model fields the settings vary (left out of the summary's ``config.model``)."""
        return tuple(sorted({k for fields in self.settings.values() for k in fields}))

    @property
    def grid_runs(self) -> list[str]:
        """The full-scale grid's runs, ``SETTING-seedK``, seed by seed (so that a partial grid has
        every setting)."""
        return [f"{s}-seed{k}" for k in self.default_seeds for s in (self.grid_settings or self.default_settings)]

    def choose_settings(self, asked) -> list[str]:
        """The settings asked for (the defaults when none), in the description's order;
        :class:`ConfigError` for an unknown one."""
        asked = list(asked) or list(self.default_settings)
        unknown = [s for s in asked if s not in self.settings]
        if unknown:
            raise ConfigError(f"unknown setting(s) {', '.join(map(repr, unknown))}; choose from "
                              f"{', '.join(self.settings)}.")
        return [s for s in self.settings if s in asked]

    def scale(self, name: str) -> dict:
        """The parameters of scale ``name``; :class:`ConfigError` for an unknown one."""
        if name not in self.scales:
            raise ConfigError(f"unknown scale {name!r}; choose one of {', '.join(self.scales)}.")
        return self.scales[name]

    def comparisons_for(self, settings) -> list[Comparison]:
        """The comparisons that concern a grid of ``settings``: every one between default settings
        (absent ones then show as not run), and those with a setting outside the defaults only where
        the grid ran it."""
        return [c for c in self.comparisons
                if all(s in self.default_settings or s in settings for s in (c.setting, c.other))]

    def runs_to_resolve(self, doc: dict, cap: int) -> tuple[list[str], list[str]]:
        """The runs (``SETTING-seedK``, seed by seed) that would take every comparison of summary
        ``doc`` that lies within its spreads to the seeds per setting at which a difference of the
        measured size would resolve (its ``seeds_to_resolve``), where that is at most ``cap``; and
        the names of the comparisons that would need more. New seeds are the smallest not yet run."""
        want: dict[str, int] = {}
        beyond = []
        for c in self.comparisons_for(doc["settings"]):
            n = (doc.get("comparisons", {}).get(c.name) or {}).get("seeds_to_resolve")
            if not n:
                continue
            if n > cap:
                beyond.append(c.name)
                continue
            for s in (c.setting, c.other):
                want[s] = max(want.get(s, 0), n)
        new: dict[str, list[int]] = {}
        for s, n in want.items():
            have = set(doc["settings"][s]["seeds"])
            free = (k for k in itertools.count() if k not in have)
            new[s] = sorted(next(free) for _ in range(max(0, n - len(have))))
        depth = max((len(v) for v in new.values()), default=0)
        runs = [f"{s}-seed{seeds[i]}" for i in range(depth) for s in self.settings if i < len(seeds := new.get(s, []))]
        return runs, beyond

    def run_curve(self, run) -> list[list]:
        return self.curve(run) if self.curve is not None else run.result["val_curve"]


def choose_seeds(seeds) -> list[int]:
    """The distinct seeds, sorted; :class:`ConfigError` unless there is at least one and none is
    negative."""
    seeds = sorted({int(s) for s in seeds})
    if not seeds or min(seeds) < 0:
        raise ConfigError("seeds must be non-negative integers, at least one.")
    return seeds
