"""Issue 21 finding 6, measured in-process: on heart-raw's 4 hospitals, standardizing with each site's
own statistics costs held-out accuracy that the federated statistics give back (bench/federated_statistics.py
prints the figures over 5 seeds; docs/benchmarks.md keeps them)."""

from __future__ import annotations

import numpy as np
import pytest
from bench_modules import load_bench


@pytest.fixture(scope="module")
def bench():
    return load_bench("federated_statistics")


def test_the_hospitals_combined_statistics_are_the_pooled_ones(bench):
    sites = bench.hospitals(seed=0)
    [federated, *_] = bench.standardizations("federated", sites)
    [pooled, *_] = bench.standardizations("pooled", sites)
    np.testing.assert_allclose(federated.mean, pooled.mean, rtol=1e-9)
    np.testing.assert_allclose(federated.scale, pooled.scale, rtol=1e-9)
    local = bench.standardizations("local", sites)
    chol = 2
    assert local[3].mean[chol] == 0.0 and local[3].scale[chol] == 1.0  # Switzerland has no cholesterol at all


def test_the_numpy_trainer_is_the_default_keras_model_of_heart_raw(bench):
    from client_agent.models import heart_logreg

    [site, *_] = bench.hospitals(seed=0)
    [scaler, *_] = bench.standardizations("federated", [site])
    x = scaler.apply(site.x_train)
    model = heart_logreg()
    kernel, bias = (w.astype(np.float64) for w in model.get_weights())

    class InOrder:
        def permutation(self, n: int) -> np.ndarray:
            return np.arange(n)

    expected = bench.local_epochs(kernel, bias, x.astype(np.float64), site.y_train, InOrder())
    model.fit(x, site.y_train, batch_size=bench.BATCH, epochs=bench.EPOCHS, shuffle=False, verbose=0)
    for ours, keras in zip(expected, model.get_weights(), strict=True):
        np.testing.assert_allclose(ours, keras, atol=1e-6)


def test_federated_standardization_beats_each_site_its_own_on_the_held_out_set(bench):
    local = bench.fedavg("local", seed=0, rounds=20)
    federated = bench.fedavg("federated", seed=0, rounds=20)
    assert federated["held-out"] - local["held-out"] > 0.03
    assert federated["Switzerland"] > local["Switzerland"]  # its prevalence is what local scaling hides
    assert bench.fedavg("pooled", seed=0, rounds=20) == federated
