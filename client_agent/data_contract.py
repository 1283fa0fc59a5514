"""The contract between a client's data and the run's model: pure checks that name each problem and its fix.

`split_problems` checks what a loader returned, ((x_train, y_train), (x_test, y_test)), on its own:
numpy arrays (not Python lists), numbers, one row per example, x and y of the same length, a
training split that is not empty, finite features, the same feature shape in both splits.
`model_problems` checks the arrays against a `ModelContract` (what the run's model takes and how its
loss reads labels): feature shape vs the model's input, labels within the output units, one-hot vs
class-index labels for the compiled loss. Every message says what is wrong and what to do; an
empty list means the data fits. Nothing here imports Keras: `client_agent.keras_model.contract_of`
reads a `ModelContract` from a model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

NAMES = ("x_train", "y_train", "x_test", "y_test")

SPARSE = "class indices"
ONE_HOT = "one-hot"
BINARY = "binary"
_LOSS_LABELS = {
    "sparsecategoricalcrossentropy": SPARSE,
    "sparsecategoricalfocalcrossentropy": SPARSE,
    "categoricalcrossentropy": ONE_HOT,
    "categoricalfocalcrossentropy": ONE_HOT,
    "categoricalhinge": ONE_HOT,
    "kldivergence": ONE_HOT,
    "kld": ONE_HOT,
    "binarycrossentropy": BINARY,
    "binaryfocalcrossentropy": BINARY,
}
"""How a loss (its name, lower case without underscores) reads labels; other losses are not checked."""


@dataclass(frozen=True)
class ModelContract:
    """What the run's model expects of the data.

    `input_shape`: one example's shape (None in a dimension: any size; None: unknown, e.g. several
    inputs); `output_units`: the last dimension of its single output (None: unknown); `loss`: the
    compiled loss's name (None: not compiled or not a single loss)."""

    input_shape: tuple[int | None, ...] | None
    output_units: int | None
    loss: str | None

    @property
    def labels(self) -> str | None:
        """How the loss reads labels: SPARSE, ONE_HOT, BINARY, or None (not checked)."""
        return _LOSS_LABELS.get((self.loss or "").lower().replace("_", "")) if self.loss else None

    def describe(self) -> str:
        """e.g. "inputs (64,), 10 output units, loss sparse_categorical_crossentropy" """
        shape = _shape(self.input_shape) if self.input_shape is not None else "of unknown shape"
        units = f"{self.output_units} output units" if self.output_units is not None else "outputs of unknown size"
        return f"inputs {shape}, {units}, loss {self.loss or 'unknown'}"


def loss_name(loss: Any) -> str | None:
    """The name of a compiled loss: a string as given, a Loss object's `name`, a function's `__name__`;
    None for none or several (a dict or list of losses)."""
    if loss is None or isinstance(loss, dict | list | tuple):
        return None
    if isinstance(loss, str):
        return loss
    name = getattr(loss, "name", None) or getattr(loss, "__name__", None)
    return str(name) if name else type(loss).__name__


# -- the split on its own ------------------------------------------------------------------------


def split_problems(split: Sequence[Any]) -> list[str]:
    """What is wrong with a loader's ((x_train, y_train), (x_test, y_test)); [] when nothing is.

    The test split may be empty (the agent then reports no test metrics); the training split may not.
    """
    values = dict(zip(NAMES, (*split[0], *split[1]), strict=True))
    problems = [p for name, value in values.items() if (p := _type_problem(name, value))]
    if problems:
        return problems
    arrays = {name: np.asarray(value) for name, value in values.items()}
    for name, array in arrays.items():
        problems += _dtype_problems(name, array)
    if problems:
        return problems
    for x, y in (("x_train", "y_train"), ("x_test", "y_test")):
        problems += _pair_problems(x, arrays[x], y, arrays[y])
    if len(arrays["x_train"]) == 0:
        problems.append("the training split is empty: x_train and y_train need at least one example")
    xtr, xte = arrays["x_train"], arrays["x_test"]
    if not problems and len(xte) and xtr.shape[1:] != xte.shape[1:]:
        problems.append(
            f"x_test rows have shape {_shape(xte.shape[1:])} but x_train rows {_shape(xtr.shape[1:])}: "
            "both splits need the same features"
        )
    return problems


