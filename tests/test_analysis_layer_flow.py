"""The theory inside real layers (tokendyn.analysis.layer_flow): the radial velocity of a layer's scan
input under its own scan, and the idealised flow on the layer's parameters from its real tokens."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tokendyn.analysis.layer_flow import (
    LayerFlow,
    idealised_flow,
    layer_system,
    layer_theory,
    model_theory,
    radial_velocity,
)
from tokendyn.analysis.layers import model_io_parameters
from tokendyn.dynamics.vector_field import TokenSystem, vector_field_naive
from tokendyn.model import MambaConfig, MambaLM
from tokendyn.ops import selective_scan
from tokendyn.train.monitor import RegimeMonitor


def _model(constraint="none", seed=0, n_layer=2):
    torch.manual_seed(seed)
    return MambaLM(MambaConfig(d_model=16, n_layer=n_layer, vocab_size=64, d_state=4,
                               io_constraint=constraint)).double().eval()


def _internals(model, length=48, seed=1):
    ids = torch.randint(0, 64, (1, length), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return model(ids, output_internals=True).internals


@pytest.mark.parametrize("constraint", ["none", "positive", "negative"])
def test_radial_velocity_is_the_layers_own_scan_without_D_and_gate(constraint):
    model = _model(constraint)
    internals = _internals(model)
    for params, m in zip(model_io_parameters(model), internals):
        u = m.x[0].T                                                    # (L, D)
        # the layer's own scan of its own inputs, as the forward computed them, with D and z left out
        y = selective_scan(m.x, m.delta, params["A"], m.B, m.C, backend="reference")[0].T
        expect = (u * y).sum(-1) / (u * u).sum(-1)
        got = radial_velocity(layer_system(params), u)
        torch.testing.assert_close(got, expect, rtol=1e-9, atol=1e-12)
        # and the explicit sum over the hidden attention (the float64 oracle of the vector field)
        f = vector_field_naive(layer_system(params), u[None])[0]
        torch.testing.assert_close(got, (u * f).sum(-1) / (u * u).sum(-1), rtol=1e-9, atol=1e-12)


@settings(max_examples=40, deadline=None)
@given(mu=st.floats(0.05, 3.0), sign=st.sampled_from([-1.0, 1.0]), s=st.floats(-2.0, 2.0), a=st.floats(0.1, 3.0),
       b=st.floats(-1.0, 1.0), x0=st.lists(st.floats(0.05, 2.0).map(float), min_size=1, max_size=6),
       flips=st.lists(st.booleans(), min_size=6, max_size=6))
def test_radial_velocity_has_the_sign_of_mu_in_one_dimension(mu, sign, s, a, b, x0, flips):
    # THEORY.md section 3: dx_l/dt = μ x_l Σ_j x_j² Δ_j e^{…} and the sum is > 0, so ⟨x_l, ẋ_l⟩ has the sign of μ
    system = TokenSystem.one_dim(sign * mu, s, a, b)
    u = torch.tensor([v if f else -v for v, f in zip(x0, flips)], dtype=torch.float64)[:, None]
    rv = radial_velocity(system, u)
    assert (torch.sign(rv) == sign).all()


def _single_token(mu, delta_b, x0):
    """One token, D = N = 1, S_Δ = 0: dx/dt = μ δ x³ with δ = softplus(b), solved in closed form."""
    return TokenSystem.one_dim(mu, 0.0, 1.0, delta_b), torch.tensor([[x0]], dtype=torch.float64)


def test_flow_decay_follows_the_closed_form():
    system, u = _single_token(-0.8, 0.3, 1.5)
    flow = idealised_flow(system, u, t_end=5.0)
    k = 2 * 0.8 * math.log1p(math.exp(0.3)) * 1.5 ** 2
    exact = 1 / torch.sqrt(1 + k * flow.t)
    torch.testing.assert_close(flow.ratio, exact, rtol=2e-5, atol=0)
    assert flow.verdict == "decays" and not flow.diverges and flow.blowup_time is None
    assert float(flow.token_ratio[0]) == pytest.approx(float(exact[-1]), rel=2e-5)


def test_flow_blowup_time_follows_the_closed_form():
    system, u = _single_token(0.5, -0.2, 0.9)
    T = 1 / (2 * 0.5 * math.log1p(math.exp(-0.2)) * 0.9 ** 2)        # x(t) = x0 / √(1 − t/T)
    flow = idealised_flow(system, u, t_end=5 * T)
    assert flow.verdict == "blows up" and flow.diverges
    # the simulator's e-folding test places the event within blowup_rtol·t/3 before the singularity
    assert T * (1 - 1e-3) <= flow.blowup_time <= T * (1 + 1e-6)
    assert flow.as_dict()["ratio_at_t_end"] is None and flow.token_ratio is None


def test_flow_that_spends_its_budget_is_undetermined():
    system, u = _single_token(0.5, 0.0, 0.9)
    flow = idealised_flow(system, u, t_end=100.0, max_evals=12)
    assert flow.verdict == "undetermined" and "budget" in flow.stop_reason


def test_flow_of_the_first_tokens_is_exact_for_them():
    model = _model("negative")
    params = model_io_parameters(model)[1]
    u = _internals(model)[1].x[0].T
    system = layer_system(params)
    whole = idealised_flow(system, u, tokens=48, t_end=2.0)
    first = idealised_flow(system, u, tokens=16, t_end=2.0)
    assert whole.verdict == first.verdict == "decays"
    # the first 16 tokens' ratios do not depend on the tokens after them (the flow is causal);
    # tokens with a zero start are left out of both, alike
    keep = u.norm(dim=-1) > 0
    torch.testing.assert_close(first.token_ratio, whole.token_ratio[: int(keep[:16].sum())], rtol=1e-5, atol=0)


def _flow_on(device):
    model = _model("positive")
    params = model_io_parameters(model)[0]
    u = _internals(model)[0].x[0].T
    return idealised_flow(layer_system(params), u.to(device), tokens=24, t_end=5.0)


def test_flow_on_the_cpu_by_name_is_the_flow():
    """The flow's device option changes where the scans run, nothing else."""
    a, b = _flow_on("cpu"), idealised_flow(layer_system(model_io_parameters(_model("positive"))[0]),
                                           _internals(_model("positive"))[0].x[0].T, tokens=24, t_end=5.0,
                                           device=None)
    assert a.verdict == b.verdict and a.n_evals == b.n_evals
    torch.testing.assert_close(a.ratio, b.ratio, rtol=0, atol=0)


