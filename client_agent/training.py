"""Local training: the default Keras trainer.

A trainer receives the round's architecture (`.keras` bytes), the global weights and the training
config, trains on the client's local data, and returns the new weights, the number of training
examples and metrics. The agent needs nothing else from it, so any framework that can get and set
weights as numpy arrays can be a trainer.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Protocol

from client_agent.keras_model import get_tensors, import_keras, model_from_bytes, set_tensors
from fedstep.schemas import TrainingConfig
from fedstep.tensors import Tensors

log = logging.getLogger(__name__)

Split = tuple[tuple, tuple]  # ((x_train, y_train), (x_test, y_test))


@dataclass(frozen=True)
class TrainResult:
    weights: Tensors
    num_examples: int
    metrics: dict[str, float]


class Trainer(Protocol):
    def fit(self, architecture: bytes, weights: Tensors, training: TrainingConfig) -> TrainResult: ...


def _finite(metrics: dict[str, float]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if v is not None and math.isfinite(float(v))}


class KerasTrainer:
    """`model.fit` on the local train split, then `model.evaluate` on the local test split.

    Metrics: train_loss/train_accuracy (last epoch), test_loss/test_accuracy (after training).
    The optimizer is fresh every round (the architecture is reloaded), with the round's learning rate.
    """

    def __init__(self, data: Split, seed: int = 0) -> None:
        (self.x_train, self.y_train), (self.x_test, self.y_test) = data
        self.seed = seed

    def fit(self, architecture: bytes, weights: Tensors, training: TrainingConfig) -> TrainResult:
        import_keras().utils.set_random_seed(self.seed)
        model = model_from_bytes(architecture)
        set_tensors(model, weights)
        if model.optimizer is None:
            raise ValueError("the run's model is not compiled; `fedstep start --model` must return a compiled model")
        model.optimizer.learning_rate.assign(training.learning_rate)
        history = model.fit(
            self.x_train,
            self.y_train,
            epochs=training.epochs,
            batch_size=training.batch_size,
            shuffle=True,
            verbose=0,
        )
        metrics = {f"train_{k}": v[-1] for k, v in history.history.items()}
        if len(self.x_test):
            result = model.evaluate(self.x_test, self.y_test, verbose=0, return_dict=True)
            metrics.update({f"test_{k}": v for k, v in result.items()})
        renamed = {k.replace("sparse_categorical_", ""): v for k, v in metrics.items()}
        return TrainResult(get_tensors(model), len(self.x_train), _finite(renamed))
