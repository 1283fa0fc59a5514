"""DP-SGD in the default Keras trainer: the vectorized per-example clipping equals a slow per-example
loop, the noise has the calibrated spread, one outlier moves a step no more than the clip allows,
and `keras_fit` dispatches to it on the round's instructions."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest

from client_agent import dp_sgd
from client_agent.dp_sgd import DpSgdParams
from client_agent.training import FunctionTrainer, RoundModel, keras_fit
from fedstep.core.errors import FedstepError
from fedstep.core.schemas import TrainingConfig

keras = pytest.importorskip("keras")
tf = pytest.importorskip("tensorflow")

RNG = np.random.default_rng(0)
X = RNG.normal(size=(40, 4)).astype("float32")
Y = RNG.integers(0, 3, 40)
LR = 0.5


def _classifier(seed: int = 1, lr: float = LR):
    keras.utils.set_random_seed(seed)
    model = keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(6, activation="tanh"), keras.layers.Dense(3, activation="softmax")]
    )
    model.compile(optimizer=keras.optimizers.SGD(lr), loss="sparse_categorical_crossentropy")
    return model


def _by_hand(model, x, y, clip: float, batch_size: int, epochs: int, seed: int) -> list[np.ndarray]:
    """DP-SGD without noise, one example at a time: GradientTape, clip, sum, divide, SGD step."""
    n = len(x)
    rate = dp_sgd.sampling_rate(batch_size, n)
    for batch in dp_sgd.poisson_batches(n, rate, dp_sgd.steps_per_round(epochs, batch_size, n), seed):
        total = [np.zeros(v.shape, np.float64) for v in model.trainable_variables]
        for i in batch:
            with tf.GradientTape() as tape:
                loss = tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(y[i : i + 1], model(x[i : i + 1])))
            grads = [g.numpy().astype(np.float64) for g in tape.gradient(loss, model.trainable_variables)]
            norm = math.sqrt(sum(float(np.sum(g * g)) for g in grads))
            for t, g in zip(total, grads, strict=True):
                t += g * min(1.0, clip / norm)
        for v, t in zip(model.trainable_variables, total, strict=True):
            v.assign(v.numpy() - LR * t / (rate * n))
    return model.get_weights()


def test_vectorized_per_example_clipping_equals_a_per_example_loop():
    clip, batch_size, epochs, seed = 1.5, 8, 2, 7
    norms = []
    probe = _classifier()
    for i in range(len(X)):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(Y[i : i + 1], probe(X[i : i + 1])))
        norms.append(tf.linalg.global_norm(tape.gradient(loss, probe.trainable_variables)).numpy())
    assert min(norms) < clip < max(norms)  # some examples are clipped, some are not

    model = _classifier()
    start = [w.copy() for w in model.get_weights()]
    result = dp_sgd.fit(model, X, Y, DpSgdParams(0.0, clip), epochs=epochs, batch_size=batch_size, sampling_seed=seed)
    expected = _by_hand(_classifier(), X, Y, clip, batch_size, epochs, seed)
    for got, want in zip(model.get_weights(), expected, strict=True):
        np.testing.assert_allclose(got, want, atol=1e-5)
    assert max(np.abs(a - b).max() for a, b in zip(model.get_weights(), start, strict=True)) > 1e-3
    assert set(result) == {"train_loss"} and 0 < result["train_loss"] < 5


def _linear(inputs: int, outputs: int, lr: float):
    keras.utils.set_random_seed(3)
    model = keras.Sequential([keras.Input((inputs,)), keras.layers.Dense(outputs)])
    model.compile(optimizer=keras.optimizers.SGD(lr), loss="mse")
    return model


def test_the_noise_has_the_calibrated_spread_and_comes_from_the_os():
    z, clip, lr, n, batch_size = 50.0, 1e-3, 0.5, 64, 16  # 4 steps, expected batch 16
    x = RNG.normal(size=(n, 50)).astype("float32")
    y = RNG.normal(size=(n, 20)).astype("float32")
    changes = []
    for _ in range(2):
        model = _linear(50, 20, lr)
        start = model.get_weights()[0].copy()
        dp_sgd.fit(model, x, y, DpSgdParams(z, clip), epochs=1, batch_size=batch_size, sampling_seed=11)
        changes.append(model.get_weights()[0] - start)
    steps = dp_sgd.steps_per_round(1, batch_size, n)
    expected_std = lr * z * clip / batch_size * math.sqrt(steps)  # per coordinate, over the round
    for change in changes:  # 1000 coordinates: the sample std is within a few % of the truth
        assert 0.85 * expected_std < change.std() < 1.15 * expected_std
        assert abs(change.mean()) < 5 * expected_std / math.sqrt(change.size)
    assert np.abs(changes[0] - changes[1]).max() > expected_std  # same sampling seed, different noise


def test_one_outlier_changes_a_step_no_more_than_the_clip_allows():
    clip, lr, n = 1.0, 0.1, 16
    x = RNG.normal(size=(n, 3)).astype("float32")
    y = RNG.normal(size=(n, 1)).astype("float32")
    outlier_x, outlier_y = x.copy(), y.copy()
    outlier_x[0], outlier_y[0] = 100.0, 1e6  # a huge loss and gradient

    def step(xs, ys, c):
        model = _linear(3, 1, lr)
        start = model.get_weights()
        dp_sgd.fit(model, xs, ys, DpSgdParams(0.0, c), epochs=1, batch_size=n, sampling_seed=0)  # q = 1: one step
        return np.concatenate([(a - b).ravel() for a, b in zip(model.get_weights(), start, strict=True)])

    moved = np.linalg.norm(step(x, y, clip) - step(outlier_x, outlier_y, clip))
    assert moved <= lr * 2 * clip / n * (1 + 1e-5)  # replace-one: one contribution out, one in, each <= C
    unclipped = np.linalg.norm(step(x, y, 1e12) - step(outlier_x, outlier_y, 1e12))
    assert unclipped > 1000 * lr * 2 * clip / n

    model = _linear(3, 1, lr)
    total, losses = dp_sgd.clipped_gradient_sum(model, tf.constant(outlier_x[:1]), tf.constant(outlier_y[:1]), clip)
    assert float(losses[0]) > 1e11
    assert math.isclose(math.sqrt(sum(float(tf.reduce_sum(g * g)) for g in total)), clip, rel_tol=1e-5)


def test_poisson_sampling_takes_each_example_with_the_rate():
    batches = list(dp_sgd.poisson_batches(1000, 0.05, 200, seed=1))
    sizes = np.array([len(b) for b in batches])
    assert abs(sizes.mean() - 50) < 2.5 and sizes.min() < sizes.max()  # Binomial(1000, 0.05): varying sizes
    counts = np.bincount(np.concatenate(batches), minlength=1000)
    assert abs(counts.mean() - 10) < 0.5
    assert [b.tolist() for b in dp_sgd.poisson_batches(100, 0.1, 3, 5)] == [
        b.tolist() for b in dp_sgd.poisson_batches(100, 0.1, 3, 5)
    ]
    assert dp_sgd.steps_per_round(3, 32, 100) == 12 and dp_sgd.sampling_rate(32, 100) == 0.32
    assert dp_sgd.sampling_rate(256, 100) == 1.0


DP = {"dp_mode": "dp-sgd", "dp_noise_multiplier": 1.1, "dp_clip": 1.0, "dp_delta": 1e-5}


def _round_model() -> RoundModel:
    model = RoundModel(b"", {"w": np.zeros(2, np.float32)})
    model._keras = _classifier(lr=0.1)
    model._keras.compile(
        optimizer=keras.optimizers.SGD(0.1), loss="sparse_categorical_crossentropy", metrics=["accuracy"]
    )
    return model


def test_keras_fit_trains_with_dp_sgd_when_the_round_asks(monkeypatch):
    calls = []
    original = dp_sgd.fit

    def spy(net, x, y, params, **kwargs):
        calls.append((params, kwargs["epochs"], kwargs["batch_size"]))
        return original(net, x, y, params, **kwargs)

    monkeypatch.setattr(dp_sgd, "fit", spy)
    model = _round_model()
    start = [w.copy() for w in model.keras().get_weights()]
    training = replace(TrainingConfig(epochs=2, batch_size=8, learning_rate=0.1), instructions=DP)
    metrics = keras_fit(model, ((X, Y), (X[:10], Y[:10])), training)
    assert calls == [(DpSgdParams(1.1, 1.0, 1e-5), 2, 8)]
    assert {"train_loss", "test_loss_before", "test_loss", "test_accuracy_before", "test_accuracy"} <= set(metrics)
    assert "train_accuracy" not in metrics  # DP-SGD reports the mean batch loss, nothing else of the train split
    assert max(np.abs(a - b).max() for a, b in zip(model.keras().get_weights(), start, strict=True)) > 0
    assert float(model.keras().optimizer.learning_rate.numpy()) == pytest.approx(0.1)

    calls.clear()
    keras_fit(_round_model(), ((X, Y), (X[:0], Y[:0])), replace(training, instructions={"dp_mode": "client-clip"}))
    assert calls == []  # client-clip is the agent's business, not the trainer's


@pytest.mark.parametrize(
    ("instructions", "message"),
    [
        ({"dp_mode": "dp-sgd", "dp_clip": 1.0}, "needs the instruction dp_noise_multiplier"),
        ({**DP, "dp_clip": 0}, "dp_clip must be a number > 0"),
        ({**DP, "dp_noise_multiplier": -1}, "dp_noise_multiplier must be a number >= 0"),
        ({**DP, "dp_delta": 1.5}, "dp_delta must be a number > 0 and < 1"),
        ({**DP, "dp_mode": "local"}, "dp_mode must be one of dp-sgd, client-clip"),
    ],
)
def test_keras_fit_refuses_unusable_dp_instructions(instructions, message):
    training = replace(TrainingConfig(), instructions=instructions)
    with pytest.raises(FedstepError, match=message):
        keras_fit(_round_model(), ((X, Y), (X, Y)), training)


def test_a_custom_train_function_receives_the_dp_parameters():
    seen = []

    def train(model, data, training):
        seen.append(DpSgdParams.of(training.instructions))
        return {}

    trainer = FunctionTrainer(train, ((X, Y), (X[:0], Y[:0])), "custom")
    trainer.fit(b"", {"w": np.zeros(2, np.float32)}, replace(TrainingConfig(), instructions=DP))
    assert seen == [DpSgdParams(noise_multiplier=1.1, clip=1.0, delta=1e-5)]
    assert trainer.num_examples == len(X)
