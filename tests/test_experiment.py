"""The generic pieces of the seed-grid experiments (tokendyn.train.experiment, .grid, .summary,
tokendyn.cli.experiments, tokendyn.reproduce.experiment), on a third experiment written here in a
few lines with a trivial run: the grid's resume and merge, the summary JSON and markdown, the
mean ± std rule, the flatness rule, the comparisons, the generated command and report section."""

from __future__ import annotations

import json
import shutil
from functools import partial
from types import SimpleNamespace

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from tokendyn.errors import ConfigError
from tokendyn.outputs import write_file
from tokendyn.train import state as runstate
from tokendyn.train.experiment import Comparison, EarlyStopping, Experiment, FigureSpec, Flatness, Metric
from tokendyn.train.figures import plot_val_curves
from tokendyn.train.grid import run_grid
from tokendyn.train.seeds import format_mean_std, mean_std
from tokendyn.train.summary import load_summary, markdown, summarise

CALLS: list[tuple] = []          # (setting, seed, resume) of every run the toy experiment trained
INTERRUPT: set[tuple] = set()    # (setting, seed) runs that stop after writing run.json, as if killed


def toy_train(data, p, overrides, seed, run_dir, *, resume, device, progress, log, cuda_graph=False):
    """A run in a millisecond: score = the setting's shift + seed / 10, a curve rising to it."""
    CALLS.append((run_dir.name.rsplit("-seed", 1)[0], seed, resume))
    run_dir.mkdir(parents=True, exist_ok=True)
    ident = {"model": {"width": p["width"], **overrides}, "train": {"steps": 10, "seed": seed},
             "task": {"seed": seed}, "data": {"name": data}}
    write_file(run_dir / runstate.RUN, json.dumps(ident))
    if (run_dir.name.rsplit("-seed", 1)[0], seed) in INTERRUPT:
        raise KeyboardInterrupt
    score = 0.5 + overrides["shift"] + seed / 10
    result = {"test": {"score": score, "loss": 1 - score}, "tokens_seen": 40, "wall_s": 0.5, "train_s": 0.25,
              "callback_s": 0.0, "val_curve": [[s, score * s / 10] for s in (2, 4, 6, 8, 10)]}
    write_file(run_dir / runstate.RESULT, json.dumps(result))
    return SimpleNamespace(test=result["test"])


TOY = Experiment(
    name="toy", stem="toy", title="A toy experiment", section="toy", help="Settings that shift a score.",
    settings={"none": {"shift": 0.0}, "up": {"shift": 0.2}, "down": {"shift": -0.2}},
    default_settings=("none", "up", "down"),
    scales={"smoke": {"width": 2}, "quick": {"width": 4}},
    metric=Metric(key="test_score", result="score", label="test score", curve_label="validation score",
                  higher_is_better=True, digits=2),
    comparisons=(Comparison("up", "none", "better", "Shifting up raises the score."),
                 Comparison("down", "none", "better", "Shifting down raises the score.", origin="project")),
    flatness=Flatness(last=0.2, min_gain=0.02),
    figures=(FigureSpec("toy.png", "validation score", partial(plot_val_curves, xlabel="step", title="toy")),),
    prepare=lambda p, options: options.get("data") or "toy data", data_label=str,
    train=toy_train, describe=lambda doc: f"width {doc['config']['model']['width']}", options=("data",),
)


@pytest.fixture(autouse=True)
def fresh_calls():
    CALLS.clear()
    INTERRUPT.clear()


def _grid(out, seeds, settings=(), **kw):
    return run_grid(TOY, out, scale="smoke", settings=settings, seeds=seeds, device="cpu", progress=False,
                    log=kw.pop("log", lambda line: None), **kw)


