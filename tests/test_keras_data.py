"""Kept input pipelines (`client_agent.keras_data`): the numbers of `fit` and `evaluate` on numpy arrays,
bit for bit, without building a new `tf.data` pipeline every call."""

from __future__ import annotations

import numpy as np
import pytest

from client_agent import keras_data
from client_agent.data import load_local_data


@pytest.fixture(scope="module")
def data():
    return load_local_data("digits", "1/3")


def _model(keras):
    from client_agent.models import digits_mlp

    keras.utils.set_random_seed(0)
    return digits_mlp()


def _train(net, keras, weights, fit, rounds=2, seed=0):
    """`rounds` rounds as the agent trains them: the seed set, the round's weights, `fit`; each round's
    weights and loss history."""
    out = []
    for _ in range(rounds):
        keras.utils.set_random_seed(seed)
        net.set_weights(weights)
        keras.utils.set_random_seed(seed)
        history = fit(net)
        weights = [w * 0.9 for w in net.get_weights()]  # a new global model every round
        out.append((net.get_weights(), history.history["loss"]))
    return out


@pytest.mark.parametrize("seed", [0, 7])
def test_fit_over_a_kept_pipeline_trains_bit_for_bit_as_fit_on_the_arrays(data, seed):
    from client_agent.keras_model import import_keras

    keras = import_keras()
    (x, y), _ = data
    net = _model(keras)
    start_weights = net.get_weights()

    def on_arrays(n):
        return n.fit(x, y, epochs=2, batch_size=32, shuffle=True, verbose=0)

    def kept(n):
        return n.fit(keras_data.fit_data(x, y, 32).dataset(), epochs=2, shuffle=False, verbose=0)

    expected = _train(net, keras, start_weights, on_arrays, seed=seed)
    found = _train(net, keras, start_weights, kept, seed=seed)
    for (w_arrays, loss_arrays), (w_kept, loss_kept) in zip(expected, found, strict=True):
        for a, b in zip(w_arrays, w_kept, strict=True):
            np.testing.assert_array_equal(a, b)
        assert loss_arrays == loss_kept


def test_evaluate_over_a_kept_pipeline_gives_the_numbers_of_evaluate_on_the_arrays(data):
    from client_agent.keras_model import import_keras

    keras = import_keras()
    (x, y), (x_test, y_test) = data
    x_odd, y_odd = np.concatenate([x_test, x[:5]]), np.concatenate([y_test, y[:5]])  # a last batch of 5
    assert len(y_odd) % 32 != 0
    net = _model(keras)
    for batch_size in (32, 7):
        expected = net.evaluate(x_odd, y_odd, batch_size=batch_size, verbose=0, return_dict=True)
        kept = keras_data.evaluate_data(x_odd, y_odd, batch_size)
        found = net.evaluate(kept.dataset(), verbose=0, return_dict=True)
        assert found == expected


def test_batches_are_made_once_per_arrays_and_batch_size_and_few_are_kept(data):
    (x, y), _ = data
    first = keras_data.evaluate_data(x, y)
    assert keras_data.evaluate_data(x, y) is first
    assert first.batches() is first.batches() and first.dataset() is first.dataset()
    assert keras_data.evaluate_data(x, y, 16) is not first
    assert keras_data.fit_data(x, y, 32) is not first  # shuffled: another order
    assert keras_data.evaluate_data(x.copy(), y) is not first  # other arrays, even with equal values
    for i in range(keras_data.KEPT + 2):
        keras_data.evaluate_data(x[i:], y[i:])
    assert len(keras_data._kept) == keras_data.KEPT
    assert not keras_data.arrays_kept({"features": x}, y)  # other inputs go to Keras as they are


def test_the_shuffled_order_depends_on_the_number_of_examples_and_the_seed_only(data):
    from client_agent.keras_model import import_keras

    keras = import_keras()
    (x, y), _ = data
    keras.utils.set_random_seed(3)
    order = keras_data.fit_data(x, y, 32).order
    assert sorted(order) == list(range(len(y))) and list(order) != list(range(len(y)))
    assert list(keras_data.fit_data(x * 2, y, 32).order) == list(order)  # other values, the same count
    keras.utils.set_random_seed(4)
    assert list(keras_data.fit_data(x, y, 32).order) != list(order)


