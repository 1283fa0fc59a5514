"""The round's Keras model, kept warm across rounds.

Loading a `.keras` file, compiling it and tracing its train and evaluate functions cost more than a
small model's whole round. `WarmModel` loads an architecture once (keyed by its sha256) and keeps
the compiled model, so Keras traces `fit` and `evaluate` once per architecture and batch shape, not
once per round. Before every later round the model gets everything but its weights back as it was
right after loading: the optimizer's variables (iteration count, learning rate, momentum and other
slots: a fresh optimizer, as DESIGN's round semantics require) and the variables that are not
weights (a dropout layer's seed state). The caller then sets the round's global weights. A round
therefore trains exactly as on a freshly loaded model (tests/test_warm_model.py checks it bit for
bit). A new architecture replaces the kept model; one model is kept at a time.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np


class WarmModel:
    """One compiled Keras model, reset to its loaded state for each round (see the module doc)."""

    def __init__(self) -> None:
        self._sha256: str | None = None
        self._model: Any = None
        self._initial: list[tuple[Any, np.ndarray]] = []
        self.loads = 0
        """How many times an architecture was loaded (a measure of how warm the model stayed)."""

    def model(self, architecture: bytes) -> Any:
        """The compiled model of `architecture` in its just-loaded state (weights aside)."""
        from client_agent.keras_model import model_from_bytes

        sha256 = hashlib.sha256(architecture).hexdigest()
        if sha256 == self._sha256:
            for variable, value in self._initial:
                variable.assign(value)
            return self._model
        self._sha256, self._model, self._initial = None, None, []
        model = model_from_bytes(architecture)
        self.loads += 1
        if getattr(model, "optimizer", None) is not None:
            model.optimizer.build(model.trainable_variables)  # its slots exist now, so they can be reset
        weights = {id(v) for v in model.weights}
        state = [v for v in model.variables if id(v) not in weights]
        state += list(model.optimizer.variables) if getattr(model, "optimizer", None) is not None else []
        self._initial = [(v, np.array(v.numpy(), copy=True)) for v in state]
        self._sha256, self._model = sha256, model
        return model
