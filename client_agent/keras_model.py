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
from typing import Any

import numpy as np

from fedstep.core.errors import FedstepError
from fedstep.core.tensors import Tensors, TensorSpec, check_matches


def import_keras() -> Any:
    """Import Keras (and TensorFlow) without TensorFlow's C++ start-up banner on the terminal.

    TF_CPP_MIN_LOG_LEVEL does not silence absl's pre-initialisation warning or oneDNN's notice, so
    file descriptor 2 points at /dev/null while the import runs; a failed import still raises.
    """
    if "keras" in sys.modules:
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
            return keras.models.load_model(path, safe_mode=True)
        except Exception as exc:  # Keras raises many types for a bad file
            raise FedstepError(f"cannot load the model architecture (.keras, safe mode): {exc}") from exc


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
