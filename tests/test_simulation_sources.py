"""The simulation's parameter source and initial tokens (tokendyn.dynamics.sources), which
``tokendyn simulate`` builds from its options."""

from __future__ import annotations

import json

import pytest
import torch
from error_helpers import one_sentence

from tokendyn.dynamics import TokenSystem
from tokendyn.dynamics.sources import SimulationSource, load_params, parse_tokens
from tokendyn.errors import ConfigError, DataError


@pytest.mark.parametrize("kwargs, fragment", [
    ({}, "exactly one parameter source"),
    ({"mu": 1.0, "random": True, "dim": 2, "state": 2}, "exactly one parameter source"),
    ({"mu": 1.0, "a": 1.0}, "needs all of --mu, --s-delta and --a"),
    ({"random": True, "dim": 2}, "--random needs --dim D and --state N"),
    ({"mu": 1.0, "s_delta": 1.0, "a": 1.0, "dim": 3}, "--dim and --state go with --random only"),
    ({"mu": 1.0, "s_delta": 1.0, "a": 1.0, "x0": "1", "tokens": 3}, "give --x0 or --tokens, not both"),
])
def test_a_source_is_exactly_one_and_complete(kwargs, fragment):
    with pytest.raises(ConfigError) as info:
        SimulationSource(**kwargs)
    assert fragment in str(info.value)
    one_sentence(info.value)


def test_the_one_dim_system_and_its_listed_tokens():
    source = SimulationSource(mu=0.5, s_delta=1.0, a=2.0, b_delta=0.1, x0="1, -0.5,0.25")
    system = source.system()
    ref = TokenSystem.one_dim(0.5, 1.0, 2.0, 0.1)
    assert system.dim == 1 and torch.equal(system.S_B, ref.S_B) and torch.equal(system.S_C, ref.S_C)
    x0 = source.initial_tokens(system)
    assert x0.dtype == torch.float64 and x0.shape == (3, 1)
    assert x0[:, 0].tolist() == [1.0, -0.5, 0.25]
    with pytest.raises(DataError, match="decay --a must be positive"):
        SimulationSource(mu=0.5, s_delta=1.0, a=0.0).system()


def test_random_tokens_are_seeded_and_checked_before_they_are_drawn():
    source = SimulationSource(random=True, dim=3, state=2, seed=4, tokens=5)
    system = source.system()
    assert (system.dim, system.state) == (3, 2)
    seen = []
    a = source.initial_tokens(system, check=lambda n, d, s: seen.append((n, d, s)))
    assert seen == [(5, 3, 2)] and a.shape == (5, 3)
    assert torch.equal(a, source.initial_tokens(system))            # the same seed, the same tokens
    assert not torch.equal(a, SimulationSource(random=True, dim=3, state=2, seed=5, tokens=5)
                           .initial_tokens(system))

    def refuse(n, d, s):
        raise ConfigError("too large.")

    with pytest.raises(ConfigError):
        source.initial_tokens(system, check=refuse)
    with pytest.raises(DataError, match="has D=3"):
        SimulationSource(random=True, dim=3, state=2, x0="1,2").initial_tokens(system)
    assert SimulationSource(random=True, dim=3, state=2).initial_tokens(system).shape == (8, 3)


def test_a_parameter_file_is_read_as_json_text(tmp_path):
    system = TokenSystem.random(2, 3, 0)
    good = tmp_path / "p.json"
    good.write_text(json.dumps({"S_B": system.S_B.tolist(), "S_C": system.S_C.tolist(),
                                "S_Delta": system.S_Delta.tolist(), "b_Delta": system.b_Delta.tolist(),
                                "a": 1.0}))
    built = SimulationSource(params=good).system()
    assert (built.dim, built.state) == (2, 3)
    assert load_params(good)["a"] == 1.0
    binary = tmp_path / "b.json"
    binary.write_bytes(b"\xff\xfe\x00\x81")
    for path, fragment in ((binary, r"not a text \(JSON\) file"), (tmp_path / "none.json", "cannot read"),
                           (tmp_path, "cannot read")):
        with pytest.raises(DataError, match=fragment):
            load_params(path)
    (tmp_path / "bad.json").write_text("{1:")
    with pytest.raises(DataError, match="not valid JSON"):
        load_params(tmp_path / "bad.json")


@pytest.mark.parametrize("text, fragment", [
    ("", "at least one number"), ("1,,2", "empty entry at position 2"), ("1,x", "comma-separated numbers"),
    ("1,nan,0.3", "entry 2 of '1,nan,0.3' is nan"),
])
def test_listed_tokens_are_finite_numbers_none_missing(text, fragment):
    with pytest.raises(DataError) as info:
        parse_tokens(text)
    assert fragment in str(info.value)
    assert parse_tokens(" 1, 2 ,3") == [1.0, 2.0, 3.0]
