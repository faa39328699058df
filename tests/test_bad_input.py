"""A catalogue of hostile inputs to every command.

Each case runs ``tokendyn ...`` in-process through :func:`tokendyn.cli.main` and must end with
exit status 2, exactly one line on stderr (``tokendyn: error: ...``), no traceback, and every
output that existed before the run unchanged (no file replaced, no temporary left behind).
A few cases run as real processes: the console entry point, and Ctrl-C (SIGINT) during a long
``reproduce`` into an existing directory, which must end with status 130 and leave it as it was.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from tokendyn.cli import main
from tokendyn.model import MambaConfig, MambaLM

ONE_D = ["--mu", "1", "--s-delta", "1", "--a", "1"]
OLD = "old output of an earlier run\n"


class _RunsCode:
    """Unpickling this runs a shell command: what weights_only=True must refuse."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _word_tokenizer(path: Path, words: list[str]) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"[UNK]": 0, **{w: i + 1 for i, w in enumerate(dict.fromkeys(words))}}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(path))


def _variant(world: Path, good: Path, name: str, edit) -> Path:
    """A copy of the good checkpoint whose weights ``edit`` changes (a dict of tensors)."""
    d = world / name
    shutil.copytree(good, d)
    tensors = load_file(str(d / "model.safetensors"))
    edit(tensors)
    save_file(tensors, str(d / "model.safetensors"))
    return d


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    w = tmp_path_factory.mktemp("bad_input")
    torch.manual_seed(0)
    good = w / "ck"
    MambaLM(MambaConfig(d_model=16, n_layer=2, vocab_size=60, d_state=4)).save(good)
    _word_tokenizer(good / "tokenizer.json", "In the beginning God created the heaven and the earth .".split())
    shutil.copytree(good, w / "ck_notok")
    (w / "ck_notok" / "tokenizer.json").unlink()

    def nan(t):
        t["backbone.layers.0.mixer.A_log"][1, 2] = float("nan")

    def missing(t):
        del t["backbone.layers.1.mixer.dt_proj.bias"]

    def extra(t):
        t["backbone.layers.7.mixer.D"] = torch.ones(32)

    def misshapen(t):
        t["backbone.layers.0.mixer.x_proj.weight"] = torch.zeros(5, 3)

    for name, edit in [("ck_nan", nan), ("ck_missing", missing), ("ck_extra", extra), ("ck_shape", misshapen)]:
        _variant(w, good, name, edit)
    for name, data in [("ck_text", b"these are not tensors\n"), ("ck_empty_weights", b""),
                       ("ck_truncated", (good / "model.safetensors").read_bytes()[:700])]:
        shutil.copytree(good, w / name)
        (w / name / "model.safetensors").write_bytes(data)
    pick = w / "ck_pickle"   # state-spaces layout: config.json + pytorch_model.bin holding code
    pick.mkdir()
    (pick / "config.json").write_text(json.dumps({"d_model": 16, "n_layer": 2, "vocab_size": 60,
                                                   "ssm_cfg": {"d_state": 4}}))
    torch.save({"backbone.embedding.weight": _RunsCode(w / "pwned")}, pick / "pytorch_model.bin")
    for name, text in [("cfg_missing", None), ("cfg_empty", ""), ("cfg_bad_json", "{not json"),
                       ("cfg_list", "[1, 2]"), ("cfg_unknown", json.dumps({"hello": 1}))]:
        d = w / name
        shutil.copytree(good, d)
        if text is None:
            (d / "config.json").unlink()
        else:
            (d / "config.json").write_text(text)
    (w / "empty_dir").mkdir()
    (w / "a_file").write_text("x\n")
    (w / "empty.txt").write_text("")
    (w / "long.txt").write_text("In the beginning " * 200)
    (w / "tok_garbage.json").write_text("{this is not a tokenizer")
    (w / "params_bad.json").write_text("{not json")
    (w / "params_binary.json").write_bytes(bytes(range(256)) * 4)
    (w / "params_shape.json").write_text(json.dumps({"S_B": [[1, 2]], "S_C": [[1]], "S_Delta": [[1]], "a": [1]}))
    # configs with absurd numbers (the weights are the good checkpoint's): answered at once
    for name, edit in [("cfg_d_model_huge", {"d_model": 10**12}), ("cfg_n_layer_huge", {"n_layer": 10**9}),
                       ("cfg_n_layer_deep", {"n_layer": 16384}), ("cfg_vocab_huge", {"vocab_size": 10**30})]:
        d = w / name
        shutil.copytree(good, d)
        (d / "config.json").write_text(json.dumps({**json.loads((good / "config.json").read_text()), **edit}))
    # an image folder of two classes (tiny PNGs) for `train image --data folder`
    from PIL import Image

    for cls in ("cat", "dog"):
        (w / "imgs" / cls).mkdir(parents=True)
        for i in range(3):
            Image.new("L", (8, 8), color=40 * i).save(w / "imgs" / cls / f"{i}.png")
    # a report that tokendyn did not write
    (w / "mine").mkdir()
    (w / "mine" / "index.html").write_text("<html>my own page</html>\n")
    # outputs of an earlier run: every case must leave them exactly as they are
    prev = w / "prev"
    prev.mkdir()
    for name in ("report.html", "analysis.json", "report.md", "report.json", "core.json", "mine.txt"):
        (prev / name).write_text(OLD)
    (w / "prev.json").write_text(OLD)
    (w / "prev.png").write_text(OLD)
    return w


@pytest.fixture(scope="module")
def read_only(world) -> Path:
    """A directory that refuses new files (permission bits do not stop root: use /sys there)."""
    if os.geteuid() == 0:
        return Path("/sys")
    d = world / "ro"
    d.mkdir(exist_ok=True)
    d.chmod(0o555)
    return d


