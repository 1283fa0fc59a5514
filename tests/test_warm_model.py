"""The agent keeps the round's Keras model warm across rounds (`client_agent.warm_model`): loaded,
compiled and traced once, with a fresh optimizer and the loaded state every round, so a round trains
exactly as on a freshly loaded model."""

from __future__ import annotations

import numpy as np
import pytest

from client_agent.data import load_local_data
from client_agent.training import FunctionTrainer, keras_fit
from fedstep.core.schemas import TrainingConfig

ROUND_RATES = (0.05, None, 0.01)  # the run's rate, the model's own (Adam 1e-3), another rate


def _architecture(dropout: float = 0.25) -> tuple[bytes, dict[str, np.ndarray]]:
    from client_agent.keras_model import get_tensors, import_keras, model_to_bytes

    keras = import_keras()
    keras.utils.set_random_seed(0)
    net = keras.Sequential(
        [
            keras.Input((64,)),
            keras.layers.Dense(32, activation="relu"),
            keras.layers.Dropout(dropout),  # a seed state that is not a weight
            keras.layers.Dense(10, activation="softmax"),
        ]
    )
    net.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model_to_bytes(net), get_tensors(net)


def _rounds(trainer_for_round, architecture, weights) -> list[tuple[dict[str, np.ndarray], dict[str, float]]]:
    results = []
    for r, rate in enumerate(ROUND_RATES):
        training = TrainingConfig(epochs=1, batch_size=32, learning_rate=rate)
        result = trainer_for_round(r).fit(architecture, weights, training)
        weights = result.weights
        results.append((weights, result.metrics))
    return results


@pytest.fixture(scope="module")
def data():
    return load_local_data("digits", "1/3")


def test_a_warm_model_trains_every_round_exactly_as_a_freshly_loaded_one(data):
    architecture, initial = _architecture()
    warm = FunctionTrainer(keras_fit, data)
    warm_results = _rounds(lambda r: warm, architecture, initial)
    fresh_results = _rounds(lambda r: FunctionTrainer(keras_fit, data), architecture, initial)
    for (w_warm, m_warm), (w_fresh, m_fresh) in zip(warm_results, fresh_results, strict=True):
        assert sorted(w_warm) == sorted(w_fresh)
        for name in w_warm:
            np.testing.assert_array_equal(w_warm[name], w_fresh[name], err_msg=name)
        assert m_warm == m_fresh
    assert warm.warm.loads == 1  # one load (and one trace) for all three rounds


def test_the_optimizer_is_fresh_and_the_models_own_rate_stands_in_a_warm_round(data):
    architecture, initial = _architecture()
    trainer = FunctionTrainer(keras_fit, data)
    trainer.fit(architecture, initial, TrainingConfig(epochs=1, batch_size=32, learning_rate=0.05))
    net = trainer.warm.model(architecture)  # what the next round starts from
    optimizer = net.optimizer
    assert int(optimizer.iterations.numpy()) == 0
    assert float(optimizer.learning_rate.numpy()) == pytest.approx(1e-3)
    assert all(not np.any(v.numpy()) for v in optimizer.variables if "momentum" in v.path or "velocity" in v.path)


def test_a_new_architecture_replaces_the_kept_model(data):
    trainer = FunctionTrainer(keras_fit, data)
    training = TrainingConfig(epochs=1, batch_size=32)
    for dropout in (0.25, 0.5):
        architecture, initial = _architecture(dropout)
        trainer.fit(architecture, initial, training)
        trainer.fit(architecture, initial, training)
    assert trainer.warm.loads == 2


def test_a_fedprox_round_trains_a_fresh_model_and_leaves_the_kept_one_as_it_was(data):
    architecture, initial = _architecture()
    trainer = FunctionTrainer(keras_fit, data)
    plain = TrainingConfig(epochs=1, batch_size=32)
    first = trainer.fit(architecture, initial, plain)
    trainer.fit(architecture, initial, TrainingConfig(epochs=1, batch_size=32, instructions={"proximal_mu": 0.1}))
    again = trainer.fit(architecture, initial, plain)
    assert trainer.warm.loads == 1
    for name in first.weights:
        np.testing.assert_array_equal(first.weights[name], again.weights[name], err_msg=name)
    assert all(v.regularizer is None for v in trainer.warm.model(architecture).trainable_variables)
