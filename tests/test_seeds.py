"""The seed statistics shared by the experiments, against scipy's Welch t test."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from tokendyn.train.seeds import seed_comparison, seeds_to_resolve

values = st.lists(st.floats(-1e3, 1e3, allow_nan=False), min_size=2, max_size=6)


# scipy warns on nearly identical samples (its moments lose digits); the comparison skips spreads that small
@pytest.mark.filterwarnings("ignore:Precision loss occurred:RuntimeWarning")
@given(a=values, b=values)
@settings(max_examples=60, deadline=None)
def test_t_is_welchs(a, b):
    diff, spread, t = seed_comparison(a, b)
    assert diff == pytest.approx(sum(a) / len(a) - sum(b) / len(b), abs=1e-9)
    if spread is not None and spread > 1e-6:
        assert t == pytest.approx(stats.ttest_ind(a, b, equal_var=False).statistic, rel=1e-6, abs=1e-9)


def test_one_seed_has_no_spread():
    assert seed_comparison([1.0], [2.0, 3.0]) == (-1.5, None, None)
    assert seed_comparison([1.0, 1.0], [1.0, 1.0])[2] is None


@given(a=values, b=values, min_t=st.sampled_from([1.0, 2.0, 3.0]))
@settings(max_examples=60, deadline=None)
def test_seeds_to_resolve_is_the_least_n_that_reaches_min_t(a, b, min_t):
    """With n seeds per side at the measured means and variances, |t| reaches min_t at the
    returned n and not at n − 1 (n at least 2)."""
    import math
    import statistics

    n = seeds_to_resolve(a, b, min_t)
    diff = statistics.fmean(a) - statistics.fmean(b)
    sd = math.hypot(statistics.stdev(a), statistics.stdev(b))   # √(s_a² + s_b²)
    if diff == 0 or n is None:             # no difference, or one too small to square
        assert diff == 0 or abs(diff) < 1e-150
        return
    assert n >= 2
    assert abs(diff) * n ** 0.5 / sd >= min_t * (1 - 1e-9) if sd > 0 else n == 2
    if n > 2:
        assert abs(diff) * (n - 1) ** 0.5 / sd < min_t * (1 + 1e-9)


def test_seeds_to_resolve_with_subnormal_variances():
    """Deviations near 1e-158 have variances in the subnormal range; the count comes from the
    deviations, so it is still exact: here |t| = √(n/2), which reaches 1 at n = 2."""
    assert seeds_to_resolve([0.0, 0.0], [0.0, 1.5144572904421203e-158], 1.0) == 2


def test_seeds_to_resolve_needs_two_seeds_a_side():
    assert seeds_to_resolve([1.0], [2.0, 3.0], 2.0) is None
    # means 0 and 1, variances 1 and 1: n = ⌈4 · 2 / 1⌉ = 8
    assert seeds_to_resolve([-1.0, 0.0, 1.0], [0.0, 1.0, 2.0], 2.0) == 8