def _snapshot(world: Path) -> dict:
    """Every file under the world (and its content hash): nothing may change or appear."""
    return {str(p.relative_to(world)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(world.rglob("*")) if p.is_file()}


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as info:
        main([str(a) for a in argv])
    out, err = capsys.readouterr()
    code = info.value.code
    return (0 if code is None else code), out, err


# Each case: id -> (argv with {w} for the world and {ro} for a read-only directory, a fragment of the
# expected sentence). Grouped by command and by kind of input.
CASES: dict[str, tuple[list[str], str]] = {
    # --- command line -----------------------------------------------------------------------
    "unknown-command": (["frobnicate"], "No such command"),
    "unknown-option-analyze": (["analyze", "{w}/ck", "--frobnicate"], "No such option"),
    "unknown-option-info": (["info", "{w}/ck", "--depth", "3"], "No such option"),
    "unknown-option-simulate": (["simulate", *ONE_D, "--speed", "3"], "No such option"),
    "unknown-option-reproduce": (["reproduce", "--fast"], "No such option"),
    "missing-argument-analyze": (["analyze"], "Missing argument"),
    "missing-argument-info": (["info"], "Missing argument"),
    "not-an-integer": (["analyze", "{w}/ck", "--max-tokens", "many"], "--max-tokens"),
    "not-a-number": (["simulate", "--mu", "one", "--s-delta", "1", "--a", "1"], "--mu"),
    "option-without-value": (["analyze", "{w}/ck", "--out"], "--out"),
    # --- checkpoints: missing, empty, truncated, text, pickle with code, bad tensors -------------
    **{f"{cmd}-{name}": ([cmd, "{w}/" + name, *extra], frag) for cmd, extra in
       [("info", ["--json", "{w}/prev.json"]), ("analyze", ["--out", "{w}/prev", "--json", "{w}/prev.json"])]
       for name, frag in [
           ("does-not-exist", "does not exist"),
           ("empty_dir", "config.json"),
           ("a_file", "config.json"),
           ("cfg_missing", "config.json"),
           ("cfg_empty", "config.json"),
           ("cfg_bad_json", "config.json"),
           ("cfg_list", "config.json"),
           ("cfg_unknown", "layout"),
           ("ck_text", "model.safetensors"),
           ("ck_empty_weights", "model.safetensors"),
           ("ck_truncated", "truncated"),
           ("ck_pickle", "pytorch_model.bin"),
           ("ck_nan", "NaN"),
           ("ck_missing", "missing"),
           ("ck_extra", "does not use"),
           ("ck_shape", "shape"),
       ]},
    # --- analyze: outputs, sizes, devices, inputs ------------------------------------------
    "analyze-out-is-file": (["analyze", "{w}/ck", "--out", "{w}/prev.json"], "existing file"),
    "analyze-out-under-file": (["analyze", "{w}/ck", "--out", "{w}/a_file/out"], "not a directory"),
    "analyze-out-read-only": (["analyze", "{w}/ck", "--out", "{ro}/out"], "does not accept"),
    "analyze-json-is-dir": (["analyze", "{w}/ck", "--out", "{w}/prev", "--json", "{w}/prev"], "directory"),
    "analyze-json-under-file": (["analyze", "{w}/ck", "--out", "{w}/prev", "--json", "{w}/a_file/a.json"],
                                "not a directory"),
    "analyze-json-read-only": (["analyze", "{w}/ck", "--out", "{w}/prev", "--json", "{ro}/a.json"], "does not accept"),
    "analyze-max-tokens-huge": (["analyze", "{w}/ck", "--out", "{w}/prev", "--max-tokens", "1000000000"],
                                "available"),
    "analyze-flow-time-nan": (["analyze", "{w}/ck", "--out", "{w}/prev", "--flow-time", "nan"], "--flow-time"),
    "analyze-flow-time-negative": (["analyze", "{w}/ck", "--out", "{w}/prev", "--flow-time", "-1"], "--flow-time"),
    "analyze-flow-time-huge": (["analyze", "{w}/ck", "--out", "{w}/prev", "--flow-time", "1e300"], "--flow-time"),
    "analyze-flow-tokens-zero": (["analyze", "{w}/ck", "--out", "{w}/prev", "--flow-tokens", "0"], "--flow-tokens"),
    "analyze-max-tokens-zero": (["analyze", "{w}/ck", "--out", "{w}/prev", "--max-tokens", "0"], "at least 1"),
    "analyze-max-tokens-negative": (["analyze", "{w}/ck", "--out", "{w}/prev", "--max-tokens", "-4"], "at least 1"),
    "analyze-device-tpu": (["analyze", "{w}/ck", "--out", "{w}/prev", "--device", "tpu"], "--device"),
    "analyze-device-cuda-index": (["analyze", "{w}/ck", "--out", "{w}/prev", "--device", "cuda:x"], "--device"),
    "analyze-layers-text": (["analyze", "{w}/ck", "--out", "{w}/prev", "--layers", "first"], "integers"),
    "analyze-layer-out-of-range": (["analyze", "{w}/ck", "--out", "{w}/prev", "--layers", "9"], "layer"),
    "analyze-channel-out-of-range": (["analyze", "{w}/ck", "--out", "{w}/prev", "--channels", "100000"],
                                     "channel"),
    "analyze-channel-negative": (["analyze", "{w}/ck", "--out", "{w}/prev", "--channels", "-1000"],
                                 "channel -1000 does not exist"),
    "analyze-text-is-dir": (["analyze", "{w}/ck", "--out", "{w}/prev", "--text", "{w}/empty_dir"], "is a directory"),
    "analyze-text-missing": (["analyze", "{w}/ck", "--out", "{w}/prev", "--text", "{w}/nothing.txt"], "nothing.txt"),
    "analyze-text-empty": (["analyze", "{w}/ck", "--out", "{w}/prev", "--text", "{w}/empty.txt"], "empty.txt"),
    "analyze-text-too-long": (["analyze", "{w}/ck", "--out", "{w}/prev", "--text", "{w}/long.txt",
                               "--max-tokens", "10"], "--truncate"),
    "analyze-text-no-tokenizer": (["analyze", "{w}/ck_notok", "--out", "{w}/prev", "--text", "{w}/long.txt"],
                                  "tokenizer"),
    "analyze-tokenizer-missing": (["analyze", "{w}/ck", "--out", "{w}/prev", "--tokenizer", "{w}/none.json"],
                                  "none.json"),
    "analyze-tokenizer-garbage": (["analyze", "{w}/ck", "--out", "{w}/prev", "--tokenizer", "{w}/tok_garbage.json"],
                                  "tok_garbage.json"),
    # --- info: outputs ---------------------------------------------------------------------
    "info-json-is-dir": (["info", "{w}/ck", "--json", "{w}/prev"], "directory"),
    "info-json-under-file": (["info", "{w}/ck", "--json", "{w}/a_file/i.json"], "not a directory"),
    "info-json-read-only": (["info", "{w}/ck", "--json", "{ro}/i.json"], "does not accept"),
    # --- simulate: options, parameter files, outputs, sizes ------------------------------------
    "simulate-no-source": (["simulate"], "parameter source"),
    "simulate-two-sources": (["simulate", *ONE_D, "--random", "--dim", "2", "--state", "2"], "exactly one"),
    "simulate-partial-1d": (["simulate", "--mu", "1", "--a", "1"], "needs all"),
    "simulate-decay-zero": (["simulate", "--mu", "1", "--s-delta", "1", "--a", "0", "--json", "{w}/prev.json"],
                            "positive"),
    "simulate-t-end-negative": (["simulate", *ONE_D, "--t-end", "-1"], "t-end"),
    "simulate-t-end-nan": (["simulate", *ONE_D, "--t-end", "nan"], "t-end"),
    "simulate-t-end-inf": (["simulate", *ONE_D, "--t-end", "inf"], "t-end"),
    "simulate-method-unknown": (["simulate", *ONE_D, "--method", "euler-maruyama"], "method"),
    "simulate-tokens-zero": (["simulate", *ONE_D, "--tokens", "0"], "tokens"),
    "simulate-x0-text": (["simulate", *ONE_D, "--x0", "a,b"], "x0"),
    "simulate-x0-nan": (["simulate", *ONE_D, "--x0", "1,nan"], "entry 2 of '1,nan' is nan"),
    "simulate-x0-empty-entry": (["simulate", *ONE_D, "--x0", "1,,2"], "empty entry at position 2"),
    "simulate-params-binary": (["simulate", "--params", "{w}/params_binary.json"], "not a text (JSON) file"),
    "simulate-x0-and-tokens": (["simulate", *ONE_D, "--x0", "1,2", "--tokens", "3"], "not both"),
    "simulate-params-missing": (["simulate", "--params", "{w}/none.json"], "none.json"),
    "simulate-params-not-json": (["simulate", "--params", "{w}/params_bad.json"], "JSON"),
    "simulate-params-shapes": (["simulate", "--params", "{w}/params_shape.json"], "shape"),
    "simulate-random-without-size": (["simulate", "--random", "--dim", "2"], "--state"),
    "simulate-dim-without-random": (["simulate", *ONE_D, "--dim", "2"], "--random"),
    "simulate-backend-unknown": (["simulate", *ONE_D, "--backend", "warp"], "backend"),
    "simulate-plot-unknown-format": (["simulate", *ONE_D, "--plot", "{w}/o.xyz"], "image format"),
    "simulate-plot-no-suffix": (["simulate", *ONE_D, "--plot", "{w}/prev"], "suffix"),
    "simulate-plot-read-only": (["simulate", *ONE_D, "--plot", "{ro}/o.png"], "does not accept"),
    "simulate-plot-under-file": (["simulate", *ONE_D, "--plot", "{w}/a_file/o.png"], "not a directory"),
    "simulate-json-is-dir": (["simulate", *ONE_D, "--json", "{w}/prev"], "directory"),
    "simulate-json-read-only": (["simulate", *ONE_D, "--json", "{ro}/o.json"], "does not accept"),
    # sizes: refused before anything is allocated (the sentence names the size and its limit)
    "simulate-size-tokens": (["simulate", *ONE_D, "--tokens", "1000000000", "--json", "{w}/prev.json"], "tokens"),
    "simulate-size-points": (["simulate", *ONE_D, "--points", "1000000000", "--json", "{w}/prev.json"], "points"),
    "simulate-size-dim-state": (["simulate", "--random", "--dim", "100000", "--state", "100000",
                                 "--json", "{w}/prev.json"], ""),
    # --- train: optimiser settings that are not numbers are refused before the run directory -----
    "train-lm-lr-nan": (["train", "lm", "--out", "{w}/t1", "--lr", "nan"], "lr must be a finite number"),
    "train-lm-lr-inf": (["train", "lm", "--out", "{w}/t2", "--lr", "inf"], "lr must be a finite number"),
    "train-lm-weight-decay-nan": (["train", "lm", "--out", "{w}/t3", "--weight-decay", "nan"], "weight_decay"),
    "train-lm-warmup-nan": (["train", "lm", "--out", "{w}/t4", "--warmup", "nan"], "warmup"),
    "train-image-lr-inf": (["train", "image", "--out", "{w}/t5", "--lr", "inf"], "lr must be a finite number"),
    "train-lm-n-layer-huge": (["train", "lm", "--out", "{w}/t7", "--n-layer", "100000000"], "n_layer 100,000,000"),
    "train-lm-d-model-huge": (["train", "lm", "--out", "{w}/t8", "--d-model", "100000000"], "d_model"),
    "train-lm-steps-huge": (["train", "lm", "--out", "{w}/t9", "--steps", "1000000000000000000000"], "steps"),
    "train-lm-corpus-unknown": (["train", "lm", "--out", "{w}/t6", "--corpus", "latin"], "built-in corpus"),
    "train-lm-lr-huge-diverges": (["train", "lm", "--out", "{w}/t10", "--text", "{w}/long.txt", "--cache-dir", "{c}",
                                   "--vocab-size", "260", "--d-model", "8", "--n-layer", "1", "--context", "16",
                                   "--batch-size", "2", "--steps", "3", "--eval-tokens", "32", "--monitor-every", "0",
                                   "--lr", "1e30", "--device", "cpu", "--no-progress"],
                                  "nothing of the run"),
    "train-lm-batch-size-not-integer": (["train", "lm", "--out", "{w}/t11", "--batch-size", "1e30"], "--batch-size"),
    "train-lm-batch-size-huge": (["train", "lm", "--out", "{w}/t12", "--text", "{w}/long.txt", "--cache-dir", "{c}",
                                  "--vocab-size", "260", "--batch-size", "1000000000", "--device", "cpu"],
                                 "--batch-size 1000000000"),
    "train-lm-context-huge": (["train", "lm", "--out", "{w}/t13", "--text", "{w}/long.txt", "--cache-dir", "{c}",
                               "--vocab-size", "260", "--context", "100000000", "--device", "cpu"], "--context"),
    "train-lm-model-huge": (["train", "lm", "--out", "{w}/t14", "--text", "{w}/long.txt", "--cache-dir", "{c}",
                             "--vocab-size", "260", "--d-model", "1048576", "--n-layer", "16384", "--device", "cpu"],
                            "parameters"),
    "train-lm-out-under-file": (["train", "lm", "--out", "{w}/a_file/run"], "not a directory"),
    "train-lm-out-in-proc": (["train", "lm", "--out", "/proc/tokendyn-run"], "does not accept"),
    "train-lm-out-name-too-long": (["train", "lm", "--out", "{w}/" + "n" * 300], "bytes long"),
    "train-lm-resume-nothing": (["train", "lm", "--resume", "{w}/empty_dir"], "no training run"),
    "train-image-lr-nan": (["train", "image", "--out", "{w}/t15", "--lr", "nan"], "lr must be a finite number"),
    "train-image-out-under-file": (["train", "image", "--out", "{w}/a_file/run"], "not a directory"),
    "train-image-checkpoint-every-negative": (["train", "image", "--out", "{w}/t16", "--data", "folder", "--data-dir",
                                               "{w}/imgs", "--checkpoint-every", "-1", "--device", "cpu"],
                                              "checkpoint_every"),
    "train-image-size-huge": (["train", "image", "--out", "{w}/t17", "--data", "folder", "--data-dir", "{w}/imgs",
                               "--image-size", "1000000", "--device", "cpu"], "--image-size 1000000"),
    "train-image-batch-huge": (["train", "image", "--out", "{w}/t18", "--data", "folder", "--data-dir", "{w}/imgs",
                                "--image-size", "8", "--patch-size", "2", "--batch-size", "4",
                                "--d-model", "1048576", "--n-layer", "1000", "--device", "cpu"], "parameters"),
    # steps against a time floor: a run that could not finish in a year at a rate far above any device's
    "train-lm-steps-beyond-a-year": (["train", "lm", "--out", "{w}/t21", "--text", "{w}/long.txt", "--cache-dir", "{c}",
                                      "--vocab-size", "260", "--d-model", "512", "--n-layer", "8", "--context", "4096",
                                      "--steps", "100000000", "--device", "cpu"], "would take at least"),
    "train-image-epochs-beyond-a-year": (["train", "image", "--out", "{w}/t22", "--data", "folder", "--data-dir",
                                          "{w}/imgs", "--image-size", "64", "--patch-size", "2", "--d-model", "512",
                                          "--n-layer", "8", "--epochs", "1000000000", "--device", "cpu"],
                                         "would take at least"),
    "train-lm-cuda-graph-on-cpu": (["train", "lm", "--out", "{w}/t23", "--text", "{w}/long.txt", "--cache-dir", "{c}",
                                    "--vocab-size", "260", "--d-model", "8", "--n-layer", "1", "--context", "16",
                                    "--batch-size", "2", "--steps", "3", "--device", "cpu", "--cuda-graph"],
                                   "--cuda-graph needs one CUDA device"),
    "train-lm-scenarios-out-under-file": (["train", "lm-scenarios", "--out", "{w}/a_file/x"], "not a directory"),
    "train-lm-scenarios-scale-unknown": (["train", "lm-scenarios", "--out", "{w}/t19", "--scale", "huge"], "scale"),
    "train-reorder-out-in-proc": (["train", "reorder", "--out", "/proc/tokendyn-reorder"], "does not accept"),
    "train-reorder-setting-unknown": (["train", "reorder", "--out", "{w}/t20", "--settings", "sideways"], "sideways"),
    "train-reorder-cuda-graph-on-cpu": (["train", "reorder", "--out", "{w}/t24", "--device", "cpu", "--cuda-graph"],
                                        "--cuda-graph needs one CUDA device"),
    # --- absurd config numbers: refused from config.json at once, before a model is built -------------
    "info-config-d-model-huge": (["info", "{w}/cfg_d_model_huge"], "d_model"),
    "info-config-n-layer-huge": (["info", "{w}/cfg_n_layer_huge"], "n_layer"),
    "info-config-n-layer-deep": (["info", "{w}/cfg_n_layer_deep"], "n_layer 16,384"),
    "info-config-vocab-huge": (["info", "{w}/cfg_vocab_huge"], "vocab_size"),
    "analyze-config-n-layer-deep": (["analyze", "{w}/cfg_n_layer_deep", "--out", "{w}/prev"], "n_layer 16,384"),
    # --- over-long names and /proc as outputs -----------------------------------------------------------
    "analyze-out-name-too-long": (["analyze", "{w}/ck", "--out", "{w}/" + "n" * 300], "bytes long"),
    "simulate-json-name-too-long": (["simulate", *ONE_D, "--json", "{w}/" + "n" * 300 + ".json"], "bytes long"),
    "info-json-in-proc": (["info", "{w}/ck", "--json", "/proc/tokendyn.json"], "does not accept"),
    # --- export ------------------------------------------------------------------------------------------
    "export-layout-unknown": (["export", "{w}/ck", "--layout", "onnx", "--out", "{w}/e1"], "--layout"),
    "export-out-holds-files": (["export", "{w}/ck", "--layout", "hf", "--out", "{w}/prev"], "--force"),
    "export-checkpoint-missing": (["export", "{w}/nothing", "--layout", "hf", "--out", "{w}/e2"], "does not exist"),
    "export-checkpoint-nan": (["export", "{w}/ck_nan", "--layout", "state-spaces", "--out", "{w}/e3"], "NaN"),
    "export-out-under-file": (["export", "{w}/ck", "--layout", "hf", "--out", "{w}/a_file/e"], "not a directory"),
    # --- reproduce: options, devices, outputs ------------------------------------------------
    "reproduce-scale-unknown": (["reproduce", "--scale", "huge", "--out", "{w}/prev"], "scale"),
    "reproduce-section-unknown": (["reproduce", "--only", "everything", "--out", "{w}/prev"], "section"),
    "reproduce-device-tpu": (["reproduce", "--device", "tpu", "--out", "{w}/prev"], "--device"),
    "reproduce-out-is-file": (["reproduce", "--out", "{w}/prev.json"], "existing file"),
    "reproduce-out-under-file": (["reproduce", "--out", "{w}/a_file/r"], "not a directory"),
    "reproduce-out-read-only": (["reproduce", "--out", "{ro}/r"], "does not accept"),
    "reproduce-out-holds-foreign-report": (["reproduce", "--only", "core", "--out", "{w}/mine"], "did not write"),
    "reproduce-out-holds-broken-report": (["reproduce", "--only", "core", "--out", "{w}/prev"], "did not write"),
}
if not torch.cuda.is_available():
    CASES["analyze-device-cuda-absent"] = (["analyze", "{w}/ck", "--out", "{w}/prev", "--device", "cuda"], "CUDA")
    CASES["reproduce-device-cuda-absent"] = (["reproduce", "--device", "cuda", "--out", "{w}/prev"], "CUDA")
    CASES["simulate-backend-triton-absent"] = (["simulate", *ONE_D, "--backend", "triton"], "triton")


def test_the_catalogue_is_large():
    assert len(CASES) >= 60


@pytest.mark.parametrize("case", sorted(CASES))
def test_hostile_input_ends_in_one_sentence(case, world, read_only, capsys):
    argv, fragment = CASES[case]
    cache = world.parent / "cache"            # a tokenizer cache outside the world
    argv = [a.replace("{w}", str(world)).replace("{ro}", str(read_only)).replace("{c}", str(cache)) for a in argv]
    before = _snapshot(world)
    code, _, err = run_cli(argv, capsys)
    assert code == 2, err
    assert err.startswith("tokendyn: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    assert fragment.lower() in err.lower(), err
    assert _snapshot(world) == before, "an output of an earlier run changed or a file was left behind"
    assert not (world / "pwned").exists(), "a pickle ran code"


# --- what a failed run leaves ------------------------------------------------------------------

def test_failed_json_leaves_no_report(world, read_only, tmp_path, capsys):
    """The case of the report: --json unwritable, --out fresh: nothing at all is written."""
    out = tmp_path / "o"
    code, _, err = run_cli(["analyze", world / "ck", "--json", read_only / "a.json", "--out", out], capsys)
    assert code == 2 and not out.exists()


def test_success_replaces_only_what_it_writes(world, tmp_path, capsys):
    out = tmp_path / "prev"
    shutil.copytree(world / "prev", out)
    code, _, err = run_cli(["analyze", world / "ck_notok", "--out", out, "--max-tokens", "12"], capsys)
    assert code == 0, err
    assert (out / "mine.txt").read_text() == OLD                    # not the command's file: untouched
    assert (out / "report.html").read_text() != OLD
    assert json.loads((out / "analysis.json").read_text())["input"]["n_tokens"] == 12
    assert not [p for p in tmp_path.rglob("*") if ".tokendyn-tmp-" in p.name]


def test_staging_discards_on_error_and_moves_reports_last(tmp_path, monkeypatch):
    from tokendyn.outputs import staged_outputs

    target = tmp_path / "t"
    target.mkdir()
    (target / "report.md").write_text(OLD)
    with pytest.raises(KeyboardInterrupt):
        with staged_outputs() as st:
            (st.dir(target) / "report.md").write_text("new")
            raise KeyboardInterrupt
    assert (target / "report.md").read_text() == OLD and [p.name for p in target.iterdir()] == ["report.md"]

    moved = []
    real = os.replace

    def recording_replace(src, dst):
        moved.append(Path(dst).name)
        real(src, dst)

    monkeypatch.setattr(os, "replace", recording_replace)
    with staged_outputs() as st:
        d = st.dir(target)
        for name in ("report.md", "a.png", "z.json"):
            (d / name).write_text("new")
    assert moved[-1] == "report.md" and sorted(moved) == ["a.png", "report.md", "z.json"]
    assert (target / "report.md").read_text() == "new" and len(list(target.iterdir())) == 3

    monkeypatch.setattr(os, "replace", real)
    with staged_outputs() as st:                 # modes as plain open()/mkdir() would give them
        st.file(tmp_path / "f.json").write_text("{}")
        (st.dir(tmp_path / "fresh") / "x").write_text("x")
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "f.json").stat().st_mode & 0o777 == 0o666 & ~umask
    assert (tmp_path / "fresh").stat().st_mode & 0o777 == 0o777 & ~umask


# --- scans of length 0 -------------------------------------------------------------------------

@pytest.mark.parametrize("backend", ["reference", "chunked", "auto"])
def test_every_backend_scans_length_zero(backend):
    from tokendyn.ops import selective_scan

    u = torch.randn(2, 3, 0, dtype=torch.float64, requires_grad=True)
    A = -torch.rand(3, 4, dtype=torch.float64)
    B = torch.randn(2, 4, 0, dtype=torch.float64)
    out, h = selective_scan(u, u.exp(), A, B, B.clone(), D=torch.ones(3, dtype=torch.float64), z=u,
                            delta_bias=torch.zeros(3, dtype=torch.float64), delta_softplus=True,
                            return_last_state=True, backend=backend)
    assert out.shape == (2, 3, 0) and h.shape == (2, 3, 4) and not h.any()
    (out.sum() + h.sum()).backward()
    assert u.grad.shape == (2, 3, 0)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_triton_scans_length_zero(dtype):
    from tokendyn.ops import selective_scan

    u = torch.randn(2, 3, 0, device="cuda", dtype=dtype)
    A = -torch.rand(3, 4, device="cuda", dtype=dtype)
    B = torch.randn(2, 4, 0, device="cuda", dtype=dtype)
    out, h = selective_scan(u, u.exp(), A, B, B.clone(), z=u, delta_softplus=True, return_last_state=True,
                            backend="triton")
    assert out.shape == (2, 3, 0) and h.shape == (2, 3, 4) and not h.any()


# --- real processes: the console entry point and Ctrl-C ------------------------------------------

def _env() -> dict:
    root = str(Path(__file__).resolve().parents[1])
    return {**os.environ, "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", ""),
            "OMP_NUM_THREADS": "1"}


