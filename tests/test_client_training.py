"""Bring-your-own training: a train function gets the global model as numpy arrays and returns metrics."""

from __future__ import annotations

import numpy as np
import pytest

from client_agent.agent import RoundReport
from client_agent.config import load
from client_agent.data import load_local_data
from client_agent.training import CannotEvaluate, FunctionTrainer, RoundModel, load_trainer
from fedstep.core.errors import FedstepError
from fedstep.core.schemas import TrainingConfig

GLOBAL = {"000/softmax/kernel": np.zeros((64, 10), np.float32), "001/softmax/bias": np.zeros(10, np.float32)}


def test_a_round_model_hands_out_copies_in_tensor_order_and_checks_shapes():
    model = RoundModel(b"", GLOBAL)
    kernel, bias = model.get_weights()
    kernel += 1  # a copy: the model is unchanged
    assert model.get_weights()[0].sum() == 0 and bias.shape == (10,)
    model.set_weights([np.ones((64, 10)), np.ones(10)])
    assert model.tensors()["001/softmax/bias"].dtype == np.float32
    with pytest.raises(FedstepError, match=r"set_weights: got shapes \[\(10, 64\), \(10,\)\]"):
        model.set_weights([np.ones((10, 64)), np.ones(10)])


def test_a_function_trainer_returns_the_weights_the_function_left_and_counts_training_examples():
    def shift(model, data, training):
        model.set_weights([w + training.learning_rate for w in model.get_weights()])
        return {"train_loss": np.float32(0.5), "diverged": float("nan")}

    data = ((np.zeros((7, 64)), np.zeros(7)), (np.zeros((2, 64)), np.zeros(2)))
    result = FunctionTrainer(shift, data, "tests:shift").fit(b"", GLOBAL, TrainingConfig(learning_rate=0.25))
    assert result.num_examples == 7
    assert result.metrics == {"train_loss": 0.5}  # NaN is dropped, numpy scalars become floats
    np.testing.assert_allclose(result.weights["001/softmax/bias"], 0.25)


def test_a_trainer_that_returns_no_metrics_dict_is_named():
    data = ((np.zeros((1, 64)), np.zeros(1)), (np.zeros((0, 64)), np.zeros(0)))
    with pytest.raises(FedstepError, match="trainer t:f must return a dict of metrics, got list"):
        FunctionTrainer(lambda m, d, t: [1.0], data, "t:f").fit(b"", GLOBAL, TrainingConfig())


def test_the_scikit_learn_example_trains_the_runs_softmax_weights():
    data = load_local_data("digits", "1/3")
    trainer = load_trainer("examples.sklearn_trainer:train", data)
    first = trainer.fit(b"never read by this trainer", GLOBAL, TrainingConfig(epochs=1))
    second = trainer.fit(b"", first.weights, TrainingConfig(epochs=1))
    assert set(first.weights) == set(GLOBAL) and first.weights["000/softmax/kernel"].shape == (64, 10)
    assert first.metrics["test_accuracy_before"] < 0.2 < 0.85 < first.metrics["test_accuracy"]
    assert second.metrics["test_loss_before"] == pytest.approx(first.metrics["test_loss"], rel=1e-5)


def test_the_keras_default_and_the_scikit_learn_example_compute_the_same_loss():
    from client_agent.keras_model import model_to_bytes
    from examples.sklearn_trainer import softmax_regression

    data = load_local_data("digits", "2/3")
    sk = load_trainer("examples.sklearn_trainer:train", data).fit(b"", GLOBAL, TrainingConfig())
    architecture = model_to_bytes(softmax_regression())
    keras = load_trainer(None, data).fit(architecture, sk.weights, TrainingConfig(learning_rate=1e-9))
    assert keras.metrics["test_loss_before"] == pytest.approx(sk.metrics["test_loss"], abs=1e-4)
    assert keras.metrics["test_accuracy_before"] == pytest.approx(sk.metrics["test_accuracy"])


