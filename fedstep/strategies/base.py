"""The strategy interface: how a round's accepted updates become the next global model.

A strategy sees updates one at a time (an iterator that loads each file only when asked for it),
so aggregation memory is O(model size), not O(clients x model size). It works on whatever named
tensors it is given, so the same code aggregates a slice of every tensor when a large model is
aggregated in parallel slices.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass

from fedstep.tensors import Tensors


@dataclass(frozen=True)
class ClientUpdate:
    """One client's validated weights after local training on `num_examples` examples."""

    client_id: str
    num_examples: int
    weights: Tensors


class Strategy(ABC):
    """Turns the global model of round r-1 and the updates of round r into the global model of round r."""

    name: str = ""

    @abstractmethod
    def aggregate(self, global_weights: Tensors, updates: Iterable[ClientUpdate]) -> Tensors:
        """Consume `updates` once, in order; raise ValueError if there are none."""
