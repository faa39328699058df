"""Checks, the report structure and its three renderings (report.json, report.md,
index.html), the committed-results tables, and --strict."""

import html
import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 -- must follow matplotlib.use("Agg")
import pytest  # noqa: E402 -- import block below matplotlib.use

from tokendyn.cli import main  # noqa: E402 -- import block below matplotlib.use
from tokendyn.report import Check, Figure, count_outcomes  # noqa: E402 -- import block below matplotlib.use
from tokendyn.report.page import markdown_to_html  # noqa: E402 -- import block below matplotlib.use
from tokendyn.reproduce import SectionResult, document, verdicts  # noqa: E402 -- import block below matplotlib.use
from tokendyn.reproduce.committed import committed_results  # noqa: E402 -- import block below matplotlib.use


def test_check_outcomes():
    assert Check.judged("c", "t", "m", True).outcome == "pass"
    assert Check.judged("c", "t", "m", False).outcome == "fail"
    assert Check.judged("c", "t", "m", None).outcome == "not run"
    assert Check.not_run("c", "t", "run it like this").note == "run it like this"
    with pytest.raises(ValueError):
        Check("c", "t", "m", "maybe")
    assert count_outcomes([Check.judged("c", "t", "m", ok) for ok in (True, True, False, None)]) == \
        {"pass": 2, "fail": 1, "not run": 1}


def test_markdown_embeds_found_images_and_escapes_text(tmp_path):
    fig, ax = plt.subplots(figsize=(1, 1))
    fig.savefig(tmp_path / "f.png")
    plt.close(fig)
    out = markdown_to_html("a <b> ![cap](f.png) ![gone](missing.png)\n\n| x |\n|---|\n| 1 |\n", tmp_path)
    assert 'src="data:image/png;base64,' in out and 'alt="cap"' in out
    assert 'src="missing.png"' in out          # a missing figure stays visible as broken
    assert "&lt;b&gt;" in out and "<b>" not in out
    assert '<div class="table-wrap"><table>' in out


def _report(tmp_path, checks):
    fig, ax = plt.subplots(figsize=(2, 1))
    ax.plot([0, 1], [0, 1])
    fig.savefig(tmp_path / "fig.png")
    plt.close(fig)
    res = SectionResult(markdown="Some text with 1.234e-05.\n\n| a | b |\n|---|---|\n| 1 | 2 |",
                        summary={"value": 1.234e-05}, checks=checks, figures=[Figure("fig.png", "a figure")])
    report = {"provenance": {"device": "cpu (test)", "date": "2026-01-01T00:00:00+00:00", "commit": "abc",
                             "command": "tokendyn reproduce --out x", "torch": "t", "python": "p"},
              "scale": "quick", "sections": {"demo": document.section_entry("demo", "Demo section", 1.5, res)}}
    committed = [{"file": "results/x.json", "title": "A GPU table", "device": "GPU 9", "commit": "c0ffee",
                  "date": "2026-01-02", "command": "bench", "columns": ["a", "b"], "rows": [["1", "2.5"]]}]
    return document.finish(report, ["other"], committed)


def test_one_structure_three_renderings(tmp_path):
    checks = [Check.judged("claim one", "≤ 1e-5", "3.21e-07", True),
              Check.judged("claim two", "< 1", "1.70", False, "plainly: not shown"),
              Check.not_run("claim three", "all", "`tokendyn reproduce --device cuda`")]
    report = _report(tmp_path, checks)
    paths = document.write(report, tmp_path)
    data = json.loads(paths["json"].read_text())
    md = paths["markdown"].read_text()
    page = paths["html"].read_text()
    assert data["outcomes"] == {"pass": 1, "fail": 1, "not run": 1}
    assert [{k: c[k] for k in ("section", "claim", "tolerance", "measured", "outcome")} for c in data["checks"]] == [
        {"section": "demo", "claim": "claim one", "tolerance": "≤ 1e-5", "measured": "3.21e-07", "outcome": "pass"},
        {"section": "demo", "claim": "claim two", "tolerance": "< 1", "measured": "1.70", "outcome": "fail"},
        {"section": "demo", "claim": "claim three", "tolerance": "all", "measured": "-", "outcome": "not run"}]
    for text in ("3.21e-07", "1.70", "plainly: not shown", "1.234e-05", "GPU 9", "c0ffee", "2026-01-02",
                 "section other", "claim three"):
        assert text in md and html.escape(text) in page, text
    # the checks table comes first, then the sections, the committed results, what was not run
    assert md.index("## Checks") < md.index("## Demo section") < md.index("## Committed GPU results") \
        < md.index("## Not run at this scale")
    ids = ['id="checks"', 'id="sec-demo"', 'id="committed"', 'id="not-run"']
    assert [page.index(i) for i in ids] == sorted(page.index(i) for i in ids)
    # self-contained: the figure is embedded, nothing is fetched
    assert "data:image/png;base64," in page and "fig.png)" in md
    assert "<script" not in page and "<link" not in page and "http://" not in page and "https://" not in page
    assert "@media print" in page and 'name="viewport"' in page


