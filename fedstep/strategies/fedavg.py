"""FedAvg (McMahan et al., 2017): the global weights plus the example-weighted mean of the deltas."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from fedstep.strategies.base import ClientUpdate, GlobalModel, Strategy
from fedstep.tensors import CHUNK_ELEMENTS, Tensors, chunks


def add_weighted(acc: np.ndarray, weight: float, values: np.ndarray) -> None:
    """acc += weight * values, with the product and the sum in float64 (values may be float32),
    a chunk at a time so the temporary is small (`tensors.CHUNK_ELEMENTS`)."""
    tmp = np.empty(min(CHUNK_ELEMENTS, acc.size), dtype=np.float64)
    for acc_part, part in zip(chunks(acc), chunks(values), strict=True):
        out = tmp[: part.size]
        np.multiply(part, np.float64(weight), out=out, dtype=np.float64)
        acc_part += out


def _accumulate(sums: dict[str, np.ndarray], update: ClientUpdate) -> float:
    """Add one update's weighted delta to the sums; its weight."""
    for name, acc in sums.items():
        add_weighted(acc, float(update.num_examples), update.delta[name])
    return float(update.num_examples)


class FedAvg(Strategy):
    """Weighted mean of the deltas, accumulated in float64 one update at a time; the new weights are
    the global weights plus that mean, returned as float32."""

    name = "fedavg"

    def aggregate(self, global_model: GlobalModel, updates: Iterable[ClientUpdate]) -> Tensors:
        sums = {name: np.zeros(shape, dtype=np.float64) for name, shape in global_model.spec.shapes.items()}
        total, iterator = 0.0, iter(updates)
        while (update := next(iterator, None)) is not None:
            total += _accumulate(sums, update)
            update = None  # let its buffer go before the next update is read: one update in memory at a time
        if total == 0:
            raise ValueError("no updates to aggregate")
        weights = global_model.load()
        for name in list(sums):
            acc = sums.pop(name)  # freed as soon as its tensor is done: the peak stays near the accumulator
            acc /= total
            # new = global + mean delta, computed in float64 and written over the global weights
            # (float32) in place: no third copy of the model
            with np.errstate(over="ignore"):  # an overflow gives inf, which the caller refuses to publish
                np.add(weights[name], acc, out=weights[name], dtype=np.float64, casting="unsafe")
        return weights
