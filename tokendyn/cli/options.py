"""The command-line options several ``tokendyn`` commands share, each declared once as a typer
``Annotated`` alias; a command gives the default (``device: Device = "auto"``). :func:`option`
makes one where a command's help must say more.

:data:`DATA`: the data options an experiment description may name (``Experiment.options``): the
generated ``tokendyn train EXPERIMENT`` command declares them from here and hands their values,
resolved, to the experiment's ``prepare``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from ..errors import ConfigError
from ..model.families import parse_option


def option(kind: Any, *flags: str, help: str | None = None) -> Any:
    """``Annotated[kind, typer.Option(*flags, help=help)]``."""
    return Annotated[kind, typer.Option(*flags, help=help)]


# what a run writes, where, on which device, and how
RunOut = option(Path | None, "--out", help="Run directory (metrics.jsonl, checkpoint/, result.json).")
Resume = option(Path | None, "--resume", help="Continue the run in this directory from its last checkpoint (the "
                "settings must be the run's).")
Device = option(str, "--device", help="cpu, cuda, cuda:N or auto.")
Backend = option(str, "--backend", help="Selective-scan backend (auto, triton, chunked, reference).")
Progress = option(bool, "--progress/--no-progress", help="Show a progress bar.")
Seed = option(int, "--seed", help="Seed of the initialisation, the batch order and the augmentation.")
NoAutocast = option(bool, "--no-autocast", help="Train in float32 on CUDA too.")
CudaGraph = option(bool, "--cuda-graph", help="Run each optimiser step as CUDA graphs (one CUDA device, no "
                   "torchrun): the host launches two graphs instead of every kernel.")
StopAfterSteps = option(int | None, "--stop-after-steps", help="Stop after this many steps (with a checkpoint), as "
                        "if interrupted; --resume continues.")

# the model
DModel = option(int, "--d-model", help="Model width.")
NLayer = option(int, "--n-layer", help="Number of layers.")
# the mixer: its family and the options of the family and its variants (tokendyn.model.families);
# a command's own flags for options (--d-state, --io-constraint, ...) default to None, "not given",
# so that the family's settings keep their defaults
Layer = option(str, "--layer", help="Mixer family (docs/models.md, \"Families and variants\").")
MixerOption = option(list[str] | None, "--mixer-option", help="An option of the mixer family or of one of its "
                     "variants as NAME=VALUE, read as JSON where it is JSON (repeatable; e.g. d_conv=3, "
                     "io_constraint=positive, reorder_layers=[0,1]).")
DState = option(int | None, "--d-state", help="State size N of each channel (Mamba-1; default 16).")
Expand = option(int | None, "--expand", help="Inner width as a multiple of --d-model (Mamba-1; default 2).")


# Mamba-1's variants by flag (each also reachable as --mixer-option NAME=VALUE)
IOConstraint = option(str | None, "--io-constraint", help="Sign of S_Cᵀ S_B (Mamba-1's io_constraint variant): "
                      "none (default), positive, negative, mixed (the authors': no ε) or mixed_margin.")
IOMargin = option(float | None, "--io-margin", help="ε of the constraint (> 0, default 0.7; not used by mixed).")
Reorder = option(str | None, "--reorder", help="Token reordering (Mamba-1's reorder variant): none (default), soft "
                 "(SoftSort) or hard (exact sort).")
ReorderTau = option(float | None, "--reorder-tau", help="SoftSort temperature τ (> 0, default 1).")
ReorderPower = option(float | None, "--reorder-power", help="SoftSort power p (> 0, default 1).")
ReorderLayers = option(str | None, "--reorder-layers", help="Comma-separated layers that reorder (default 0).")
ReorderBranches = option(str | None, "--reorder-branches", help="xz (x and z sorted alike; default) or x (x only, "
                         "as in the authors' block).")

def mixer_options(texts: list[str] | None, **flags: Any) -> dict[str, Any]:
    """The mixer options of a command: its own flags for options (``flags``: option name -> value,
    None where the flag was not given) and each ``--mixer-option NAME=VALUE``. Whose options they
    are the config decides; a name given twice is refused."""
    out = {name: value for name, value in flags.items() if value is not None}
    for text in texts or []:
        name, value = parse_option(text)
        if name in out:
            raise ConfigError(f"the mixer option {name} is given twice (a flag and --mixer-option, or two "
                              "--mixer-option).")
        out[name] = value
    return out

# the optimiser
BatchSize = option(int, "--batch-size", help="Examples (sequences or images) per optimiser step, all processes "
                   "together.")
Lr = option(float, "--lr", help="Peak learning rate.")
Warmup = option(float, "--warmup", help="Fraction of the steps with linear warm-up.")
WeightDecay = option(float, "--weight-decay", help="AdamW weight decay.")

# the data
Text = option(list[Path] | None, "--text", help="UTF-8 text file(s) to train on instead of the built-in corpus; "
              "split 90/5/5 by contiguous blocks.")
Corpus = option(str | None, "--corpus", help="The built-in corpus, when neither --text nor --wikitext is given: "
                "bible (the King James Bible, 4 MB) or english (77 MB of English from five Debian packages).")
Wikitext = option(Path | None, "--wikitext", help="Directory with wiki.{train,valid,test}.tokens (WikiText-103 or "
                  "WikiText-2) instead of the built-in corpus.")
CacheDir = option(Path | None, "--cache-dir", help="Cache for tokenizers and token ids (default: $TOKENDYN_CACHE or "
                  "~/.cache/tokendyn).")
ImageData = option(str, "--data", help="fashion-mnist or folder (ImageFolder layout).")
DataDir = option(Path | None, "--data-dir", help="Directory of the data: Fashion-MNIST's IDX files (default: the "
                 "Debian package's), or the image folder.")
Download = option(bool, "--download", help="Fetch Fashion-MNIST with torchvision when the IDX files are missing "
                  "(needs torchvision and a network).")
ImageSize = option(int, "--image-size", help="Image-folder images are resized to this square size.")
ImageChannels = option(int, "--channels", help="Image-folder images as 1 (grey) or 3 (RGB) channels.")
Tokenizer = option(Path | None, "--tokenizer", help="A tokenizer.json to use instead of training a byte-level BPE.")
VocabSize = option(int, "--vocab-size", help="Tokens of the byte-level BPE trained on the training split (>= 256).")

# results
Json = option(Path | None, "--json", help="Also write the results as JSON here.")


def cache_dir(value: Path | None) -> Path:
    """--cache-dir, or the default cache."""
    from ..data.corpus import default_cache_dir

    return value if value is not None else default_cache_dir()


# name -> (alias, default, resolve: the value the experiment receives)
DATA: dict[str, tuple[Any, Any, Any]] = {
    "text": (Text, None, lambda v: list(v) if v else None),
    "wikitext": (Wikitext, None, None),
    "corpus": (Corpus, None, None),
    "cache_dir": (CacheDir, None, cache_dir),
    "data": (ImageData, "fashion-mnist", None),
    "data_dir": (DataDir, None, None),
}
