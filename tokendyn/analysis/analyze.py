"""``analyze``: everything ``tokendyn analyze`` computes for one checkpoint, as one object.

Steps (each timed): load the model, choose the input tokens, per-layer spectra,
one forward pass with internals (token norms), hidden attention for the chosen
layers and channels, figures and report.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..data import text as textdata
from ..errors import DataError
from .forms import form_named, form_of
from .hidden_attention import attention_summary
from .layer_flow import FLOW_T_END, FLOW_TOKENS, LayerTheory, model_theory
from .layers import LayerSpectrum, model_io_parameters, model_spectra
from .trajectories import TokenDynamics, measure_dynamics

DEFAULT_MAX_TOKENS = 1024


@dataclass
class InputTokens:
    """The input fed to the model and where it came from: token ids (L,) int64 for a language
    model; for a classifier its continuous input with the batch dim, (1, L, input_dim) or an
    image (1, C, H, W), with ``n_tokens`` the tokens the model makes of it."""

    ids: torch.Tensor
    source: str                   # "file", "builtin-corpus" or "random"
    tokenizer: str | None
    truncated: bool
    description: str
    text_tokens: int | None = None
    n_tokens: int | None = None

    def as_dict(self) -> dict:
        n = self.n_tokens if self.n_tokens is not None else int(self.ids.numel())
        return {"source": self.source, "tokenizer": self.tokenizer, "n_tokens": n,
                "text_tokens": self.text_tokens, "truncated": self.truncated, "description": self.description}


def choose_input(checkpoint: str | Path | None, vocab_size: int, text: str | Path | None = None,
                 tokenizer: str | Path | None = None, max_tokens: int = DEFAULT_MAX_TOKENS,
                 truncate: bool = False, seed: int = 0) -> InputTokens:
    """Token ids for the analysis.

    - ``text`` given: the file, tokenized with ``tokenizer`` or the checkpoint's
      tokenizer.json; more than ``max_tokens`` tokens is an error unless ``truncate``.
    - no text, a tokenizer available: the first ``max_tokens`` tokens of the built-in corpus.
    - no text, no tokenizer: ``max_tokens`` uniform random ids in [0, vocab_size) (seeded).
    """
    if max_tokens < 1:
        raise DataError(f"--max-tokens must be at least 1, got {max_tokens}.")
    tok_path = Path(tokenizer) if tokenizer is not None else (
        textdata.find_tokenizer(checkpoint) if checkpoint is not None else None)
    if text is not None:
        if tok_path is None:
            raise DataError("no tokenizer.json beside the checkpoint to tokenize the text; "
                            "pass one with --tokenizer, or leave out --text to use random token ids.")
        tok = textdata.load_tokenizer(tok_path)
        ids = textdata.encode(tok, textdata.read_text_file(text))
        if ids.numel() == 0:
            raise DataError(f"text file {text} yields no tokens.")
        n = int(ids.numel())
        if n > max_tokens and not truncate:
            raise DataError(f"text file {text} has {n} tokens, more than --max-tokens {max_tokens}; "
                            "raise --max-tokens or pass --truncate to analyse the first tokens only.")
        return InputTokens(ids[:max_tokens], "file", str(tok_path), n > max_tokens,
                           f"{min(n, max_tokens)} tokens of {text}" + (f" (first of {n})" if n > max_tokens else "")
                           + f", tokenized with {tok_path}", text_tokens=n)
    if tok_path is not None:
        tok = textdata.load_tokenizer(tok_path)
        ids = textdata.encode_prefix(tok, max_tokens)
        return InputTokens(ids, "builtin-corpus", str(tok_path), False,
                           f"the first {ids.numel()} tokens of the King James Bible, tokenized with {tok_path}")
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab_size, (max_tokens,), generator=gen)
    return InputTokens(ids, "random", None, False,
                       f"{max_tokens} uniform random token ids (seed {seed}): no tokenizer.json beside the "
                       "checkpoint and none given with --tokenizer")


def classifier_input(model, max_tokens: int = DEFAULT_MAX_TOKENS, seed: int = 0) -> InputTokens:
    """A seeded standard-normal input for a classifier (:meth:`MambaClassifier.example_input`)."""
    if max_tokens < 1:
        raise DataError(f"--max-tokens must be at least 1, got {max_tokens}.")
    x = model.example_input(max_tokens, torch.Generator().manual_seed(seed))
    n = int(model.tokens(x).shape[1])
    kind = f"a {x.shape[-2]}x{x.shape[-1]} image of" if x.dim() == 4 else "a sequence of"
    return InputTokens(x, "random", None, False,
                       f"{kind} standard-normal values (seed {seed}), {n} tokens: a classifier takes no text",
                       n_tokens=n)


def default_layers(n_layer: int) -> list[int]:
    """First, middle and last layer."""
    return sorted({0, n_layer // 2, n_layer - 1})


def check_indices(values: Sequence[int], size: int, what: str) -> list[int]:
    out = []
    for asked in values:
        v = int(asked)
        if v < 0:
            v += size                 # -1 = last, as in Python indexing
        if not 0 <= v < size:       # name the index as the user wrote it, not after the wrap
            raise DataError(f"{what} {int(asked)} does not exist; the model has {size} (0..{size - 1}, or "
                            f"-{size}..-1 from the end).")
        out.append(v)
    return list(dict.fromkeys(out))


@dataclass
class Analysis:
    """The results of :func:`analyze_model`."""

    spectra: list[LayerSpectrum]
    dynamics: TokenDynamics
    theory: list[LayerTheory]             # radial velocity and idealised flow per layer
    attention: list[dict]                 # {layer, channel, P: (L, L) float64, summary}
    input: InputTokens
    config: dict
    layout: str
    checkpoint: str
    timings: dict = field(default_factory=dict)

    def to_json(self, provenance: dict | None = None) -> dict:
        """The JSON document described in docs/analysis.md."""
        growth = self.dynamics.layer_growth()
        layers = []
        for s, g, th in zip(self.spectra, growth, self.theory):
            row = s.as_dict()
            row.update(th.as_dict())
            row["norm_growth"] = float(g)
            row["mean_token_norm"] = float(self.dynamics.token_norms[s.index].mean())
            row["mean_scan_input_norm"] = float(self.dynamics.scan_input_norms[s.index].mean())
            row["mean_delta"] = float(self.dynamics.delta_mean[s.index].mean())
            row["residual_update_cosine"] = float(self.dynamics.update_cosine[s.index].mean())
            layers.append(row)
        total = self.dynamics.position_growth().log().mean().exp()
        return {
            "checkpoint": self.checkpoint,
            "layout": self.layout,
            "config": self.config,
            "input": self.input.as_dict(),
            "summary": {
                "n_layers": len(self.spectra),
                "divergent_prone_layers": sum(s.predicted_regime == "divergence" for s in self.spectra),
                "convergent_prone_layers": sum(s.predicted_regime == "convergence" for s in self.spectra),
                "indefinite_layers": sum(s.predicted_regime == "indefinite" for s in self.spectra),
                "radial_velocity_positive_layers": sum(bool(th.radial_velocity.median() > 0) for th in self.theory),
                "radial_velocity_negative_layers": sum(bool(th.radial_velocity.median() < 0) for th in self.theory),
                "flow_verdicts": [th.flow.verdict if th.flow is not None else None for th in self.theory],
                "total_growth": float(total),
            },
            "layers": layers,
            # where the theory stops, for each form of layer in the model (docs/analysis.md)
            "theory_scope": {f: form_named(f).scope for f in dict.fromkeys(s.form for s in self.spectra)},
            "embedding_norms": self.dynamics.embedding_norms.tolist(),
            "token_norms": self.dynamics.token_norms.tolist(),
            "scan_input_norms": self.dynamics.scan_input_norms.tolist(),
            "delta_mean": self.dynamics.delta_mean.tolist(),
            "growth_by_position": {**self.dynamics.position_trend(),
                                   "total_growth": self.dynamics.position_growth().tolist(),
                                   "bins": self.dynamics.growth_by_position_bins()},
            "hidden_attention": [{"layer": a["layer"], "channel": a["channel"],
                                  "layer_choice": a.get("layer_choice"), "channel_choice": a.get("channel_choice"),
                                  **a["summary"]} for a in self.attention],
            "timings_s": {k: round(v, 4) for k, v in self.timings.items()},
            "provenance": provenance or {},
        }


def config_summary(model) -> dict:
    """The model's config, options flat, with the family's derived sizes (``config.summary()``)."""
    return model.config.summary()


def analyze_model(model, inputs: InputTokens, layers: Sequence[int] | None = None,
                  channels: Sequence[int] | None = None, layout: str = "unknown",
                  checkpoint: str = "(in memory)", timings: dict | None = None,
                  flow_time: float = FLOW_T_END, flow_tokens: int = FLOW_TOKENS) -> Analysis:
    """Spectra, the in-layer theory quantities, token norms and hidden attention of a loaded
    MambaLM-like model.

    layers: layers whose hidden attention is computed (default: first, middle, last);
    channels: channels d of each (default: channel 0 and the channel with the largest mean Δ);
    flow_time, flow_tokens: the stated time of the idealised flow and the number of first tokens
    it runs from (:mod:`tokendyn.analysis.layer_flow`); flow_time 0 leaves the flow out.
    """
    check_flow_options(flow_time, flow_tokens)
    timings = dict(timings or {})
    model.eval()
    t = time.perf_counter()
    spectra = model_spectra(model)
    timings["spectrum"] = time.perf_counter() - t
    n_layer = len(spectra)
    if layers:
        layers = check_indices(layers, n_layer, "layer")
        layer_why = dict.fromkeys(layers, "--layers")
    else:
        layers = default_layers(n_layer)
        layer_why = {i: why for why, i in (("middle", n_layer // 2), ("last", n_layer - 1), ("first", 0))}
    d_inner = spectra[0].d_inner
    if channels:
        channels = check_indices(channels, d_inner, "channel")

    t = time.perf_counter()
    dyn, out = measure_dynamics(model, inputs.ids)
    timings["forward"] = time.perf_counter() - t

    t = time.perf_counter()
    io_params = model_io_parameters(model)
    theory = model_theory(io_params, out.internals, flow=flow_time > 0,
                          **({"t_end": flow_time, "tokens": flow_tokens} if flow_time > 0 else {}))
    timings["layer_flow"] = time.perf_counter() - t

    t = time.perf_counter()
    attention = []
    for i in layers:
        internals = out.internals[i]
        delta = internals.delta[:1]
        if channels:
            chans, chan_why = channels, dict.fromkeys(channels, "--channels")
        else:  # channel 0, and the channel whose step size Δ is largest on average (the most input-driven)
            top = int(delta[0].mean(-1).argmax())
            chans, chan_why = sorted({0, top}), {0: "channel 0", top: "largest mean Δ"}
        # the layer's exact (L, L) map per channel, as its form defines it (a Mamba-2 channel: its head's)
        P = form_of(io_params[i]).attention(io_params[i], internals, chans)
        for ci, d in enumerate(chans):
            attention.append({"layer": i, "channel": d, "P": P[ci], "summary": attention_summary(P[ci]),
                              "layer_choice": layer_why[i], "channel_choice": chan_why[d]})
    timings["hidden_attention"] = time.perf_counter() - t
    return Analysis(spectra=spectra, dynamics=dyn, theory=theory, attention=attention, input=inputs,
                    config=config_summary(model), layout=layout, checkpoint=checkpoint, timings=timings)


def estimate_memory(config, n_tokens: int, n_maps: int, dtype_bytes: int = 4) -> int:
    """Bytes an analysis of ``n_tokens`` tokens needs at its peak, roughly (an upper estimate).

    Kept through the run: every layer's residual stream (n_layer+1, L, d_model) and scan inputs
    x, Δ, z (L, d_inner) and B, C (L, G·N) (G: the family's ``n_groups`` where it has groups of B and
    C, as Mamba-2 does, else 1); transient in a layer: about 8 (L, d_inner) tensors plus the chunked
    scan's bounded working set; hidden attention: each (L, L) float64 map kept, and about 6 more
    (L, L) float64 tensors while one channel is computed.
    """
    L, D = int(n_tokens), int(config.d_inner)
    bc_width = int(getattr(config, "n_groups", 1)) * int(config.d_state)
    kept = L * ((config.n_layer + 1) * config.d_model + config.n_layer * (3 * D + 2 * bc_width))
    transient = 8 * L * D + 4 * (1 << 21)
    return (kept + transient) * dtype_bytes + (n_maps + 6) * L * L * 8


def check_size(model, max_tokens: int, layers: Sequence[int] | None, channels: Sequence[int] | None,
               device: str) -> None:
    """Refuse a ``max_tokens`` whose analysis would not fit in the memory ``device`` has free."""
    from ..resources import check_memory

    cfg = model.config
    n_maps = len(layers or default_layers(cfg.n_layer)) * max(1, len(channels or [0, 1]))
    dtype_bytes = next(model.parameters()).element_size()
    check_memory(estimate_memory(cfg, max_tokens, n_maps, dtype_bytes), device,
                 f"--max-tokens {max_tokens} ({cfg.n_layer} layers, d_model {cfg.d_model}, "
                 f"{n_maps} hidden-attention maps of {max_tokens}²)")


def analyze_checkpoint(path: str | Path, text: str | Path | None = None, tokenizer: str | Path | None = None,
                       max_tokens: int = DEFAULT_MAX_TOKENS, truncate: bool = False,
                       layers: Sequence[int] | None = None, channels: Sequence[int] | None = None,
                       device: str = "cpu", seed: int = 0, flow_time: float = FLOW_T_END,
                       flow_tokens: int = FLOW_TOKENS) -> Analysis:
    """Load a checkpoint (any layout :func:`tokendyn.model.load_model` reads) and analyse it."""
    from ..model import load_model

    check_flow_options(flow_time, flow_tokens)
    t = time.perf_counter()
    model = load_model(path, device=device)
    timings = {"load": time.perf_counter() - t}
    if not hasattr(model, "backbone"):
        raise DataError(f"{path} holds a {getattr(model, 'kind', type(model).__name__)} model; tokendyn analyze reads "
                        "models of one stack of Mamba layers (language models and patch classifiers).")
    if max_tokens < 1:
        raise DataError(f"--max-tokens must be at least 1, got {max_tokens}.")
    check_size(model, max_tokens, layers, channels, device)
    t = time.perf_counter()
    if hasattr(model, "example_input"):       # a model of continuous inputs (the classifier)
        if text is not None:
            raise DataError(f"{path} holds a classifier, which takes no text; leave out --text.")
        inputs = classifier_input(model, max_tokens, seed)
    else:
        inputs = choose_input(path, model.config.vocab_size, text=text, tokenizer=tokenizer,
                              max_tokens=max_tokens, truncate=truncate, seed=seed)
    timings["input"] = time.perf_counter() - t
    return analyze_model(model, inputs, layers=layers, channels=channels,
                         layout=getattr(model, "checkpoint_layout", "unknown"),
                         checkpoint=str(path), timings=timings, flow_time=flow_time, flow_tokens=flow_tokens)


# a stated time far beyond the flow's own scale only spends the evaluation budget
MAX_FLOW_TIME = 1e6


def check_flow_options(flow_time: float, flow_tokens: int) -> None:
    """Refuse a flow time that is not a finite number in [0, MAX_FLOW_TIME] or fewer than one token."""
    if not (math.isfinite(flow_time) and 0 <= flow_time <= MAX_FLOW_TIME):
        raise DataError(f"--flow-time must be a number from 0 (no flow) to {MAX_FLOW_TIME:g}, got {flow_time}.")
    if flow_tokens < 1:
        raise DataError(f"--flow-tokens must be at least 1, got {flow_tokens}.")


def build_figures(analysis: Analysis) -> dict:
    """The report's matplotlib figures, keyed as :data:`render.FIGURES`."""
    from . import render

    figs = {"spectra": render.plot_spectra(analysis.spectra),
            "radial_velocity": render.plot_radial_velocity(analysis.theory, analysis.spectra)}
    if any(th.flow is not None for th in analysis.theory):
        figs["flow"] = render.plot_flow(analysis.theory)
    figs["token_norms"] = render.plot_token_norms(analysis.dynamics)
    figs["growth"] = render.plot_growth(analysis.dynamics)
    if analysis.attention:
        figs["hidden_attention"] = render.plot_hidden_attention(analysis.attention)
    return figs


def write_analysis(analysis: Analysis, out: Path, json_path: Path | None = None,
                   provenance: dict | None = None) -> dict:
    """Figures, report.html and the JSON into ``out``; returns the written paths."""
    from . import render

    t = time.perf_counter()
    figs = build_figures(analysis)
    analysis.timings["figures"] = time.perf_counter() - t
    data = analysis.to_json(provenance)
    return render.write_report(data, figs, Path(out), json_path)
