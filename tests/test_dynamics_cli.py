"""``tokendyn simulate``: JSON fields, figures, and one-sentence errors without a traceback."""

import json
import math
import subprocess
import sys

import pytest

from tokendyn.cli import main

FIELDS = {"predicted_regime", "simulated_regime", "blowup_times", "final_norms", "fitted_rates",
          "eigen_signature", "t", "trajectories"}
REGIMES = {"convergence", "slow_divergence", "fast_divergence", "static"}


def run_cli(args, capsys):
    with pytest.raises(SystemExit) as exc:
        main(args)
    out = capsys.readouterr()
    return exc.value.code, out.out, out.err


def test_one_dim_fast_divergence_json_and_plot(tmp_path, capsys):
    out, png = tmp_path / "r.json", tmp_path / "r.png"
    code, _, err = run_cli(["simulate", "--mu", "1", "--s-delta", "1", "--a", "1", "--x0", "-1,0.5,-0.3",
                            "--t-end", "5", "--points", "20", "--json", str(out), "--plot", str(png)], capsys)
    assert code in (0, None), err
    d = json.loads(out.read_text())
    assert FIELDS <= set(d)
    assert d["predicted_regime"] == d["simulated_regime"] == "fast_divergence"
    assert d["blowup_times"][0] is None and 0 < d["blowup_times"][1] == d["blowup_times"][2] <= 1 / (3 * 0.5**3)
    assert d["eigen_signature"] == {"positive": 1, "negative": 0, "zero": 0}
    assert len(d["t"]) == 20 and len(d["trajectories"]) == 20
    assert d["trajectories"][-1][1] is None and d["trajectories"][-1][0] is not None   # gone after blow-up
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_params_file_and_random(tmp_path, capsys):
    p = tmp_path / "p.json"
    # M = diag(-1, -0.5): both eigenvalues negative -> convergence
    p.write_text(json.dumps({"S_B": [[-1, 0], [0, -0.5]], "S_C": [[1, 0], [0, 1]],
                             "S_Delta": [[0.5, 0], [0, 0.5]], "a": [1, 1]}))
    out = tmp_path / "c.json"
    code, _, err = run_cli(["simulate", "--params", str(p), "--tokens", "3", "--t-end", "50", "--points", "15",
                            "--json", str(out)], capsys)
    assert code in (0, None), err
    d = json.loads(out.read_text())
    assert d["predicted_regime"] == d["simulated_regime"] == "convergence"
    assert d["eigen_signature"] == {"positive": 0, "negative": 2, "zero": 0}
    assert all(n < math.hypot(*v) for n, v in zip(d["final_norms"], d["x0"]))
    out2 = tmp_path / "r.json"
    code, _, err = run_cli(["simulate", "--random", "--dim", "3", "--state", "1", "--seed", "2", "--tokens", "2",
                            "--t-end", "5", "--points", "10", "--json", str(out2)], capsys)
    assert code in (0, None), err
    d2 = json.loads(out2.read_text())
    assert d2["simulated_regime"] in REGIMES and sum(d2["eigen_signature"].values()) == 3


@pytest.mark.parametrize("args,needle", [
    (["--mu", "1", "--s-delta", "1", "--a", "0"], "positive"),
    (["--mu", "1", "--s-delta", "1"], "needs all"),
    (["--mu", "1", "--s-delta", "1", "--a", "1", "--random", "--dim", "2", "--state", "1"], "exactly one"),
    (["--mu", "1", "--s-delta", "1", "--a", "1", "--x0", "1,2", "--tokens", "3"], "not both"),
    (["--mu", "1", "--s-delta", "1", "--a", "1", "--x0", "1,abc"], "comma-separated"),
    (["--mu", "1", "--s-delta", "1", "--a", "1", "--method", "nope"], "method"),
    (["--mu", "1", "--s-delta", "1", "--a", "1", "--t-end", "-3"], "t-end"),
    (["--random", "--dim", "2"], "--state"),
    (["--random", "--dim", "2", "--state", "1", "--x0", "1,2"], "--tokens"),
])
def test_bad_options_one_sentence(args, needle, capsys):
    code, _, err = run_cli(["simulate", *args], capsys)
    assert code == 2
    assert needle in err and "Traceback" not in err and err.count("\n") == 1


@pytest.mark.parametrize("content,needle", [
    ("{not json", "not valid JSON"),
    (json.dumps({"S_B": [[1, 2]], "S_C": [[1]], "S_Delta": [[1]], "a": [1]}), "shape"),
    (json.dumps({"S_B": [[1]], "S_C": [[1]], "S_Delta": [[1]], "a": [-1]}), "positive"),
    (json.dumps({"S_B": [[1]], "S_C": [[1]], "S_Delta": [[1]]}), "exactly one"),
    (json.dumps({"S_B": [["x"]], "S_C": [[1]], "S_Delta": [[1]], "a": [1]}), "numeric"),
    (json.dumps([1, 2]), "JSON object"),
])
def test_bad_params_file(tmp_path, content, needle, capsys):
    p = tmp_path / "bad.json"
    p.write_text(content)
    code, _, err = run_cli(["simulate", "--params", str(p)], capsys)
    assert code == 2 and needle in err and "Traceback" not in err


def test_missing_params_file_in_subprocess(tmp_path):
    res = subprocess.run([sys.executable, "-m", "tokendyn", "simulate", "--params", str(tmp_path / "none.json")],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode != 0 and "cannot read" in res.stderr and "Traceback" not in res.stderr
