"""benchmarks/generate_gpu.py's parts that need no GPU: its arguments and one row's bookkeeping
(medians, the graph-vs-eager check, agreement with the peer), on a tiny CPU model."""

from __future__ import annotations

import pytest
import torch
from bench_helpers import load_benchmark

from tokendyn.model import MambaConfig, MambaLM, generate


@pytest.fixture(scope="module")
def bench():
    return load_benchmark("generate_gpu")


def test_arguments(bench):
    args = bench.parse_args(["--batches", "1, 16", "--rounds", "3", "--out", "x.json"])
    assert args.batches == [1, 16] and args.rounds == 3 and args.prompt == 128 and args.new_tokens == 256
    for bad in (["--batches", "a"], ["--batches", "0"], ["--rounds", "0"]):
        with pytest.raises(SystemExit):
            bench.parse_args(bad)


def test_one_row_on_cpu(bench):
    torch.manual_seed(0)
    model = MambaLM(MambaConfig(d_model=16, n_layer=2, vocab_size=40, d_state=4)).eval()
    args = bench.parse_args(["--rounds", "2", "--prompt", "5", "--new-tokens", "6"])

    def peer(ids):   # a peer that agrees on every new token but the last
        out = generate(model, ids, 6).clone()
        out[:, -1] = (out[:, -1] + 1) % 40
        return out

    runs = {bench.TD_EAGER: lambda ids: generate(model, ids, 6, cuda_graph=False),
            bench.TD_GRAPH: lambda ids: generate(model, ids, 6),
            bench.PEER_CG: peer,
            bench.PEER_EAGER: lambda ids: 1 / 0}
    row = bench.bench_batch(runs, 3, args, device="cpu", vocab=40)
    assert row["graph_tokens_equal_eager"] is True
    assert row["fraction_equal_to_mamba_ssm"] == pytest.approx(5 / 6)
    assert row["first_difference_per_row"] == [5, 5, 5]
    assert row["ratio_tokens_per_s"] == pytest.approx(row["tokens_per_s"] / row["mamba_ssm_cg_tokens_per_s"])
    assert row["mamba_ssm_eager_tokens_per_s"] is None and "ZeroDivisionError" in row["errors"][bench.PEER_EAGER]
    assert all(len(row["seconds_all"][n]) == 2 for n in (bench.TD_EAGER, bench.TD_GRAPH, bench.PEER_CG))
