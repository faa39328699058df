"""The one summary writer of the seed-grid experiments: from the complete runs of an output folder,
STEM.json (the summary), STEM.md (the tables) and the description's figures.

STEM.json: ``settings.<s>`` holds per seed the metric (``<key>``, e.g. ``test_ppl``), ``test_loss``,
``seeds``, ``val_curves`` (each seed's validation curve), ``wall_s``, ``train_s``,
``tokens_per_s`` and the experiment's own per-seed values, plus ``<key>_mean``, ``<key>_std`` (the
sample std; None for one seed), ``val_curve`` (the mean curve over the seeds), ``tokens_seen`` and,
where the experiment has a flatness rule, ``val_gain_last<P>`` and ``val_flat``; ``comparisons``
(each setting against the baseline, and each comparison of the description with its claim and
outcome); ``config`` (scale, model less the setting fields, train, task, params, setting_fields,
the experiment's own entries); ``data``, ``data_details``, ``seeds``, ``tokens_seen``, ``wall_s``;
and the whole provenance (device, date, commit, command, versions).
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from ..errors import ConfigError
from ..outputs import write_file
from . import state as runstate
from .experiment import ORIGINS, Experiment, Metric
from .figures import save_figure
from .runs import Run, collect, read_provenance, run_name, shared_identity
from .seeds import format_mean_std, mean_curve, mean_std, resolve_words, seed_comparison


def summarise(exp: Experiment, out: Path, scale: str, device: str = "", provenance: dict | None = None, log=print,
              data=None, analyse: bool = True, call_runs: list[str] | None = None,
              started: float | None = None) -> dict:
    """Write STEM.json / .md / figures of ``exp`` from the complete runs in OUT; returns the summary.

    data: the data the runs trained on, for figures drawn from the runs (None: they choose their
    input themselves); analyse: draw those figures; call_runs, started: the calling grid's runs and
    its start (time.perf_counter()), recorded as ``call_runs`` and ``call_wall_s``.
    """
    import time

    out = Path(out)
    runs = {s: rows for s, rows in collect(out).items() if s in exp.settings}
    if not runs:
        raise ConfigError(f"{out} holds no complete {exp.name} run.")
    if len({json.dumps(shared_identity(r.ident, exp.setting_keys), sort_keys=True)
            for rows in runs.values() for r in rows}) > 1:
        raise ConfigError(f"the runs in {out} differ in data, model size or budget; they cannot be compared in "
                          "one table.")
    doc = summary_doc(exp, runs, scale, device, provenance)
    write_file(out / f"{exp.stem}.md", markdown(exp, doc))
    for fig in exp.figures:
        if fig.draw is not None:
            save_figure(fig.draw(exp, doc), out / fig.file)
    if analyse and exp.analyse is not None:
        exp.analyse(out, runs, data, log)
    if started is not None:
        doc["call_wall_s"] = round(time.perf_counter() - started, 2)
        doc["call_runs"] = list(call_runs or [])
    write_file(out / f"{exp.stem}.json", json.dumps(doc, indent=1) + "\n")
    return doc


def summary_doc(exp: Experiment, runs: dict[str, list[Run]], scale: str, device: str = "",
                provenance: dict | None = None) -> dict:
    """The summary of complete runs ({setting: [Run, ...]}), as STEM.json holds it."""
    settings = {s: setting_summary(exp, runs[s]) for s in exp.settings if s in runs}
    first = runs[next(iter(settings))][0]
    config = {"scale": scale, "model": {k: v for k, v in first.ident["model"].items() if k not in exp.setting_keys},
              "train": first.ident["train"], "task": first.ident["task"],
              "params": first.ident.get("params") or n_params(first.dir),
              "setting_fields": {s: exp.settings[s] for s in settings}}
    if exp.config_fields is not None:
        config.update(exp.config_fields(first, exp.scale(scale)))
    data = first.ident.get("data")
    doc = {
        "settings": settings,
        "comparisons": comparisons(exp, settings),
        "config": config,
        "data": data.get("name") if isinstance(data, dict) else data,
        "data_details": data,
        "seeds": sorted({k for v in settings.values() for k in v["seeds"]}),
        "tokens_seen": first.result["tokens_seen"],
        "wall_s": round(sum(sum(v["wall_s"]) for v in settings.values()), 2),
        **(provenance or {}),
    }
    if not doc.get("device"):
        doc["device"] = device
    # where each run was trained: a summary written elsewhere (merged folders, --summarise-only)
    # names the machines of the runs, not its own
    trained = {run_name(s, r.seed): read_provenance(r.dir) for s in settings for r in runs[s]}
    if trained and all(trained.values()):
        doc["runs_provenance"] = trained
        doc["device"] = ", ".join(sorted({t["device"] for t in trained.values()}))
        doc["runs_commits"] = sorted({str(t.get("commit")) for t in trained.values()})
    return doc


def setting_summary(exp: Experiment, rows: list[Run]) -> dict:
    """One setting's entry of the summary from its runs (by seed)."""
    m = exp.metric
    values = [r.result["test"][m.result] for r in rows]
    mean, std = mean_std(values)
    curves = [exp.run_curve(r) for r in rows]
    entry = {
        m.key: values, f"{m.key}_mean": mean, f"{m.key}_std": std, "seeds": [r.seed for r in rows],
        "test_loss": [r.result["test"].get("loss") for r in rows],
        "val_curve": mean_curve(curves), "val_curves": curves,
        "tokens_seen": rows[0].result["tokens_seen"],
        "wall_s": [round(r.result["wall_s"], 2) for r in rows],
        "train_s": [round(r.result["train_s"], 2) for r in rows],
        "tokens_per_s": [round(r.result["tokens_seen"] / r.result["train_s"]) if r.result["train_s"] > 0 else None
                         for r in rows],
    }
    if exp.flatness is not None:
        gains = [exp.flatness.gain(c, m) for c in curves]
        entry[exp.flatness.gain_key] = gains
        entry["val_flat"] = [exp.flatness.flat(g) for g in gains]
    if exp.early_stopping is not None:
        read = [exp.early_stopping.read(r.dir, m) for r in rows]
        entry["best_val_step"] = [step for step, _ in read]
        entry[exp.early_stopping.key] = [value for _, value in read]
    for r in rows if exp.run_fields is not None else ():
        for key, value in exp.run_fields(r).items():
            entry.setdefault(key, []).append(value)
    return entry