def test_committed_results_are_gpu_files_with_provenance(tmp_path):
    (tmp_path / "gpu.json").write_text(json.dumps({"device": "NVIDIA X", "commit": "1234", "date": "d",
                                                   "command": "c", "speed": 2.5}))
    (tmp_path / "cpu.json").write_text(json.dumps({"provenance": {"device": "cpu (x86_64)"}, "speed": 1.0}))
    (tmp_path / "broken.json").write_text("{")
    got = committed_results(folder=tmp_path)
    assert [t["file"] for t in got] == ["results/gpu.json"]
    assert got[0]["device"] == "NVIDIA X" and got[0]["commit"] == "1234" and got[0]["rows"] == [["speed", "2.5"]]


def test_the_repository_results_are_found():
    tables = committed_results()
    assert tables, "results/*.json of the checkout not found"
    for t in tables:
        assert t["device"] and not t["device"].lower().startswith("cpu") and t["date"] and t["rows"]
    by_file = {t["file"]: t for t in tables}
    # the three side-by-side benchmarks appear as tables with their ratios, not as loose scalars
    gen = by_file["results/generate_gpu.json"]
    assert gen["columns"][0] == "batch" and [r[0] for r in gen["rows"]] == ["1", "16"]
    scan = by_file["results/scan_gpu.json"]
    assert "fwd ratio" in scan["columns"] and scan["columns"][0] == "device"
    assert {r[0] for r in scan["rows"]} >= {"NVIDIA H200", "NVIDIA H100 80GB HBM3"}
    train = by_file["results/train_gpu.json"]
    assert "peak memory × mamba_ssm" in train["columns"] and train["rows"][0][0] == "NVIDIA H200"
    ssd = by_file["results/ssd_gpu.json"]
    check = ssd["columns"].index("check")
    assert "fwd triton / mamba_ssm" in ssd["columns"] and all(r[check] == "pass" for r in ssd["rows"])
    assert by_file["results/ssd_gpu_6a4d49c.json"]["superseded_by"] == "results/ssd_gpu.json"
    assert by_file["results/train_graph_gpu.json"]["rows"][-1][0] == "graph / eager"
    assert [r[0] for r in by_file["results/ssd_triton_tuning.json"]["rows"][:2]] == ["defaults", "mamba_ssm"]


