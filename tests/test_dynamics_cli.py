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


CONVERGENT = ["simulate", "--mu", "-1", "--s-delta", "1", "--a", "1", "--x0", "1,0.5"]


def test_cut_short_run_is_undetermined_first_line_and_exit_3(tmp_path, capsys, monkeypatch):
    from tokendyn.dynamics import simulation as report

    monkeypatch.setattr(report, "DEFAULT_MAX_EVALS", 50)       # the default budget, made small
    out = tmp_path / "u.json"
    code, stdout, err = run_cli([*CONVERGENT, "--t-end", "10000", "--json", str(out)], capsys)
    assert code == report.EXIT_UNDETERMINED == 3, err
    first = stdout.splitlines()[0]
    assert "undetermined" in first and "evaluation budget of 50" in first
    d = json.loads(out.read_text())
    assert d["regime"] == d["simulated_regime"] == "undetermined" and "evaluation budget" in d["undetermined_reason"]
    assert d["t"][-1] == d["t_end"] == d["truncated_at"] < 10000
    # a budget the user asked for: still undetermined, but exit 0
    code, stdout, _ = run_cli([*CONVERGENT, "--t-end", "10000", "--max-evals", "50"], capsys)
    assert code in (0, None) and "undetermined" in stdout.splitlines()[0]


@pytest.mark.parametrize("args,needle", [
    (["--max-evals", "0"], "--max-evals must be a positive"),
    (["--max-evals", "-1"], "--max-evals must be a positive"),
    (["--time-limit", "0"], "--time-limit must be a positive"),
    (["--memory-limit", "-2"], "--memory-limit must be a positive"),
    (["--points", "2"], "--points must be at least 3"),
])
def test_non_positive_limits_refused(args, needle, capsys):
    code, _, err = run_cli([*CONVERGENT, *args], capsys)
    assert code == 2 and needle in err and err.count("\n") == 1


@pytest.mark.parametrize("args,needle", [
    (["--mu", "1", "--s-delta", "1", "--a", "1", "--tokens", "1000000000"], "1,000,000,000 tokens"),
    (["--mu", "1", "--s-delta", "1", "--a", "1", "--points", "1000000000"], "1,000,000,000 points"),
    (["--random", "--dim", "100000", "--state", "100000"], "D=100,000, N=100,000"),
])
def test_absurd_sizes_refused_before_allocation(args, needle, capsys):
    code, _, err = run_cli(["simulate", *args], capsys)
    assert code == 2 and needle in err and "GiB" in err and "memory limit" in err and err.count("\n") == 1


def test_many_tokens_summary_and_show_all(capsys):
    args = ["simulate", "--mu", "-1", "--s-delta", "1", "--a", "1", "--tokens", "40", "--t-end", "2", "--points", "8"]
    code, stdout, _ = run_cli(args, capsys)
    assert code in (0, None) and "25 rows not shown" in stdout and "40 tokens" in stdout
    assert "│ 40 " in stdout and "│ 20 " not in stdout
    code, stdout, _ = run_cli([*args, "--show-all"], capsys)
    assert code in (0, None) and "│ 20 " in stdout and "not shown" not in stdout


def test_bound_column_is_the_json_blowup_bound(tmp_path, capsys):
    out = tmp_path / "b.json"
    code, stdout, _ = run_cli(["simulate", "--mu", "1", "--s-delta", "1", "--a", "1", "--x0", "-1,0.5,-0.3",
                               "--t-end", "5", "--points", "12", "--json", str(out)], capsys)
    d = json.loads(out.read_text())
    assert d["blowup_bounds"][0] is None
    assert d["blowup_bounds"][2] == d["blowup_bounds"][1] == d["token_blowup_bounds"][1]
    row3 = next(line for line in stdout.splitlines() if line.startswith("│ 3 "))
    assert f"{d['blowup_bounds'][2]:.4g}" in row3 and d["blowup_times"][2] <= d["blowup_bounds"][2]


def test_cli_and_python_api_give_the_same_report(tmp_path, capsys):
    import torch

    from tokendyn.dynamics import TokenSystem
    from tokendyn.dynamics.simulation import simulate_and_report

    out = tmp_path / "s.json"
    run_cli([*CONVERGENT, "--t-end", "20", "--points", "10", "--json", str(out)], capsys)
    d = json.loads(out.read_text())
    api = simulate_and_report(TokenSystem.one_dim(-1, 1, 1), torch.tensor([1.0, 0.5]), 20.0, points=10).report
    skip = {"wall_s", "n_evals"}
    assert {k: v for k, v in d.items() if k not in skip} == json.loads(json.dumps({k: v for k, v in api.items()
                                                                                   if k not in skip}))


def test_blown_up_tokens_told_apart_from_those_stopped_with_them(tmp_path, capsys):
    # D = 16 (seed 0), 10 tokens: token 7 blows up at t ≈ 0.102; tokens 8-10, which depend on it, stop there
    out, png = tmp_path / "s.json", tmp_path / "s.png"
    code, stdout, err = run_cli(["simulate", "--random", "--dim", "16", "--state", "16", "--tokens", "10",
                                 "--t-end", "0.2", "--points", "20", "--json", str(out), "--plot", str(png)], capsys)
    assert code in (0, None), err
    d = json.loads(out.read_text())
    assert d["token_status"] == ["ran_on"] * 6 + ["blew_up"] + ["stopped"] * 3
    t = d["blowup_times"][6]
    assert 0.1 < t < 0.11 and all(v is None for i, v in enumerate(d["blowup_times"]) if i != 6)
    assert d["stopped_times"] == [None] * 7 + [t] * 3
    rows = {line.split("│")[1].strip(): line for line in stdout.splitlines() if line.startswith("│ ")}
    assert "blew up" in rows["7"] and "stopped" in rows["8"] and "blew up" not in rows["10"]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_progress_only_on_a_terminal(monkeypatch):
    import io

    from tokendyn.cli.simulate import _progress_bar

    class Tty(io.StringIO):
        def isatty(self):
            return True

    for stream, show in ((io.StringIO(), True), (Tty(), False)):
        monkeypatch.setattr(sys, "stderr", stream)
        update, close = _progress_bar(show)
        for i in range(50):
            update(float(i), i, 0)
        close()
        assert stream.getvalue() == ""


def test_no_progress_in_a_pipe_and_the_flag(capsys):
    # stderr is a pipe here, not a terminal: no progress bar (no carriage return) in a run of a few seconds
    res = subprocess.run([sys.executable, "-m", "tokendyn", "simulate", "--random", "--dim", "16", "--state", "16",
                          "--tokens", "10", "--t-end", "0.3", "--points", "12"], capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr
    assert "\r" not in res.stderr and "\r" not in res.stdout
    code, _, err = run_cli([*CONVERGENT, "--t-end", "2", "--points", "5", "--no-progress"], capsys)
    assert code in (0, None) and err == ""