def n_params(run_dir: Path) -> int | None:
    """The parameter count of a run's last checkpoint (None where it cannot be read)."""
    from ..model.checkpoint import inspect_checkpoint

    try:
        return inspect_checkpoint(run_dir / runstate.CHECKPOINT).n_params
    except Exception:  # the count is informative only
        return None


def comparisons(exp: Experiment, settings: dict) -> dict:
    """``<a>_minus_<b>``: each setting against the baseline ({diff, spread, t}), and each comparison
    of the description whose settings ran (with its claim, origin, expect, outcome and note)."""
    key, base = exp.metric.key, exp.baseline
    out = {}
    for s in settings if base in settings else ():
        if s != base:
            diff, spread, t = seed_comparison(settings[s][key], settings[base][key])
            out[f"{s}_minus_{base}"] = {"diff": diff, "spread": spread, "t": t}
    for c in exp.comparisons:
        v = c.judge(settings, exp.metric)
        if v["diff"] is not None:
            out[c.name] = {**v, "claim": c.claim, "origin": c.origin, "expect": c.expect}
    es = exp.early_stopping
    for c in exp.comparisons if es is not None else ():
        c = es.comparison(c)
        v = c.judge(settings, es.metric(exp.metric))
        if v["diff"] is not None:
            out[f"{c.name}_{es.key}"] = {**v, "claim": c.claim, "origin": c.origin, "expect": c.expect}
    return out


def _num(v: float | None, fmt: str) -> str:
    return "n/a" if v is None else format(v, fmt)