@pytest.mark.gpu
def test_flow_on_the_gpu_matches_the_cpu():
    """u on a CUDA device: the vector field runs there (float64, the chunked scan), the solver on the
    CPU; the verdict, the evaluations and the norm ratios agree with the CPU's."""
    cpu, gpu = _flow_on("cpu"), _flow_on("cuda")
    assert gpu.verdict == cpu.verdict and abs(gpu.n_evals - cpu.n_evals) <= 2
    n = min(len(cpu.ratio), len(gpu.ratio))
    torch.testing.assert_close(gpu.ratio[:n], cpu.ratio[:n], rtol=1e-6, atol=0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sign_constrained_layers_at_initialisation(seed):
    """The prediction of THEORY.md section 4, inside real layers of random models. These layers are
    narrow (D = 32) and their tokens small, so the flow is slow: it runs to t = 50."""
    for constraint, sign, verdicts in (("positive", 1, ("blows up", "grows")), ("negative", -1, ("decays",))):
        model = _model(constraint, seed=seed, n_layer=3)
        theory = model_theory(model_io_parameters(model), _internals(model, seed=seed), tokens=32,
                              t_end=50.0)
        for th in theory:
            assert float(th.radial_velocity.median()) * sign > 0
            assert th.flow.verdict in verdicts, (constraint, th.index, th.flow.as_dict())


def test_layer_theory_without_flow_and_json():
    model = _model()
    params = model_io_parameters(model)[0]
    th = layer_theory(params, _internals(model)[0].x[0].T, flow=False)
    d = th.as_dict()
    assert th.flow is None and d["flow"] is None
    rv = d["radial_velocity"]
    assert rv["n"] == 48 and rv["q10"] <= rv["q25"] <= rv["median"] <= rv["q75"] <= rv["q90"]
    assert rv["min"] <= rv["q10"] and rv["q90"] <= rv["max"] and 0 <= rv["positive_share"] <= 1


def test_flow_verdict_thresholds():
    t = torch.tensor([0.0, 1.0])

    def flow(last, blowup=None, reached=True):
        return LayerFlow(t, torch.tensor([1.0, last]), torch.ones(1) if reached else None, blowup, 1.0, 1, 10, None)

    assert flow(1.03).verdict == "grows" and flow(0.97).verdict == "decays" and flow(1.01).verdict == "stays"
    assert flow(1.5, blowup=0.5, reached=False).verdict == "blows up"
    assert flow(1.0, reached=False).verdict == "undetermined"


def test_monitor_records_radial_velocity_every_call_and_the_flow_at_the_last_step():
    model = _model("positive").float()
    probe = torch.randint(0, 64, (1, 40), generator=torch.Generator().manual_seed(3))
    records = []
    mon = RegimeMonitor(probe, every=1, final_step=2)
    for step in range(3):
        mon(step, model, records.append)
    assert [("flow" in e["layers"][0]) for e in records] == [False, False, True]
    with torch.no_grad():
        internals = model(probe, output_internals=True).internals
    for row, params, m in zip(records[0]["layers"], model_io_parameters(model), internals):
        rv = radial_velocity(layer_system(params), m.x[0].T)
        assert row["radial_velocity"] == pytest.approx(float(rv.median()), rel=1e-9)
        assert row["radial_velocity_share"] == pytest.approx(float((rv > 0).double().mean()))
    assert all(row["flow"] in ("blows up", "grows") for row in records[-1]["layers"])
