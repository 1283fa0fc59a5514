"""FedAvg (McMahan et al., 2017): the global weights plus the example-weighted mean of the deltas."""

from __future__ import annotations

from fedstep.core.strategies.aggregation import apply_step, step_norm, weighted_mean
from fedstep.core.strategies.base import Aggregate, GlobalModel, ServerState, Strategy, Updates


class FedAvg(Strategy):
    """Weighted mean of the deltas, accumulated in float32 in place one update at a time (or by slices for a
    sliced run); the new weights are the global weights plus that mean, returned as float32."""

    name = "fedavg"
    summary = "example-weighted mean of the updates (McMahan et al. 2017)"
    sliceable = True

    def aggregate(
        self, round_number: int, global_model: GlobalModel, state: ServerState, updates: Updates
    ) -> Aggregate:
        step = weighted_mean(updates)
        norm = step_norm(step)
        return Aggregate(apply_step(global_model, step), ServerState(), {"step_norm": norm})