def markdown(exp: Experiment, doc: dict) -> str:
    """STEM.md: the metric per setting (mean ± std, per seed, against the baseline, the flatness of
    the curves, the experiment's columns, seconds per run), the description's comparisons with their
    outcome, and the experiment's own sections. Reads only per-seed values, so a summary written by
    an older version (see :func:`upgrade`) gives the same tables."""
    m, d = exp.metric, exp.metric.digits
    cfg, settings = doc["config"], doc["settings"]
    base = settings.get(exp.baseline) if exp.baseline else None
    flat = exp.flatness
    header = ["setting", "seeds", f"{m.label} (mean ± std)", "per seed"]
    header += [f"− {exp.baseline} (± seed spread; Welch t)"] if base else []
    header += [f"validation gain over the last {flat.last:.0%} of steps (flat: < {flat.min_gain:.0%}; "
               "negative: the metric got worse)"] if flat else []
    header += [c.header(doc) for c in exp.columns] + ["wall s per run (runs of a grid may have shared the device)"]
    lines = [f"{m.label.capitalize()}, {cfg['scale']} scale: {exp.describe(doc)}; data: {doc.get('data')}; "
             f"device: {doc.get('device')}.", "", _row(header), _row(["---"] * len(header))]
    for s, v in settings.items():
        values = v[m.key]
        cells = [s, str(len(values)), format_mean_std(*mean_std(values), d), ", ".join(f"{x:.{d}f}" for x in values)]
        if base:
            cells.append("" if v is base else _against(values, base[m.key], d))
        if flat:
            # a summary written before the rule: the rule on its per-seed curves
            gains = v.get(flat.gain_key) or [flat.gain(c, m) for c in v.get("val_curves", [])]
            cells.append(", ".join("n/a" if g is None else f"{g:+.1%}" + (" flat" if flat.flat(g) else "")
                                   for g in gains) or "n/a")
        cells += [c.cell(doc, v) for c in exp.columns]
        cells.append(f"{statistics.fmean(v['wall_s']):.1f}" if v.get("wall_s") else "n/a")
        lines.append(_row(cells))
    lines += comparison_table(exp.comparisons_for(settings), settings, m)
    es = exp.early_stopping
    read = es.metric(m) if es is not None else None
    if read is not None and any(x is not None for v in settings.values() for x in v.get(es.key) or ()):
        lines += ["", f"{m.label.capitalize()} {es.words}:", "",
                  _row(["setting", "seeds", f"{m.label} (mean ± std)", "per seed", "best validation step per seed"]),
                  _row(["---"] * 5)]
        for s, v in settings.items():
            values = [x for x in v.get(es.key) or () if x is not None]
            lines.append(_row([s, str(len(values)), format_mean_std(*mean_std(values), d) if values else "n/a",
                               ", ".join("n/a" if x is None else f"{x:.{d}f}" for x in v.get(es.key) or ()),
                               ", ".join(str(x) for x in v.get("best_val_step") or ())]))
        lines += comparison_table([es.comparison(c) for c in exp.comparisons_for(settings)], settings, read)
    text = "\n".join(lines) + "\n"
    return text + ("\n" + exp.sections(doc) if exp.sections is not None else "")


def comparison_table(tested: list, settings: dict, m: Metric) -> list[str]:
    """Markdown lines: each comparison of ``tested`` judged on ``settings`` by metric ``m``."""
    if not tested:
        return []
    d = m.digits
    lines = ["", f"Comparisons the experiment tests on {m.label} (difference of means against the seed spread "
             "√(s₁²/n₁+s₂²/n₂); their ratio is Welch's t):", "",
             _row(["comparison", "claim", "difference of means", "seed spread", "Welch t", "tolerance", "outcome"]),
             _row(["---"] * 7)]
    for c in tested:
        r = c.judge(settings, m)
        notes = [r["note"]] if r["note"] else []
        if r.get("seeds_to_resolve"):
            notes.append(resolve_words(r["seeds_to_resolve"], c.min_t))
        outcome = r["outcome"] + (f" ({'; '.join(notes)})" if notes else "")
        lines.append(_row([f"{c.setting} − {c.other}", f"{c.short} ({ORIGINS[c.origin]})",
                           _num(r["diff"], f"+.{d}f"), _num(r["spread"], f".{d}f"), _num(r["t"], "+.2f"),
                           f"t ≥ {c.min_t:g} in its direction, ≥ {c.min_seeds} seeds", outcome]))
    return lines


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _against(values: list[float], base: list[float], digits: int) -> str:
    diff, spread, t = seed_comparison(values, base)
    return f"{diff:+.{digits}f} (± {_num(spread, f'.{digits}f')}; t {_num(t, '+.2f')})"


def upgrade(doc: dict) -> dict:
    """A summary written before this writer, in today's shape (in place; returned): reorder.json
    kept each seed's curve under ``val_curve`` and the seeds and wall times under ``config``."""
    cfg = doc.get("config", {})
    for s, v in doc.get("settings", {}).items():
        curves = v.get("val_curve")
        if "val_curves" not in v and curves and isinstance(curves[0][0], list):
            v["val_curves"], v["val_curve"] = curves, mean_curve(curves)
        for key in ("seeds", "wall_s"):
            if key not in v and isinstance(cfg.get(key), dict) and s in cfg[key]:
                v[key] = cfg[key][s]
    return doc


def load_summary(path: Path) -> dict | None:
    """A committed summary (e.g. results/lm_scenarios.json) in today's shape, or None when absent or
    unreadable."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    return upgrade(doc) if isinstance(doc, dict) else None
