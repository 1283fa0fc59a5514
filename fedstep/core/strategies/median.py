"""Coordinate-wise median (Yin et al. 2018, "Byzantine-Robust Distributed Learning: Towards Optimal
Statistical Rates"): each coordinate of the step is the median of that coordinate over the round's
deltas (for an even number of updates, the mean of the two middle values), unweighted: a client's
example count does not move it. Fewer than half of the updates, however large, cannot pull a
coordinate outside the range of the other updates' values.

Reads the updates by slices: memory is one slice of every update plus the step."""

from __future__ import annotations

import numpy as np

from fedstep.core.strategies.aggregation import apply_step, coordinatewise, step_norm
from fedstep.core.strategies.base import Aggregate, GlobalModel, ServerState, Strategy, Updates


def _median(rows: np.ndarray, weights: np.ndarray) -> np.ndarray:
    return np.median(rows.astype(np.float64), axis=0)


class Median(Strategy):
    """x <- x + median_i(delta_i), coordinate-wise and unweighted. No parameters."""

    name = "median"
    summary = "coordinate-wise median of the updates, unweighted (Yin et al. 2018)"
    access = "slices"
    sliceable = True
    accepts_sparse = False
    sparse_refusal = "takes the coordinate-wise median, which of sparse updates is almost all zeros"
    secure_aggregation = False
    secure_refusal = "takes the coordinate-wise median of the updates, which needs each update"

    def aggregate(
        self, round_number: int, global_model: GlobalModel, state: ServerState, updates: Updates
    ) -> Aggregate:
        step = coordinatewise(updates, _median)
        norm = step_norm(step)
        return Aggregate(apply_step(global_model, step), ServerState(), {"step_norm": norm})
