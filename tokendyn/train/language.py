"""Language-model training runs: data + tokenizer, a MambaLM, the loop, the regime monitor.

:func:`train_lm` is what ``tokendyn train lm`` runs and what the lm-scenarios experiment
runs once per (setting, seed).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..data import corpus as corpora
from ..model import MambaConfig, MambaLM
from ..model.config import takes_flat_options
from ..model.io_constraint import IO_CONSTRAINTS
from . import state as runstate
from .figures import save_figure
from .loop import (
    TrainConfig,
    TrainResult,
    check_batch_fits,
    check_duration,
    check_model_fits,
    is_main_process,
    model_identity,
    per_pass,
    train,
)
from .monitor import DEFAULT_EVERY, RegimeMonitor, plot_monitor
from .task import LanguageModelTask

IO_SETTINGS = IO_CONSTRAINTS      # the settings the experiment can compare: every io_constraint
# the paper's settings and the unconstrained baseline: what the experiment runs unless told otherwise
DEFAULT_SETTINGS = ("none", "positive", "negative", "mixed")


@takes_flat_options("mixer")
@dataclass
class LMModelSpec:
    """The model of a run (a MambaLM; the vocabulary comes from the tokenizer).

    layer: the mixer family; mixer: the options of the family and of its variants by name (for
    Mamba-1 e.g. ``{"d_state": 16, "io_constraint": "positive"}``: the sign of S_Cᵀ S_B, THEORY.md
    section 5), checked by the config through the registry; an option may also be given as a
    keyword (``LMModelSpec(d_state=8)``). final_dropout: dropout on the final hidden states (the
    authors': 0.3).
    """

    d_model: int = 128
    n_layer: int = 4
    layer: str = "mamba1"
    mixer: dict = field(default_factory=dict)
    final_dropout: float = 0.0

    def config(self, vocab_size: int, scan_backend: str = "auto") -> MambaConfig:
        return MambaConfig(d_model=self.d_model, n_layer=self.n_layer, vocab_size=vocab_size, layer=self.layer,
                           scan_backend=scan_backend, final_dropout=self.final_dropout, options=dict(self.mixer))


def prepare_data(text_files=None, wikitext=None, tokenizer=None, vocab_size: int = 4096,
                 cache_dir: Path | None = None, builtin: str | None = None) -> corpora.TokenizedCorpus:
    """The tokenised corpus a run trains on (see :mod:`tokendyn.data.corpus`); ``builtin`` names
    the built-in corpus used when neither text files nor WikiText are given."""
    corpus = corpora.load_corpus(text_files=text_files, wikitext=wikitext, builtin=builtin)
    return corpora.tokenize_corpus(corpus, tokenizer=tokenizer, vocab_size=vocab_size, cache_dir=cache_dir)


def train_lm(data: corpora.TokenizedCorpus, spec: LMModelSpec, cfg: TrainConfig, *, context: int = 256,
             batch_size: int = 32, out: Path | None = None, resume: bool = False, device="auto",
             eval_tokens: int = 65536, eval_batch: int = 16, monitor_every: int = DEFAULT_EVERY,
             stop_after_steps: int | None = None, progress: bool = True, scan_backend: str = "auto",
             analysis_figures: bool = False, log=None) -> tuple[TrainResult, MambaLM]:
    """Build a MambaLM (seeded by ``cfg.seed``) and train it on ``data``; returns (result, model).

    With ``out``: OUT/tokenizer.json, the run files of :mod:`tokendyn.train.state`, and
    OUT/monitor.png (the regime monitor's figure) at the end; with ``analysis_figures`` also the
    analyser's figures of the trained model (:func:`write_analysis_figures`), so that a summary
    can show them without the checkpoint.
    """
    config = spec.config(data.vocab_size, scan_backend=scan_backend)
    n_params = check_model_fits(MambaLM, config, device)
    check_duration(n_params, float(cfg.steps) * batch_size * context, device,
                   f"--steps {cfg.steps:,} of {batch_size} × {context} tokens")
    # logits, their float32 copy and gradient: 12 bytes per vocabulary entry and token
    check_batch_fits(config, per_pass(batch_size, cfg.micro_batch) * context, 12 * config.padded_vocab_size, device,
                     f"--context {context} with --batch-size {batch_size} ({config.n_layer} layers of "
                     f"{config.d_model}, {config.padded_vocab_size} tokens)")
    torch.manual_seed(cfg.seed)
    model = MambaLM(config)
    task = LanguageModelTask(data.ids, data.vocab_size, context=context, batch_size=batch_size, seed=cfg.seed,
                             eval_tokens=eval_tokens, eval_batch=eval_batch)
    callbacks = []
    monitor = None
    if monitor_every:
        monitor = RegimeMonitor(task.probe_input(), every=monitor_every, log=log, final_step=cfg.steps)
        callbacks.append(monitor)
    identity = {"model": model_identity(config), "params": sum(p.numel() for p in model.parameters()),
                "data": data.describe(), "monitor_every": monitor_every, "eval_batch": eval_batch}
    result = train(model, task, cfg, out, identity=identity, resume=resume, device=device, callbacks=callbacks,
                   stop_after_steps=stop_after_steps, progress=progress, tokenizer_json=data.tokenizer_json,
                   log=log)
    if out is not None and is_main_process():
        data.save_tokenizer(Path(out))
        if monitor is not None and not result.stopped_early:
            fig = plot_monitor(runstate.read_metrics(Path(out)),
                               title=f"regime monitor ({config.label()}, seed {cfg.seed})")
            save_figure(fig, Path(out) / "monitor.png", dpi=100)
        if analysis_figures and not result.stopped_early:
            write_analysis_figures(model, data.ids["test"][:context].long(), Path(out))
    return result, model


ANALYSIS_FIGURES = {"spectra": "analysis_spectra.png", "token_norms": "analysis_token_norms.png"}


def write_analysis_figures(model: MambaLM, probe: torch.Tensor, out: Path) -> dict:
    """The analyser's spectrum of S_Cᵀ S_B per layer and the token-norm heatmaps of ``model`` on
    ``probe`` ((L,) token ids: the first ``context`` tokens of the test split), written to
    OUT/analysis_spectra.png and OUT/analysis_token_norms.png. Returns {name: path}."""
    from ..analysis import render
    from ..analysis.analyze import InputTokens, analyze_model

    inputs = InputTokens(probe, "test-split", None, False, f"the first {probe.numel()} tokens of the test split")
    was_training = model.training
    model.eval()
    try:
        a = analyze_model(model, inputs, layers=[0], checkpoint=str(out), flow_time=0)   # figures only
    finally:
        model.train(was_training)
    paths = {"spectra": Path(out) / ANALYSIS_FIGURES["spectra"],
             "token_norms": Path(out) / ANALYSIS_FIGURES["token_norms"]}
    save_figure(render.plot_spectra(a.spectra), paths["spectra"], dpi=90)
    save_figure(render.plot_token_norms(a.dynamics), paths["token_norms"], dpi=90)
    return paths