def as_arrays(split: Sequence[Any]) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """The split as numpy arrays (after `split_problems` found none)."""
    (x_train, y_train), (x_test, y_test) = split
    return (np.asarray(x_train), np.asarray(y_train)), (np.asarray(x_test), np.asarray(y_test))


def _type_problem(name: str, value: Any) -> str | None:
    if isinstance(value, np.ndarray):
        return None
    kind = type(value).__name__
    if isinstance(value, list | tuple):
        dtype = "np.float32" if name.startswith("x") else "np.int64"
        return f"{name} is a Python {kind}, not a numpy array: return np.asarray({name}, dtype={dtype})"
    if hasattr(value, "__array__") and hasattr(value, "__len__"):
        return None  # pandas, and other array-likes numpy converts without copying by hand
    return f"{name} is of type {kind}, not a numpy array: return the data as numpy arrays"


def _dtype_problems(name: str, array: np.ndarray) -> list[str]:
    numeric = np.issubdtype(array.dtype, np.number) or array.dtype == np.bool_
    if array.dtype == object:
        return [f"{name} holds Python objects (ragged rows or mixed types): every row needs the same shape of numbers"]
    if not numeric or np.iscomplexobj(array):
        if name.startswith("x"):
            return [
                f"{name} has dtype {array.dtype}, not numbers: encode the features as numbers in the loader "
                f"(e.g. {name}.astype(np.float32), one-hot columns for categories)"
            ]
        return [
            f"{name} has dtype {array.dtype}, not numbers: encode the labels as class indices 0, 1, ... "
            f"(e.g. np.unique({name}, return_inverse=True)[1])"
        ]
    if array.ndim == 0:
        return [f"{name} is a single number, not one row per example"]
    if name.startswith("x") and array.ndim < 2:
        return [
            f"{name} has shape {array.shape}, not one row per example (n, features...): "
            f"for a single feature return {name}.reshape(-1, 1)"
        ]
    if np.issubdtype(array.dtype, np.floating) and array.size:
        finite = np.isfinite(array.reshape(len(array), -1)).all(axis=1)
        if not finite.all():
            bad = np.flatnonzero(~finite)
            return [
                f"{name} has NaN or Inf in {len(bad)} example(s), the first at row {int(bad[0])}: "
                "drop or impute them in the loader"
            ]
    return []


def _pair_problems(x_name: str, x: np.ndarray, y_name: str, y: np.ndarray) -> list[str]:
    if len(x) != len(y):
        return [f"{x_name} has {len(x)} examples but {y_name} has {len(y)}: one label per example"]
    return []


# -- the split against the model ------------------------------------------------------------------


def model_problems(arrays: Sequence[Any], model: ModelContract) -> list[str]:
    """What keeps the (already numpy, `split_problems`-clean) split from training the model; [] if nothing."""
    (x_train, y_train), (x_test, y_test) = arrays
    problems = _input_problems("x_train", x_train, model)
    problems += _label_problems("y_train", y_train, model)
    if len(x_test) and not problems:  # the same mistake in the test split is not said twice
        problems += _input_problems("x_test", x_test, model) + _label_problems("y_test", y_test, model)
    return problems


def _input_problems(name: str, x: np.ndarray, model: ModelContract) -> list[str]:
    wanted = model.input_shape
    if wanted is None:
        return []
    rows = tuple(x.shape[1:])
    fits = len(rows) == len(wanted) and all(w is None or w == r for w, r in zip(wanted, rows, strict=True))
    if fits:
        return []
    hint = "the data must have the features the run's model was built for (ask the operator which)"
    if None not in wanted and int(np.prod(rows)) == int(np.prod(wanted)):
        hint = f"reshape in the loader: {name}.reshape(-1, {', '.join(str(w) for w in wanted)})"
    return [f"{name} rows have shape {_shape(rows)} but the run's model takes inputs of shape {_shape(wanted)}: {hint}"]


