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
import subprocess
import sys
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
    # --- reproduce: options, devices, outputs ------------------------------------------------
    "reproduce-scale-unknown": (["reproduce", "--scale", "huge", "--out", "{w}/prev"], "scale"),
    "reproduce-section-unknown": (["reproduce", "--only", "everything", "--out", "{w}/prev"], "section"),
    "reproduce-device-tpu": (["reproduce", "--device", "tpu", "--out", "{w}/prev"], "--device"),
    "reproduce-out-is-file": (["reproduce", "--out", "{w}/prev.json"], "existing file"),
    "reproduce-out-under-file": (["reproduce", "--out", "{w}/a_file/r"], "not a directory"),
    "reproduce-out-read-only": (["reproduce", "--out", "{ro}/r"], "does not accept"),
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
    argv = [a.replace("{w}", str(world)).replace("{ro}", str(read_only)) for a in argv]
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


def test_ctrl_c_during_reproduce_leaves_the_old_report(world, tmp_path):
    out = tmp_path / "prev"
    shutil.copytree(world / "prev", out)
    before = _snapshot(out)
    # SIGINT at its default in the child even where this test runs with it ignored (a shell's
    # background job), so the child sees Ctrl-C as a user's terminal would deliver it
    proc = subprocess.Popen([sys.executable, "-m", "tokendyn", "reproduce", "--only", "core", "--device", "cpu",
                             "--out", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=_env(), preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        line = proc.stdout.readline()          # "== <section title>": the section's work has begun
        assert line.startswith("=="), line + proc.stderr.read()
        # at once: the whole section and its report take ~1.5 s on a CPU, less than a fixed
        # wait would leave under load
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert err.strip().count("\n") == 0 and "interrupted" in err and "Traceback" not in err
    assert _snapshot(out) == before
    assert not [p for p in tmp_path.rglob("*") if ".tokendyn-tmp-" in p.name]
