"""Distributed DP's noise and accounting (`fedstep.privacy.distributed`)."""

from __future__ import annotations

import math

import dp_accounting as dpa
import numpy as np
import pytest

from fedstep.privacy import distributed


def test_the_discrete_gaussian_is_centred_integer_and_of_the_asked_variance():
    rng = np.random.default_rng(0)
    for sigma in (0.8, 3.0, 40.0):
        x = distributed.discrete_gaussian(sigma, 200_000, rng)
        assert x.dtype == np.int64
        assert abs(x.mean()) < 0.02 * sigma + 0.01
        assert x.var() == pytest.approx(sigma**2, rel=0.03)
    small = distributed.discrete_gaussian(0.6, 100_000, rng)
    values, counts = np.unique(small, return_counts=True)
    weights = np.exp(-(values.astype(float) ** 2) / (2 * 0.6**2))
    assert counts / counts.sum() == pytest.approx(weights / weights.sum(), abs=0.01)  # N_Z's mass function


def test_any_threshold_of_survivors_carries_the_target_noise():
    sigma = distributed.client_sigma(12.0, threshold=4)
    assert 4 * sigma**2 == pytest.approx(144.0)
    assert 6 * sigma**2 > 144.0  # more survivors, more noise
    with pytest.raises(ValueError):
        distributed.client_sigma(1.0, threshold=0)


def test_with_ample_noise_the_sum_is_as_private_as_a_gaussian_and_with_little_the_correction_shows():
    n, d, l2 = 5, 1000, 20.0
    ample = distributed.sum_rdp(8.0, 30.0, n, l2, distributed.integer_l1(l2, d), d)
    assert distributed.tau(30.0, n) < 1e-300
    assert ample == pytest.approx(8.0 * l2**2 / (2 * n * 30.0**2), rel=1e-12)
    little = distributed.sum_rdp(8.0, 0.5, n, 2.0, distributed.integer_l1(2.0, d), d)
    assert little > 8.0 * 2.0**2 / (2 * n * 0.5**2)
    with pytest.raises(ValueError, match=r"sigma >= 0\.5"):
        distributed.sum_rdp(8.0, 0.4, n, 2.0, 2.0, d)


def test_the_operator_s_epsilon_matches_the_gaussian_s_when_the_correction_vanishes():
    sigma, survivors, l2, rounds, delta = 25.0, 4, 30.0, 50, 1e-5
    found = distributed.operator_epsilon(sigma, survivors, l2, 10_000, rounds, delta)
    accountant = dpa.rdp.RdpAccountant([a for a in dpa.rdp.rdp_privacy_accountant.DEFAULT_RDP_ORDERS if a > 1])
    accountant.compose(dpa.GaussianDpEvent(math.sqrt(survivors) * sigma / l2), rounds)
    assert found == pytest.approx(accountant.get_epsilon(delta), rel=1e-9)
    assert distributed.operator_epsilon(sigma, survivors, l2, 10_000, 2 * rounds, delta) > found
    assert distributed.operator_epsilon(2 * sigma, survivors, l2, 10_000, rounds, delta) < found
    assert distributed.operator_epsilon(sigma, survivors, l2, 10_000, 0, delta) == 0.0
