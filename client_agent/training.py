"""Local training: a train function `(model, data, training) -> metrics`, Keras `fit` by default.

The agent needs nothing from a trainer but weights in, weights out, as numpy arrays. A train
function receives the round's global model as a `RoundModel`:

    def train(model: RoundModel, data: Split, training: TrainingConfig) -> dict[str, float]:
        weights = model.get_weights()      # list of numpy arrays, in the run's tensor order
        ...                                # train with any framework (Keras, PyTorch, scikit-learn)
        model.set_weights(new_weights)     # same count, shapes; cast to float32
        return {"train_loss": ..., "test_accuracy": ...}

`training.instructions` holds the strategy's instructions for the round, e.g. FedProx's
`{"proximal_mu": 0.01}` (see `client_agent.proximal`); a custom train function applies them itself.
That includes differential privacy (`client_agent.dp_sgd`): under
`{"dp_mode": "dp-sgd", "dp_noise_multiplier": z, "dp_clip": C, "dp_delta": d}` a train function
must train with DP-SGD - Poisson sampling at rate q = min(1, batch_size / n), epochs x
ceil(n / batch_size) steps, each example's gradient clipped to L2 norm C, Gaussian noise of standard
deviation z C on the sum - because the agent accounts the round's epsilon for exactly that
(`client_agent.privacy_ledger`) and reports it. `dp_sgd.DpSgdParams.of(training.instructions)`
parses them. Under `{"dp_mode": "client-clip", "dp_clip": C}` the agent clips the update itself.

**Evaluation** (`fedstep evaluate`): an evaluate function `(model, data, training) -> metrics` gets the
requested global model as a `RoundModel` and returns its metrics on the local test split, e.g.
`{"test_loss": ..., "test_accuracy": ...}`; it must not change the model. The default trainer's is
`keras_evaluate` (Keras `evaluate`). A custom trainer module provides one as a function named
`evaluate` beside its train function (`evaluate = keras_evaluate` reuses the default); without one,
the agent answers evaluation requests that it cannot evaluate.

`model.keras()` gives the run's Keras model (loaded with safe_mode=True, global weights set); a
trainer that trains it leaves its weights as the update. Select a train function with `--trainer
module:function` (or `trainer` in the config file). The default is `keras_fit`.

Metric names are free; these are the ones the agent's round summary line shows and the default
reports: `train_loss`, `train_accuracy` (last epoch), `test_loss`, `test_accuracy` (local test
split, after training) and `test_loss_before`, `test_accuracy_before` (the global model on the
local test split, before training: a federated evaluation of the previous round's model).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from client_agent import dp_sgd
from client_agent.proximal import add_proximal_term, proximal_mu
from client_agent.warm_model import WarmModel
from fedstep.core import limits
from fedstep.core.errors import FedstepError
from fedstep.core.imports import load_callable
from fedstep.core.schemas import TrainingConfig
from fedstep.core.statistics import Standardization
from fedstep.core.tensors import Tensors

log = logging.getLogger(__name__)

Split = tuple[tuple, tuple]  # ((x_train, y_train), (x_test, y_test))

DEFAULT_TRAINER = "client_agent.training:keras_fit"


@dataclass(frozen=True)
class TrainResult:
    weights: Tensors
    num_examples: int
    metrics: dict[str, float]


@dataclass(frozen=True)
class EvalResult:
    num_examples: int
    """The local test examples evaluated on."""
    metrics: dict[str, float]


class Trainer(Protocol):
    """What the agent calls once per round."""

    def fit(self, architecture: bytes, weights: Tensors, training: TrainingConfig) -> TrainResult: ...


class RoundModel:
    """The round's global model as a train function sees it.

    `get_weights()`/`set_weights()` work on numpy arrays in the run's tensor order (sorted tensor
    names, which for Keras runs is `model.weights` order). `keras()` loads the run's architecture
    once; from then on the Keras model holds the weights, and `get_weights`/`set_weights` use it.
    `callbacks` are Keras callbacks the agent asks a Keras trainer to pass to `fit` (a progress bar).
    `warm` is the agent's `WarmModel`, which `keras(warm=True)` takes the model from.
    """

    def __init__(
        self,
        architecture: bytes,
        weights: Tensors,
        callbacks: Sequence[Any] = (),
        seed: int = 0,
        warm: WarmModel | None = None,
    ) -> None:
        self.architecture = architecture
        self.names = sorted(weights)
        self.callbacks = list(callbacks)
        self.seed = seed
        self.warm = warm
        self._weights = [np.array(weights[n], dtype=np.float32) for n in self.names]
        self._keras: Any = None

    def get_weights(self) -> list[np.ndarray]:
        if self._keras is not None:
            return [np.asarray(w, dtype=np.float32) for w in self._keras.get_weights()]
        return [w.copy() for w in self._weights]

    def set_weights(self, weights: Sequence[Any]) -> None:
        arrays = [np.asarray(w, dtype=np.float32) for w in weights]
        expected = [w.shape for w in self.get_weights()]
        if [a.shape for a in arrays] != expected:
            raise FedstepError(
                f"set_weights: got shapes {[a.shape for a in arrays]}, the run's model has {expected} "
                f"({', '.join(self.names)})"
            )
        if self._keras is not None:
            self._keras.set_weights(arrays)
        else:
            self._weights = arrays

    def keras(self, warm: bool = False) -> Any:
        """The run's Keras model (compiled, safe mode) holding the current weights.

        By default a fresh load. `warm=True` takes the agent's kept model instead
        (`client_agent.warm_model`: compiled and traced once, reset to its loaded state each round),
        for a trainer that leaves the model's structure, losses and compile settings as they are."""
        if self._keras is None:
            from client_agent.keras_model import model_from_bytes, set_tensors

            if warm and self.warm is not None:
                model = self.warm.model(self.architecture)
            else:
                model = model_from_bytes(self.architecture)
            set_tensors(model, dict(zip(self.names, self._weights, strict=True)))
            self._keras = model
        return self._keras

    def tensors(self) -> Tensors:
        """The current weights by tensor name (what the agent uploads)."""
        return dict(zip(self.names, self.get_weights(), strict=True))


