"""`Updates` over updates already in memory: for unit tests and in-process simulations. A run reads
its updates through `fedstep.core.update_source.UpdateSource` instead (files checked, then read
once or by slices)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from fedstep.core.strategies.base import ClientUpdate, UpdateInfo
from fedstep.core.tensors import TensorSpec


@dataclass
class UpdateList:
    """These updates, in this order; `spec` defaults to the first update's names and shapes."""

    updates: list[ClientUpdate]
    spec: TensorSpec | None = None  # type: ignore[assignment]
    sliced: bool = False
    slice_elements: int = 1 << 20

    def __post_init__(self) -> None:
        if self.spec is None:
            self.spec = TensorSpec.of(self.updates[0].delta) if self.updates else TensorSpec({})

    def __iter__(self) -> Iterator[ClientUpdate]:
        return iter(self.updates)

    def accepted(self) -> list[UpdateInfo]:
        return [UpdateInfo(u.client_id, u.num_examples) for u in self.updates]

    def slice(self, name: str, start: int, stop: int) -> np.ndarray:
        return np.stack([u.delta[name].reshape(-1)[start:stop] for u in self.updates]).astype(np.float32)