def test_ssd_rows_give_each_contender_and_its_ratio_to_the_peer(tmp_path):
    row = {"shape": {"batch": 1, "length": 8}, "dtype": "bfloat16", "check": {"ok": True},
           "triton": {"fwd_ms": 2.0, "fwdbwd_ms": 6.0, "peak_mem_fwdbwd_gib": 0.5},
           "mamba_ssm": {"fwd_ms": 1.0, "fwdbwd_ms": 3.0, "peak_mem_fwdbwd_gib": 0.25}}
    oom = {"shape": {"batch": 9, "length": 8}, "dtype": "float32", "error": "out of memory"}
    (tmp_path / "ssd.json").write_text(json.dumps({"provenance": {"device": "NVIDIA X", "date": "d"},
                                                   "rows": [row, oom]}))
    (t,) = committed_results(folder=tmp_path)
    got = dict(zip(t["columns"], t["rows"][0]))
    assert got["(batch, L, heads, head_dim, state, groups)"] == "(1, 8)" and got["check"] == "pass"
    assert got["fwd triton / mamba_ssm"] == "2" and got["fwd+bwd triton / mamba_ssm"] == "2"
    assert got["peak GiB mamba_ssm"] == "0.25" and "chunked" not in " ".join(t["columns"])
    assert t["rows"][1][2] == "out of memory" and len(t["rows"][1]) == len(t["columns"])
    # rows gathered from several calls: each row's commit leads it
    (tmp_path / "ssd.json").write_text(json.dumps({"provenance": {"device": "NVIDIA X", "date": "d"},
                                                   "rows": [{**row, "commit": "abcdef0123"}, oom]}))
    (t,) = committed_results(folder=tmp_path)
    assert t["columns"][0] == "commit" and [r[0] for r in t["rows"]] == ["abcdef0", ""]
    assert t["rows"][0][3] == "pass" and t["rows"][1][3] == "out of memory"
    assert all(len(r) == len(t["columns"]) for r in t["rows"])


def test_verdicts_say_what_was_not_shown():
    theory = {"draws_1d": {"draws": 4, "table": {"convergence": {"predicted": 4, "agree": 3}}, "mismatches": [1],
                           "convergence_loglog_slope": {"n": 3, "median": -0.5, "min": -0.51, "max": -0.49},
                           "convergence_constant_ratio": {"n": 3, "median": 1.0, "min": 0.26, "max": 1.39},
                           "convergence_constant_relaxed": {"n": 2, "median": 1.0, "min": 0.99, "max": 1.01},
                           "convergence_constant_slow": {"n": 1, "median": 0.26, "min": 0.26, "max": 0.26},
                           "blowup_time_over_bound": {"n": 2, "median": 0.9, "min": 0.8, "max": 1.01}}}
    checks = verdicts.theory_checks(theory)
    assert [c.outcome for c in checks] == ["fail", "pass", "pass", "fail"]   # 3/4 regimes; blow-up after its bound
    assert "1 of 3 tokens are excluded" in checks[2].note     # the tokens still relaxing are named, not hidden
    theory["draws_1d"]["convergence_constant_relaxed"]["max"] = 1.07
    assert verdicts.theory_checks(theory)[2].outcome == "fail"   # one relaxed token 7 % off fails the check

    def position(exponents, ratios, x0):
        return {"mu": 1.0, "s": 1.0, "a": 1.0, "x0": x0, "growth_exponent": exponents, "ratio_to_first": ratios}

    same = position([0.72, 0.72, 0.725], [1.0, 2.2, 3.7], [-1.0] * 3)
    assert [c.outcome for c in verdicts.position_checks([same])] == ["pass", "pass"]
    # exponents that grow with the position (as a reading of the bound as a rate would have it) fail
    bound_as_rate = position([1.0, 2.0, 3.0], [1.0, 2.2, 3.7], [-1.0] * 3)
    assert verdicts.position_checks([bound_as_rate])[0].outcome == "fail"
    assert verdicts.position_checks([position([0.7] * 3, [1.0, 0.9, 1.2], [-1.0] * 3)])[1].outcome == "fail"
    assert len(verdicts.position_checks([position([0.7] * 3, [1.0, 0.9, 1.2], [-1.0, -2.0, -1.0])])) == 1

    def layers(n_pos, n_neg, regime, rv, flow):
        return [{"index": i, "layer": i, "io_eigs_positive": n_pos, "io_eigs_negative": n_neg,
                 "predicted_regime": regime, "radial_velocity": rv, "flow": flow, "flow_time": 5.0}
                for i in range(3)]

    summary = {"positive": {"summary": {}, "layers": layers(16, 0, "divergence", 0.05, "blows up")},
               "negative": {"summary": {}, "layers": layers(0, 16, "convergence", -0.05, "decays")}}
    checks = verdicts.analysis_checks(summary)
    assert [c.outcome for c in checks] == ["pass"] * 7
    summary["negative"]["layers"][2]["radial_velocity"] = 0.01     # one layer on the wrong side
    summary["positive"]["layers"][1]["flow"] = "decays"
    checks = verdicts.analysis_checks(summary)
    assert [c.outcome for c in checks] == ["pass", "pass", "pass", "pass", "fail", "fail", "pass"]
    assert "(not: layer 1)" in checks[4].measured and "(not: layer 2)" in checks[5].measured
    core = verdicts.core_checks({"reference": {"max_rel_diff_vs_reference": 0.0, "max_rel_diff_vs_float64": 1e-7},
                                 "chunked": {"max_rel_diff_vs_reference": 2e-5, "max_rel_diff_vs_float64": 1e-7}},
                                True, "cpu")
    assert [c.outcome for c in core] == ["fail", "pass", "not run", "pass"]