TrainFunction = Callable[[RoundModel, Split, TrainingConfig], Mapping[str, float]]


def keras_fit(model: RoundModel, data: Split, training: TrainingConfig) -> dict[str, float]:
    """The default: evaluate the global model on the local test split, `fit` on the local train split
    (the round's epochs, batch size and learning rate, shuffled, seeded), evaluate again.

    The model stays warm across rounds (`client_agent.warm_model`), with a fresh optimizer every
    round. It trains at the round's learning rate when the run sets one, else at the rate the model
    was compiled with. The global random seed is the agent's seed.
    When the round's instructions carry `proximal_mu` (FedProx), the proximal term is added to the
    loss (`client_agent.proximal`). Under `dp_mode` "dp-sgd" the model trains with DP-SGD
    (`client_agent.dp_sgd.fit`) instead of `fit`; `train_loss` is then the mean batch loss.
    """

    (x_train, y_train), (x_test, y_test) = data
    try:
        mu = proximal_mu(training.instructions)
        private = dp_sgd.dp_mode(training.instructions) == dp_sgd.DP_SGD
        params = dp_sgd.DpSgdParams.of(training.instructions) if private else None
    except ValueError as exc:
        raise FedstepError(f"the round's instructions are unusable: {exc}") from None
    # FedProx changes the model's losses and DP-SGD trains with its own loop: those take a fresh model.
    # The seed is set before loading (a dropout layer's seed state is drawn then) and again after, so
    # training draws the same numbers whether or not the load ran the initializers.
    from client_agent import keras_data  # the input pipelines and batches Keras would make, kept
    from client_agent.seeds import set_random_seed  # Keras's, keeping TensorFlow's compiled functions

    set_random_seed(model.seed)
    warm = mu == 0 and params is None
    net = model.keras(warm=warm)
    set_random_seed(model.seed)
    if net.optimizer is None:
        raise FedstepError("the run's model is not compiled; `fedstep start --model` must return a compiled model")
    # The batches Keras would make of the arrays are kept (keras_data). A warm model that went through
    # Keras's own `fit` and `evaluate` in an earlier round runs their compiled steps on them directly:
    # the same numbers, without the per-call machinery that costs a small round more than its training.
    kept = keras_data.arrays_kept(x_train, y_train, x_test, y_test)
    direct = kept and warm and not model.callbacks
    metrics: dict[str, Any] = {}
    if len(x_test):
        before = _evaluate(net, x_test, y_test, kept, direct)
        metrics.update({f"test_{k}_before": v for k, v in before.items()})
    if training.learning_rate is not None:  # else the model's own optimizer setting stands
        net.optimizer.learning_rate.assign(training.learning_rate)
    if mu > 0:
        add_proximal_term(net, mu)
    if params is not None:
        metrics.update(
            dp_sgd.fit(
                net,
                x_train,
                y_train,
                params,
                epochs=training.epochs,
                batch_size=training.batch_size,
                callbacks=model.callbacks,
            )
        )
    elif kept:
        data = keras_data.fit_data(x_train, y_train, training.batch_size)  # in Keras's shuffled order
        if direct and net.train_function is not None:
            trained = keras_data.fit_epochs(net, data, training.epochs)
        else:
            fit = net.fit(data.dataset(), epochs=training.epochs, shuffle=False, verbose=0, callbacks=model.callbacks)
            trained = {k: v[-1] for k, v in fit.history.items()}
        metrics.update({f"train_{k}": v for k, v in trained.items()})
    else:
        history = net.fit(
            x_train,
            y_train,
            epochs=training.epochs,
            batch_size=training.batch_size,
            shuffle=True,
            verbose=0,
            callbacks=model.callbacks,
        )
        metrics.update({f"train_{k}": v[-1] for k, v in history.history.items()})
    if len(x_test):
        after = _evaluate(net, x_test, y_test, kept, direct)
        metrics.update({f"test_{k}": v for k, v in after.items()})
    return {k.replace("sparse_categorical_", ""): v for k, v in metrics.items()}


