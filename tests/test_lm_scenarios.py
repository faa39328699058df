"""`tokendyn train lm-scenarios` (tokendyn.experiments.lm_scenarios): the JSON shape, the table, the
figures, skipping complete runs, merging runs from partial result directories; the lm section of
the report and the paper's comparisons. The generic runner and writer: tests/test_experiment.py."""

from __future__ import annotations

import json
import shutil

import pytest
from train_helpers import cache, run_cli, write_text  # noqa: F401 -- fixtures used by name


def _args(text, out, settings, seeds):
    return ["train", "lm-scenarios", "--scale", "smoke", "--settings", settings, "--seeds", seeds, "--text", text,
            "--device", "cpu", "--no-progress", "--out", out]


@pytest.mark.slow
def test_scenarios_json_table_skip_and_merge(tmp_path, capsys, cache):  # noqa: F811 -- `cache` is a fixture
    text = write_text(tmp_path / "t.txt", 600)
    settings = "none,positive,negative"
    a = tmp_path / "a"
    code, err = run_cli(_args(text, a, settings, "0"), capsys)
    assert code == 0, err
    doc = json.loads((a / "lm_scenarios.json").read_text())
    assert set(doc) >= {"settings", "config", "data", "device", "commit", "command", "seeds", "tokens_seen"}
    for s in settings.split(","):
        v = doc["settings"][s]
        assert len(v["test_ppl"]) == 1 and v["test_ppl"][0] > 1
        assert v["test_ppl_mean"] == v["test_ppl"][0] and v["test_ppl_std"] is None      # one seed: no std
        assert [p[0] for p in v["val_curve"]] == [15, 30, 45, 60] and v["val_curves"] == [v["val_curve"]]
        # the flatness rule: the point at 45 (the last at or before 80 % of 60 steps) against the last
        curve = v["val_curves"][0]
        gain = (curve[2][1] - curve[3][1]) / curve[2][1]
        assert v["val_gain_last20"] == [pytest.approx(gain)] and v["val_flat"] == [gain < 0.02]
    assert "t.txt" in doc["data"] and doc["config"]["model"]["d_model"] == 32
    assert doc["config"]["params"] > 1000
    assert doc["config"]["setting_fields"]["positive"] == {"io_constraint": "positive"}
    assert "io_constraint" not in doc["config"]["model"]
    assert doc["comparisons"]["negative_minus_none"]["outcome"] == "not run"   # one seed: not settled
    assert (a / "lm_scenarios.md").read_text().split("at each run's best")[0].count("| none |") == 1   # one row
    assert (a / "lm_scenarios_val.png").stat().st_size > 1000
    assert (a / "lm_scenarios_spectra.png").is_file() and (a / "lm_scenarios_token_norms.png").is_file()
    final = doc["settings"]["negative"]["monitor_final"][0]
    assert final and all(row["positive"] == 0 and row["regime"] == "convergence" for row in final)
    assert all(row["negative"] == 0 for row in doc["settings"]["positive"]["monitor_final"][0])
    # the end-of-training in-layer quantities of every run, and the study built from them
    for v in doc["settings"].values():
        for row in v["monitor_final"][0]:
            assert row["flow"] in ("blows up", "grows", "decays", "stays", "undetermined")
            assert isinstance(row["radial_velocity"], float)
    assert "radial velocity" in (a / "lm_scenarios.md").read_text()
    assert (a / "lm_scenarios_inlayer.png").stat().st_size > 1000
    # a second call with another seed, in another directory; then merge the two
    b = tmp_path / "b"
    assert run_cli(_args(text, b, "none", "1"), capsys)[0] == 0
    shutil.copytree(b / "runs" / "none-seed1", a / "runs" / "none-seed1")
    before = (a / "runs" / "none-seed0" / "result.json").read_bytes()
    code, err = run_cli(_args(text, a, "none", "0,1"), capsys)
    assert code == 0 and err.count("complete, skipped") == 2
    assert (a / "runs" / "none-seed0" / "result.json").read_bytes() == before
    merged = json.loads((a / "lm_scenarios.json").read_text())
    assert merged["settings"]["none"]["seeds"] == [0, 1] and len(merged["settings"]["none"]["test_ppl"]) == 2
    assert merged["settings"]["none"]["test_ppl"][1] == json.loads((b / "lm_scenarios.json").read_text())[
        "settings"]["none"]["test_ppl"][0]


