"""benchmarks/_cli.py: the arguments every GPU benchmark shares and the provenance it records
(the command that reproduces the run, the commit given on a machine without git)."""

from __future__ import annotations

import sys

import pytest
from bench_helpers import load_benchmark


@pytest.fixture(scope="module")
def cli():
    return load_benchmark("_cli")


def test_parser_defaults_and_extra_flags(cli):
    ap = cli.bench_parser("results/x_gpu.json", "doc")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args([])
    assert (args.out, args.commit, args.rounds) == ("results/x_gpu.json", None, 3)
    args = ap.parse_args(["--out", "/tmp/y.json", "--commit", "abc1234", "--rounds", "5"])
    assert (args.out, args.commit, args.rounds) == ("/tmp/y.json", "abc1234", 5)


def test_provenance_records_the_command_and_the_given_commit(cli, monkeypatch):
    ap = cli.bench_parser("results/x_gpu.json")
    argv = ["--commit", "abc1234", "--out", "o.json"]
    prov = cli.bench_provenance("/somewhere/benchmarks/x_gpu.py", ap.parse_args(argv), argv)
    assert prov["command"] == "python benchmarks/x_gpu.py --commit abc1234 --out o.json"
    assert prov["commit"] == "abc1234"
    assert {"device", "date", "torch", "python"} <= set(prov)
    # from the shell (argv None): sys.argv's arguments; without --commit, git's own answer stays
    monkeypatch.setattr(sys, "argv", ["benchmarks/x_gpu.py", "--rounds", "2"])
    ap.add_argument("--rounds", type=int)
    prov = cli.bench_provenance("x_gpu.py", ap.parse_args(["--rounds", "2"]))
    assert prov["command"] == "python benchmarks/x_gpu.py --rounds 2"
    assert prov["commit"] != "abc1234"
