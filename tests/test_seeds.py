"""The seed statistics shared by the experiments, against scipy's Welch t test."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from tokendyn.train.seeds import seed_comparison

values = st.lists(st.floats(-1e3, 1e3, allow_nan=False), min_size=2, max_size=6)


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
