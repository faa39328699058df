"""The lm-scenarios experiment (THEORY.md section 5): language models whose S_Cᵀ S_B is
unconstrained (none), positive, negative or mixed, several seeds each, with the same data,
tokenizer, model size and token budget; test perplexity per setting and validation curves.

Layout of OUT:

    runs/<setting>-seed<k>/     one training run each (tokendyn.train.state layout); a run
                                with result.json is complete and skipped by later calls, an
                                incomplete one is resumed from its checkpoint
    lm_scenarios.json           {"settings": {s: {"test_ppl": [...], "val_curve": [...], ...}},
                                 "config", "data", "device", "commit", "command", ...}
    lm_scenarios.md             mean ± std test perplexity per setting, differences vs the seed spread
    lm_scenarios_val.png        validation perplexity curves
    lm_scenarios_spectra.png    the analyser's spectra of a trained positive and negative model
    lm_scenarios_token_norms.png  their token-norm heatmaps, side by side

Calls with different ``settings`` / ``seeds`` fill the same OUT; every call rewrites the
summary from all complete runs found there, so partial result directories merge by copying
their ``runs/*`` into one OUT and calling again.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

from ..errors import ConfigError
from . import grid
from . import state as runstate
from .figures import plot_seed_curves, save_figure
from .grid import collect, run_name
from .lm import DEFAULT_SETTINGS, IO_SETTINGS, LMModelSpec, prepare_data, train_lm
from .loop import TrainConfig
from .seeds import seed_comparison

# Model, data and budget of each scale. full: one H200 for the whole 12-run grid in about
# 8 minutes (docs/training.md has the measured times); quick: a CPU; smoke: the CPU in
# seconds per run (the lm section of tokendyn reproduce).
SCALES = {
    "smoke": {"model": {"d_model": 32, "n_layer": 2, "d_state": 8}, "vocab_size": 512, "context": 64,
              "batch_size": 8, "steps": 60, "lr": 3e-3, "eval_every": 15, "eval_tokens": 4096, "monitor_every": 15},
    "quick": {"model": {"d_model": 64, "n_layer": 2, "d_state": 8}, "vocab_size": 1024, "context": 128,
              "batch_size": 16, "steps": 150, "lr": 3e-3, "eval_every": 25, "eval_tokens": 16384,
              "monitor_every": 25},
    # the authors' width, context, lr, schedule, weight decay (0.25 on every parameter) and
    # final dropout (0.3), at 36.5M parameters and 41M tokens per run (1.8 epochs of the
    # english corpus's 23M training tokens)
    "full": {"model": {"d_model": 768, "n_layer": 8, "d_state": 16, "final_dropout": 0.3}, "corpus": "english",
             "vocab_size": 8192, "context": 1024, "batch_size": 32, "steps": 1250, "lr": 1.5e-3, "warmup": 0.01,
             "weight_decay": 0.25, "decay_rule": "all", "eval_every": 125, "eval_tokens": 0,
             "monitor_every": 250},
}
DEFAULT_SEEDS = (0, 1, 2)
RESULT_FILES = ("lm_scenarios.json", "lm_scenarios.md", "lm_scenarios_val.png", "lm_scenarios_spectra.png",
                "lm_scenarios_token_norms.png", "lm_scenarios_inlayer.png")


def check_settings(settings) -> list[str]:
    """The settings asked for, in canonical order; :class:`ConfigError` for an unknown one."""
    return grid.choose_settings(settings, IO_SETTINGS, DEFAULT_SETTINGS)


def scale_params(scale: str) -> dict:
    return grid.choose_scale(scale, SCALES)


def run_grid(out: Path, scale: str = "quick", settings=(), seeds=DEFAULT_SEEDS, device="auto",
             text_files=None, wikitext=None, cache_dir=None, progress: bool = True, log=print,
             provenance: dict | None = None, analyse: bool = True) -> dict:
    """Train every (setting, seed) not yet complete in OUT, then write the summary files.

    Returns the lm_scenarios.json document.
    """
    settings = check_settings(settings)
    seeds = grid.choose_seeds(seeds)
    p = scale_params(scale)
    out = Path(out)
    t0 = time.perf_counter()
    data = prepare_data(text_files=text_files, wikitext=wikitext, vocab_size=p["vocab_size"], cache_dir=cache_dir,
                        builtin=p.get("corpus", "bible"))
    log(f"data: {data.describe()['name']}; tokens {data.describe()['tokens']}; prepared in "
        f"{time.perf_counter() - t0:.1f} s")
    for setting, seed, run_dir, resume in grid.pending_runs(out, settings, seeds, log):
        cfg = TrainConfig(steps=p["steps"], lr=p["lr"], warmup=p.get("warmup", 0.01), eval_every=p["eval_every"],
                          checkpoint_every=2 * p["eval_every"], log_every=10, seed=seed,
                          weight_decay=p.get("weight_decay", 0.1), decay_rule=p.get("decay_rule", "matrices"))
        t = time.perf_counter()
        res, _ = train_lm(data, LMModelSpec(**p["model"], io_constraint=setting), cfg, context=p["context"],
                          batch_size=p["batch_size"], out=run_dir, resume=resume, device=device,
                          eval_tokens=p["eval_tokens"], monitor_every=p["monitor_every"], progress=progress,
                          analysis_figures=analyse, log=log)
        log(f"{run_name(setting, seed)}: test ppl {res.test['ppl']:.3f} in {time.perf_counter() - t:.1f} s")
    doc = summarise(out, scale, device=str(device), provenance=provenance, analyse=analyse, log=log)
    # this call's wall time, data preparation and figures included (runs it skipped cost nothing)
    doc["call_wall_s"] = round(time.perf_counter() - t0, 2)
    doc["call_runs"] = [run_name(s, k) for s in settings for k in seeds]
    runstate.atomic_write_text(out / "lm_scenarios.json", json.dumps(doc, indent=1) + "\n")
    return doc


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def summarise(out: Path, scale: str, device: str = "", provenance: dict | None = None, analyse: bool = True,
              log=print) -> dict:
    """Write lm_scenarios.json / .md / figures from the complete runs in OUT."""
    out = Path(out)
    runs = collect(out)
    if not runs:
        raise ConfigError(f"{out} holds no complete lm-scenarios run.")
    identities = {json.dumps(_shared_identity(r[1]), sort_keys=True) for rows in runs.values() for r in rows}
    if len(identities) > 1:
        raise ConfigError(f"the runs in {out} differ in data or budget; they cannot be compared in one table.")
    settings = {}
    for setting in IO_SETTINGS:
        rows = runs.get(setting)
        if not rows:
            continue
        test_ppl = [r[2]["test"]["ppl"] for r in rows]
        curves = [r[2]["val_curve"] for r in rows]
        steps = [c[0] for c in curves[0]]
        mean_curve = [[s, statistics.fmean(c[i][1] for c in curves)] for i, s in enumerate(steps)
                      if all(len(c) > i and c[i][0] == s for c in curves)]
        mean, std = _mean_std(test_ppl)
        settings[setting] = {
            "test_ppl": test_ppl, "test_loss": [r[2]["test"]["loss"] for r in rows],
            "val_curve": mean_curve, "val_curves": curves, "seeds": [r[0] for r in rows],
            "test_ppl_mean": mean, "test_ppl_std": std,
            "params": rows[0][1].get("params"), "tokens_seen": rows[0][2]["tokens_seen"], "wall_s": [round(r[2]["wall_s"], 2) for r in rows],
            "train_s": [round(r[2]["train_s"], 2) for r in rows],
            "monitor_s": [round(r[2]["callback_s"], 3) for r in rows],
            "tokens_per_s": [round(r[2]["tokens_seen"] / r[2]["train_s"]) for r in rows if r[2]["train_s"] > 0],
            # per seed, the monitor's last record: per layer the signature, the radial velocity and
            # the idealised flow's verdict at the end of training (THEORY.md section 4)
            "monitor_final": [_final_monitor(r[3]) for r in rows],
        }
    first = next(iter(runs.values()))[0]
    model = {k: v for k, v in first[1]["model"].items() if k != "io_constraint"}
    doc = {
        "settings": settings,
        "comparisons": _comparisons(settings),
        "config": {"scale": scale, "model": model, "train": first[1]["train"], "task": first[1]["task"],
                   "params": first[1].get("params") or _n_params(first[3])},
        "data": first[1]["data"]["name"],
        "data_details": first[1]["data"],
        "seeds": sorted({s for v in settings.values() for s in v["seeds"]}),
        "tokens_seen": first[2]["tokens_seen"],
        "wall_s": round(sum(sum(v["wall_s"]) for v in settings.values()), 2),
        **(provenance or {}),
    }
    doc["device"] = (provenance or {}).get("device", device)
    runstate.atomic_write_text(out / "lm_scenarios.json", json.dumps(doc, indent=1) + "\n")
    runstate.atomic_write_text(out / "lm_scenarios.md", markdown_table(doc) + "\n" + inlayer_table(doc))
    save_figure(plot_curves(doc), out / "lm_scenarios_val.png")
    save_figure(plot_inlayer(doc), out / "lm_scenarios_inlayer.png")
    if analyse:
        _analysis_figures(out, runs, log)
    return doc


def _shared_identity(ident: dict) -> dict:
    """run.json less the seeds and the io constraint (what every run must share)."""
    return grid.shared_identity(ident, ("io_constraint",))


def _n_params(run_dir: Path) -> int | None:
    from ..model.checkpoint import inspect_checkpoint

    try:
        return inspect_checkpoint(run_dir / runstate.CHECKPOINT).n_params
    except Exception:  # the count is informative only
        return None


def _final_monitor(run_dir: Path) -> list[dict]:
    entries = [r for r in runstate.read_metrics(run_dir) if r.get("kind") == "monitor"]
    return entries[-1]["layers"] if entries else []


def _comparisons(settings: dict) -> dict:
    """Each constrained setting against none, and positive against negative: difference of mean
    test perplexity, the seed spread sqrt(s1²/n1 + s2²/n2), and their ratio (Welch's t)."""
    pairs = [(s, "none") for s in ("positive", "negative", "mixed", "mixed_margin")] + [("positive", "negative")]
    out = {}
    for a, b in pairs:
        if a not in settings or b not in settings:
            continue
        diff, spread, t = seed_comparison(settings[a]["test_ppl"], settings[b]["test_ppl"])
        out[f"{a}_minus_{b}"] = {"diff": diff, "spread": spread, "t": t}
    return out


def markdown_table(doc: dict) -> str:
    """Mean ± std test perplexity per setting and the differences against the seed spread."""
    cfg = doc["config"]
    m = cfg["model"]
    lines = [f"Test perplexity, {cfg['scale']} scale: MambaLM d_model {m['d_model']}, {m['n_layer']} layers, "
             f"d_state {m['d_state']}, vocabulary {m['vocab_size']}, context {cfg['task']['context']}, "
             f"{doc['tokens_seen']:,} training tokens per run; data: {doc['data']}; device: {doc.get('device')}.",
             "", "| setting | seeds | test perplexity (mean ± std) | per seed |", "|---|---|---|---|"]
    for s, v in doc["settings"].items():
        std = "n/a" if v["test_ppl_std"] is None else f"{v['test_ppl_std']:.3f}"
        lines.append(f"| {s} | {len(v['seeds'])} | {v['test_ppl_mean']:.3f} ± {std} | "
                     + ", ".join(f"{x:.3f}" for x in v["test_ppl"]) + " |")
    if doc["comparisons"]:
        lines += ["", "| comparison | difference of means | seed spread √(s₁²/n₁+s₂²/n₂) | ratio (Welch t) |",
                  "|---|---|---|---|"]
        for name, c in doc["comparisons"].items():
            t = "n/a" if c["t"] is None else f"{c['t']:+.2f}"
            spread = "n/a" if c["spread"] is None else f"{c['spread']:.3f}"
            lines.append(f"| {name.replace('_minus_', ' − ')} | {c['diff']:+.3f} | {spread} | {t} |")
    return "\n".join(lines) + "\n"


SETTING_COLOURS = {"none": "k", "positive": "tab:red", "negative": "tab:blue", "mixed": "tab:green",
                   "mixed_margin": "tab:olive"}


def _verdict_counts(verdicts) -> str:
    from ..analysis.layer_flow import count_verdicts

    counts = count_verdicts(verdicts)
    return ", ".join(f"{v} ×{k}" if k > 1 else v for v, k in counts.items())


def inlayer_table(doc: dict) -> str:
    """The study of the trained models (THEORY.md section 4): per setting and layer, at the end of
    training, the signature of M_s, the median radial velocity of the scan input on the probe
    (mean over seeds, with the range), and the idealised flow's verdicts over the seeds."""
    lines = ["In-layer quantities at the end of training (the regime monitor's last record of every run, on the "
             "probe: the first tokens of the test split). Radial velocity: median over tokens of ⟨u_l, y_l⟩/|u_l|², "
             "mean over seeds [range]; flow: the idealised flow on the layer's parameters from its real tokens.", "",
             "| setting | layer | M_s +/−/0 (per seed) | radial velocity | share > 0 | idealised flow (per seed) |",
             "|---|---|---|---|---|---|"]
    notes = []
    for s, v in doc["settings"].items():
        finals = [f for f in v.get("monitor_final", []) if f]
        if not finals:
            continue
        conv = sum(row["regime"] == "convergence" for f in finals for row in f)
        rv_neg = sum(row.get("radial_velocity", 0.0) < 0 for f in finals for row in f)
        total = sum(len(f) for f in finals)
        notes.append(f"{s}: {conv} of {total} layers (all seeds) convergent-prone by the signature, "
                     f"{rv_neg} with a negative median radial velocity")
        for i in range(len(finals[0])):
            rows = [f[i] for f in finals if len(f) > i]
            sig = ", ".join(sorted({f"{r['positive']}/{r['negative']}/{r['zero']}" for r in rows}))
            rv = [r.get("radial_velocity") for r in rows if r.get("radial_velocity") is not None]
            share = [r.get("radial_velocity_share") for r in rows if r.get("radial_velocity_share") is not None]
            rv_cell = (f"{statistics.fmean(rv):+.4f} [{min(rv):+.4f}, {max(rv):+.4f}]" if rv else "n/a")
            share_cell = f"{statistics.fmean(share):.2f}" if share else "n/a"
            lines.append(f"| {s} | {i} | {sig} | {rv_cell} | {share_cell} | "
                         f"{_verdict_counts(r.get('flow') for r in rows)} |")
    return "\n".join(lines + [""] + [f"- {n}" for n in notes]) + "\n"


def plot_inlayer(doc: dict):
    """Median radial velocity of the scan input per layer at the end of training: a dot per seed,
    a line through the mean over seeds, one colour per setting."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(8, 4.5))
    settings = [s for s, v in doc["settings"].items() if any(v.get("monitor_final", []))]
    width = 0.6 / max(len(settings), 1)
    for k, s in enumerate(settings):
        finals = [f for f in doc["settings"][s]["monitor_final"] if f]
        n_layer = len(finals[0])
        shift = (k - (len(settings) - 1) / 2) * width          # settings side by side at each layer
        means = []
        for i in range(n_layer):
            rv = [f[i].get("radial_velocity", float("nan")) for f in finals if len(f) > i]
            ax.plot([i + shift] * len(rv), rv, ls="", marker="o", ms=4, alpha=0.6, color=SETTING_COLOURS.get(s))
            means.append(statistics.fmean(rv))
        ax.plot([i + shift for i in range(n_layer)], means, lw=1.2, color=SETTING_COLOURS.get(s), label=s)
    ax.axhline(0.0, color="k", lw=0.8)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("layer index")
    ax.set_ylabel("median ⟨u_l, y_l⟩ / |u_l|²")
    ax.set_title("radial velocity of each layer's scan input after training\n(dots: seeds; below 0: convergent side)",
                 fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_curves(doc: dict):
    """Validation perplexity per step: thin lines per seed, a thick line for the mean."""
    return plot_seed_curves({s: v["val_curves"] for s, v in doc["settings"].items()}, SETTING_COLOURS,
                            xlabel="optimiser step", ylabel="validation perplexity",
                            title="validation perplexity by S_Cᵀ S_B setting", log_y=True)


def _side_by_side(images: dict, title: str):
    """One figure showing the given PNG files side by side, each titled by its key."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.image as mpimg
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(images), figsize=(9 * len(images), 3.8))
    for ax, (label, path) in zip(axes if len(images) > 1 else [axes], images.items()):
        ax.imshow(mpimg.imread(path))
        ax.set_title(label)
        ax.axis("off")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def _analysis_figures(out: Path, runs: dict, log) -> None:
    """The analyser's spectra and token-norm heatmaps of the first positive and negative run that
    has them (each run writes its own at the end of training, on the first tokens of the test
    split), side by side."""
    from .lm import ANALYSIS_FIGURES

    chosen = {}
    for s in ("positive", "negative"):
        for seed, _, _, run_dir in runs.get(s, []):
            if all((run_dir / f).is_file() for f in ANALYSIS_FIGURES.values()):
                chosen[f"{s} (seed {seed})"] = run_dir
                break
    if not chosen:
        return
    for key, name, title in (("spectra", "lm_scenarios_spectra.png", "spectrum of S_Cᵀ S_B per layer after training"),
                             ("token_norms", "lm_scenarios_token_norms.png",
                              "token norms through the layers after training (first tokens of the test split)")):
        fig = _side_by_side({label: d / ANALYSIS_FIGURES[key] for label, d in chosen.items()}, title)
        save_figure(fig, out / name)
    log(f"analysis figures of {', '.join(chosen)} written")


def load_committed(path: Path) -> dict | None:
    """A committed lm_scenarios.json (e.g. results/lm_scenarios.json), or None when absent."""
    return grid.load_summary(path)


__all__ = ["SCALES", "run_grid", "summarise", "markdown_table", "check_settings", "load_committed"]
