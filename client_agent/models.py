"""Built-in model architectures for the bundled data sets (compiled Keras models)."""

from __future__ import annotations

from typing import Any

from client_agent.keras_model import import_keras


def mlp(input_dim: int, num_classes: int, hidden: int = 64, learning_rate: float = 0.1) -> Any:
    """Dense(hidden, relu) -> Dense(num_classes, softmax), SGD, sparse categorical cross-entropy."""
    keras = import_keras()
    return _compiled(
        [keras.layers.Dense(hidden, activation="relu", name="hidden")], input_dim, num_classes, "mlp", learning_rate
    )


def _compiled(hidden: list[Any], input_dim: int, num_classes: int, name: str, learning_rate: float) -> Any:
    """Inputs -> `hidden` -> Dense(num_classes, softmax), compiled with SGD and sparse categorical
    cross-entropy (labels are class indices), accuracy as the metric."""
    keras = import_keras()
    model = keras.Sequential(
        [
            keras.Input(shape=(input_dim,), name="features"),
            *hidden,
            keras.layers.Dense(num_classes, activation="softmax", name="output"),
        ],
        name=name,
    )
    model.compile(
        optimizer=keras.optimizers.SGD(learning_rate=learning_rate),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    return model


def digits_mlp() -> Any:
    """For `digits` (8x8 images, 10 classes): Dense(64, relu) -> Dense(10, softmax), SGD lr 0.1."""
    return mlp(64, 10, hidden=64, learning_rate=0.1)


def mnist_mlp() -> Any:
    """For `mnist` (28x28 images, 10 classes): Dense(128, relu) -> Dense(10, softmax), SGD lr 0.1."""
    return mlp(784, 10, hidden=128, learning_rate=0.1)


def heart_mlp() -> Any:
    """For `heart` (UCI heart disease, binary): Dense(32, relu) -> Dense(2, softmax), SGD lr 0.05."""
    from client_agent.datasets import describe

    (input_dim,) = describe("heart")["input_shape"]
    return mlp(input_dim, 2, hidden=32, learning_rate=0.05)


def logistic_regression(input_dim: int, num_classes: int, learning_rate: float = 0.1) -> Any:
    """Dense(num_classes, softmax) on the inputs (multinomial logistic regression), SGD, sparse
    categorical cross-entropy."""
    return _compiled([], input_dim, num_classes, "logistic_regression", learning_rate)


def heart_logreg() -> Any:
    """For `heart-raw` (standardized by the run's `standardize`): logistic regression as FLamby's
    Fed-Heart-Disease baseline, Dense(2, softmax) on the 22 features, SGD lr 0.1."""
    from client_agent.datasets import describe

    (input_dim,) = describe("heart-raw")["input_shape"]
    return logistic_regression(input_dim, 2, learning_rate=0.1)


DEFAULT_FOR_DATASET = {
    "digits": "client_agent.models:digits_mlp",
    "mnist": "client_agent.models:mnist_mlp",
    "heart": "client_agent.models:heart_mlp",
    "heart-raw": "client_agent.models:heart_logreg",
}
