"""The strategy interface (DESIGN "The core's extension points"): how a round's accepted updates and
the strategy's state become the next global model, the next state and the round's measurements.

An update is a client's *delta*: its trained weights minus the round's global weights (float32),
already validated and bounded by the run's settings (weight capped, norm clipped). A strategy reads
the updates through `Updates`, in one of two ways:
- one pass (`for update in updates`), one update in memory at a time: O(model) memory, for the
  averaging strategies;
- random access to one slice of one tensor of every accepted update (`updates.slice(...)`), read
  with ranged reads at O(clients x slice) memory, for coordinate-wise and distance-based strategies
  (median, trimmed mean, Krum) and for models larger than one function's memory.
It reads the global weights only when it needs them (`GlobalModel.load`).

A strategy is configured once per run by name and typed parameters (`Params`, a frozen dataclass
whose fields have defaults and a `help` text); `fedstep strategies` lists them. Its state between
rounds (`ServerState`: optimizer moments, counters) is persisted per round, written once, and read
back by the next round - also by the first round of a resumed run - so a run continues it bit for
bit. `configure_round` gives the clients per-round instructions (e.g. FedProx's proximal term); they
travel in the round message.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

import numpy as np

from fedstep.core import tensors
from fedstep.core.errors import InvalidUpdate
from fedstep.core.tensors import Tensors, TensorSpec
from fedstep.core.version import SCHEMA_VERSION

Scalar = bool | int | float | str
Instructions = dict[str, Scalar]
"""Per-round instructions for the clients, e.g. {"proximal_mu": 0.01}; small and flat (they travel in
the round message)."""


@dataclass(frozen=True)
class ClientUpdate:
    """One client's validated update: `delta` (trained minus global weights, float32, possibly
    views into the downloaded file) after local training on `num_examples` examples (capped by the
    run's `max_examples`)."""

    client_id: str
    num_examples: int
    delta: Tensors
    privacy: dict[str, float] = field(default_factory=dict)
    """What the client reported of its privacy (`fedstep.core.schemas.PRIVACY_FIELDS`)."""


@dataclass(frozen=True)
class UpdateInfo:
    """An accepted update without its data: who sent it and the examples it is weighted by."""

    client_id: str
    num_examples: int


@dataclass(frozen=True)
class GlobalModel:
    """The round's input model: its tensor names and shapes, and its weights on demand."""

    spec: TensorSpec
    load: Callable[[], Tensors]


class Updates(Protocol):
    """The round's updates, validated and bounded (implemented by `fedstep.core.update_source`)."""

    spec: TensorSpec
    sliced: bool
    """True when the run aggregates by slices (a model larger than one function's memory): the
    averaging strategies then use `slice` too."""
    slice_elements: int
    """Elements per tensor slice a strategy should ask for at a time."""

    def __iter__(self) -> Iterator[ClientUpdate]:
        """One pass over the updates, validating each as it is read; drop each before the next."""
        ...

    def accepted(self) -> list[UpdateInfo]:
        """The accepted updates, in a fixed order (validating them all first if no pass has yet)."""
        ...

    def slice(self, name: str, start: int, stop: int) -> np.ndarray:
        """Elements [start, stop) of the flattened tensor `name` of every accepted update, as a
        float32 array of shape (len(accepted()), stop - start), bounded like the pass's deltas."""
        ...


@dataclass(frozen=True)
class ServerState:
    """A strategy's state between rounds: `tensors` (float32, e.g. optimizer moments, named freely)
    and small JSON `values` (e.g. a step counter). Empty before the first round."""

    tensors: Tensors = field(default_factory=dict)
    values: dict[str, Scalar] = field(default_factory=dict)

    def encode(self, strategy: str) -> bytes:
        """A safetensors file holding the tensors, with the values and the strategy's name in its
        metadata; deterministic (equal states give equal bytes)."""
        return tensors.encode(
            self.tensors, {"schema": SCHEMA_VERSION, "kind": "state", "strategy": strategy, "values": self.values}
        )

    @classmethod
    def decode(cls, data: bytes, strategy: str) -> ServerState:
        """The state in `data` (written by `encode`); InvalidUpdate if it is not a state of `strategy`."""
        metadata = tensors.read_metadata(data)
        if metadata.get("kind") != "state" or metadata.get("strategy") != strategy:
            raise InvalidUpdate(
                f"not a server state of strategy {strategy!r} (kind {metadata.get('kind')!r}, "
                f"strategy {metadata.get('strategy')!r})"
            )
        values = metadata.get("values", {})
        if not isinstance(values, dict):
            raise InvalidUpdate("server state values are not an object")
        return cls(tensors.decode(data, max_bytes=len(data)), dict(values))

    def equals(self, other: ServerState) -> bool:
        """Bit-for-bit equality of the tensors and equality of the values."""
        return (
            json.dumps(self.values, sort_keys=True) == json.dumps(other.values, sort_keys=True)
            and self.tensors.keys() == other.tensors.keys()
            and all(np.array_equal(self.tensors[k], other.tensors[k]) for k in self.tensors)
        )


@dataclass(frozen=True)
class Aggregate:
    """What a strategy returns: the new global weights (float32), its state for the next round, and
    the round's measurements (a few named numbers, shown in the round summary, `fedstep status`
    and the report; e.g. the server learning step's norm, or how many updates Krum selected)."""

    weights: Tensors
    state: ServerState = field(default_factory=ServerState)
    measurements: dict[str, float] = field(default_factory=dict)
    kept: list[str] | None = None
    """The clients whose updates made the step, when the strategy keeps some and drops the others
    (Krum, Multi-Krum): client ids of accepted updates, each once. None: every accepted update counted.
    The round summary's `kept`."""


@dataclass(frozen=True)
class NoParams:
    """A strategy without parameters."""


class Strategy(ABC):
    """Turns the global model of round r-1, the state after round r-1 and the updates of round r into
    the global model and state of round r. Subclasses set `name`, `summary`, `Params` (a frozen
    dataclass of typed fields with defaults) and `access`."""

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    """One line for `fedstep strategies`, naming the paper."""
    Params: ClassVar[type] = NoParams
    access: ClassVar[str] = "pass"
    """"pass" (one pass, O(model)) or "slices" (O(clients x slice)): how it reads the updates."""
    sliceable: ClassVar[bool] = False
    """Whether each output weight depends on that weight alone (of the global model and the updates)
    and there is no state: then a model larger than one function is aggregated by a fan-out of
    slices, each a model of its own (`fedstep.core.sliced`)."""
    accepts_sparse: ClassVar[bool] = True
    """Whether it can aggregate sparse updates (a top-k codec: most coordinates zero). Averages can;
    a strategy that chooses per coordinate or by distance among updates cannot (`fedstep start`
    refuses the pair, saying `sparse_refusal`)."""
    sparse_refusal: ClassVar[str] = ""
    """Why not, when it cannot: the end of "--codec topk:0.1 sends sparse updates, and median ..."."""
    secure_aggregation: ClassVar[bool] = True
    """Whether it can aggregate under secure aggregation, where the server sees only the (weighted)
    sum of a round's updates: a strategy that takes its step from their mean can; one that reads each
    update (its coordinates, its distances, its norm) cannot (`fedstep start` refuses the pair,
    saying `secure_refusal`)."""
    secure_refusal: ClassVar[str] = ""
    """Why not, when it cannot: the end of "--secure-aggregation shows the server only the sum of a
    round's updates, and median ..."."""

    def __init__(self, params: Any = None) -> None:
        self.params = params if params is not None else self.Params()
        self.check(self.params)

    def check(self, params: Any) -> None:  # noqa: B027 - optional hook
        """Raise ValueError naming the parameter when `params` cannot work (e.g. a negative rate)."""

    def min_updates(self) -> tuple[int, str]:
        """The fewest accepted updates this strategy can aggregate with its parameters, and why (for
        the messages that name it). A run's `min_participants` may not be lower (`fedstep start`), and
        a round left with fewer valid updates fails as TooFewParticipants, retried like a quorum miss.
        Default: 1."""
        return 1, ""

    def configure_round(self, round_number: int, state_values: dict[str, Scalar]) -> Instructions:
        """Instructions for the clients of round `round_number`, from the state's values after the
        previous round (its tensors are not loaded to publish a round). Default: none."""
        return {}

    @abstractmethod
    def aggregate(
        self, round_number: int, global_model: GlobalModel, state: ServerState, updates: Updates
    ) -> Aggregate:
        """The round's result. Raise ValueError if there are no updates to aggregate."""
