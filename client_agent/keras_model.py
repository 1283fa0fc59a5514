"""Keras models <-> fedstep's named tensors and `.keras` bytes.

Tensor names are "<position>/<layer>/<variable>", e.g. "000/hidden/kernel": the position in
`model.weights` (stable for one architecture) plus the end of the Keras variable path for people to
read. The full path is not used because Keras prefixes it with the model's name when the model is
built but not when it is loaded from a `.keras` file. Architectures are always loaded with
`safe_mode=True`: a `.keras` file from the network can describe layers, never run code.
"""

from __future__ import annotations

import os
import sys
import tempfile
import threading
import warnings
from typing import Any

import numpy as np

from client_agent.errors import clean_error
from fedstep.core.errors import FedstepError
from fedstep.core.tensors import Tensors, TensorSpec, check_matches


def import_keras() -> Any:
    """Import Keras (and TensorFlow) without TensorFlow's C++ start-up banner on the terminal.

    TF_CPP_MIN_LOG_LEVEL does not silence absl's pre-initialisation warning or oneDNN's notice, so
    file descriptor 2 points at /dev/null while the import runs; a failed import still raises.
    """
    with _IMPORT_LOCK:  # two threads importing at once could see a half-imported Keras
        return _import_keras()


_IMPORT_LOCK = threading.Lock()


def _import_keras() -> Any:
    if "keras" in sys.modules and "tensorflow" in sys.modules:
        return sys.modules["keras"]
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as devnull:
            os.dup2(devnull.fileno(), 2)
            import keras
            import tensorflow  # noqa: F401 - its C++ runtime prints when first used, so load it here
    finally:
        os.dup2(saved, 2)
        os.close(saved)
    return keras


def model_to_bytes(model: Any) -> bytes:
    """The model's architecture, compile config and weights as a `.keras` file."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.keras")
        model.save(path)
        with open(path, "rb") as f:
            return f.read()


def model_from_bytes(data: bytes) -> Any:
    """Load a `.keras` file safely (no lambda layers or custom code can run)."""
    keras = import_keras()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.keras")
        with open(path, "wb") as f:
            f.write(data)
        try:
            with warnings.catch_warnings():
                # An architecture file saved before training holds an unbuilt optimizer's 2 variables;
                # loading builds it (Adam: 6) and Keras warns that it skipped them. Every round starts
                # from a fresh optimizer anyway (its settings come from the compile config, not these).
                warnings.filterwarnings("ignore", message="Skipping variable loading for optimizer")
                return keras.models.load_model(path, safe_mode=True)
        except Exception as exc:  # Keras raises many types for a bad file
            raise FedstepError(f"cannot load the model architecture (.keras, safe mode): {clean_error(exc)}") from exc


def get_tensors(model: Any) -> Tensors:
    """All of the model's variables (trainable and not) by path, as float32 arrays."""
    return {name: np.asarray(var.numpy(), dtype=np.float32) for name, var in _named_variables(model)}


def _named_variables(model: Any) -> list[tuple[str, Any]]:
    return [(f"{i:03d}/{'/'.join(var.path.split('/')[-2:])}", var) for i, var in enumerate(model.weights)]


def set_tensors(model: Any, tensors: Tensors) -> None:
    """Assign `tensors` to the model's variables; raise if names or shapes differ."""
    check_matches(tensors, TensorSpec.of(get_tensors(model)))
    for name, var in _named_variables(model):
        var.assign(tensors[name])


def contract_of(model: Any) -> Any:
    """What `model` expects of the data (a `client_agent.data_contract.ModelContract`): one example's
    input shape, its output units and the compiled loss's name, each None when the model does not say
    (several inputs or outputs, a model not built or not compiled)."""
    from client_agent.data_contract import ModelContract, loss_name

    def single(attribute: str) -> tuple[int | None, ...] | None:
        try:
            shape = getattr(model, attribute)
        except (AttributeError, ValueError, RuntimeError):  # a model that was never built
            return None
        if not isinstance(shape, tuple) or not shape or not all(s is None or isinstance(s, int) for s in shape):
            return None  # several inputs or outputs: a list or dict of shapes
        return tuple(shape[1:])

    output = single("output_shape")
    units = output[-1] if output else None
    return ModelContract(single("input_shape"), units, loss_name(getattr(model, "loss", None)))


def one_batch(model: Any, x: np.ndarray, y: np.ndarray, batch_size: int = 32) -> dict[str, float]:
    """Train `model` on the first `batch_size` examples once (`train_on_batch`) and return its metrics.
    It changes the model's weights: give it a throwaway copy. FedstepError with the cause on one line
    (`client_agent.errors.clean_error`) when Keras refuses the data, or when the loss is not finite."""
    if getattr(model, "optimizer", None) is None:
        raise FedstepError(
            "the run's model is not compiled, so it cannot train; the operator must start the run with a compiled model"
        )
    try:
        metrics = model.train_on_batch(x[:batch_size], y[:batch_size], return_dict=True)
    except Exception as exc:  # Keras and TensorFlow raise many types for data they cannot use
        raise FedstepError(f"one training batch failed: {clean_error(exc)}") from None
    numbers = {str(k): float(np.asarray(v)) for k, v in (metrics or {}).items()}
    bad = [k for k, v in numbers.items() if "loss" in k and not np.isfinite(v)]
    if bad:
        raise FedstepError(
            f"one training batch gives a {bad[0]} of {numbers[bad[0]]}: check the features' scale (standardize "
            "them) and the labels"
        )
    return numbers
