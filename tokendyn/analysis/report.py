"""Figures (PNG), a self-contained HTML page and JSON for one checkpoint analysis.

Each ``plot_*`` function draws one figure from tensors and returns the matplotlib
Figure; :func:`write_report` saves them and writes ``report.html`` with the PNGs
embedded as base64, so the page can be mailed or attached on its own.
"""

from __future__ import annotations

import base64
import html
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
from matplotlib.ticker import MaxNLocator  # noqa: E402 -- with pyplot, after matplotlib.use

FIGURES = {
    "spectra": "analysis_spectra.png",
    "token_norms": "analysis_token_norms.png",
    "growth": "analysis_growth.png",
    "hidden_attention": "analysis_hidden_attention.png",
}


def plot_spectra(spectra: Sequence) -> plt.Figure:
    """Left: the nonzero eigenvalues of M_s per layer (red > 0, blue < 0, symlog axis).
    Right: the nonzero eigenvalues of M = S_Cᵀ S_B in the complex plane, coloured by layer."""
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    all_abs = [float(s.sym_eigvals.abs().max()) for s in spectra if s.sym_eigvals.numel()]
    lin = max(max(all_abs, default=1.0) * 1e-3, 1e-12)
    cmap = plt.get_cmap("viridis")
    n = max(len(spectra), 1)
    for s in spectra:
        ev = s.sym_eigvals.numpy()
        keep = np.abs(ev) > lin * 1e-3
        ev = ev[keep]
        jitter = np.full(ev.shape, s.index, dtype=float)
        ax1.scatter(jitter[ev > 0], ev[ev > 0], s=10, c="tab:red", alpha=0.7)
        ax1.scatter(jitter[ev < 0], ev[ev < 0], s=10, c="tab:blue", alpha=0.7)
        z = s.io_eigvals.numpy()
        ax2.scatter(z.real, z.imag, s=10, color=cmap(s.index / max(n - 1, 1)), alpha=0.8)
    ax1.axhline(0, color="k", lw=0.6)
    ax1.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax1.set_yscale("symlog", linthresh=lin)
    ax1.set_xlabel("layer")
    ax1.set_ylabel("eigenvalue of M_s = (M + Mᵀ)/2")
    ax1.set_title("symmetric part: red positive, blue negative")
    ax2.axvline(0, color="k", lw=0.6)
    ax2.axhline(0, color="k", lw=0.6)
    ax2.set_xlabel("Re λ(M)")
    ax2.set_ylabel("Im λ(M)")
    ax2.set_title("eigenvalues of M = S_Cᵀ S_B (colour: layer)")
    sm = plt.cm.ScalarMappable(cmap=cmap, norm=plt.Normalize(0, n - 1))
    fig.colorbar(sm, ax=ax2, label="layer")
    fig.tight_layout()
    return fig


def _heat(ax, mat: np.ndarray, title: str, ylabel: str, fig) -> None:
    pos = mat[mat > 0]
    norm = LogNorm(vmin=float(pos.min()), vmax=float(pos.max())) if pos.size else None
    im = ax.imshow(np.where(mat > 0, mat, np.nan), aspect="auto", origin="lower", norm=norm,
                   cmap="magma", interpolation="nearest")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("token position")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    fig.colorbar(im, ax=ax)


def plot_token_norms(dyn) -> plt.Figure:
    """Left: ‖x_l‖ of the residual stream, row 0 = embeddings, row i+1 = after layer i.
    Right: ‖u_l‖ of the scan input inside each mixer."""
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    _heat(ax1, dyn.all_norms.numpy(), "residual-stream norm (log colour)",
          "depth (0 = embedding, i+1 = after layer i)", fig)
    _heat(ax2, dyn.scan_input_norms.numpy(), "norm of the scan input u inside each mixer", "layer", fig)
    fig.tight_layout()
    return fig


def plot_growth(dyn) -> plt.Figure:
    """Left: per-layer growth factor (geometric mean over tokens). Right: total growth by position."""
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4))
    g = dyn.layer_growth().numpy()
    ax1.bar(np.arange(g.size), g, color=np.where(g >= 1, "tab:red", "tab:blue"))
    ax1.axhline(1.0, color="k", lw=0.6)
    ax1.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax1.set_xlabel("layer")
    ax1.set_ylabel("norm growth factor")
    ax1.set_title("growth per layer (> 1 grows, < 1 shrinks)")
    pg = dyn.position_growth().numpy()
    ax2.plot(np.arange(pg.size), pg, lw=0.8)
    ax2.set_yscale("log")
    ax2.set_xlabel("token position")
    ax2.set_ylabel("‖after last layer‖ / ‖embedding‖")
    trend = dyn.position_trend()
    ax2.set_title(f"growth by position (Spearman ρ = {trend['spearman']:.2f})")
    fig.tight_layout()
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