def test_a_client_of_one_example_trains_on_it_and_reports_train_metrics_only():
    """digits over 1,000 clients: client 1000 holds one example, so no local test split, no test metrics."""
    from client_agent.keras_model import model_to_bytes
    from examples.sklearn_trainer import softmax_regression

    data = load_local_data("digits", "1000/1000")
    trainer = load_trainer(None, data)
    architecture = model_to_bytes(softmax_regression())
    result = trainer.fit(architecture, GLOBAL, TrainingConfig())
    assert trainer.num_examples == result.num_examples == 1
    assert sorted(result.metrics) == ["train_accuracy", "train_loss"] and np.isfinite(result.metrics["train_loss"])
    assert not np.array_equal(result.weights["000/softmax/kernel"], GLOBAL["000/softmax/kernel"])  # it trained
    assert "accuracy 1.0000 (train)" in RoundReport("r", 1, 1, {"train_accuracy": 1.0}, 1, 1, 0).line()
    with pytest.raises(CannotEvaluate, match="no local test split"):  # its evaluation answer says so
        trainer.evaluate(architecture, GLOBAL, TrainingConfig())


def test_the_round_summary_line_shows_before_and_after_bytes_and_seconds():
    metrics = {"test_loss_before": 0.9123, "test_loss": 0.62, "test_accuracy_before": 0.7, "test_accuracy": 0.8}
    line = RoundReport("run-1", 3, 383, metrics, 54_100, 1_800_000, 1.42).line()
    assert line == (
        "round 3 of run-1 | 383 examples | loss 0.9123 -> 0.6200 (test) | accuracy 0.7000 -> 0.8000 (test)"
        " | down 54.1 kB up 1.8 MB | 1.4 s"
    )
    assert "loss 0.5000 (train)" in RoundReport("r", 1, 5, {"train_loss": 0.5}, 1, 1, 0).line()


def test_the_round_summary_line_breaks_the_rounds_time_down_by_phase():
    phases = {"download": 0.051, "train": 1.213, "upload": 0.12}
    line = RoundReport("run-1", 3, 383, {}, 1, 1, 1.42, phases).line()
    assert line.endswith("| 1.4 s (download 0.05 s, train 1.21 s, upload 0.12 s)")


def test_config_numbers_must_be_whole_seconds(tmp_path, monkeypatch):
    monkeypatch.setenv("FEDSTEP_TRAINER", "mysite:train")
    path = tmp_path / "c.json"
    path.write_text('{"client_id": "c", "queue_url": "https://q", "bucket": "b", "table": "t", "data": "d"}')
    assert load(str(path), {"heartbeat_s": "30"}).heartbeat_s == 30
    assert load(str(path), {}).trainer == "mysite:train"
    with pytest.raises(FedstepError, match="poll_wait_s must be a whole number of seconds, got 'soon'"):
        load(str(path), {"poll_wait_s": "soon"})
    with pytest.raises(FedstepError, match=r"heartbeat_s must be 0 \(off\) or 10-3600"):
        load(str(path), {"heartbeat_s": 5})


@pytest.mark.parametrize(("round_rate", "expected"), [(None, 1e-3), (0.05, 0.05)])
def test_a_model_compiled_with_adam_keeps_its_learning_rate_unless_the_round_sets_one(round_rate, expected):
    """fedstep issue 13: a run without --learning-rate trains at the rate the model was compiled
    with (the round message carries null); --learning-rate replaces it."""
    from client_agent.keras_model import get_tensors, import_keras, model_to_bytes
    from client_agent.training import keras_fit

    keras = import_keras()
    net = keras.Sequential([keras.Input((64,)), keras.layers.Dense(10, activation="softmax")])
    net.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    wire = {"epochs": 1, "batch_size": 32, "learning_rate": round_rate}  # as the round message carries it
    training = TrainingConfig.parse(wire)
    assert training.learning_rate == round_rate
    model = RoundModel(model_to_bytes(net), get_tensors(net))
    keras_fit(model, load_local_data("digits", "1/3"), training)
    optimizer = model.keras().optimizer
    assert type(optimizer).__name__ == "Adam"
    assert float(optimizer.learning_rate.numpy()) == pytest.approx(expected)


def test_a_learning_rate_is_none_or_a_positive_number():
    assert (
        TrainingConfig().learning_rate is None
        and TrainingConfig.parse({"epochs": 1, "batch_size": 8}).learning_rate is None
    )
    for bad in (0, -0.1, float("inf")):
        with pytest.raises(FedstepError, match="learning_rate must be > 0 or null"):
            TrainingConfig(learning_rate=bad)
