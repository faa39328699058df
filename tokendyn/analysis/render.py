"""Figures (PNG), a self-contained HTML page and JSON for one checkpoint analysis.

Each ``plot_*`` function draws one figure from tensors and returns the matplotlib
Figure; :func:`write_report` saves them and writes ``report.html`` with the PNGs
embedded as base64, so the page can be mailed or attached on its own. The page is
built from the template and style every tokendyn page shares (tokendyn.report).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import matplotlib
import numpy as np
import torch
import torch.nn.functional as F

matplotlib.use("Agg")  # files only; never open a window
import matplotlib.pyplot as plt  # noqa: E402 -- pyplot must come after matplotlib.use("Agg")
from matplotlib.colors import LogNorm  # noqa: E402 -- with pyplot, after matplotlib.use
from matplotlib.lines import Line2D  # noqa: E402 -- with pyplot, after matplotlib.use
from matplotlib.ticker import MaxNLocator  # noqa: E402 -- with pyplot, after matplotlib.use

from ..report.axes import plain_log_ticks, symlog_axis  # noqa: E402 -- kept with the matplotlib imports, after matplotlib.use
from ..report.page import embed_image, esc, page, table  # noqa: E402 -- kept with the matplotlib imports, after matplotlib.use
from .layer_flow import count_verdicts  # noqa: E402 -- with the matplotlib imports, after matplotlib.use

FIGURES = {
    "spectra": "analysis_spectra.png",
    "radial_velocity": "analysis_radial_velocity.png",
    "flow": "analysis_flow.png",
    "token_norms": "analysis_token_norms.png",
    "growth": "analysis_growth.png",
    "hidden_attention": "analysis_hidden_attention.png",
}


def plot_spectra(spectra: Sequence) -> plt.Figure:
    """Top: the nonzero eigenvalues of M_s per layer (red > 0, blue < 0, symlog axis).
    Bottom: the nonzero eigenvalues of M = S_Cᵀ S_B in the complex plane, coloured by layer.
    One panel under the other, so that the figure reads at a phone's width."""
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(6.4, 8.4), layout="constrained")
    all_abs = [float(s.sym_eigvals.abs().max()) for s in spectra if s.sym_eigvals.numel()]
    floor = max(max(all_abs, default=1.0) * 1e-6, 1e-15)   # below this an eigenvalue counts as zero here
    kept = [s.sym_eigvals.numpy()[np.abs(s.sym_eigvals.numpy()) > floor] for s in spectra]
    cmap = plt.get_cmap("viridis")
    n = max(len(spectra), 1)
    for s, ev in zip(spectra, kept):
        jitter = np.full(ev.shape, s.index, dtype=float)
        ax1.scatter(jitter[ev > 0], ev[ev > 0], s=10, c="tab:red", alpha=0.7)
        ax1.scatter(jitter[ev < 0], ev[ev < 0], s=10, c="tab:blue", alpha=0.7)
        z = s.io_eigvals.numpy()
        ax2.scatter(z.real, z.imag, s=10, color=cmap(s.index / max(n - 1, 1)), alpha=0.8)
    ax1.axhline(0, color="k", lw=0.6)
    ax1.xaxis.set_major_locator(MaxNLocator(integer=True))
    symlog_axis(ax1, "y", np.concatenate(kept) if kept else [])   # no empty decades, no crowded labels
    ax1.set_xlabel("layer index")
    ax1.set_ylabel("eigenvalue of M_s = (M + Mᵀ)/2 (symlog)")
    ax1.set_title("symmetric part M_s per layer")
    ax1.legend(handles=[Line2D([], [], ls="", marker="o", color="tab:red", label="positive eigenvalue"),
                        Line2D([], [], ls="", marker="o", color="tab:blue", label="negative eigenvalue")],
               fontsize=9, loc="lower center", bbox_to_anchor=(0.5, 1.08), ncol=2, frameon=False)
    ax2.axvline(0, color="k", lw=0.6)
    ax2.axhline(0, color="k", lw=0.6)
    ax2.set_xlabel("Re λ(M) (dimensionless)")
    ax2.set_ylabel("Im λ(M) (dimensionless)")
    ax2.set_title("eigenvalues of M = S_Cᵀ S_B (colour: layer)")
    sm = plt.cm.ScalarMappable(cmap=cmap, norm=plt.Normalize(0, n - 1))
    cb = fig.colorbar(sm, ax=ax2, label="layer index")
    cb.locator = MaxNLocator(integer=True)
    cb.update_ticks()
    return fig


