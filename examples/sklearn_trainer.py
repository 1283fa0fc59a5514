"""A non-Keras client: softmax regression trained with scikit-learn, in a run started with a Keras model.

The agent hands a train function the global weights as numpy arrays and takes the new ones back,
so any framework can train. Here the run's model is `softmax_regression` (one Dense softmax layer:
a kernel of shape (features, classes) and a bias of shape (classes,)), and the client trains the
same function with scikit-learn's `LogisticRegression`, warm-started from the global weights:

    fedstep start --model examples.sklearn_trainer:softmax_regression ...       # the operator
    fedstep-client run --config client.json --trainer examples.sklearn_trainer:train   # a client

Keras clients (the default trainer) and scikit-learn clients can serve the same run: both produce
a kernel and a bias of the same shapes and meaning, and FedAvg averages them.

Mapping of the round's training config: `epochs` -> `max_iter` = 10 x epochs L-BFGS iterations;
`params["C"]` -> inverse L2 strength (default 10.0). `batch_size` and `learning_rate` do not apply to
L-BFGS. Every client must hold examples of every class (scikit-learn sizes its coefficients by
the classes it sees).
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from client_agent.training import RoundModel, Split
from fedstep.core.schemas import TrainingConfig


def softmax_regression(features: int = 64, classes: int = 10) -> Any:
    """The run's model (for `fedstep start --model`): Dense(classes, softmax) on `features` inputs."""
    from client_agent.keras_model import import_keras

    keras = import_keras()
    model = keras.Sequential(
        [keras.Input(shape=(features,)), keras.layers.Dense(classes, activation="softmax", name="softmax")]
    )
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def _metrics(coef: np.ndarray, intercept: np.ndarray, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(cross-entropy loss, accuracy) of softmax(x @ coef.T + intercept) - the same as Keras reports."""
    logits = x @ coef.T + intercept
    logits -= logits.max(axis=1, keepdims=True)
    log_probs = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    loss = float(-log_probs[np.arange(len(y)), y].mean())
    return loss, float((logits.argmax(axis=1) == y).mean())


def train(model: RoundModel, data: Split, training: TrainingConfig) -> dict[str, float]:
    """Warm-start LogisticRegression from the global weights, fit on the local data, hand the weights back."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    (x_train, y_train), (x_test, y_test) = data
    kernel, bias = model.get_weights()  # (features, classes), (classes,)
    classes = np.unique(y_train)
    if len(classes) != bias.shape[0]:
        raise ValueError(f"this client holds {len(classes)} of the model's {bias.shape[0]} classes; it needs all")
    metrics: dict[str, float] = {}
    if len(x_test):
        metrics["test_loss_before"], metrics["test_accuracy_before"] = _metrics(kernel.T, bias, x_test, y_test)
    clf = LogisticRegression(C=float(training.params.get("C", 10.0)), max_iter=10 * training.epochs, warm_start=True)
    clf.coef_, clf.intercept_ = kernel.T.astype(np.float64), bias.astype(np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # a few iterations per round, by design
        clf.fit(x_train, y_train)
    model.set_weights([clf.coef_.T, clf.intercept_])
    metrics["train_loss"], metrics["train_accuracy"] = _metrics(clf.coef_, clf.intercept_, x_train, y_train)
    if len(x_test):
        metrics["test_loss"], metrics["test_accuracy"] = _metrics(clf.coef_, clf.intercept_, x_test, y_test)
    return metrics