def _evaluate(net: Any, x: Any, y: Any, kept: bool, direct: bool) -> dict[str, float]:
    """Keras's `evaluate` of `net` on (x, y), over kept batches when `kept`, by its compiled test step
    directly when `direct` and the model has one."""
    from client_agent import keras_data

    if not kept:
        return net.evaluate(x, y, verbose=0, return_dict=True)
    data = keras_data.evaluate_data(x, y)
    if direct and net.test_function is not None:
        return keras_data.evaluate_batches(net, data)
    return net.evaluate(data.dataset(), verbose=0, return_dict=True)


EVALUATE_FUNCTION = "evaluate"
"""The name of a custom trainer module's evaluate function."""


class CannotEvaluate(FedstepError):
    """The trainer has no evaluate function, or the client has no test split."""


def keras_evaluate(model: RoundModel, data: Split, training: TrainingConfig) -> dict[str, float]:
    """The default evaluation: Keras `evaluate` of the global model on the local test split, at the
    round's batch size (default 32), e.g. `{"test_loss": 0.41, "test_accuracy": 0.88}` (the names
    `keras_fit` reports after training)."""
    (_, _), (x_test, y_test) = data
    if not len(x_test):
        raise CannotEvaluate("this client has no local test split to evaluate on")
    net = model.keras(warm=True)
    if net.optimizer is None:
        raise FedstepError("the run's model is not compiled, so it has no loss or metrics to evaluate")
    from client_agent import keras_data

    if keras_data.arrays_kept(x_test, y_test):
        dataset = keras_data.evaluate_data(x_test, y_test, training.batch_size).dataset()
        result = net.evaluate(dataset, verbose=0, return_dict=True)
    else:
        result = net.evaluate(x_test, y_test, batch_size=training.batch_size, verbose=0, return_dict=True)
    return {f"test_{k}".replace("sparse_categorical_", ""): v for k, v in result.items()}


def finite_metrics(metrics: Any, source: str) -> dict[str, float]:
    """The trainer's metrics as floats, within the bounds the server accepts (`fedstep.core.limits`): a
    non-finite value (NaN loss), a malformed name or an impossible value (accuracy above 1) is
    dropped with a warning, and at most `limits.MAX_METRICS` are kept, so that one odd metric never
    gets the whole update rejected."""
    if not isinstance(metrics, Mapping):
        raise FedstepError(f"trainer {source} must return a dict of metrics, got {type(metrics).__name__}")
    out: dict[str, float] = {}
    for name, value in metrics.items():
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise FedstepError(f"trainer {source}: metric {name!r} is not a number ({value!r:.40})") from None
        problem = limits.metric_problem(str(name), number)
        if problem:
            log.warning("trainer %s: %s; it is not reported", source, problem)
        elif len(out) == limits.MAX_METRICS:
            log.warning("trainer %s: more than %d metrics; %s is not reported", source, limits.MAX_METRICS, name)
        else:
            out[str(name)] = number
    return out