def plot_hidden_attention(maps: Sequence[dict], max_pixels: int = 256) -> plt.Figure:
    """Heatmaps of |P^d_{lj}| (log colour) for each chosen (layer, channel); sequences longer
    than ``max_pixels`` are shown as block means of |P| (each pixel covers k×k entries)."""
    k = max(len(maps), 1)
    cols = min(k, 4)
    rows = math.ceil(k / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 3.3 * rows), squeeze=False)
    for ax in axes.flat[len(maps):]:
        ax.axis("off")
    for ax, m in zip(axes.flat, maps):
        length = m["P"].shape[-1]
        P = block_mean(m["P"].abs(), max_pixels).numpy()
        extent = (-0.5, length - 0.5, length - 0.5, -0.5)
        pos = P[P > 0]
        vmax = float(pos.max()) if pos.size else 1.0
        norm = LogNorm(vmin=max(vmax * 1e-6, float(pos.min()) if pos.size else 1e-12), vmax=vmax)
        im = ax.imshow(np.where(P > 0, P, np.nan), norm=norm, cmap="viridis", interpolation="nearest",
                       extent=extent)
        ax.set_title(f"layer {m['layer']}, channel {m['channel']}", fontsize=9)
        ax.set_xlabel("source j")
        ax.set_ylabel("target l")
        fig.colorbar(im, ax=ax, fraction=0.046)
    fig.suptitle("hidden attention |P_lj| (log colour)")
    fig.tight_layout()
    return fig


def save(fig: plt.Figure, path: Path, dpi: int = 110) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def _img(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}" style="max-width:100%">'


def _layer_table(layers: list[dict]) -> str:
    head = ("<tr><th>layer</th><th>M_s &gt; 0</th><th>M_s &lt; 0</th><th>M_s = 0</th><th>largest</th>"
            "<th>smallest</th><th>predicted regime</th><th>verdict</th><th>mean Δ(0)</th>"
            "<th>median a</th><th>measured growth</th></tr>")
    rows = []
    for r in layers:
        rows.append(
            "<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in (
                r["index"], r["io_eigs_positive"], r["io_eigs_negative"], r["io_eigs_zero"],
                f"{r['io_sym_largest']:.3g}", f"{r['io_sym_smallest']:.3g}", r["predicted_regime"],
                r["verdict"], f"{r['delta_at_zero']['mean']:.3g}", f"{r['decay']['median']:.3g}",
                f"{r['norm_growth']:.4g}")) + "</tr>")
    return "<table>" + head + "".join(rows) + "</table>"


def render_html(data: dict, figures: dict[str, Path]) -> str:
    """The report page: summary, input, layer table, figures (embedded)."""
    inp = data["input"]
    cfg = data["config"]
    trend = data["growth_by_position"]
    captions = {
        "spectra": "Eigenvalues of the symmetric part M_s per layer, and of M itself.",
        "token_norms": "Token norms through the layers (residual stream) and at each scan's input.",
        "growth": "Measured norm growth per layer and by token position.",
        "hidden_attention": "Hidden attention matrices for the chosen layers and channels.",
    }
    figs = "".join(f"<h2>{html.escape(k.replace('_', ' '))}</h2><p>{captions[k]}</p>{_img(p, k)}"
                   for k, p in figures.items())
    summary = data["summary"]
    return f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>tokendyn analysis: {html.escape(data['checkpoint'])}</title>
<style>body{{font-family:sans-serif;max-width:1200px;margin:2em auto;padding:0 1em}}
table{{border-collapse:collapse;font-size:90%}}td,th{{border:1px solid #ccc;padding:2px 6px;text-align:right}}
code{{background:#f4f4f4}}</style></head><body>
<h1>tokendyn analysis</h1>
<p>Checkpoint <code>{html.escape(data['checkpoint'])}</code> ({html.escape(data['layout'])} layout):
{cfg.get('n_layer')} layers, d_model {cfg.get('d_model')}, d_inner {cfg.get('d_inner')},
d_state {cfg.get('d_state')}, mixer {html.escape(str(cfg.get('layer', 'mamba1')))},
io_constraint {html.escape(str(cfg.get('io_constraint', 'none')))}.</p>
<p><b>{summary['divergent_prone_layers']}</b> of {summary['n_layers']} layers are divergent-prone
(M_s has a positive eigenvalue), <b>{summary['convergent_prone_layers']}</b> convergent-prone.
Measured: token norms grow by a factor {summary['total_growth']:.4g} from the embedding to the last layer
(geometric mean over tokens); Spearman correlation of position with growth {trend['spearman']:.3f}.</p>
<p>Input: {html.escape(inp['description'])}.</p>
<h2>layers</h2>{_layer_table(data['layers'])}
{figs}
<p style="color:#888">Generated by <code>{html.escape(str(data['provenance'].get('command')))}</code>
on {html.escape(str(data['provenance'].get('device')))}, {html.escape(str(data['provenance'].get('date')))}.</p>
</body></html>
"""


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
