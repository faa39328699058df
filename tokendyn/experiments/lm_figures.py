"""The lm-scenarios experiment's own tables and figures (:mod:`.lm_scenarios`): the in-layer
study of the trained models (THEORY.md section 4) from the regime monitor's last record of every
run, and the analyser's spectra and token-norm heatmaps of a trained positive and negative model."""

from __future__ import annotations

import statistics
from pathlib import Path

from ..train import state as runstate
from ..train.figures import save_figure


def final_monitor(run_dir: Path) -> list[dict]:
    """The regime monitor's last record of a run: per layer the signature, the radial velocity and
    the idealised flow's verdict at the end of training."""
    entries = [r for r in runstate.read_metrics(run_dir) if r.get("kind") == "monitor"]
    return entries[-1]["layers"] if entries else []


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

    fig, ax = plt.subplots(figsize=(6.4, 4.8), layout="constrained")
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
    ax.legend(fontsize=9, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=min(4, max(len(settings), 1)),
              frameon=False)
    return fig


def _side_by_side(images: dict, title: str, dpi: int = 110):
    """One figure of the given PNG files, each titled by its key, at their own pixel size (saved at
    ``dpi``): wide images (each a row of panels) one under the other, tall ones side by side, so that
    two two-panel figures make a 2 × 2 grid rather than a strip of four."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.image as mpimg
    import matplotlib.pyplot as plt

    pics = {label: mpimg.imread(path) for label, path in images.items()}
    h = max(p.shape[0] for p in pics.values())
    w = max(p.shape[1] for p in pics.values())
    n = len(pics)
    stack = w > 1.5 * h
    rows, cols = (n, 1) if stack else (1, n)
    head = 0.45                                                   # inches per title line
    fig, axes = plt.subplots(rows, cols, squeeze=False,
                             figsize=(cols * w / dpi, rows * (h / dpi + head) + head))
    for ax, (label, pic) in zip(axes.flat, pics.items()):
        ax.imshow(pic, interpolation="none")
        ax.set_title(label, fontsize=12)
        ax.axis("off")
    fig.suptitle(title, fontsize=13)
    fig.tight_layout()
    return fig


def analysis_figures(out: Path, runs: dict, data, log) -> None:
    """The analyser's spectra and token-norm heatmaps of the first positive and negative run that
    has them, side by side. Each run draws its own at the end of training, on the first
    ``context`` tokens of the test split (:func:`tokendyn.train.language.write_analysis_figures`), so
    the summary needs neither the checkpoints nor the data."""
    from ..train.language import ANALYSIS_FIGURES

    chosen = {}
    for s in ("positive", "negative"):
        for run in runs.get(s, []):
            if all((run.dir / f).is_file() for f in ANALYSIS_FIGURES.values()):
                chosen[f"{s} (seed {run.seed})"] = run.dir
                break
    if not chosen:
        return
    for key, name, title in (("spectra", "lm_scenarios_spectra.png", "spectrum of S_Cᵀ S_B per layer after training"),
                             ("token_norms", "lm_scenarios_token_norms.png",
                              "token norms through the layers after training (first tokens of the test split)")):
        save_figure(_side_by_side({label: d / ANALYSIS_FIGURES[key] for label, d in chosen.items()}, title),
                    out / name)
    log(f"analysis figures of {', '.join(chosen)} written")