def test_a_third_experiment_is_one_description(tmp_path):
    prov = {"device": "toy device", "date": "today", "commit": "c" * 40, "command": "pytest", "torch": "t",
            "python": "p"}
    doc = _grid(tmp_path, (0, 1, 2), provenance=prov)
    assert [f.name for f in sorted(tmp_path.iterdir())] == ["runs", "toy.json", "toy.md", "toy.png"]
    assert json.loads((tmp_path / "toy.json").read_text()) == doc
    assert list(doc["settings"]) == ["none", "up", "down"] and doc["seeds"] == [0, 1, 2]
    up = doc["settings"]["up"]
    assert up["test_score"] == pytest.approx([0.7, 0.8, 0.9]) and up["test_score_mean"] == pytest.approx(0.8)
    assert up["test_score_std"] == pytest.approx(0.1) and len(up["val_curves"]) == 3
    assert up["val_curve"] == [[s, pytest.approx(0.8 * s / 10)] for s in (2, 4, 6, 8, 10)]   # mean over seeds
    # the whole provenance, merged the same way into every summary
    assert {k: doc[k] for k in prov} == prov
    assert doc["config"]["model"] == {"width": 2} and doc["config"]["setting_fields"]["up"] == {"shift": 0.2}
    assert doc["config"]["params"] is None and doc["data"] == doc["data_details"]["name"] == "toy data"
    assert doc["call_runs"] == [f"{s}-seed{k}" for s in ("none", "up", "down") for k in (0, 1, 2)]
    # each setting against the baseline, and the description's comparisons with their outcome
    assert set(doc["comparisons"]) == {"up_minus_none", "down_minus_none"}
    up_none = doc["comparisons"]["up_minus_none"]         # 0.2 against a spread of 0.1·√(2/3): t = 2.45
    assert up_none["t"] == pytest.approx(0.2 / (0.1 * (2 / 3) ** 0.5))
    # ... yet the toy curves still rise at the end (test_flat_curves_in_the_summary): not settled
    # measured, but not settled: the grid cannot decide the claim (neither pass nor a finding)
    assert up_none["outcome"] == "not run" and up_none["note"].startswith("not settled: ")
    assert "6 of 6 runs' validation curves still falling" in up_none["note"]
    assert doc["comparisons"]["down_minus_none"]["outcome"] == "not run"
    assert doc["comparisons"]["down_minus_none"]["origin"] == "project"
    md = (tmp_path / "toy.md").read_text()
    assert md.startswith("Test score, smoke scale: width 2; data: toy data; device: toy device.")
    assert "| up | 3 | 0.80 ± 0.10 | 0.70, 0.80, 0.90 | +0.20 (± 0.08; t +2.45) |" in md
    assert "| up − none | up better than none (the paper's claim) | +0.20 | 0.08 | +2.45 |" in md


def test_resume_skips_complete_runs_and_continues_an_interrupted_one(tmp_path):
    INTERRUPT.add(("up", 1))
    with pytest.raises(KeyboardInterrupt):
        _grid(tmp_path, (0, 1), settings=["up", "none"])
    assert CALLS == [("none", 0, False), ("none", 1, False), ("up", 0, False), ("up", 1, False)]
    assert not (tmp_path / "toy.json").exists()           # an interrupted grid leaves no summary
    INTERRUPT.clear()
    CALLS.clear()
    lines = []
    doc = _grid(tmp_path, (0, 1), settings=["up", "none"], log=lines.append)
    assert CALLS == [("up", 1, True)]                     # started before: resumed, the others skipped
    assert sum("complete, skipped" in line for line in lines) == 3
    assert doc["settings"]["up"]["seeds"] == [0, 1]