class FunctionTrainer:
    """Adapts a train function to the agent: builds the `RoundModel`, calls the function with the local
    data, returns the weights it left, the number of local training examples, and its metrics."""

    def __init__(
        self,
        train: TrainFunction,
        data: Split,
        name: str = DEFAULT_TRAINER,
        seed: int = 0,
        evaluate_with: TrainFunction | None = None,
    ) -> None:
        self.train, self.data, self.name, self.seed = train, data, name, seed
        self.raw_data = data
        """The data as loaded; `data` is what the train function gets (standardized when the run says so)."""
        self._standardized_with = "none"
        self.evaluate_with = evaluate_with
        """The evaluate function (None: this trainer cannot evaluate)."""
        self.warm = WarmModel()
        """The Keras model kept across rounds for train functions that ask for it (`keras(warm=True)`)."""
        self.callbacks: Callable[[], Sequence[Any]] = lambda: ()
        """Makes the Keras callbacks for a round (the agent sets this to show a progress bar)."""

    def use_standardization(self, key: str, make: Callable[[], Standardization | None]) -> None:
        """Give the train and evaluate functions the data standardized by what `make` returns (None: as
        loaded); `key` names it, so a standardization is made and applied once, not every round."""
        if key == self._standardized_with:
            return
        standardization = make()
        (x_train, y_train), (x_test, y_test) = self.raw_data
        if standardization is None:
            self.data = self.raw_data
        else:
            self.data = (
                (standardization.apply(x_train), y_train),
                (standardization.apply(x_test) if len(x_test) else x_test, y_test),
            )
        self._standardized_with = key

    @property
    def num_examples(self) -> int:
        """The local training examples (what the agent accounts a DP-SGD round with)."""
        return len(self.data[0][0])

    def fit(self, architecture: bytes, weights: Tensors, training: TrainingConfig) -> TrainResult:
        model = RoundModel(architecture, weights, self.callbacks(), self.seed, self.warm)
        metrics = finite_metrics(self.train(model, self.data, training), self.name)
        return TrainResult(model.tensors(), self.num_examples, metrics)

    def evaluate(self, architecture: bytes, weights: Tensors, training: TrainingConfig) -> EvalResult:
        """The evaluate function's metrics of the model `weights` on the local test split, with the
        split's size; CannotEvaluate when this trainer has no evaluate function."""
        if self.evaluate_with is None:
            raise CannotEvaluate(
                f"trainer {self.name} has no evaluate function (define `{EVALUATE_FUNCTION}(model, data, training)` "
                "in its module)"
            )
        model = RoundModel(architecture, weights, (), self.seed, self.warm)
        metrics = finite_metrics(self.evaluate_with(model, self.data, training), f"{self.name} (evaluate)")
        if not metrics:
            raise CannotEvaluate(f"trainer {self.name}: its evaluate function returned no usable metric")
        return EvalResult(len(self.data[1][0]), metrics)


def evaluate_function_of(spec: str) -> TrainFunction | None:
    """The evaluate function that goes with the trainer `spec`: `keras_evaluate` for the default, else
    the function `evaluate` in the trainer's module (None when it has none)."""
    if spec == DEFAULT_TRAINER:
        return keras_evaluate
    module = sys.modules.get(spec.partition(":")[0])
    found = getattr(module, EVALUATE_FUNCTION, None) if module is not None else None
    return found if callable(found) else None


def load_trainer(spec: str | None, data: Split) -> FunctionTrainer:
    """`module:function` (default: `keras_fit`) adapted to the agent, with its module's evaluate function."""
    name = spec or DEFAULT_TRAINER
    train = load_callable(name, "trainer")  # imports the module
    return FunctionTrainer(train, data, name, evaluate_with=evaluate_function_of(name))