@pytest.mark.parametrize("seed", [0, 7])
def test_the_shuffled_order_is_keras_s_pipeline_s_for_every_number_of_examples(seed):
    from client_agent.keras_model import import_keras

    keras = import_keras()
    keras.utils.set_random_seed(seed)
    from tensorflow.python.eager import context

    global_seed = context.global_seed()
    for examples in (1, 2, 31, 32, 33, 500):
        assert np.array_equal(keras_data._order(examples, 32, global_seed), keras_data._pipeline_order(examples, 32))
    assert keras_data._shuffle_seeds(32, global_seed) is not None  # the orders came from the op, not pipelines


def test_without_a_single_shuffle_op_to_read_the_orders_come_from_keras_s_pipeline(monkeypatch):
    from client_agent.keras_model import import_keras

    import_keras().utils.set_random_seed(5)
    monkeypatch.setattr(keras_data, "_seeds", {})
    monkeypatch.setattr(keras_data, "_orders", keras_data.OrderedDict())
    monkeypatch.setattr(keras_data, "_shuffled", lambda examples, seeds: np.arange(examples))  # a wrong op
    from tensorflow.python.eager import context

    order = keras_data._order(40, 32, context.global_seed())
    assert keras_data._shuffle_seeds(32, context.global_seed()) is None  # the check refused the op
    assert np.array_equal(order, keras_data._pipeline_order(40, 32)) and list(order) != list(range(40))


def test_the_compiled_step_over_kept_batches_trains_and_evaluates_bit_for_bit_as_fit_and_evaluate(data):
    from client_agent.keras_model import import_keras

    keras = import_keras()
    (x, y), (x_test, y_test) = data
    net = _model(keras)
    start_weights = net.get_weights()
    net.fit(x, y, epochs=1, batch_size=32, verbose=0)  # a model that went through fit and evaluate once,
    net.evaluate(x_test, y_test, verbose=0)  # as the agent's warm model after its first round

    def with_fit(n):
        history = n.fit(x, y, epochs=2, batch_size=32, shuffle=True, verbose=0)
        evaluated = n.evaluate(x_test, y_test, verbose=0, return_dict=True)
        return {**evaluated, **{f"train_{k}": v[-1] for k, v in history.history.items()}}

    def with_steps(n):
        trained = keras_data.fit_epochs(n, keras_data.fit_data(x, y, 32), 2)
        evaluated = keras_data.evaluate_batches(n, keras_data.evaluate_data(x_test, y_test))
        return {**evaluated, **{f"train_{k}": v for k, v in trained.items()}}

    for seed in (0, 7):
        expected, found = [], []
        for fit, out in ((with_fit, expected), (with_steps, found)):
            weights = start_weights
            for _ in range(2):
                keras.utils.set_random_seed(seed)
                net.optimizer.iterations.assign(0)
                net.set_weights(weights)
                keras.utils.set_random_seed(seed)
                logs = fit(net)
                weights = [w * 0.9 for w in net.get_weights()]
                out.append((net.get_weights(), logs))
        for (w_fit, logs_fit), (w_steps, logs_steps) in zip(expected, found, strict=True):
            for a, b in zip(w_fit, w_steps, strict=True):
                np.testing.assert_array_equal(a, b)
            assert logs_steps == logs_fit


def test_the_held_out_evaluator_gives_evaluate_s_numbers_round_after_round(data, monkeypatch):
    from client_agent.keras_model import get_tensors, import_keras, model_to_bytes
    from fedstep.local.demo import HeldoutEvaluator

    keras = import_keras()
    (x, y), (x_test, y_test) = data
    net = _model(keras)
    evaluator = HeldoutEvaluator((x_test, y_test), model_to_bytes(net))
    direct = []
    evaluate_batches = keras_data.evaluate_batches
    monkeypatch.setattr(keras_data, "evaluate_batches", lambda *a: direct.append(1) or evaluate_batches(*a))
    for _ in range(3):  # the first call builds the test step; the later ones run it directly
        net.fit(x, y, batch_size=32, epochs=1, shuffle=False, verbose=0)
        expected = net.evaluate(x_test, y_test, verbose=0, return_dict=True)
        found = evaluator.evaluate(get_tensors(net))
        assert found == {"test_accuracy": round(expected["accuracy"], 4), "test_loss": round(expected["loss"], 4)}
    assert len(direct) == 2  # rounds 2 and 3 ran the compiled step on the kept batches