REGIME_COLOURS = {"divergence": "tab:red", "convergence": "tab:blue", "static": "tab:gray"}


def plot_radial_velocity(theory: Sequence, spectra: Sequence) -> plt.Figure:
    """Per layer, the distribution over tokens of the radial velocity ⟨u_l, y_l⟩/|u_l|² of the scan
    input under the layer's own scan without D and gate: box = quartiles, whiskers = 10th and 90th
    percentiles, line = median; coloured by the regime the layer's signature predicts."""
    fig, ax = plt.subplots(figsize=(6.4, 4.8), layout="constrained")
    data = [th.radial_velocity.numpy() for th in theory]
    positions = [th.index for th in theory]
    box = ax.boxplot(data, positions=positions, whis=(10, 90), showfliers=False, patch_artist=True, widths=0.6)
    for patch, s in zip(box["boxes"], spectra):
        patch.set_facecolor(REGIME_COLOURS.get(s.predicted_regime, "tab:gray"))
        patch.set_alpha(0.55)
    for med in box["medians"]:
        med.set_color("k")
    ax.axhline(0, color="k", lw=0.6)
    step = max(1, len(positions) // 12)                       # at most about a dozen labels
    ax.set_xticks(positions[::step], [str(p) for p in positions[::step]])
    ax.set_xlabel("layer index")
    ax.set_ylabel("⟨u_l, y_l⟩ / |u_l|² (per unit flow time)")
    ax.set_title("radial velocity of the scan input\n(the layer's own scan, without D and gate)", fontsize=10)
    present = dict.fromkeys(s.predicted_regime for s in spectra)
    ax.legend(handles=[Line2D([], [], ls="", marker="s", color=REGIME_COLOURS.get(r, "tab:gray"), alpha=0.55,
                              label=f"predicted {r}") for r in present], fontsize=9, loc="upper center",
              bbox_to_anchor=(0.5, -0.16), ncol=len(present), frameon=False)   # outside: it never covers data
    return fig


def plot_flow(theory: Sequence) -> plt.Figure:
    """The idealised flow of each layer from its real tokens: geometric mean over tokens of
    |u_l(t)|/|u_l(0)| against t (log y); a cross marks a blow-up, where the curve ends."""
    fig, ax = plt.subplots(figsize=(6.4, 4.8), layout="constrained")
    flows = [(th.index, th.flow) for th in theory if th.flow is not None]
    cmap = plt.get_cmap("viridis")
    n = max(len(theory) - 1, 1)
    lo, hi = 1.0, 1.0
    for i, f in flows:
        colour = cmap(i / n)
        ax.plot(f.t[1:].numpy(), f.ratio[1:].numpy(), color=colour, lw=1.2)   # t = 0 has no place on a log axis
        if f.blowup_time is not None:
            ax.plot([f.t[-1]], [f.ratio[-1]], marker="X", ms=8, color=colour, ls="")
        lo, hi = min(lo, float(f.ratio.min())), max(hi, float(f.ratio.max()))
    ax.axhline(1.0, color="k", lw=0.6)
    ax.set_yscale("log")
    ax.set_xscale("log")
    ax.set_ylim(lo / 1.05, hi * 1.05)          # room for the blow-up crosses
    plain_log_ticks(ax, "y")
    t_end = max((f.t_end for _, f in flows), default=1.0)
    ax.set_xlim(t_end * 1e-3, t_end)
    ax.set_xlabel("flow time t (log)")
    ax.set_ylabel("|u_l(t)| / |u_l(0)| (geometric mean over tokens)")
    tokens = flows[0][1].tokens if flows else 0
    ax.set_title(f"idealised flow on each layer's parameters,\nfrom its first {tokens} real tokens", fontsize=10)
    sm = plt.cm.ScalarMappable(cmap=cmap, norm=plt.Normalize(0, n))
    cb = fig.colorbar(sm, ax=ax, label="layer index")
    cb.locator = MaxNLocator(integer=True)
    cb.update_ticks()
    ax.legend(handles=[Line2D([], [], ls="", marker="X", color="k", label="blow-up (curve ends)")],
              fontsize=9, loc="upper center", bbox_to_anchor=(0.5, -0.16), frameon=False)
    return fig


def _heat(ax, mat: np.ndarray, title: str, ylabel: str, fig, label: str) -> None:
    pos = mat[mat > 0]
    norm = LogNorm(vmin=float(pos.min()), vmax=float(pos.max())) if pos.size else None
    im = ax.imshow(np.where(mat > 0, mat, np.nan), aspect="auto", origin="lower", norm=norm,
                   cmap="magma", interpolation="nearest")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("token position l (index)")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    fig.colorbar(im, ax=ax, label=label)


def plot_token_norms(dyn) -> plt.Figure:
    """Top: ‖x_l‖ of the residual stream, row 0 = embeddings, row i+1 = after layer i.
    Bottom: ‖u_l‖ of the scan input inside each mixer."""
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(6.4, 8.4), layout="constrained")
    _heat(ax1, dyn.all_norms.numpy(), "residual-stream norm", "depth (0 = embedding, i+1 = after layer i)", fig,
          "‖x_l‖ (Euclidean norm, log colour)")
    _heat(ax2, dyn.scan_input_norms.numpy(), "norm of the scan input u inside each mixer", "layer index", fig,
          "‖u_l‖ (Euclidean norm, log colour)")
    return fig


