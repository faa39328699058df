"""``tokendyn train``: ``lm`` (one language-model run) and ``lm-scenarios`` (the S_Cᵀ S_B
sign experiment). Other tasks add their own subcommands to :data:`train_app`."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import typer

from ..errors import ConfigError
from . import app

train_app = typer.Typer(help="Train models (language models; the lm-scenarios experiment).", no_args_is_help=True)
app.add_typer(train_app, name="train")


def command_line() -> str:
    return "tokendyn " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[1:] else "tokendyn train"


def _echo(line: str) -> None:
    typer.echo(line, err=True)


def grid_choices(experiment, settings: list[str], seeds: str, scale: str) -> tuple[list[str], list[int]]:
    """The settings (repeatable or comma-separated) and seeds (comma-separated) of a seed-grid
    command, checked against ``experiment`` (tokendyn.train.scenarios or .reordering) together
    with the scale, before any work."""
    names = experiment.check_settings([s.strip() for v in settings for s in v.split(",") if s.strip()])
    experiment.scale_params(scale)
    try:
        seed_list = [int(s) for s in seeds.split(",") if s.strip()]
    except ValueError:
        raise ConfigError(f"--seeds must be comma-separated integers, got {seeds!r}.") from None
    return names, seed_list


def report_run(result, run_dir: Path, scores: str) -> None:
    """The last line of a training command: how to continue a stopped run, or the run's scores
    (``scores``: the task's validation and test numbers, already formatted)."""
    if result.stopped_early:
        _echo(f"stopped after step {result.steps} (checkpoint in {run_dir}/checkpoint); continue with "
              f"--resume {run_dir}")
        return
    _echo(f"step {result.steps}: train loss {result.final_loss:.4f}, {scores} in {result.wall_s:.1f} s; "
          f"results in {run_dir}/result.json")


@train_app.command("lm")
def lm(
    out: Path = typer.Option(None, "--out", help="Run directory (metrics.jsonl, checkpoint/, result.json)."),
    resume: Path = typer.Option(None, "--resume", help="Continue the run in this directory from its last checkpoint "
                                "(the settings must be the run's)."),
    text: list[Path] = typer.Option([], "--text", help="UTF-8 text file(s) to train on (default: the built-in "
                                    "King James Bible); split 90/5/5 by contiguous blocks."),
    wikitext: Path = typer.Option(None, "--wikitext", help="Directory with wiki.{train,valid,test}.tokens "
                                  "(WikiText-103 or WikiText-2)."),
    tokenizer: Path = typer.Option(None, "--tokenizer", help="A tokenizer.json to use instead of training a "
                                   "byte-level BPE."),
    vocab_size: int = typer.Option(4096, "--vocab-size", help="Tokens of the byte-level BPE trained on the "
                                   "training split (>= 256)."),
    d_model: int = typer.Option(128, "--d-model"),
    n_layer: int = typer.Option(4, "--n-layer"),
    d_state: int = typer.Option(16, "--d-state"),
    expand: int = typer.Option(2, "--expand"),
    io_constraint: str = typer.Option("none", "--io-constraint", help="Sign of S_Cᵀ S_B: none, positive, negative, "
                                      "mixed (the authors': no ε) or mixed_margin."),
    io_margin: float = typer.Option(0.7, "--io-margin", help="ε of the constraint (> 0; not used by mixed)."),
    final_dropout: float = typer.Option(0.0, "--final-dropout", help="Dropout on the final hidden states "
                                        "(the authors' language models: 0.3)."),
    context: int = typer.Option(256, "--context", help="Tokens per training sequence."),
    batch_size: int = typer.Option(32, "--batch-size", help="Sequences per optimiser step (all processes)."),
    micro_batch: int = typer.Option(0, "--micro-batch", help="Sequences per forward pass and process "
                                    "(0: no gradient accumulation)."),
    steps: int = typer.Option(200, "--steps", help="Optimiser steps."),
    lr: float = typer.Option(1.5e-3, "--lr", help="Peak learning rate."),
    warmup: float = typer.Option(0.01, "--warmup", help="Fraction of the steps with linear warm-up."),
    min_lr_ratio: float = typer.Option(0.1, "--min-lr-ratio", help="Cosine floor as a fraction of --lr."),
    weight_decay: float = typer.Option(0.1, "--weight-decay", help="AdamW weight decay."),
    decay_rule: str = typer.Option("matrices", "--decay-rule", help="Which parameters decay: matrices (and a "
                                   "constraint's whole S_B/S_C parametrisation) or all (the authors')."),
    grad_clip: float = typer.Option(1.0, "--grad-clip", help="Max gradient norm (0: off)."),
    eval_every: int = typer.Option(50, "--eval-every", help="Validation interval in steps."),
    eval_tokens: int = typer.Option(65536, "--eval-tokens", help="Tokens per evaluation (0: whole split)."),
    checkpoint_every: int = typer.Option(100, "--checkpoint-every", help="Checkpoint interval in steps."),
    monitor_every: int = typer.Option(100, "--monitor-every", help="Regime-monitor interval in steps (0: off)."),
    seed: int = typer.Option(0, "--seed"),
    no_autocast: bool = typer.Option(False, "--no-autocast", help="Train in float32 on CUDA too."),
    device: str = typer.Option("auto", "--device", help="cpu, cuda or auto."),
    backend: str = typer.Option("auto", "--backend", help="Selective-scan backend (auto, triton, chunked, reference)."),
    cache_dir: Path = typer.Option(None, "--cache-dir", help="Cache for tokenizers and token ids "
                                   "(default: $TOKENDYN_CACHE or ~/.cache/tokendyn)."),
    stop_after_steps: int = typer.Option(None, "--stop-after-steps", help="Stop after this many steps (with a "
                                         "checkpoint), as if interrupted; --resume continues."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
) -> None:
    """Train a MambaLM on text: metrics.jsonl, checkpoints (resumable) and result.json in the run directory."""
    from ..data.corpus import default_cache_dir
    from ..train.lm import LMModelSpec, prepare_data, train_lm
    from ..train.loop import TrainConfig, is_main_process

    if resume is not None and out is not None and Path(out) != Path(resume):
        raise ConfigError("--out and --resume name different directories; pass one of them.")
    run_dir = resume or out
    if run_dir is None:
        raise ConfigError("pass --out DIR for a new run or --resume DIR to continue one.")
    spec = LMModelSpec(d_model=d_model, n_layer=n_layer, d_state=d_state, expand=expand, io_constraint=io_constraint,
                       io_margin=io_margin, final_dropout=final_dropout)
    cfg = TrainConfig(steps=steps, micro_batch=micro_batch, lr=lr, warmup=warmup, min_lr_ratio=min_lr_ratio,
                      weight_decay=weight_decay, decay_rule=decay_rule, grad_clip=grad_clip, eval_every=eval_every,
                      checkpoint_every=checkpoint_every, seed=seed, autocast=not no_autocast)
    data = prepare_data(text_files=text or None, wikitext=wikitext, tokenizer=tokenizer, vocab_size=vocab_size,
                        cache_dir=cache_dir if cache_dir is not None else default_cache_dir())
    spec.config(data.vocab_size, scan_backend=backend)   # refuse a bad model before touching the directory
    result, _ = train_lm(data, spec, cfg, context=context, batch_size=batch_size, out=run_dir,
                         resume=resume is not None, device=device, eval_tokens=eval_tokens,
                         monitor_every=monitor_every, stop_after_steps=stop_after_steps, progress=progress,
                         scan_backend=backend, log=_echo)
    if not is_main_process():
        return
    report_run(result, run_dir, f"validation ppl {result.validation.get('ppl', float('nan')):.3f}, test ppl "
                                f"{result.test.get('ppl', float('nan')):.3f}, {result.tokens_seen:,} tokens")


@train_app.command("lm-scenarios")
def lm_scenarios(
    out: Path = typer.Option(Path("lm-scenarios-out"), "--out", help="Directory for runs/ and the lm_scenarios.* "
                             "files; complete runs found there are skipped, incomplete ones resumed."),
    scale: str = typer.Option("quick", "--scale", help="quick (CPU), full (one GPU) or smoke (seconds per run)."),
    settings: list[str] = typer.Option([], "--settings", help="Settings to run (repeatable or comma-separated; "
                                       "default: none, positive, negative, mixed)."),
    seeds: str = typer.Option("0,1,2", "--seeds", help="Comma-separated seeds."),
    text: list[Path] = typer.Option([], "--text", help="Train on these text files instead of the built-in corpus."),
    wikitext: Path = typer.Option(None, "--wikitext", help="WikiText directory instead of the built-in corpus."),
    device: str = typer.Option("auto", "--device", help="cpu, cuda or auto."),
    cache_dir: Path = typer.Option(None, "--cache-dir", help="Cache for tokenizers and token ids."),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
) -> None:
    """Language models with S_Cᵀ S_B unconstrained / positive / negative / mixed, several seeds each:
    lm_scenarios.json, a markdown table and figures in OUT."""
    from ..data.corpus import default_cache_dir
    from ..provenance import provenance
    from ..train import scenarios
    from ..train.loop import resolve_device

    names, seed_list = grid_choices(scenarios, settings, seeds, scale)
    dev = resolve_device(device)
    doc = scenarios.run_grid(out, scale=scale, settings=names, seeds=seed_list, device=dev, text_files=text or None,
                             wikitext=wikitext, cache_dir=cache_dir if cache_dir is not None else default_cache_dir(),
                             progress=progress, log=_echo, provenance=provenance(command_line()))
    typer.echo((out / "lm_scenarios.md").read_text())
    typer.echo(f"written: {', '.join(str(out / f) for f in ('lm_scenarios.json', 'lm_scenarios.md'))} "
               f"({len(doc['settings'])} settings)")