def _label_problems(name: str, y: np.ndarray, model: ModelContract) -> list[str]:
    kind, units, loss = model.labels, model.output_units, model.loss
    if kind is None or units is None or not len(y):
        return []
    column = y.ndim == 2 and y.shape[1] == 1
    flat = y.reshape(-1) if column else y
    if kind == SPARSE:
        if y.ndim == 2 and y.shape[1] > 1:
            if _is_one_hot(y):
                return [
                    f"{name} is one-hot (shape {y.shape}) but the model's loss {loss} expects class indices "
                    f"of shape (n,): return {name}.argmax(axis=1)"
                ]
            return [f"{name} has shape {y.shape} but the model's loss {loss} expects class indices of shape (n,)"]
        if y.ndim > 2 or not (y.ndim == 1 or column):
            return [f"{name} has shape {y.shape} but the model's loss {loss} expects class indices of shape (n,)"]
        return _index_problems(name, flat, units, loss)
    if kind == ONE_HOT:
        if y.ndim == 1 or column:
            if _is_integral(flat):
                fix = f"keras.utils.to_categorical({name}, {units})"
                problems = [
                    f"{name} holds class indices (shape {y.shape}) but the model's loss {loss} expects one-hot "
                    f"labels of shape (n, {units}): return {fix}, or start the run with loss "
                    "sparse_categorical_crossentropy"
                ]
                return problems + _index_problems(name, flat, units, loss)
            return [f"{name} has shape {y.shape} but the model's loss {loss} expects labels of shape (n, {units})"]
        if y.ndim != 2 or y.shape[1] != units:
            return [
                f"{name} has shape {y.shape} but the model has {units} output units: the loss {loss} expects "
                f"one-hot labels of shape (n, {units})"
            ]
        return []
    # BINARY: labels 0 or 1 (or probabilities), one per output unit
    if units == 1 and not (y.ndim == 1 or column):
        return [f"{name} has shape {y.shape} but the model has 1 output unit: the loss {loss} expects 0/1 labels (n,)"]
    if units > 1 and (y.ndim != 2 or y.shape[1] != units):
        return [
            f"{name} has shape {y.shape} but the model has {units} output units: the loss {loss} expects (n, {units})"
        ]
    low, high = float(np.min(y)), float(np.max(y))
    if low < 0 or high > 1:
        return [
            f"{name} has labels from {_num(low)} to {_num(high)} but the model's loss {loss} expects 0 or 1: "
            "for more than two classes use a softmax output with sparse_categorical_crossentropy"
        ]
    return []


def _index_problems(name: str, flat: np.ndarray, units: int, loss: str | None) -> list[str]:
    if not _is_integral(flat):
        return [
            f"{name} has fractional values (e.g. {_num(_first_fractional(flat))}) but the model's loss {loss} "
            f"expects class indices 0 to {units - 1}: return integer labels ({name}.astype(np.int64) if they are whole)"
        ]
    low, high = int(np.min(flat)), int(np.max(flat))
    if low < 0 or high >= units:
        return [
            f"{name} has labels from {low} to {high} but the model has {units} output units (classes 0 to "
            f"{units - 1}): renumber the labels to 0-{units - 1} (np.unique({name}, return_inverse=True)[1]), "
            f"or ask the operator for a model with {high + 1} outputs"
            if low >= 0
            else f"{name} has negative labels (from {low}): class indices start at 0; renumber them "
            f"(np.unique({name}, return_inverse=True)[1])"
        ]
    return []


def _is_integral(values: np.ndarray) -> bool:
    if np.issubdtype(values.dtype, np.integer) or values.dtype == np.bool_:
        return True
    return bool(np.all(np.mod(values, 1) == 0))


def _first_fractional(values: np.ndarray) -> float:
    return float(values[np.flatnonzero(np.mod(values, 1) != 0)[0]])


def _is_one_hot(y: np.ndarray) -> bool:
    return bool(np.isin(y, (0, 1)).all() and (y.sum(axis=1) == 1).all())


def _shape(shape: Sequence[int | None]) -> str:
    return "(" + ", ".join("None" if s is None else str(s) for s in shape) + ("," if len(shape) == 1 else "") + ")"


def _num(value: float) -> str:
    return f"{value:g}"
