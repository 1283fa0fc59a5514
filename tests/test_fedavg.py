import numpy as np
import pytest

from fedstep.core import strategies, tensors
from fedstep.core.strategies import ClientUpdate, FedAvg, GlobalModel, ServerState, UpdateList

SHAPES = {"000/a/kernel": (7, 5), "001/a/bias": (5,), "002/b/kernel": (5, 3, 2)}


def _global(weights: dict) -> GlobalModel:
    return GlobalModel(tensors.TensorSpec.of(weights), lambda: {k: v.copy() for k, v in weights.items()})


def _aggregate(global_weights: dict, updates) -> dict:
    return FedAvg().aggregate(1, _global(global_weights), ServerState(), updates).weights


def _random_updates(rng, n_clients=5):
    updates = [
        ClientUpdate(
            f"c{i}",
            int(rng.integers(1, 1000)),
            {k: rng.normal(size=s).astype(np.float32) for k, s in SHAPES.items()},
        )
        for i in range(n_clients)
    ]
    global_weights = {k: rng.normal(size=s).astype(np.float32) for k, s in SHAPES.items()}
    return global_weights, updates


def test_fedavg_adds_the_weighted_mean_of_the_deltas_to_the_global_weights():
    rng = np.random.default_rng(7)
    global_weights, updates = _random_updates(rng)
    result = _aggregate(global_weights, UpdateList(updates))
    n = np.array([u.num_examples for u in updates], dtype=np.float64)
    for name in global_weights:
        stacked = np.stack([u.delta[name].astype(np.float64) for u in updates])
        reference = global_weights[name] + np.tensordot(n / n.sum(), stacked, axes=1)
        assert result[name].dtype == np.float32
        np.testing.assert_allclose(result[name], reference, rtol=0, atol=1e-6)


def test_fedavg_reads_each_update_once_from_a_stream():
    rng = np.random.default_rng(1)
    global_weights, updates = _random_updates(rng)
    consumed = []

    class Stream(UpdateList):
        def __iter__(self):
            for u in self.updates:
                consumed.append(u.client_id)
                yield u

    _aggregate(global_weights, Stream(updates))
    assert consumed == [u.client_id for u in updates]


def test_fedavg_sum_stays_finite_for_huge_example_counts():
    """Finite float32 inputs whose products with the raw counts overflow: 1e30 x 1e12 examples is
    inf in float32; the sum's weights are scaled down by a power of two, so it stays finite."""
    zeros = {"w": np.zeros(3, np.float32)}
    updates = [ClientUpdate(c, 10**12, {"w": np.full(3, 1e30, np.float32)}) for c in ("a", "b")]
    result = _aggregate(zeros, UpdateList(updates))
    assert np.isfinite(result["w"]).all()
    np.testing.assert_allclose(result["w"], 1e30, rtol=1e-6)


def test_no_weight_in_the_float32_sum_exceeds_1_so_one_huge_update_at_the_largest_count_stays_finite():
    """An item claims at most 2^40 examples; the weights are examples x 2^-40. With an operator cap of
    2^40, one update of 3e38 (the old scale, 2^-20, made its weight 2^20: inf) stays finite."""
    from fedstep.core import limits
    from fedstep.core.strategies.aggregation import mean_weight

    assert mean_weight(limits.MAX_EXAMPLES) == 1.0
    zeros = {"w": np.zeros(3, np.float32)}
    updates = [ClientUpdate("evil", 2**40, {"w": np.full(3, 3e38, np.float32)}), ClientUpdate("a", 1, zeros)]
    np.testing.assert_allclose(_aggregate(zeros, UpdateList(updates))["w"], 3e38, rtol=1e-6)


def test_the_weight_scale_is_a_power_of_two_so_the_mean_is_the_same_bits_as_with_any_other():
    """Scaling every weight and the total by one power of two changes no bit of the mean: an honest
    run's models are those of the earlier 2^-20 scale, to the bit."""
    from fedstep.core.strategies import aggregation

    global_weights, updates = _random_updates(np.random.default_rng(3))
    now = _aggregate(global_weights, UpdateList(updates))
    earlier = aggregation.WEIGHT_SCALE
    try:
        aggregation.WEIGHT_SCALE = np.float32(2.0**-20)
        before = _aggregate(global_weights, UpdateList(updates))
    finally:
        aggregation.WEIGHT_SCALE = earlier
    assert all(np.array_equal(now[k], before[k]) for k in SHAPES)


def test_fedavg_of_nothing_is_an_error():
    with pytest.raises(ValueError, match="no updates"):
        _aggregate({"w": np.zeros(2, np.float32)}, UpdateList([], spec=tensors.TensorSpec({"w": (2,)})))


def test_strategies_are_found_by_name():
    assert isinstance(strategies.build("fedavg"), FedAvg)
    with pytest.raises(ValueError, match=r"known: .*fedavg"):
        strategies.build("fedprox-typo")


def test_fedavg_by_slices_equals_fedavg_in_one_pass():
    rng = np.random.default_rng(3)
    global_weights, updates = _random_updates(rng)
    one_pass = _aggregate(global_weights, UpdateList(updates))
    sliced = _aggregate(global_weights, UpdateList(updates, sliced=True, slice_elements=4))
    for name in global_weights:
        np.testing.assert_allclose(sliced[name], one_pass[name], rtol=1e-6, atol=1e-7)
