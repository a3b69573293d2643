"""thaw.metrics.stats: paired comparisons over seeds, checked against scipy and against enumeration."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy import stats

from thaw.metrics.stats import d_z_interval, floor_note, paired, sign_flip_p, t_interval


def test_paired_t_and_interval_match_scipy():
    a = {0: 0.81, 1: 0.90, 2: 0.86, 3: 0.88}
    b = {0: 0.80, 1: 0.85, 2: 0.87, 3: 0.84, 9: 0.5}  # seed 9 has no pair: left out
    c = paired("a", "b", a, b)
    d = np.array([0.01, 0.05, -0.01, 0.04])
    assert c.seeds == [0, 1, 2, 3] and c.differences == pytest.approx(d.tolist())
    assert c.p_t == pytest.approx(stats.ttest_rel(list(a.values()), [b[k] for k in a]).pvalue)
    ci = stats.ttest_1samp(d, 0).confidence_interval(0.95)
    assert c.ci == pytest.approx((ci.low, ci.high))
    assert c.d_z == pytest.approx(d.mean() / d.std(ddof=1)) and c.test == "paired t" and c.p == c.p_t
    flipped = c.flipped()
    assert (flipped.a, flipped.mean, flipped.p_t) == ("b", -c.mean, c.p_t)
    assert flipped.ci == pytest.approx((-c.ci[1], -c.ci[0]))


def test_sign_flip_is_exact_and_has_a_floor():
    d = np.array([0.3, -0.1, 0.5, 0.2, 0.4])
    flips = [abs(np.mean(d * s)) >= abs(d.mean()) - 1e-12 for s in itertools.product([-1, 1], repeat=5)]
    assert sign_flip_p(d) == pytest.approx(np.mean(flips))
    assert sign_flip_p(np.array([0.1, 0.2, 0.3])) == pytest.approx(0.25)  # all one sign: 2 / 2**3
    assert sign_flip_p(np.zeros(3)) == 1.0
    assert floor_note(3) == "p >= 0.25: 3 seeds cannot show more"
    assert floor_note(5) == "p >= 0.0625: 5 seeds cannot show more"
    assert 0 < sign_flip_p(np.linspace(0.01, 0.2, 20)) < 1e-3  # sampled above 16 seeds


def test_constant_differences_give_no_t_test():
    c = paired("a", "b", {0: 0.82, 1: 0.87, 2: 0.92}, {0: 0.80, 1: 0.85, 2: 0.90})  # 0.02 in floats
    assert c.sd == 0.0 and math.isnan(c.p_t) and math.isnan(c.d_z) and c.test == "sign-flip"
    assert c.p == c.floor == 0.25
    assert all(math.isnan(x) for x in (*c.ci, *c.d_z_ci))
    assert all(math.isnan(x) for x in t_interval(np.array([0.1, 0.1])))


def test_d_z_interval_inverts_the_noncentral_t():
    for t, n in ((3.2, 3), (-2.0, 5), (0.1, 4), (40.0, 3)):
        lo, hi = d_z_interval(t, n)
        assert lo < t / math.sqrt(n) < hi
        assert stats.nct.cdf(t, n - 1, lo * math.sqrt(n)) == pytest.approx(0.975, abs=1e-6)
        assert stats.nct.cdf(t, n - 1, hi * math.sqrt(n)) == pytest.approx(0.025, abs=1e-6)
    assert all(math.isnan(x) for x in d_z_interval(2.0, 1))
