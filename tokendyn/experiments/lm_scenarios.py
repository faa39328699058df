"""The lm-scenarios experiment (THEORY.md section 5): language models whose S_Cᵀ S_B is
unconstrained (none), positive, negative or mixed (and the project's mixed_margin), several seeds
each, with the same data, tokenizer, model size and token budget; test perplexity per setting,
validation curves, and the in-layer quantities of the trained models.

Files in OUT (beside runs/): lm_scenarios.json, lm_scenarios.md (the tables and the in-layer
study), lm_scenarios_val.png, lm_scenarios_inlayer.png, lm_scenarios_spectra.png and
lm_scenarios_token_norms.png. ``tokendyn train lm-scenarios`` and the report's section "lm" run it.
"""

from __future__ import annotations

from functools import partial

from ..train.experiment import Comparison, EarlyStopping, Experiment, FigureSpec, Flatness, Metric
from ..train.figures import plot_val_curves
from ..train.language import DEFAULT_SETTINGS, IO_SETTINGS, LMModelSpec, prepare_data, train_lm
from ..train.loop import TrainConfig
from .lm_figures import SETTING_COLOURS, analysis_figures, final_monitor, inlayer_table, plot_inlayer

# Model, data and budget of each scale. full: one GPU, about 7.5 minutes a run on an H100
# (docs/training.md has the measured times); quick: a CPU; smoke: the CPU in seconds per run
# (the lm section of tokendyn reproduce). "corpus": the built-in corpus (default bible).
SCALES = {
    "smoke": {"model": {"d_model": 32, "n_layer": 2, "d_state": 8}, "vocab_size": 512, "context": 64,
              "batch_size": 8, "steps": 60, "lr": 3e-3, "eval_every": 15, "eval_tokens": 4096, "eval_test": True,
              "monitor_every": 15},
    "quick": {"model": {"d_model": 64, "n_layer": 2, "d_state": 8}, "vocab_size": 1024, "context": 128,
              "batch_size": 16, "steps": 150, "lr": 3e-3, "eval_every": 25, "eval_tokens": 16384,
              "eval_test": True, "monitor_every": 25},
    # the authors' width, context, lr, schedule, weight decay (0.25 on every parameter) and
    # final dropout (0.3), at 36.5M parameters and 164M tokens per run (7.1 epochs of the
    # english corpus's 23M training tokens). Shorter runs were not flat: validation perplexity fell
    # 5.5-8.3 % over the last 20 % of 1250 steps (results/lm_scenarios_41m/) and 2.8 % over the
    # last 20 % of 2500 (results/lm_scenarios_calibration/). At 5000 the calibration run's curve
    # bottoms out at step 4000 and rises 2.4 % by the end (overfitting), hence eval_test: the test
    # split is read at every evaluation, and the comparisons are read at each run's best
    # validation step too (EarlyStopping).
    "full": {"model": {"d_model": 768, "n_layer": 8, "d_state": 16, "final_dropout": 0.3}, "corpus": "english",
             "vocab_size": 8192, "context": 1024, "batch_size": 32, "steps": 5000, "lr": 1.5e-3, "warmup": 0.01,
             "weight_decay": 0.25, "decay_rule": "all", "eval_every": 250, "eval_tokens": 0, "eval_test": True,
             "monitor_every": 1000},
}

PAPER = "Paper (section 5): "
# the paper's comparisons (the authors trained no unconstrained language model), then the project's
COMPARISONS = (
    *(Comparison("negative", other, "worse", f"{PAPER}the negative setting gives worse perplexity than {other}.")
      for other in ("none", "positive", "mixed")),
    Comparison("negative", "mixed_margin", "worse", "Project's variant mixed_margin (mixed with ε): the negative "
               "setting gives worse perplexity than mixed_margin.", origin="project"),
    *(Comparison("positive", other, "better", f"{PAPER}the positive setting gives the best perplexity: better than "
                 f"{other}.") for other in ("mixed", "negative")),
    Comparison("positive", "none", "better", "Project's addition (the authors trained no unconstrained language "
               "model): the positive setting gives better perplexity than none.", origin="project"),
)


def prepare(p: dict, options: dict):
    """The tokenised corpus of scale ``p``: --text files, a --wikitext directory, or a built-in
    corpus: --corpus, else the scale's (``p["corpus"]``, default the Bible)."""
    text, wikitext = options.get("text") or None, options.get("wikitext")
    builtin = options.get("corpus") or (None if text or wikitext else p.get("corpus"))
    return prepare_data(text_files=text, wikitext=wikitext, vocab_size=p["vocab_size"],
                        cache_dir=options.get("cache_dir"), builtin=builtin)