def _exit_code(args):
    with pytest.raises(SystemExit) as exit_:
        main(args)
    return exit_.value.code or 0


def test_strict_exits_1_when_a_check_fails(tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    assert _exit_code(["reproduce", "--only", "core", "--out", str(out), "--strict"]) == 0
    page = (out / "index.html").read_text()
    assert 'id="sec-core"' in page
    monkeypatch.setattr(verdicts, "LOGIT_RTOL", 0.0)          # now no backend can agree closely enough
    assert _exit_code(["reproduce", "--only", "core", "--out", str(out)]) == 0
    assert json.loads((out / "report.json").read_text())["outcomes"]["fail"] >= 1
    assert _exit_code(["reproduce", "--only", "core", "--out", str(out), "--strict"]) == 1
    assert "check(s) failed" in capsys.readouterr().err


def test_an_earlier_page_is_replaced_only_by_a_complete_one(tmp_path, monkeypatch):
    out = tmp_path / "run"
    out.mkdir()
    for name in ("index.html", "report.md", "report.json"):
        (out / name).write_text("earlier run")
    (out / "mine.txt").write_text("not the report's")

    def interrupted(report, base):             # Ctrl-C while the page is being written
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(document, "to_html", interrupted)
        with pytest.raises((KeyboardInterrupt, SystemExit)):
            main(["reproduce", "--only", "core", "--force", "--out", str(out)])
    assert all((out / n).read_text() == "earlier run" for n in ("index.html", "report.md", "report.json"))
    assert sorted(p.name for p in out.iterdir()) == ["index.html", "mine.txt", "report.json", "report.md"]

    # not tokendyn's report files ("earlier run"): replaced only when asked
    assert _exit_code(["reproduce", "--only", "core", "--out", str(out)]) == 2
    assert (out / "index.html").read_text() == "earlier run"
    assert _exit_code(["reproduce", "--only", "core", "--force", "--out", str(out)]) == 0
    page = (out / "index.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and 'id="sec-core"' in page
    assert json.loads((out / "report.json").read_text())["checks"]
    assert (out / "mine.txt").read_text() == "not the report's"
    assert not [p for p in tmp_path.rglob("*") if ".tokendyn-tmp-" in p.name]


def test_out_that_is_a_file_writes_no_page(tmp_path, capsys):
    target = tmp_path / "index.html"
    target.write_text("a file")
    assert _exit_code(["reproduce", "--only", "core", "--out", str(target)]) == 2
    assert target.read_text() == "a file" and list(tmp_path.iterdir()) == [target]


def test_rerender_rebuilds_the_page_from_report_json(tmp_path):
    out = tmp_path / "run"
    assert _exit_code(["reproduce", "--only", "core", "--out", str(out)]) == 0
    before = json.loads((out / "report.json").read_text())
    (out / "index.html").unlink()
    assert _exit_code(["reproduce", "--rerender", "--out", str(out)]) == 0
    after = json.loads((out / "report.json").read_text())
    assert after.pop("rerendered")["date"] and after == before             # nothing measured again
    assert 'id="sec-core"' in (out / "index.html").read_text()
    assert _exit_code(["reproduce", "--rerender", "--out", str(tmp_path / "nothing")]) == 2


def test_rerender_completes_a_report_written_before_checks(tmp_path):
    """The committed full run (results/reproduce_full_cpu) was written before checks existed."""
    old = tmp_path / "old"
    old.mkdir()
    (old / "core.json").write_text(json.dumps({
        "backends": {"reference": {"max_rel_diff_vs_reference": 0.0, "max_rel_diff_vs_float64": 4e-7,
                                   "forward_ms_median": 10.0}},
        "generation": {"matches_full_forward_argmax": True}, "input": {"device": "cpu"}}))
    (old / "report.json").write_text(json.dumps({
        "provenance": {"device": "cpu (x86_64)", "date": "2026-11-23", "commit": "ce8b255", "command": "c"},
        "scale": "full", "sections": {"core": {"title": "Mamba model and scan backends", "seconds": 1.0,
                                               "backends": {}}}}))
    (old / "report.md").write_text("# tokendyn reproduce (full)\n\nDevice: cpu.\n\n## Mamba model and scan backends"
                                   "\n\nThe old text, 4.00e-07.\n\n_Section time: 1.0 s._\n")
    assert _exit_code(["reproduce", "--rerender", "--out", str(old)]) == 0
    report = json.loads((old / "report.json").read_text())
    assert report["sections"]["core"]["markdown"] == "The old text, 4.00e-07."
    assert [c["outcome"] for c in report["checks"]] == ["pass", "not run", "pass"]
    assert "The old text, 4.00e-07." in (old / "index.html").read_text()
    assert (old / "report.md").read_text().count("_Section time") == 1


def test_failed_claims_are_findings_apart_from_software_failures(tmp_path):
    from tokendyn.report import count_failures, shown_outcome

    checks = [Check.judged("the scan agrees", "≤ 1e-5", "0.3", False),                       # the software's
              Check.judged("Paper: positive is best", "t ≥ 2", "t = 0.4", False, kind="claim"),  # the paper's
              Check.judged("Paper: negative is worst", "t ≥ 2", "t = 6", True, kind="claim")]
    with pytest.raises(ValueError):
        Check("c", "t", "m", "pass", kind="opinion")
    assert count_failures(checks) == {"software failure": 1, "finding": 1}
    assert [shown_outcome(c.to_json()) for c in checks] == ["fail", "finding", "pass"]
    assert Check.from_json(checks[1].to_json()).kind == "claim"
    report = _report(tmp_path, checks)
    paths = document.write(report, tmp_path)
    md, page = paths["markdown"].read_text(), paths["html"].read_text()
    assert "1 pass, 1 software failure(s), 1 finding(s), 0 not run" in md
    assert "**finding**" in md and "**fail**" in md
    soft, found = page.index("Software failures:"), page.index("Findings (a claim of the paper")
    assert soft < page.index("the scan agrees") < found < page.index("Paper: positive is best")
    assert 'outcome-finding">finding<' in page
    # a report written before checks had a kind: the core section's checks are the software's, others claims
    data = json.loads(paths["json"].read_text())
    for c in data["checks"]:
        del c["kind"]
    data["checks"][0]["section"] = "core"
    for s in data["sections"].values():
        s["checks"] = []
    (tmp_path / "report.json").write_text(json.dumps(data))
    loaded = document.load(tmp_path)
    assert [c["kind"] for c in loaded["checks"]] == ["software", "claim", "claim"]


def test_the_paper_claims_are_marked_claims_and_the_contracts_software():
    core = verdicts.core_checks({"reference": {"max_rel_diff_vs_reference": 0.0, "max_rel_diff_vs_float64": 1e-7},
                                 "chunked": {"max_rel_diff_vs_reference": 1.0, "max_rel_diff_vs_float64": 1.0}},
                                True, "cpu")
    assert {c.kind for c in core} == {"software"} and any(c.outcome == "fail" for c in core)
    inlayer = verdicts.inlayer_checks({"positive": [[{"layer": 0, "radial_velocity": -1.0, "flow": "decays"}]],
                                       "negative": [[{"layer": 0, "radial_velocity": -1.0, "flow": "decays"}]]},
                                      "at a test")
    assert {c.kind for c in inlayer} == {"claim"} and any(c.outcome == "fail" for c in inlayer)


def test_committed_results_leave_out_superseded_tables_and_experiment_summaries(tmp_path):
    prov = {"device": "NVIDIA H100", "date": "2026-01-01", "commit": "abc", "command": "bench"}
    rows = [{"shape": [1, 2, 3, 4], "dtype": "bf16", "tokendyn_fwd_ms": 1.0, "tokendyn_fwdbwd_ms": 2.0}]
    (tmp_path / "scan_gpu.json").write_text(json.dumps({"provenance": prov, "rows": rows}))
    (tmp_path / "scan_gpu_recheck.json").write_text(json.dumps({"provenance": prov, "rows": rows}))
    (tmp_path / "lm_scenarios.json").write_text(json.dumps({"provenance": prov, "settings": {}, "comparisons": []}))
    tables = committed_results(folder=tmp_path)
    assert [(t["file"], t["superseded_by"]) for t in tables] == [
        ("results/scan_gpu.json", None), ("results/scan_gpu_recheck.json", "results/scan_gpu.json")]
    page = document._committed_html(tables)
    assert page.count("<table") == 1 and "superseded by <code>results/scan_gpu.json</code>" in page


def test_no_unmeasured_run_time_on_the_page(tmp_path):
    report = _report(tmp_path, [Check.judged("c", "t", "m", True)])
    how = next(n["how"] for n in report["not_run"] if n["what"].startswith("the full scale"))
    assert "about" not in how
    committed = committed_results.__globals__["results_dir"]()
    full = committed / "reproduce_full_cpu" / "report.json" if committed else None
    if full is not None and full.is_file():      # in a checkout: the committed run's own measured time
        seconds = sum(s["seconds"] for s in json.loads(full.read_text())["sections"].values())
        assert f"{seconds / 60:.1f} minutes" in how


def test_conv_rows_give_each_contender(tmp_path):
    row = {"shape": [8, 16, 32, 4], "dtype": "bfloat16", "floor_fwd_ms": 0.01, "floor_fwdbwd_ms": 0.02,
           "fused_taps": {"fwd_ms": 0.03, "fwdbwd_ms": 0.06}, "fused_recompute": {"fwd_ms": 0.03, "fwdbwd_ms": 0.14},
           "fused_cols": {"fwd_ms": 0.02, "fwdbwd_ms": 0.05}, "torch": {"fwd_ms": 0.1, "fwdbwd_ms": 0.3}}
    (tmp_path / "conv.json").write_text(json.dumps({"device": "NVIDIA X", "date": "d", "commit": "c",
                                                    "command": "x", "rows": [row]}))
    (t,) = committed_results(folder=tmp_path)
    got = dict(zip(t["columns"], t["rows"][0]))
    assert got["fused_taps fwd / fwd+bwd ms"] == "0.03 / 0.06" and got["torch fwd / fwd+bwd ms"] == "0.1 / 0.3"
    assert got["fused_cols fwd / fwd+bwd ms"] == "0.02 / 0.05"
    assert "causal_conv1d fwd / fwd+bwd ms" not in t["columns"]


def test_norm_rows_give_both_paths_and_their_ratios(tmp_path):
    path = {"fwd_kernel_ms": 0.1, "fwdbwd_kernel_ms": 0.3, "fwd_event_ms": 0.2, "fwdbwd_event_ms": 0.6}
    row = {"shape": [8, 1024, 768, 3072], "floor_norm_fwd_ms": 0.01, "floor_norm_bwd_ms": 0.02,
           "triton": path, "torch": {k: 2 * v for k, v in path.items()},
           "ratio_fwdbwd_kernel_triton_over_torch": 0.5, "ratio_fwdbwd_event_triton_over_torch": 0.5}
    (tmp_path / "norm.json").write_text(json.dumps({"device": "NVIDIA X", "date": "d", "commit": "c",
                                                    "command": "x", "rows": [row]}))
    (t,) = committed_results(folder=tmp_path)
    got = dict(zip(t["columns"], t["rows"][0]))
    assert got["fwd+bwd kernel ms triton / torch"] == "0.3 / 0.6" and got["kernel ratio"] == "0.5"
