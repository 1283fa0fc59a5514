"""FedProx on the client: the round's instructions carry mu; the default Keras trainer adds the
proximal term to the loss it differentiates; a custom train function receives mu in its config."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from client_agent.proximal import add_proximal_term, proximal_mu
from client_agent.training import FunctionTrainer, keras_fit
from fedstep.core.errors import FedstepError
from fedstep.core.schemas import TrainingConfig

keras = pytest.importorskip("keras")
tf = pytest.importorskip("tensorflow")

RNG = np.random.default_rng(0)
X = RNG.normal(size=(32, 4)).astype("float32")
Y = RNG.integers(0, 3, 32)
LR, MU, STEPS = 0.5, 2.0, 3


def _model():
    keras.utils.set_random_seed(1)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, activation="softmax")])
    model.compile(optimizer=keras.optimizers.SGD(LR), loss="sparse_categorical_crossentropy")
    return model


def _by_hand(mu: float) -> list[np.ndarray]:
    """Full-batch gradient descent on loss + mu/2 ||w - w0||^2, written out with a GradientTape."""
    model = _model()
    anchors = [tf.constant(v.numpy()) for v in model.trainable_variables]
    for _ in range(STEPS):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(Y, model(X)))
            pairs = zip(model.trainable_variables, anchors, strict=True)
            loss += 0.5 * mu * sum(tf.reduce_sum(tf.square(v - a)) for v, a in pairs)
        for v, g in zip(model.trainable_variables, tape.gradient(loss, model.trainable_variables), strict=True):
            v.assign(v - LR * g)
    return model.get_weights()


def test_the_proximal_term_is_in_the_gradient_keras_fit_follows():
    model = _model()
    add_proximal_term(model, MU)
    model.fit(X, Y, epochs=STEPS, batch_size=len(X), shuffle=False, verbose=0)
    for got, expected in zip(model.get_weights(), _by_hand(MU), strict=True):
        np.testing.assert_allclose(got, expected, atol=1e-6)
    plain = _model()
    plain.fit(X, Y, epochs=STEPS, batch_size=len(X), shuffle=False, verbose=0)
    assert max(np.abs(a - b).max() for a, b in zip(plain.get_weights(), _by_hand(MU), strict=True)) > 1e-3


def test_a_larger_mu_keeps_the_local_model_closer_to_the_global_one():
    def drift(mu: float) -> float:
        model = _model()
        start = [w.copy() for w in model.get_weights()]
        if mu:
            add_proximal_term(model, mu)
        model.fit(X, Y, epochs=20, batch_size=8, shuffle=False, verbose=0)
        return float(sum(np.sum((a - b) ** 2) for a, b in zip(model.get_weights(), start, strict=True)))

    assert drift(1.0) < drift(0.0)


def test_a_custom_train_function_receives_mu_in_its_config():
    seen = []

    def train(model, data, training):
        seen.append(training.instructions)
        return {}

    trainer = FunctionTrainer(train, ((X, Y), (X[:0], Y[:0])), "custom")
    trainer.fit(b"", {"w": np.zeros(2, np.float32)}, replace(TrainingConfig(), instructions={"proximal_mu": 0.01}))
    assert seen == [{"proximal_mu": 0.01}]


def test_a_bad_mu_is_refused_with_its_name():
    with pytest.raises(ValueError, match="proximal_mu must be a number >= 0"):
        proximal_mu({"proximal_mu": -1})
    assert proximal_mu({}) == 0.0


def test_keras_fit_refuses_unusable_instructions():
    from client_agent.training import RoundModel

    model = RoundModel(b"", {"w": np.zeros(2, np.float32)})
    model._keras = _model()
    with pytest.raises(FedstepError, match="instructions are unusable"):
        keras_fit(model, ((X, Y), (X, Y)), replace(TrainingConfig(), instructions={"proximal_mu": "x"}))
