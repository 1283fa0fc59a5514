"""What each client's local training does in a run (epochs, batch size, its train function's
parameters)."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

from fedstep.core import limits
from fedstep.core.schemas.refs import ObjectRef
from fedstep.core.schemas.validation import InvalidMessage, optional_number, positive_int, short_str


@dataclass(frozen=True)
class TrainingConfig:
    """Local training settings sent with every round. Defaults: 1 epoch, batch 32, no learning rate.
    `epochs` lies in 1-`limits.MAX_EPOCHS` (1000), `batch_size` in 1-`limits.MAX_BATCH_SIZE` (65,536):
    `fedstep start` refuses more, and an agent refuses a round message asking more.

    `learning_rate` None (null on the wire): the model's own optimizer keeps the learning rate it was
    compiled with; a number (> 0) replaces it for the round.

    `params` are the operator's settings for the clients' train functions (`--train-param NAME=VALUE`):
    at most `limits.MAX_TRAIN_PARAMS`, each named like a Python identifier (at most 64 characters)
    with a boolean, a finite number or a text of at most `limits.MAX_TRAIN_PARAM_CHARS` characters.

    `standardize` is how each client scales its features before training and evaluation: "none"
    (default: as they are), "local" (its own mean and standard deviation) or "federated" (the
    statistics of every client, `fedstep.core.statistics`, in the object `standardization`, which
    the agent reads and checks by its sha256).

    `instructions` are the strategy's instructions for this round (e.g. FedProx's `proximal_mu`):
    the agent sets them from the round message before it calls the train function; they are never
    read from the wire as part of this object."""

    epochs: int = 1
    batch_size: int = 32
    learning_rate: float | None = None
    params: dict[str, Any] = field(default_factory=dict)
    standardize: str = "none"
    standardization: ObjectRef | None = None
    instructions: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name, most in (("epochs", limits.MAX_EPOCHS), ("batch_size", limits.MAX_BATCH_SIZE)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= most:
                raise InvalidMessage(f"training config: {name} must be a whole number from 1 to {most}, got {value!r}")
        if not (self.learning_rate is None or 0 < self.learning_rate < math.inf):
            raise InvalidMessage(f"training config: learning_rate must be > 0 or null, got {self.learning_rate}")
        _check_train_params(self.params)
        if self.standardize not in STANDARDIZE_MODES:
            raise InvalidMessage(
                f"training config: standardize must be one of {', '.join(STANDARDIZE_MODES)}, got {self.standardize!r}"
            )
        if (self.standardize == "federated") != (self.standardization is not None):
            raise InvalidMessage("training config: standardize 'federated' goes with a standardization object, only")

    @classmethod
    def parse(cls, data: Any, where: str = "training") -> TrainingConfig:
        params = data.get("params", {}) if isinstance(data, dict) else {}
        if not isinstance(params, dict):
            raise InvalidMessage(f"{where}: params must be an object")
        standardization = data.get("standardization") if isinstance(data, dict) else None
        return cls(
            epochs=positive_int(data, "epochs", where, 1, limits.MAX_EPOCHS),
            batch_size=positive_int(data, "batch_size", where, 1, limits.MAX_BATCH_SIZE),
            learning_rate=optional_number(data, "learning_rate", where),
            params=params,
            standardize=short_str(data, "standardize", where, 16) if "standardize" in data else "none",
            standardization=None
            if standardization is None
            else ObjectRef.parse(standardization, f"{where} standardization"),
        )


STANDARDIZE_MODES = ("none", "local", "federated")
"""How clients scale their features (`TrainingConfig.standardize`)."""


_PARAM_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")


def _check_train_params(params: Any) -> None:
    """`TrainingConfig.params`: bounded, named like identifiers, scalar values (InvalidMessage otherwise)."""
    if not isinstance(params, dict):
        raise InvalidMessage("training params must be an object of name -> value")
    if len(params) > limits.MAX_TRAIN_PARAMS:
        raise InvalidMessage(f"training params: {len(params)} given, at most {limits.MAX_TRAIN_PARAMS}")
    for name, value in params.items():
        if not isinstance(name, str) or not _PARAM_NAME.fullmatch(name):
            raise InvalidMessage(f"training param {str(name)[:80]!r}: a name is letters, digits and _ (at most 64)")
        scalar = isinstance(value, bool | int | str) or (isinstance(value, float) and math.isfinite(value))
        if not scalar:
            raise InvalidMessage(f"training param {name}: a value is a boolean, a finite number or a text")
        if isinstance(value, str) and len(value) > limits.MAX_TRAIN_PARAM_CHARS:
            raise InvalidMessage(f"training param {name}: a text of at most {limits.MAX_TRAIN_PARAM_CHARS} characters")