def test_scenarios_refuse_bad_options(tmp_path, capsys):
    for args, words in ((["--scale", "huge"], "scale"), (["--seeds", "a,b"], "--seeds"),
                        (["--settings", "upward"], "upward")):
        code, err = run_cli(["train", "lm-scenarios", "--out", tmp_path / "o", *args], capsys)
        assert code == 2 and words in err and err.count("\n") == 1
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_scenario_runs_differ_only_in_setting_and_seed(tmp_path, capsys, cache):  # noqa: F811 -- `cache` is a fixture
    text = write_text(tmp_path / "t.txt", 600)
    out = tmp_path / "o"
    assert run_cli(_args(text, out, "none,mixed", "0"), capsys)[0] == 0
    a = json.loads((out / "runs" / "none-seed0" / "run.json").read_text())
    b = json.loads((out / "runs" / "mixed-seed0" / "run.json").read_text())
    assert a["model"].pop("io_constraint") == "none" and b["model"].pop("io_constraint") == "mixed"
    # the parameter counts differ by the constraint's parameterisation only
    assert a.pop("params") > 0 and b.pop("params") > 0
    assert a == b


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("bible") is None, reason="needs the bible program (bible-kjv)")
def test_reproduce_lm_section(tmp_path, monkeypatch):
    """The lm section of `tokendyn reproduce` at quick scale (shortened here): this run's table and
    the committed full table, each labelled."""
    import torch

    from tokendyn.experiments.lm_scenarios import EXPERIMENT
    from tokendyn.reproduce import Context
    from tokendyn.reproduce.experiment import run_section

    monkeypatch.setitem(EXPERIMENT.scales, "smoke", {**EXPERIMENT.scales["smoke"], "steps": 4, "eval_every": 2,
                                                     "monitor_every": 2})
    committed = tmp_path / "lm_scenarios.json"
    committed.write_text(json.dumps({
        "settings": {s: {"test_ppl": [10.0 + i, 11.0 + i], "val_curve": [[2, 12.0]], "test_ppl_mean": 10.5 + i,
                         "test_ppl_std": 0.7, "seeds": [0, 1]} for i, s in enumerate(("none", "positive"))},
        "comparisons": {}, "config": {"scale": "full", "model": {"d_model": 384, "n_layer": 8, "d_state": 16,
                                                                 "vocab_size": 4096}, "task": {"context": 512}},
        "data": "King James Bible", "device": "NVIDIA H200", "commit": "abc", "tokens_seen": 1}))
    ctx = Context(out=tmp_path / "rep", scale="quick", device=torch.device("cpu"), command="test")
    res = run_section(EXPERIMENT, ctx, committed)
    assert "**This run** (smoke scale" in res.markdown and "**Committed full-scale run**" in res.markdown
    # this run's two tables (at the last and the best validation step) and the committed one, 2 seeds
    assert "NVIDIA H200" in res.markdown and res.markdown.count("| positive | 2 |") == 3
    # the in-layer checks on this run's trained models are judged; the committed grid predates them
    inlayer = [c for c in res.checks if "radial velocity" in c.claim or "idealised flow" in c.claim]
    judged = [c for c in inlayer if "this run's grid" in c.claim]
    assert len(judged) == 4 and all(c.outcome in ("pass", "fail") for c in judged)
    assert [c.outcome for c in inlayer if "committed" in c.claim] == ["not run"]
    assert set(res.summary["test_ppl"]) == {"none", "positive", "negative", "mixed"}
    assert all(len(v) == 2 for v in res.summary["test_ppl"].values())
    assert res.summary["committed"]["test_ppl"]["none"] == [10.0, 11.0]
    assert (tmp_path / "rep" / "lm" / "lm_scenarios_spectra.png").is_file()


def test_the_papers_comparisons():
    """Negative worst against every other setting; positive best against mixed and negative (the
    paper's) and against none (labelled as the project's addition); an absent setting is not run."""
    from tokendyn.experiments.lm_scenarios import EXPERIMENT
    from tokendyn.reproduce.experiment import comparison_checks

    ppl = {"none": [34.0, 34.5, 33.9], "positive": [33.0, 33.1, 32.9], "negative": [39.0, 38.5, 39.4],
           "mixed_margin": [34.1, 34.3, 33.8]}
    doc = {"settings": {s: {"test_ppl": v} for s, v in ppl.items()}}
    checks = comparison_checks(EXPERIMENT, doc, "test grid", "run it")
    outcome = {c.claim: c.outcome for c in checks}
    assert len(checks) == 7
    assert [o for c, o in outcome.items() if "worse perplexity than" in c] == ["pass", "pass", "not run", "pass"]
    assert outcome["Paper (section 5): the positive setting gives the best perplexity: better than mixed."] == "not run"
    assert outcome["Paper (section 5): the positive setting gives the best perplexity: better than negative."] == "pass"
    addition = [c for c in checks if c.claim.startswith("Project's addition")]
    assert len(addition) == 1 and addition[0].outcome == "pass"
    assert any(c.claim.startswith("Project's variant mixed_margin") for c in checks)
    # without mixed_margin in the grid its comparison is left out; without a grid every check is not run
    del doc["settings"]["mixed_margin"]
    assert len(comparison_checks(EXPERIMENT, doc, "test grid", "run it")) == 6
    assert {c.outcome for c in comparison_checks(EXPERIMENT, None, "", "run it")} == {"not run"}


def test_scales_pass_their_corpus(monkeypatch):
    """A scale's "corpus" names the built-in corpus the grid trains on (None: the Bible); --corpus
    overrides it, and --text or --wikitext replace it."""
    from tokendyn.experiments import lm_scenarios

    seen = []
    monkeypatch.setattr(lm_scenarios, "prepare_data", lambda **kw: seen.append(kw))
    lm_scenarios.prepare({**lm_scenarios.SCALES["smoke"], "corpus": "other"}, {})
    lm_scenarios.prepare(lm_scenarios.SCALES["smoke"], {"text": [], "cache_dir": "c"})
    lm_scenarios.prepare({**lm_scenarios.SCALES["smoke"], "corpus": "other"}, {"corpus": "mine"})
    lm_scenarios.prepare({**lm_scenarios.SCALES["smoke"], "corpus": "other"}, {"text": ["a.txt"]})
    assert [kw["builtin"] for kw in seen] == ["other", None, "mine", None]
    assert seen[1]["text_files"] is None and seen[1]["cache_dir"] == "c" and seen[1]["vocab_size"] == 512
    assert seen[3]["text_files"] == ["a.txt"]
    assert lm_scenarios.SCALES["full"]["corpus"] == "english"
