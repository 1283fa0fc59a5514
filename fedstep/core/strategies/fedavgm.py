"""FedAvgM (Hsu et al. 2019, "Measuring the Effects of Non-Identical Data Distribution for Federated
Visual Classification"): FedAvg with server momentum.

With delta the example-weighted mean of the round's deltas:

    v <- beta v + delta
    x <- x + eta v

v is 0 before the first round (so the first round is FedAvg with the step scaled by eta), and is kept
per model tensor in the server state ("momentum/<tensor>", float32). Defaults: server_learning_rate
eta = 1.0, server_momentum beta = 0.9.

Memory: the mean delta (float64, turned into the step in place), v (float32, updated in place) and
the global weights.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fedstep.core.strategies.aggregation import apply_step, step_norm, weighted_mean
from fedstep.core.strategies.base import Aggregate, GlobalModel, ServerState, Strategy, Updates
from fedstep.core.strategies.fedopt import state_tensors
from fedstep.core.tensors import chunks


@dataclass(frozen=True)
class FedAvgMParams:
    server_learning_rate: float = field(default=1.0, metadata={"help": "server learning rate eta (> 0)"})
    server_momentum: float = field(default=0.9, metadata={"help": "server momentum beta, in [0, 1) (0: FedAvg)"})


class FedAvgM(Strategy):
    """v <- beta v + delta; x <- x + eta v, delta the example-weighted mean delta and v = 0 at first.
    Defaults: server_learning_rate 1.0, server_momentum 0.9."""

    name = "fedavgm"
    summary = "FedAvg with server momentum (Hsu et al. 2019)"
    Params = FedAvgMParams

    def check(self, params: Any) -> None:
        if not params.server_learning_rate > 0:
            raise ValueError(
                f"parameter 'server_learning_rate' of strategy {self.name!r} must be > 0, "
                f"got {params.server_learning_rate}"
            )
        if not 0 <= params.server_momentum < 1:
            raise ValueError(
                f"parameter 'server_momentum' of strategy {self.name!r} must be in [0, 1), got {params.server_momentum}"
            )

    def aggregate(
        self, round_number: int, global_model: GlobalModel, state: ServerState, updates: Updates
    ) -> Aggregate:
        step = weighted_mean(updates)  # delta, float64; becomes the step in place below
        delta_norm = step_norm(step)
        eta, beta = self.params.server_learning_rate, self.params.server_momentum
        momentum = state_tensors(state, updates.spec, {"momentum": 0.0})
        with np.errstate(over="ignore", invalid="ignore"):  # an overflow gives inf, refused by the caller
            for name, delta in step.items():
                for d, v in zip(chunks(delta), chunks(momentum[f"momentum/{name}"]), strict=True):
                    v[...] = beta * v.astype(np.float64) + d
                    d[...] = eta * v.astype(np.float64)  # from v as stored: a resumed run continues bit for bit
        norm = step_norm(step)
        weights = apply_step(global_model, step)
        return Aggregate(weights, ServerState(momentum), {"step_norm": norm, "mean_delta_norm": delta_norm})