def test_partial_result_directories_merge(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    _grid(a, (0,), settings=["none", "up"])
    _grid(b, (1, 2), settings=["up"])
    for run in (b / "runs").iterdir():
        shutil.copytree(run, a / "runs" / run.name)
    doc = summarise(TOY, a, "smoke", analyse=False)
    assert doc["settings"]["up"]["seeds"] == [0, 1, 2] and doc["settings"]["none"]["seeds"] == [0]
    assert json.loads((a / "toy.json").read_text())["settings"]["up"]["test_score"] == pytest.approx([0.7, 0.8, 0.9])
    # runs of another scale cannot share the table
    _grid(tmp_path / "c", (3,), settings=["up"])
    run_grid(TOY, tmp_path / "d", scale="quick", settings=["up"], seeds=(4,), device="cpu", progress=False,
             log=lambda line: None)
    shutil.copytree(tmp_path / "d" / "runs" / "up-seed4", a / "runs" / "up-seed4")
    with pytest.raises(ConfigError, match="differ in data, model size or budget"):
        summarise(TOY, a, "smoke")
    with pytest.raises(ConfigError, match="holds no complete toy run"):
        summarise(TOY, tmp_path / "empty", "smoke")


def test_mean_std_rule():
    """One rule: the sample std, None for fewer than two seeds; 'n/a' in every table."""
    assert mean_std([2.0]) == (2.0, None)
    assert mean_std([1.0, 2.0, 3.0]) == (2.0, 1.0)
    assert format_mean_std(2.0, None, 2) == "2.00 ± n/a" and format_mean_std(2.0, 1.0, 1) == "2.0 ± 1.0"


def test_one_seed_has_no_std_in_json_or_markdown(tmp_path):
    doc = _grid(tmp_path, (0,))
    assert all(v["test_score_std"] is None for v in doc["settings"].values())
    md = (tmp_path / "toy.md").read_text()
    assert "| up | 1 | 0.70 ± n/a | 0.70 | +0.20 (± n/a; t n/a) |" in md
    assert "| +0.20 | n/a | n/a | t ≥ 2 in its direction, ≥ 3 seeds | not run (not settled: fewer than 3 seeds per " \
        "setting" in md


@pytest.mark.parametrize("higher, curve, gain", [
    (False, [[10, 20.0], [40, 12.0], [80, 10.0], [100, 9.9]], 0.01),        # the point at 80 % against the last
    (False, [[10, 20.0], [75, 10.0], [85, 9.0], [100, 9.5]], 0.05),         # at or just before 80 %: step 75
    (False, [[50, 10.0], [100, 12.0]], -0.2),                               # worse at the end: a negative gain
    (True, [[1, 0.5], [4, 0.80], [5, 0.84]], 0.05),                         # accuracy: higher is better
    (True, [[5, 0.84]], None),                                              # no point before the cut
])
def test_flatness_rule(higher, curve, gain):
    metric = Metric("m", "m", "m", "m", higher_is_better=higher)
    rule = Flatness(last=0.2, min_gain=0.02)
    got = rule.gain(curve, metric)
    assert got == pytest.approx(gain) if gain is not None else got is None
    assert rule.flat(got) == (None if gain is None else gain < 0.02)
    assert rule.gain_key == "val_gain_last20"


def test_flat_curves_in_the_summary(tmp_path):
    """The toy curves rise linearly: 8 → 10 is a 25 % gain, not flat; the markdown says so per seed."""
    doc = _grid(tmp_path, (0, 1))
    v = doc["settings"]["none"]
    assert v["val_gain_last20"] == [pytest.approx(0.25)] * 2 and v["val_flat"] == [False, False]
    assert "| +25.0%, +25.0% |" in (tmp_path / "toy.md").read_text()


values = st.lists(st.floats(-100, 100, allow_nan=False), min_size=2, max_size=5)


# scipy warns on nearly identical samples (its moments lose digits); the comparison skips spreads that small
@pytest.mark.filterwarnings("ignore:Precision loss occurred:RuntimeWarning")
@given(a=values, b=values)
@settings(max_examples=40, deadline=None)
def test_comparison_is_welch_t_in_the_claims_direction(a, b):
    for higher in (True, False):
        metric = Metric("m", "m", "m", "m", higher_is_better=higher)
        for expect in ("better", "worse"):
            c = Comparison("a", "b", expect, "a claim", min_t=2.0, min_seeds=2)
            got = c.judge({"a": {"m": a}, "b": {"m": b}}, metric)
            assert got["diff"] == pytest.approx(sum(a) / len(a) - sum(b) / len(b), abs=1e-9)
            if got["t"] is None or got["spread"] < 1e-6:
                continue
            t = stats.ttest_ind(a, b, equal_var=False).statistic
            assert got["t"] == pytest.approx(t, rel=1e-6, abs=1e-9)
            toward = t if (expect == "better") == higher else -t
            if abs(abs(toward) - 2) < 1e-6:     # on the bar: the last bits of two computations decide
                continue
            assert got["outcome"] == ("pass" if toward >= 2 else "fail")


def test_comparison_tolerance_seeds_and_absent_settings():
    acc = Metric("acc", "accuracy", "accuracy", "accuracy", higher_is_better=True)
    ppl = Metric("ppl", "ppl", "perplexity", "perplexity", higher_is_better=False)
    low, high = [1.0, 1.1, 0.9], [2.0, 2.1, 1.9]
    s = {"low": {"acc": low, "ppl": low}, "high": {"acc": high, "ppl": high}}
    better = Comparison("high", "low", "better", "high is better")
    assert better.judge(s, acc)["outcome"] == "pass" and better.judge(s, ppl)["outcome"] == "fail"
    worse = Comparison("high", "low", "worse", "high is worse")
    assert worse.judge(s, ppl)["outcome"] == "pass" and worse.judge(s, acc)["outcome"] == "fail"
    strict = Comparison("high", "low", "better", "high is better", min_t=100)
    assert strict.judge(s, acc)["outcome"] == "fail"
    four = Comparison("high", "low", "better", "high is better", min_seeds=4)
    assert four.judge(s, acc) == {**better.judge(s, acc), "outcome": "not run",
                                  "note": "not settled: fewer than 4 seeds per setting"}
    # measured but not settled: a check that shows the numbers and says what would settle it
    unsettled = four.check({"settings": s}, "a grid", acc, "run more seeds")
    assert unsettled.outcome == "not run" and "t = +" in unsettled.measured and "run more seeds" in unsettled.note
    assert better.judge({"high": s["high"]}, acc)["outcome"] == "not run"
    # runs whose validation curves are still falling settle nothing, however large t is
    falling = {k: {**v, "val_flat": [True, True, False]} for k, v in s.items()}
    v = better.judge(falling, acc)
    assert v["outcome"] == "not run" and v["t"] == better.judge(s, acc)["t"] and "2 of 6 runs" in v["note"]
    flat = {k: {**v, "val_flat": [True] * 3} for k, v in s.items()}
    assert better.judge(flat, acc)["outcome"] == "pass"
    check = better.check({"settings": s}, "a grid", acc, "run it")
    assert check.outcome == "pass" and "t = +" in check.measured and "a grid" in check.measured
    assert better.check(None, "", acc, "run it").outcome == "not run"
    assert better.name == "high_minus_low" and "≥ 3 seeds" in better.tolerance()
    # a comparison with its own metric judges that per-seed value, whatever the experiment's metric
    on_ppl = Comparison("high", "low", "better", "high has the better perplexity", metric=ppl)
    assert on_ppl.judge(s, acc) == better.judge(s, ppl) and on_ppl.name == "high_minus_low_ppl"
    assert on_ppl.check({"settings": s}, "a grid", acc, "run it").outcome == "fail"
    with pytest.raises(ConfigError):
        Comparison("a", "b", "same", "?")


def test_a_comparison_within_its_spreads_says_how_many_seeds_would_resolve_it():
    acc = Metric("acc", "accuracy", "accuracy", "accuracy", higher_is_better=True)
    # means 1.0 and 1.2, variances 0.01 and 0.04: t = 0.2 / √(0.05/3) = 1.55; n = ⌈4 · 0.05 / 0.04⌉ = 5
    s = {"a": {"acc": [0.9, 1.0, 1.1]}, "b": {"acc": [1.0, 1.2, 1.4]}}
    c = Comparison("b", "a", "better", "b is better")
    v = c.judge(s, acc)
    assert v["outcome"] == "fail" and v["t"] == pytest.approx(1.549, abs=1e-3) and v["seeds_to_resolve"] == 5
    assert "about 5 seeds per setting" in c.check({"settings": s}, "a grid", acc, "run it").note
    # resolved, in either direction: no count
    far = {"a": {"acc": [0.9, 1.0, 1.1]}, "b": {"acc": [2.0, 2.1, 2.2]}}
    assert c.judge(far, acc)["seeds_to_resolve"] is None
    assert Comparison("a", "b", "better", "a is better").judge(far, acc)["seeds_to_resolve"] is None
    from tokendyn.train.summary import comparison_table

    assert "about 5 seeds per setting would resolve" in "\n".join(comparison_table([c], s, acc))
    # a difference far inside the spread: out of reach, not a count to plan with
    tiny = {"a": {"acc": [0.9, 1.0, 1.1]}, "b": {"acc": [0.9, 1.0, 1.1001]}}
    assert c.judge(tiny, acc)["seeds_to_resolve"] > 100
    assert "would need more than 100 seeds" in c.check({"settings": tiny}, "a grid", acc, "run it").note


def test_markdown_of_an_older_summary_shape(tmp_path):
    """A committed summary keeps being read: per-seed curves under val_curve, seeds and wall times
    under config (reorder.json before the one writer) give the table of today's shape."""
    old = {"settings": {"none": {"test_score": [0.5, 0.6], "val_curve": [[[2, 0.1], [10, 0.5]], [[2, 0.2], [10, 0.6]]]},
                        "up": {"test_score": [0.7, 0.9], "val_curve": [[[2, 0.1], [10, 0.7]], [[2, 0.2], [10, 0.9]]]}},
           "config": {"scale": "quick", "model": {"width": 4}, "seeds": {"none": [0, 1], "up": [0, 1]},
                      "wall_s": {"none": [1.0, 2.0], "up": [3.0, 5.0]}}, "data": "d", "device": "gpu"}
    path = tmp_path / "old.json"
    path.write_text(json.dumps(old))
    doc = load_summary(path)
    assert doc["settings"]["up"]["val_curves"][1] == [[2, 0.2], [10, 0.9]]
    assert doc["settings"]["up"]["val_curve"] == [[2, pytest.approx(0.15)], [10, pytest.approx(0.8)]]
    assert doc["settings"]["up"]["seeds"] == [0, 1]
    md = markdown(TOY, doc)
    assert "| up | 2 | 0.80 ± 0.14 | 0.70, 0.90 | +0.25 (± 0.11; t +2.24) | +600.0%, +350.0% | 4.0 |" in md
    assert "| down − none | down better than none (the project's own) | n/a | n/a | n/a |" in md
    assert load_summary(tmp_path / "absent.json") is None


def test_the_generated_command(tmp_path):
    import typer
    from typer.testing import CliRunner

    from tokendyn.cli.experiments import register

    app = typer.Typer()
    register(app, [TOY])
    app.command("other")(lambda: None)          # a group of two, as `tokendyn train` is
    runner = CliRunner()
    res = runner.invoke(app, ["toy", "--out", str(tmp_path / "o"), "--scale", "smoke", "--settings", "up",
                              "--settings", "none", "--seeds", "2,0", "--data", "other data", "--no-progress",
                              "--plan-seeds", "5"])
    assert res.exit_code == 0, res.output
    assert "| up | 2 | 0.80 ± 0.14 |" in res.output and "written: " in res.output
    assert "runs that would resolve the comparisons within their spreads (at most 5 seeds" in res.output
    assert sorted(CALLS) == [("none", 0, False), ("none", 2, False), ("up", 0, False), ("up", 2, False)]
    doc = json.loads((tmp_path / "o" / "toy.json").read_text())
    assert doc["data"] == "other data" and doc["command"].startswith("tokendyn")
    helptext = runner.invoke(app, ["toy", "--help"]).output
    assert "Settings that shift a score." in helptext and "--data" in helptext and "--text" not in helptext
    for args, words in ((["--scale", "huge"], "unknown scale"), (["--seeds", "a"], "--seeds"),
                        (["--settings", "sideways"], "sideways"), (["--plan-seeds", "-1"], "--plan-seeds"),
                        (["--plan-seeds", "1000000"], "up to 100")):
        res = runner.invoke(app, ["toy", "--out", str(tmp_path / "bad"), *args])
        assert res.exit_code != 0 and words in str(res.exception)
    assert not (tmp_path / "bad").exists()


def test_the_report_section(tmp_path):
    from tokendyn.reproduce import Context
    from tokendyn.reproduce.experiment import run_section

    ctx = Context(out=tmp_path, scale="quick", device=torch.device("cpu"), command="test")
    res = run_section(TOY, ctx, tmp_path / "no-committed.json")
    assert "**This run** (smoke scale" in res.markdown and "![validation score](toy/toy.png)" in res.markdown
    assert "No committed full-scale table (results/toy.json)" in res.markdown
    assert res.summary["test_score"] == {"none": [0.5, 0.6], "up": pytest.approx([0.7, 0.8]),
                                         "down": pytest.approx([0.3, 0.4])}
    # the claims are for the full-scale grid: none here, so not run, saying how
    assert [(c.claim, c.outcome) for c in res.checks] == [("Shifting up raises the score.", "not run"),
                                                          ("Shifting down raises the score.", "not run")]
    assert "tokendyn train toy --scale full" in res.checks[0].note


def test_runs_record_where_they_were_trained_and_a_merged_summary_names_those_machines(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    _grid(a, (0,), settings=["none"], provenance={"device": "GPU-A", "commit": "c1", "date": "d1", "command": "x"})
    _grid(b, (1,), settings=["none"], provenance={"device": "GPU-B", "commit": "c2", "date": "d2", "command": "y"})
    rec = json.loads((a / "runs" / "none-seed0" / "provenance.json").read_text())
    assert rec["device"] == "GPU-A" and rec["commit"] == "c1" and rec["wall_s"] >= 0
    shutil.copytree(b / "runs" / "none-seed1", a / "runs" / "none-seed1")
    # summarised on another machine: the summary names the runs' machines, not its own
    doc = summarise(TOY, a, "smoke", provenance={"device": "laptop", "commit": "c3"}, analyse=False)
    assert doc["device"] == "GPU-A, GPU-B" and doc["runs_commits"] == ["c1", "c2"]
    assert doc["runs_provenance"]["none-seed1"]["command"] == "y"
    # a run without its record: the summary keeps the summarising call's device
    (a / "runs" / "none-seed1" / "provenance.json").unlink()
    assert summarise(TOY, a, "smoke", provenance={"device": "laptop"}, analyse=False)["device"] == "laptop"


def test_summarise_only_trains_nothing(tmp_path):
    import typer
    from typer.testing import CliRunner

    from tokendyn.cli.experiments import register

    app = typer.Typer()
    register(app, [TOY])
    app.command("other")(lambda: None)
    _grid(tmp_path / "o", (0, 1), settings=["up"])
    CALLS.clear()
    (tmp_path / "o" / "toy.json").unlink()
    res = CliRunner().invoke(app, ["toy", "--out", str(tmp_path / "o"), "--scale", "smoke", "--summarise-only"])
    assert res.exit_code == 0, res.output
    assert CALLS == [] and json.loads((tmp_path / "o" / "toy.json").read_text())["settings"]["up"]["seeds"] == [0, 1]
    res = CliRunner().invoke(app, ["toy", "--out", str(tmp_path / "none"), "--summarise-only"])
    assert res.exit_code != 0 and "holds no runs/ folder" in str(res.exception)


def _metrics(run_dir, records):
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def test_early_stopping_reads_the_test_metric_at_the_best_validation_step(tmp_path):
    """A run that overfits after step 4: its best validation point is step 4, where the test curve
    is read; the last step's test record serves when the best is last; no test there: None."""
    ppl = Metric(key="test_ppl", result="ppl", label="test perplexity", curve_label="validation perplexity",
                 higher_is_better=False)
    val = [{"kind": "validation", "step": s, "ppl": p} for s, p in ((2, 30.0), (4, 20.0), (6, 22.0))]
    _metrics(tmp_path / "a", [*val, {"kind": "test_curve", "step": 2, "ppl": 31.0},
                              {"kind": "test_curve", "step": 4, "ppl": 19.5}, {"kind": "test", "step": 6, "ppl": 23.0}])
    assert EarlyStopping.read(tmp_path / "a", ppl) == (4, 19.5)
    _metrics(tmp_path / "b", [*val[:2], {"kind": "test", "step": 4, "ppl": 21.0}])
    assert EarlyStopping.read(tmp_path / "b", ppl) == (4, 21.0)
    _metrics(tmp_path / "c", [*val, {"kind": "test", "step": 6, "ppl": 23.0}])       # no test curve
    assert EarlyStopping.read(tmp_path / "c", ppl) == (4, None)
    assert EarlyStopping.read(tmp_path / "missing", ppl) == (None, None)
    score = TOY.metric                                                                 # higher is better
    _metrics(tmp_path / "d", [{"kind": "validation", "step": s, "score": v} for s, v in ((1, 0.5), (2, 0.9), (3, 0.7))]
             + [{"kind": "test_curve", "step": 2, "score": 0.88}])
    assert EarlyStopping.read(tmp_path / "d", score) == (2, 0.88)


def early_train(data, p, overrides, seed, run_dir, *, resume, device, progress, log, cuda_graph=False):
    """toy_train, plus metrics whose validation peaks at step 6: the test there is the score + 0.05."""
    out = toy_train(data, p, overrides, seed, run_dir, resume=resume, device=device, progress=progress, log=log)
    score = out.test["score"]
    _metrics(run_dir, [{"kind": "validation", "step": s, "score": v} for s, v in ((2, 0.1), (6, score), (10, 0.0))]
             + [{"kind": "test_curve", "step": 6, "score": score + 0.05}] * (seed != 2))
    return out


def test_early_stopping_in_the_summary_markdown_and_report(tmp_path):
    from tokendyn.reproduce.experiment import comparison_checks

    exp = TOY.__class__(**{**TOY.__dict__, "train": early_train, "early_stopping": EarlyStopping()})
    doc = run_grid(exp, tmp_path, scale="smoke", seeds=(0, 1, 2), device="cpu", progress=False, log=lambda _: None)
    up = doc["settings"]["up"]
    assert up["best_val_step"] == [6, 6, 6]
    assert up["test_at_best_val"] == [pytest.approx(0.75), pytest.approx(0.85), None]     # seed 2: no test curve
    both = doc["comparisons"]["up_minus_none_test_at_best_val"]
    assert both["diff"] == pytest.approx(0.2) and both["origin"] == "project"
    assert both["outcome"] == "not run" and "fewer than 3 seeds" in both["note"]                # None is left out
    md = (tmp_path / "toy.md").read_text()
    assert "Test score at each run's best validation step (early stopping; the project's addition):" in md
    assert "| up | 2 | 0.80 ± 0.07 | 0.75, 0.85, n/a | 6, 6, 6 |" in md
    checks = comparison_checks(exp, doc, "this run", "how")
    read = [c for c in checks if "best validation step" in c.claim]
    assert len(read) == 2 and all("the project's addition" in c.claim for c in read)


@pytest.mark.parametrize("damage,words", [
    ("{", "cannot be read as a run record"),
    ("[1, 2]", "is not a run record"),
    ('{"test": {}}', "lacks tokens_seen, wall_s, train_s, val_curve"),
])
def test_a_damaged_run_record_is_one_sentence(tmp_path, damage, words):
    """A result.json cut short by a failed copy, or not a run's at all: the summary names the file
    and the run folder instead of failing deep inside."""
    from tokendyn.errors import DataError
    from tokendyn.train.runs import collect

    run = tmp_path / "runs" / "none-seed0"
    run.mkdir(parents=True)
    (run / runstate.RUN).write_text(json.dumps({"model": {}, "train": {}, "task": {}}))
    (run / runstate.RESULT).write_text(damage)
    with pytest.raises(DataError, match=words) as info:
        collect(tmp_path)
    assert "none-seed0" in str(info.value) and "\n" not in str(info.value)
    (run / runstate.RUN).unlink()
    (run / runstate.RESULT).write_text(json.dumps({k: 0 for k in ("test", "tokens_seen", "wall_s", "train_s",
                                                                   "val_curve")}))
    with pytest.raises(DataError, match="run.json cannot be read"):
        collect(tmp_path)


def test_runs_to_resolve_plans_the_seeds_a_comparison_within_its_spreads_needs():
    from tokendyn.experiments import get

    exp = get("lm-scenarios")
    names = {c.name for c in exp.comparisons}
    assert {"positive_minus_mixed", "negative_minus_none"} <= names
    doc = {"settings": {"none": {"seeds": [0, 1, 2]}, "positive": {"seeds": [0, 1, 2, 5]},
                        "negative": {"seeds": [0, 1, 2]}, "mixed": {"seeds": [0, 1]}},
           "comparisons": {"positive_minus_mixed": {"seeds_to_resolve": 6},
                           "negative_minus_none": {"seeds_to_resolve": 40},
                           "negative_minus_mixed": {"seeds_to_resolve": None}}}
    runs, beyond = exp.runs_to_resolve(doc, cap=10)
    # positive has 4 seeds (0, 1, 2, 5): two more, the smallest free; mixed has 2: four more
    assert runs == ["positive-seed3", "mixed-seed2", "positive-seed4", "mixed-seed3", "mixed-seed4", "mixed-seed5"]
    assert beyond == ["negative_minus_none"]
    assert exp.runs_to_resolve(doc, cap=100)[1] == []
    assert exp.runs_to_resolve({"settings": doc["settings"], "comparisons": {}}, cap=10) == ([], [])
