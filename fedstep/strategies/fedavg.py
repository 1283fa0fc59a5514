"""FedAvg (McMahan et al., 2017): the example-weighted mean of the clients' weights."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from fedstep.strategies.base import ClientUpdate, Strategy
from fedstep.tensors import DTYPE, Tensors


class FedAvg(Strategy):
    """Weighted mean, accumulated in float64 one update at a time, returned as float32."""

    name = "fedavg"

    def aggregate(self, global_weights: Tensors, updates: Iterable[ClientUpdate]) -> Tensors:
        sums = {name: np.zeros(t.shape, dtype=np.float64) for name, t in global_weights.items()}
        total = 0
        for update in updates:
            weight = float(update.num_examples)
            for name, acc in sums.items():
                acc += weight * update.weights[name]
            total += update.num_examples
        if total == 0:
            raise ValueError("no updates to aggregate")
        return {name: (acc / total).astype(DTYPE) for name, acc in sums.items()}
