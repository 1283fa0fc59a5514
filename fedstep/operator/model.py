"""The model a run starts from: the user's `module:function`, checked, and its files."""

from __future__ import annotations

from typing import Any

from fedstep.core import tensors
from fedstep.core.errors import FedstepError
from fedstep.core.imports import load_callable


def build_model(model_ref: str, seed: int | None = None) -> Any:
    """Call the user's `module:function` and check it returns a compiled Keras model.

    With `seed`, Keras' random generators are seeded first, so the initial weights are reproducible."""
    if seed is not None:
        from client_agent.keras_model import import_keras

        import_keras().utils.set_random_seed(seed)
    model = load_callable(model_ref, "model")()
    if not hasattr(model, "save") or not hasattr(model, "weights"):
        raise FedstepError(f"model {model_ref!r} must return a Keras model, got {type(model).__name__}")
    if getattr(model, "optimizer", None) is None or not getattr(model, "compiled", True):
        raise FedstepError(f"model {model_ref!r} must return a compiled model (call model.compile(...))")
    return model


def keras_payload(model: Any) -> tuple[bytes, tensors.Tensors]:
    """The `.keras` architecture file and the initial weights of a Keras model."""
    from client_agent.keras_model import get_tensors, model_to_bytes

    return model_to_bytes(model), get_tensors(model)
