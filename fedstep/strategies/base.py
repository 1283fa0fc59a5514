"""The strategy interface: how a round's accepted updates become the next global model.

An update is a client's *delta*: its trained weights minus the round's global weights (float32).
A strategy sees the updates one at a time (an iterator that reads each file only when asked for
it), already validated and bounded by the run's settings (weight capped, norm clipped), so
aggregation memory is O(model size), not O(clients x model size) - provided the strategy drops each
update before it asks for the next (see FedAvg: a `for` loop variable would keep the previous one
alive while the next is read). It reads the global weights only
when it needs them (`GlobalModel.load`), so a strategy that accumulates first holds at most its
accumulator, one update and then the global model.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from fedstep.tensors import Tensors, TensorSpec


@dataclass(frozen=True)
class ClientUpdate:
    """One client's validated update: `delta` (trained minus global weights, float32, possibly
    views into the downloaded file) after local training on `num_examples` examples (capped by the
    run's `max_examples`)."""

    client_id: str
    num_examples: int
    delta: Tensors


@dataclass(frozen=True)
class GlobalModel:
    """The round's input model: its tensor names and shapes, and its weights on demand."""

    spec: TensorSpec
    load: Callable[[], Tensors]


class Strategy(ABC):
    """Turns the global model of round r-1 and the updates of round r into the global model of round r."""

    name: str = ""

    @abstractmethod
    def aggregate(self, global_model: GlobalModel, updates: Iterable[ClientUpdate]) -> Tensors:
        """Consume `updates` once, in order; return the new weights (float32). Raise ValueError if
        there are none."""
