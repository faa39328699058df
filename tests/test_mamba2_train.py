"""`tokendyn train lm --layer mamba2` trains a tiny Mamba-2 language model on the CPU with the same
loop, regime monitor and exact resume as Mamba-1, and `tokendyn analyze` reads its checkpoint."""

from __future__ import annotations

import json

from train_helpers import cache, run_cli, tiny_args, write_text  # noqa: F401 -- fixtures used by name

MAMBA2 = ("--layer", "mamba2", "--mixer-option", "head_dim=8", "--mixer-option", "n_groups=2",
          "--mixer-option", "chunk_size=8")


def test_trains_resumes_and_is_analysed(tmp_path, capsys, cache):  # noqa: F811 -- `cache` is a fixture
    text = write_text(tmp_path / "t.txt")
    a, b = tmp_path / "a", tmp_path / "b"
    code, err = run_cli(tiny_args(text, a, *MAMBA2), capsys)
    assert code == 0, err
    raw = json.loads((a / "checkpoint" / "config.json").read_text())
    assert raw["layer"] == "mamba2" and raw["mixer"]["n_groups"] == 2 and raw["mixer"]["d_state"] == 4
    result = json.loads((a / "result.json").read_text())
    assert result["final_loss"] < 6.0
    monitor = [json.loads(line) for line in (a / "metrics.jsonl").open()]
    rows = [r for r in monitor if r["kind"] == "monitor"][-1]["layers"]
    assert {row["regime"] for row in rows} <= {"divergence", "convergence", "indefinite"}
    assert all("flow" in row for row in rows)          # the last step runs the Mamba-2 flow

    code, err = run_cli(tiny_args(text, b, *MAMBA2, "--stop-after-steps", "6"), capsys)
    assert code == 0, err
    args = tiny_args(text, b, *MAMBA2, "--resume", str(b))
    args.remove("--out"), args.remove(str(b))
    code, err = run_cli(args, capsys)
    assert code == 0, err
    weights = "checkpoint/model.safetensors"
    assert (a / weights).read_bytes() == (b / weights).read_bytes()

    out = tmp_path / "report"
    code, err = run_cli(["analyze", a / "checkpoint", "--max-tokens", "24", "--out", out, "--json",
                         tmp_path / "a.json", "--flow-time", "1"], capsys)
    assert code == 0, err
    data = json.loads((tmp_path / "a.json").read_text())
    layer = data["layers"][0]
    assert layer["form"] == "ssd" and len(layer["ssd"]["heads"]) == 4 and len(layer["ssd"]["groups"]) == 2
    assert layer["predicted_regime"] == "indefinite"       # N = 4 < d_model = 16: outside the rule
    assert set(data["theory_scope"]) == {"ssd"} and data["summary"]["indefinite_layers"] == 2
    assert "Where the theory stops (ssd)" in (out / "report.html").read_text()


def test_a_bad_mamba2_option_ends_in_one_sentence(tmp_path, capsys, cache):  # noqa: F811 -- `cache` is a fixture
    text = write_text(tmp_path / "t.txt")
    for extra, words in ((("--layer", "mamba2", "--mixer-option", "head_dim=8", "--mixer-option", "n_groups=3"),
                          "n_groups 3 does not divide the 4 heads"),
                         (("--layer", "mamba2", "--mixer-option", "head_dim=5"), "head_dim 5 does not divide")):
        code, err = run_cli(tiny_args(text, tmp_path / "bad", *extra), capsys)
        assert code == 2 and words in err and err.count("\n") == 1, err
        assert not (tmp_path / "bad").exists()