def plot_growth(dyn) -> plt.Figure:
    """Top: per-layer growth factor (geometric mean over tokens). Bottom: total growth by position."""
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(6.4, 8.0), layout="constrained")
    g = dyn.layer_growth().numpy()
    ax1.bar(np.arange(g.size), g, color=np.where(g >= 1, "tab:red", "tab:blue"))
    ax1.axhline(1.0, color="k", lw=0.6)
    ax1.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax1.set_xlabel("layer index")
    ax1.set_ylabel("norm growth factor (‖out‖ / ‖in‖, ratio)")
    ax1.set_title("growth per layer (> 1 grows, < 1 shrinks)")
    pg = dyn.position_growth().numpy()
    ax2.plot(np.arange(pg.size), pg, lw=0.8)
    ax2.set_yscale("log")
    ax2.set_xlabel("token position l (index)")
    ax2.set_ylabel("‖after last layer‖ / ‖embedding‖ (ratio)")
    trend = dyn.position_trend()
    ax2.set_title(f"growth by position (Spearman ρ = {trend['spearman']:.2f})")
    return fig


def block_mean(mat: torch.Tensor, max_size: int) -> torch.Tensor:
    """Average (L, L) over square blocks so that it has at most max_size rows (for display only)."""
    length = mat.shape[-1]
    k = -(-length // max_size)
    if k <= 1:
        return mat
    pad = (-length) % k
    m = F.pad(mat[None, None], (0, pad, 0, pad))
    return F.avg_pool2d(m, k)[0, 0]


def grid_shape(k: int, max_cols: int = 2) -> tuple[int, int]:
    """(rows, cols) for k panels: as few rows as ``max_cols`` allows, spread evenly over them."""
    rows = max(1, math.ceil(k / max_cols))
    return rows, max(1, math.ceil(k / rows))


def plot_hidden_attention(maps: Sequence[dict], max_pixels: int = 256) -> plt.Figure:
    """Heatmaps of |P^d_{lj}| (log colour) for each chosen (layer, channel); sequences longer
    than ``max_pixels`` are shown as block means of |P| (each pixel covers k×k entries).

    The panels fill a grid row by row; a short last row is centred, so no panel is empty.
    Each title says why its layer and channel were chosen (``layer_choice``, ``channel_choice``)."""
    k = max(len(maps), 1)
    rows, cols = grid_shape(k)
    fig = plt.figure(figsize=(3.7 * cols, 3.5 * rows + 0.5))
    grid = fig.add_gridspec(rows, 2 * cols)
    for i, m in enumerate(maps):
        r, c = divmod(i, cols)
        shift = cols - (k - r * cols) if r == rows - 1 else 0   # centre a short last row
        ax = fig.add_subplot(grid[r, 2 * c + shift:2 * c + shift + 2])
        length = m["P"].shape[-1]
        P = block_mean(m["P"].abs(), max_pixels).numpy()
        extent = (-0.5, length - 0.5, length - 0.5, -0.5)
        pos = P[P > 0]
        vmax = float(pos.max()) if pos.size else 1.0
        norm = LogNorm(vmin=max(vmax * 1e-6, float(pos.min()) if pos.size else 1e-12), vmax=vmax)
        im = ax.imshow(np.where(P > 0, P, np.nan), norm=norm, cmap="viridis", interpolation="nearest",
                       extent=extent)
        why = ", ".join(w for w in (m.get("layer_choice"), m.get("channel_choice")) if w)
        ax.set_title(f"layer {m['layer']}, channel {m['channel']}" + (f"\n({why})" if why else ""), fontsize=9)
        ax.set_xlabel("source position j (token index)", fontsize=8)
        ax.set_ylabel("target position l (token index)", fontsize=8)
        fig.colorbar(im, ax=ax, fraction=0.046, label="|P_lj| (log colour)")
    fig.suptitle("hidden attention |P_lj|: weight of token j's input in token l's output "
                 "(lower triangle: causal)", fontsize=10)
    fig.tight_layout()
    return fig


def save(fig: plt.Figure, path: Path, dpi: int = 110) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def _layer_table(layers: list[dict]) -> str:
    columns = ["layer", "M_s > 0", "M_s < 0", "M_s = 0", "largest", "smallest", "predicted regime",
               "radial velocity (median)", "share > 0", "idealised flow", "mean Δ(0)", "median a",
               "residual growth"]
    rows = [[r["index"], r["io_eigs_positive"], r["io_eigs_negative"], r["io_eigs_zero"],
             f"{r['io_sym_largest']:.3g}", f"{r['io_sym_smallest']:.3g}", r["predicted_regime"],
             f"{r['radial_velocity']['median']:+.3g}", f"{r['radial_velocity']['positive_share']:.2f}",
             flow_cell(r["flow"]), f"{r['delta_at_zero']['mean']:.3g}", f"{r['decay']['median']:.3g}",
             f"{r['norm_growth']:.4g}"]
            for r in layers]
    return table(columns, rows, numeric=(0, 1, 2, 3, 4, 5, 7, 8, 10, 11, 12))


def flow_cell(flow: dict | None) -> str:
    """One layer's flow outcome in a few words: "blows up at t = 2.1", "decays: 0.81 at t = 5"."""
    if flow is None:
        return "not run"
    if flow["verdict"] == "blows up":
        return f"blows up at t = {flow['blowup_time']:.3g}"
    if flow["verdict"] == "undetermined":
        return f"undetermined ({flow['stop_reason']})"
    return f"{flow['verdict']}: {flow['ratio_at_t_end']:.3g} at t = {flow['t_end']:g}"


def flow_counts(verdicts: list) -> str:
    """"blows up in 3, decays in 1" from the per-layer flow verdicts (None: not run)."""
    counts = count_verdicts(verdicts)
    return ", ".join(f"{v} in {k} layer{'s' if k > 1 else ''}" for v, k in counts.items()) or "no layer"


def _attention_note(maps: list[dict]) -> str:
    """Which layers and channels the hidden-attention figure shows, and why."""
    if not maps:
        return "No hidden attention was computed."
    shown = "; ".join(f"layer {m['layer']} ({m.get('layer_choice') or 'chosen'}), channel {m['channel']} "
                      f"({m.get('channel_choice') or 'chosen'})" for m in maps)
    return (f"Hidden attention matrices for {shown}. By default the first, middle and last layers, each with "
            "channel 0 and the channel of largest mean step size Δ (the channel that reacts most to its input); "
            "--layers and --channels choose others.")


def render_html(data: dict, figures: dict[str, Path]) -> str:
    """The report page (shared template and style): summary, input, layer table, figures (embedded)."""
    inp = data["input"]
    cfg = data["config"]
    trend = data["growth_by_position"]
    captions = {
        "spectra": "Eigenvalues of the symmetric part M_s per layer, and of M itself.",
        "radial_velocity": "The theory's own quantity inside each layer: the radial velocity ⟨u_l, y_l⟩/|u_l|² of "
                           "the scan input u under the layer's scan without D and gate (the idealised flow's "
                           "d ln|u_l|/dt at the real tokens). Its sign should follow the predicted regime.",
        "flow": "The idealised flow of THEORY.md section 2 run on each layer's own S_B, S_C, S_Δ, b_Δ and A from "
                "its real scan input (no norm, gate, conv or D): norms blow up or grow in a divergent layer "
                "and decay in a convergent one.",
        "token_norms": "Token norms through the layers (residual stream) and at each scan's input.",
        "growth": "Measured norm growth per layer and by token position.",
        "hidden_attention": _attention_note(data.get("hidden_attention", [])),
    }
    titles = {"spectra": "Spectra", "radial_velocity": "Radial velocity", "flow": "Idealised flow",
              "token_norms": "Token norms", "growth": "Growth",
              "hidden_attention": "Hidden attention"}
    figs = "".join(f'<section id="{k}"><h2>{titles.get(k, k)}</h2>{embed_image(p, titles.get(k, k), captions.get(k))}'
                   "</section>" for k, p in figures.items())
    summary = data["summary"]
    prov = data.get("provenance") or {}
    header = (f"<h1>tokendyn analysis</h1><dl><dt>checkpoint</dt><dd><code>{esc(data['checkpoint'])}</code> "
              f"({esc(data['layout'])} layout)</dd><dt>model</dt><dd>{cfg.get('n_layer')} layers, d_model "
              f"{cfg.get('d_model')}, d_inner {cfg.get('d_inner')}, d_state {cfg.get('d_state')}, mixer "
              f"{esc(cfg.get('label') or cfg.get('layer', 'mamba1'))}</dd>"
              f"<dt>input</dt><dd>{esc(inp['description'])}</dd>"
              + "".join(f"<dt>{k}</dt><dd>{esc(prov.get(k))}</dd>" for k in ("device", "commit", "date") if prov.get(k))
              + "</dl>")
    toc = [("summary", "Summary"), ("layers", "Layers")] + [(k, titles.get(k, k)) for k in figures]
    nav = ('<nav class="toc" aria-label="contents"><strong>Contents</strong><ol>'
           + "".join(f'<li><a href="#{i}">{esc(t)}</a></li>' for i, t in toc) + "</ol></nav>")
    main = f"""<section id="summary"><h2>Summary</h2>
<p class="summary"><strong>{summary['divergent_prone_layers']}</strong> of {summary['n_layers']} layers are
divergent-prone (M_s has a positive eigenvalue), <strong>{summary['convergent_prone_layers']}</strong>
convergent-prone. Inside the layers, the median radial velocity of the scan input is positive in
<strong>{summary['radial_velocity_positive_layers']}</strong> and negative in
<strong>{summary['radial_velocity_negative_layers']}</strong> layers; the idealised flow on each layer's own
parameters: {esc(flow_counts(summary['flow_verdicts']))}. The residual stream grows by a factor
{summary['total_growth']:.4g} from the embedding to the last layer (geometric mean over tokens; Spearman correlation
of position with growth {trend['spearman']:.3f}): in a pre-norm model it grows whatever the sign of M, so it is
no test of the theory (docs/THEORY.md section 4).</p>
{_scope(data)}
</section>
<section id="layers"><h2>Layers</h2>{_layer_table(data['layers'])}</section>
{figs}"""
    footer = (f"<p>Written by <code>{esc(prov.get('command'))}</code> on {esc(prov.get('device'))}, "
              f"{esc(prov.get('date'))}; the numbers are in the JSON beside this page.</p>")
    return page(f"tokendyn analysis: {data['checkpoint']}", main, header, nav, footer)


def _scope(data: dict) -> str:
    """Where the theory stops, for each form of layer in the model (and how many layers it leaves
    outside its rule)."""
    scopes = data.get("theory_scope") or {}
    parts = [f"<p class=\"scope\"><strong>Where the theory stops ({esc(form)}).</strong> {esc(text)}</p>"
             for form, text in scopes.items()]
    outside = data["summary"].get("indefinite_layers", 0)
    if outside:
        parts.append(f"<p class=\"scope\"><strong>{outside}</strong> of {data['summary']['n_layers']} layers are "
                     "indefinite: their signatures are shown, and no regime is predicted for them.</p>")
    return "".join(parts)


def write_report(data: dict, figs: dict[str, plt.Figure], out: Path, json_path: Path | None = None) -> dict:
    """Save the figures as PNG in ``out``, write report.html and the JSON. Returns the paths."""
    out.mkdir(parents=True, exist_ok=True)
    paths = {k: save(f, out / FIGURES[k]) for k, f in figs.items()}
    html_path = out / "report.html"
    html_path.write_text(render_html(data, paths), encoding="utf-8")
    json_path = json_path or out / "analysis.json"
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(data, indent=1, default=_jsonable))
    return {"html": html_path, "json": json_path, **{k: p for k, p in paths.items()}}


def _jsonable(obj):
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot write {type(obj).__name__} as JSON")
