"""``tokendyn train``: ``lm`` (one language-model run) and one command per experiment of
:mod:`tokendyn.experiments` (``lm-scenarios``, ``reorder``: :mod:`.experiments`). Other tasks add
their own subcommands to :data:`train_app`."""

from __future__ import annotations

from pathlib import Path

import typer

from ..errors import ConfigError
from . import options as opt
from .root import app
from .root import echo as _echo

train_app = typer.Typer(help="Train models (language models, image classifiers) and run the experiments.",
                        no_args_is_help=True)
app.add_typer(train_app, name="train")


def run_directory(out: Path | None, resume: Path | None) -> Path:
    """The run directory of a training command: --out for a new run, --resume to continue one."""
    if resume is not None and out is not None and Path(out) != Path(resume):
        raise ConfigError("--out and --resume name different directories; pass one of them.")
    if resume is None and out is None:
        raise ConfigError("pass --out DIR for a new run or --resume DIR to continue one.")
    from ..outputs import check_output_dir

    # before any data is read: under a file, in /proc, a name too long, a read-only place
    return check_output_dir(resume or out, "--resume" if resume is not None else "--out")


def report_run(result, run_dir: Path, metric: str, digits: int, tokens: bool = False) -> None:
    """The last line of a training command: how to continue a stopped run, or the run's scores:
    ``metric`` (a key of its validation and test records) on both splits with ``digits``
    decimals, and with ``tokens`` the tokens seen. Under torchrun only the main process reports."""
    from ..train.loop import is_main_process

    if not is_main_process():
        return
    if result.stopped_early:
        _echo(f"stopped after step {result.steps} (checkpoint in {run_dir}/checkpoint); continue with "
              f"--resume {run_dir}")
        return
    nan = float("nan")
    scores = ", ".join(f"{split} {metric} {getattr(result, split).get(metric, nan):.{digits}f}"
                       for split in ("validation", "test"))
    if tokens:
        scores += f", {result.tokens_seen:,} tokens"
    _echo(f"step {result.steps}: train loss {result.final_loss:.4f}, {scores} in {result.wall_s:.1f} s; "
          f"results in {run_dir}/result.json")


@train_app.command("lm")
def lm(
    out: opt.RunOut = None,
    resume: opt.Resume = None,
    text: opt.Text = None,
    wikitext: opt.Wikitext = None,
    corpus: opt.Corpus = None,
    tokenizer: opt.Tokenizer = None,
    vocab_size: opt.VocabSize = 4096,
    d_model: opt.DModel = 128,
    n_layer: opt.NLayer = 4,
    layer: opt.Layer = "mamba1",
    mixer_option: opt.MixerOption = None,
    d_state: opt.DState = None,
    expand: opt.Expand = None,
    io_constraint: opt.IOConstraint = None,
    io_margin: opt.IOMargin = None,
    final_dropout: float = typer.Option(0.0, "--final-dropout", help="Dropout on the final hidden states "
                                        "(the authors' language models: 0.3)."),
    context: int = typer.Option(256, "--context", help="Tokens per training sequence."),
    batch_size: opt.BatchSize = 32,
    micro_batch: int = typer.Option(0, "--micro-batch", help="Sequences per forward and process; 0: no accumulation."),
    steps: int = typer.Option(200, "--steps", help="Optimiser steps."),
    lr: opt.Lr = 1.5e-3,
    warmup: opt.Warmup = 0.01,
    min_lr_ratio: float = typer.Option(0.1, "--min-lr-ratio", help="Cosine floor as a fraction of --lr."),
    weight_decay: opt.WeightDecay = 0.1,
    decay_rule: str = typer.Option("matrices", "--decay-rule", help="Which parameters decay: matrices (and a "
                                   "constraint's whole S_B/S_C parametrisation) or all (the authors')."),
    grad_clip: float = typer.Option(1.0, "--grad-clip", help="Max gradient norm (0: off)."),
    eval_every: int = typer.Option(50, "--eval-every", help="Validation interval in steps."),
    eval_tokens: int = typer.Option(65536, "--eval-tokens", help="Tokens per evaluation (0: whole split)."),
    checkpoint_every: int = typer.Option(100, "--checkpoint-every", help="Checkpoint interval in steps."),
    monitor_every: int = typer.Option(100, "--monitor-every", help="Regime-monitor interval in steps (0: off)."),
    seed: opt.Seed = 0,
    no_autocast: opt.NoAutocast = False,
    cuda_graph: opt.CudaGraph = False,
    device: opt.Device = "auto",
    backend: opt.Backend = "auto",
    cache_dir: opt.CacheDir = None,
    stop_after_steps: opt.StopAfterSteps = None,
    progress: opt.Progress = True,
) -> None:
    """Train a MambaLM on text: metrics.jsonl, checkpoints (resumable) and result.json in the run directory."""
    from ..train.language import LMModelSpec, TrainConfig, prepare_data, train_lm

    run_dir = run_directory(out, resume)
    options = opt.mixer_options(mixer_option, d_state=d_state, expand=expand, io_constraint=io_constraint,
                                io_margin=io_margin)
    spec = LMModelSpec(d_model=d_model, n_layer=n_layer, layer=layer, mixer=options, final_dropout=final_dropout)
    cfg = TrainConfig(steps=steps, micro_batch=micro_batch, lr=lr, warmup=warmup, min_lr_ratio=min_lr_ratio,
                      weight_decay=weight_decay, decay_rule=decay_rule, grad_clip=grad_clip, eval_every=eval_every,
                      checkpoint_every=checkpoint_every, seed=seed, autocast=not no_autocast, cuda_graph=cuda_graph)
    data = prepare_data(text_files=text or None, wikitext=wikitext, tokenizer=tokenizer, vocab_size=vocab_size,
                        cache_dir=opt.cache_dir(cache_dir), builtin=corpus)
    spec.config(data.vocab_size, scan_backend=backend)   # refuse a bad model before touching the directory
    result, _ = train_lm(data, spec, cfg, context=context, batch_size=batch_size, out=run_dir,
                         resume=resume is not None, device=device, eval_tokens=eval_tokens,
                         monitor_every=monitor_every, stop_after_steps=stop_after_steps, progress=progress,
                         scan_backend=backend, log=_echo)
    report_run(result, run_dir, "ppl", 3, tokens=True)


def _register_experiments() -> None:
    from ..experiments import EXPERIMENTS
    from .experiments import register

    register(train_app, EXPERIMENTS.values())


_register_experiments()