def data_label(data) -> str:
    d = data.describe()
    return f"{d['name']}; tokens {d['tokens']}"


def train(data, p: dict, overrides: dict, seed: int, run_dir, *, resume, device, progress, log, cuda_graph=False):
    """One run of the grid: a MambaLM of the scale with the setting's io_constraint (cuda_graph:
    TrainConfig.cuda_graph)."""
    cfg = TrainConfig(steps=p["steps"], lr=p["lr"], warmup=p.get("warmup", 0.01), eval_every=p["eval_every"],
                      checkpoint_every=2 * p["eval_every"], log_every=10, seed=seed,
                      weight_decay=p.get("weight_decay", 0.1), decay_rule=p.get("decay_rule", "matrices"),
                      eval_test=p.get("eval_test", False), cuda_graph=cuda_graph)
    # every run draws its own analysis figures, so that a summary needs no checkpoint
    result, _ = train_lm(data, LMModelSpec(**p["model"], **overrides), cfg, context=p["context"],
                         batch_size=p["batch_size"], out=run_dir, resume=resume, device=device,
                         eval_tokens=p["eval_tokens"], monitor_every=p["monitor_every"], progress=progress,
                         analysis_figures=True, log=log)
    return result


def describe(doc: dict) -> str:
    cfg = doc["config"]
    m = cfg["model"]
    return (f"MambaLM d_model {m['d_model']}, {m['n_layer']} layers, d_state {m['d_state']}, vocabulary "
            f"{m['vocab_size']}, context {cfg['task']['context']}, {doc['tokens_seen']:,} training tokens per run")


def run_fields(run) -> dict:
    # per seed, the monitor's time and its last record: per layer the signature, the radial
    # velocity and the idealised flow's verdict at the end of training (THEORY.md section 4)
    return {"monitor_s": round(run.result["callback_s"], 3), "monitor_final": final_monitor(run.dir),
            "params": run.ident.get("params")}


def report_extras(doc: dict, committed: dict | None, scale: str, how: str) -> tuple[list, dict]:
    """The in-layer checks on this run's trained models and, below full scale, on the committed grid's."""
    from ..reproduce.verdicts import trained_inlayer_checks

    checks = trained_inlayer_checks(doc, f"after training (this run's grid, {scale} scale, all seeds)")
    if scale != "full":
        label = (f"after training (committed full-scale grid results/lm_scenarios.json, {committed.get('device')})"
                 if committed is not None else "after training (committed full-scale grid)")
        checks += trained_inlayer_checks(committed, label, how)
    return checks, {"inlayer_final": {s: v.get("monitor_final") for s, v in doc["settings"].items()}}


EXPERIMENT = Experiment(
    name="lm-scenarios",
    stem="lm_scenarios",
    title="Language models with a sign-constrained S_Cᵀ S_B",
    section="lm",
    help="Language models with S_Cᵀ S_B unconstrained / positive / negative / mixed, several seeds each: "
         "lm_scenarios.json, a markdown table and figures in OUT.",
    settings={s: {"io_constraint": s} for s in IO_SETTINGS},
    default_settings=DEFAULT_SETTINGS,
    scales=SCALES,
    metric=Metric(key="test_ppl", result="ppl", label="test perplexity", curve_label="validation perplexity",
                  higher_is_better=False, digits=3),
    comparisons=COMPARISONS,
    flatness=Flatness(last=0.2, min_gain=0.02),
    early_stopping=EarlyStopping(key="test_ppl_at_best_val"),
    figures=(
        FigureSpec("lm_scenarios_val.png", "validation curves",
                   partial(plot_val_curves, xlabel="optimiser step", title="validation perplexity by S_Cᵀ S_B setting",
                           log_y=True)),
        FigureSpec("lm_scenarios_inlayer.png", "radial velocity per layer after training",
                   lambda exp, doc: plot_inlayer(doc)),
        FigureSpec("lm_scenarios_spectra.png", "spectra"),
        FigureSpec("lm_scenarios_token_norms.png", "token norms"),
    ),
    colours=SETTING_COLOURS,
    options=("text", "wikitext", "corpus", "cache_dir"),
    prepare=prepare,
    data_label=data_label,
    train=train,
    describe=describe,
    run_fields=run_fields,
    sections=inlayer_table,
    analyse=analysis_figures,
    report_extras=report_extras,
    report_note="The smoke scale trains tiny models for seconds: its numbers show that the pipeline runs, not how "
                "the settings compare. Differences are read against the seed spread (Welch's t).",
    full_run="run `bash scripts/grid_gpu.sh lm-scenarios OUT BUDGET_S` (or `tokendyn reproduce --scale full "
             "--device cuda`)",
)