def test_console_entry_point_one_line(world, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "tokendyn", "analyze", str(world / "ck"), "--out",
                           str(world / "prev.json")], capture_output=True, text=True, timeout=120, env=_env())
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "existing file" in proc.stderr


def _tokendyn(args: list[str]) -> subprocess.Popen:
    """``python -m tokendyn ARGS`` as a child with pipes; SIGINT at its default in the child even
    where this test runs with it ignored (a shell's background job), so that the child sees
    Ctrl-C as a user's terminal would deliver it."""
    return subprocess.Popen([sys.executable, "-m", "tokendyn", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=_env(), preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def _signal_when(proc: subprocess.Popen, sig, ready) -> str:
    """Send ``sig`` once ``ready()`` returns, wait for the child (killed if it hangs); its stderr."""
    try:
        ready()
        proc.send_signal(sig)
        return proc.communicate(timeout=120)[1]
    finally:
        if proc.poll() is None:
            proc.kill()


@pytest.mark.parametrize("sig,status,word", [(signal.SIGINT, 130, "interrupted"),
                                             (signal.SIGTERM, 143, "terminated")], ids=["SIGINT", "SIGTERM"])
def test_signal_during_reproduce_leaves_the_old_report(world, tmp_path, sig, status, word):
    out = tmp_path / "prev"
    shutil.copytree(world / "prev", out)
    before = _snapshot(out)
    proc = _tokendyn(["reproduce", "--only", "core", "--device", "cpu", "--force", "--out", str(out)])

    def section_begun():
        line = proc.stdout.readline()          # "== <section title>": the section's work has begun
        assert line.startswith("=="), line + proc.stderr.read()
        # then at once: the whole section and its report take ~1.5 s on a CPU, less than a
        # fixed wait would leave under load

    err = _signal_when(proc, sig, section_begun)
    assert proc.returncode == status, err
    assert err.strip().count("\n") == 0 and err.startswith(f"tokendyn: {word}") and "Traceback" not in err, err
    assert _snapshot(out) == before
    assert not [p for p in tmp_path.rglob("*") if ".tokendyn-tmp-" in p.name]


@pytest.mark.parametrize("sig,status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["SIGINT", "SIGTERM"])
def test_signal_during_train_keeps_the_checkpoint_and_says_so(tmp_path, sig, status):
    from train_helpers import write_text

    text, run = write_text(tmp_path / "t.txt"), tmp_path / "run"
    args = ["train", "lm", "--text", str(text), "--cache-dir", str(tmp_path / "cache"), "--vocab-size", "260",
            "--d-model", "8", "--n-layer", "1", "--d-state", "2", "--context", "16", "--batch-size", "2",
            "--steps", "1000000", "--eval-every", "0", "--checkpoint-every", "2", "--monitor-every", "0",
            "--device", "cpu", "--no-progress", "--out", str(run)]
    proc = _tokendyn(args)

    def first_checkpoint():
        for _ in range(6000):                       # until it is in place (a loaded machine: minutes)
            if (run / "checkpoint" / "trainer.json").is_file() or proc.poll() is not None:
                return
            time.sleep(0.05)

    err = _signal_when(proc, sig, first_checkpoint)
    assert proc.returncode == status, err
    assert err.strip().count("\n") == 0 and "Traceback" not in err, err
    assert "the checkpoint of step" in err and f"--resume {run}" in err, err
    assert (run / "checkpoint" / "trainer.json").is_file() and not (run / ".checkpoint-tmp").exists()


# --- special files and symlinks given as outputs -------------------------------------------------

def _fifo_reader(path: Path) -> tuple[threading.Thread, list]:
    got: list[bytes] = []

    def read():
        with open(path, "rb") as f:
            got.append(f.read())

    t = threading.Thread(target=read, daemon=True)
    t.start()
    return t, got


@pytest.mark.parametrize("command", ["info", "simulate"])
def test_fifo_output_is_written_through(world, tmp_path, capsys, command):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    reader, got = _fifo_reader(fifo)
    argv = {"info": ["info", world / "ck", "--json", fifo],
            "simulate": ["simulate", *ONE_D, "--json", fifo]}
    code, _, err = run_cli(argv[command], capsys)
    reader.join(30)
    assert code == 0, err
    assert stat.S_ISFIFO(os.stat(fifo).st_mode), "the FIFO was replaced"
    assert isinstance(json.loads(got[0]), dict)


@pytest.mark.skipif(os.geteuid() != 0, reason="making a device node needs root")
@pytest.mark.parametrize("command", ["info", "simulate"])
def test_full_device_output_is_refused_and_kept(world, tmp_path, capsys, command):
    """A private copy of /dev/full (so that a regression cannot replace the system's)."""
    full = tmp_path / "full"
    os.mknod(full, 0o666 | stat.S_IFCHR, os.makedev(1, 7))
    argv = {"info": ["info", world / "ck", "--json", full],
            "simulate": ["simulate", *ONE_D, "--json", full]}
    code, _, err = run_cli(argv[command], capsys)
    assert code == 2 and err.count("\n") == 1 and "No space left on device" in err and str(full) in err, err
    assert stat.S_ISCHR(os.stat(full).st_mode), "the device was replaced by a regular file"


def test_symlinked_outputs_write_their_targets(world, tmp_path, capsys):
    for name in ("j.json", "p.png"):
        (tmp_path / name).write_text(OLD)
        (tmp_path / f"link-{name}").symlink_to(tmp_path / name)
    dangling = tmp_path / "link-new.json"
    dangling.symlink_to(tmp_path / "new.json")
    code, _, err = run_cli(["simulate", *ONE_D, "--json", tmp_path / "link-j.json", "--plot", tmp_path / "link-p.png"],
                           capsys)
    assert code == 0, err
    assert (tmp_path / "link-j.json").is_symlink() and (tmp_path / "link-p.png").is_symlink()
    assert json.loads((tmp_path / "j.json").read_text())["regime"]
    assert (tmp_path / "p.png").read_bytes().startswith(b"\x89PNG")
    code, _, err = run_cli(["info", world / "ck", "--json", dangling], capsys)
    assert code == 0 and dangling.is_symlink() and json.loads((tmp_path / "new.json").read_text())["layout"]


def test_symlinked_out_dir_is_filled_and_stale_staging_removed(world, tmp_path, capsys):
    """--out a symlink to a directory: the directory receives the report; staging that a killed
    process left there (its pid is in the name) is removed, a running process's is not."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    outdir = tmp_path / "real-out"
    outdir.mkdir()
    (tmp_path / "link-out").symlink_to(outdir)
    stale = outdir / f".tokendyn-tmp-{dead.pid}-abc"
    stale.mkdir()
    (stale / "report.html").write_text("half")
    (tmp_path / f".a.json.tokendyn-tmp-{dead.pid}-x.json").write_text("half")
    live = outdir / f".tokendyn-tmp-{os.getppid()}-keep"
    live.mkdir()
    code, _, err = run_cli(["analyze", world / "ck_notok", "--max-tokens", "8", "--flow-time", "0", "--out",
                            tmp_path / "link-out", "--json", tmp_path / "a.json"], capsys)
    assert code == 0, err
    assert (tmp_path / "link-out").is_symlink() and (outdir / "report.html").is_file()
    assert not stale.exists() and live.exists()
    assert [p.name for p in tmp_path.iterdir() if ".tokendyn-tmp-" in p.name] == []


# --- a full disk ------------------------------------------------------------------------------------

@pytest.fixture
def small_disk(tmp_path):
    """A 160 KiB tmpfs (root only); elsewhere the test is skipped, and
    test_write_file_on_a_full_disk covers the same path with a simulated ENOSPC."""
    d = tmp_path / "disk"
    d.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=160k", "tmpfs", str(d)],
                                           capture_output=True).returncode != 0:
        pytest.skip("cannot mount a small tmpfs here")
    try:
        yield d
    finally:
        subprocess.run(["umount", "-l", str(d)], capture_output=True)


def test_full_disk_names_the_path_and_keeps_earlier_output(world, small_disk, tmp_path, capsys):
    from train_helpers import write_text

    (small_disk / "s.json").write_text(OLD)
    (small_disk / "filler").write_bytes(bytes(136 * 1024))        # 24 KiB left: less than the JSON needs
    code, _, err = run_cli(["simulate", *ONE_D, "--json", small_disk / "s.json"], capsys)
    assert code == 2 and err.count("\n") == 1 and "No space left on device" in err, err
    assert str(small_disk / "s.json") in err and (small_disk / "s.json").read_text() == OLD
    assert sorted(p.name for p in small_disk.iterdir()) == ["filler", "s.json"]
    (small_disk / "filler").unlink()                               # room for run.json, not for a checkpoint
    text = write_text(tmp_path / "t.txt")
    train = ["train", "lm", "--text", text, "--cache-dir", tmp_path / "cache", "--vocab-size", "260", "--d-model",
             "96", "--n-layer", "2", "--context", "16", "--batch-size", "2", "--steps", "2", "--eval-tokens", "32",
             "--monitor-every", "0", "--device", "cpu", "--no-progress", "--out", small_disk / "run"]
    code, _, err = run_cli(train, capsys)
    assert code == 2 and err.count("\n") == 1 and "No space left on device" in err and "checkpoint" in err, err
    assert sorted(p.name for p in small_disk.iterdir()) == ["s.json"], "a failed run left files behind"


def test_write_file_on_a_full_disk(tmp_path, monkeypatch):
    """ENOSPC half-way through a write: one DataError naming the target, which keeps its content."""
    import errno

    from tokendyn.errors import DataError
    from tokendyn.outputs import write_file

    target = tmp_path / "t.json"
    target.write_text(OLD)

    def full(self, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(Path, "write_bytes", full)
    with pytest.raises(DataError, match=f"cannot write {target}: No space left on device"):
        write_file(target, b"new")
    assert target.read_text() == OLD and [p.name for p in tmp_path.iterdir()] == ["t.json"]


# --- failed training runs leave nothing that blocks a retry ----------------------------------------

def test_diverged_run_can_be_retried_into_the_same_directory(world, tmp_path, capsys):
    run = tmp_path / "run"
    args = ["train", "lm", "--text", world / "long.txt", "--cache-dir", tmp_path / "cache", "--vocab-size", "260",
            "--d-model", "8", "--n-layer", "1", "--context", "16", "--batch-size", "2", "--steps", "3",
            "--eval-tokens", "32", "--checkpoint-every", "1", "--monitor-every", "0", "--device", "cpu",
            "--no-progress", "--out", run]
    code, _, err = run_cli([*args, "--lr", "1e30"], capsys)
    assert code == 2 and err.count("\n") == 1 and "learning rate" in err, err
    assert not run.exists()
    code, _, err = run_cli(args, capsys)
    assert code == 0, err
    assert (run / "result.json").is_file()


# --- reports -------------------------------------------------------------------------------------

def test_reproduce_only_merges_into_an_earlier_report(tmp_path, capsys, monkeypatch):
    """--only core into a report holding another section: both are on the page (the core section
    is a stub here: what is tested is the merge, not the section)."""
    import importlib
    from types import SimpleNamespace

    from tokendyn.reproduce import SectionResult

    real = importlib.import_module
    stub = SimpleNamespace(TITLE="The new section", run=lambda ctx: SectionResult(markdown="New text."))
    monkeypatch.setattr(importlib, "import_module",
                        lambda name, *a: stub if name == "tokendyn.reproduce.core" else real(name, *a))
    out = tmp_path / "r"
    out.mkdir()
    (out / "fig.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    earlier = {"provenance": {"device": "cpu", "command": "tokendyn reproduce"}, "scale": "quick", "checks": [],
               "sections": {"theory": {"title": "An earlier section", "seconds": 1.0, "checks": [],
                                       "figures": [{"path": "fig.png", "caption": "c"}],
                                       "markdown": "Kept text.\n\n![a figure](fig.png)"}}}
    (out / "report.json").write_text(json.dumps(earlier))
    code, _, err = run_cli(["reproduce", "--only", "core", "--device", "cpu", "--out", out], capsys)
    assert code == 0, err
    report = json.loads((out / "report.json").read_text())
    assert list(report["sections"]) == ["core", "theory"]
    page = (out / "index.html").read_text()
    assert "The new section" in page and "New text." in page
    assert "An earlier section" in page and "Kept text." in page and (out / "fig.png").is_file()
    assert "data:image/png" in page                            # the kept section's figure is on the page


def test_export_writes_both_layouts(world, tmp_path, capsys):
    from tokendyn.model import load_model

    ref = load_model(world / "ck")
    x = torch.randint(0, 60, (1, 7))
    for layout, name in (("hf", "hf-transformers"), ("state-spaces", "state-spaces")):
        out = tmp_path / layout
        code, _, err = run_cli(["export", world / "ck", "--layout", layout, "--out", out], capsys)
        assert code == 0, err
        m = load_model(out)
        assert m.checkpoint_layout == name and (out / "tokenizer.json").is_file()
        torch.testing.assert_close(m(x)[..., :60], ref(x)[..., :60])




def test_steps_beyond_memory_are_refused_before_the_run_starts(world, tmp_path, capsys, monkeypatch):
    """A billion steps keep 120 million metric records in memory: refused against the memory free
    (here said to be 4 GiB, so that the case does not depend on this machine's)."""
    import tokendyn.resources as resources

    monkeypatch.setattr(resources, "available_memory", lambda device="cpu": 4 * 2**30)
    run = tmp_path / "run"
    code, _, err = run_cli(["train", "lm", "--text", world / "long.txt", "--cache-dir", tmp_path / "cache",
                            "--vocab-size", "260", "--d-model", "8", "--n-layer", "1", "--steps", "1000000000",
                            "--device", "cpu", "--no-progress", "--out", run], capsys)
    assert code == 2 and "--steps 1,000,000,000" in err and "4.0 GiB" in err and err.count("\n") == 1, err
    assert not run.exists()


def test_json_to_dev_stdout_through_a_pipe(world):
    """/dev/stdout links to a pipe whose name in /proc ("pipe:[N]") cannot be opened: the JSON
    goes through the link itself."""
    proc = subprocess.run([sys.executable, "-m", "tokendyn", "info", str(world / "ck"), "--json", "/dev/stdout"],
                          capture_output=True, text=True, timeout=120, env=_env())
    assert proc.returncode == 0, proc.stderr
    assert '"layout": "tokendyn"' in proc.stdout
