"""Coordinate-wise trimmed mean (Yin et al. 2018, "Byzantine-Robust Distributed Learning: Towards
Optimal Statistical Rates"): for each coordinate, the k = floor(beta*n) largest and the k smallest of
the n deltas' values are cut and the rest averaged, unweighted (a client's example count does not
move it). Up to k updates per side can be arbitrary. Default beta 0.1 (with fewer than 10 updates
nothing is cut: the plain unweighted mean); 0 <= beta < 0.5, so n > 2k holds for every n >= 1 and
the strategy needs no more than one update (`min_updates`); to cut k per side, a round needs
n >= k / beta updates.

Reads the updates by slices: memory is one slice of every update (sorted) plus the step."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fedstep.core.strategies.aggregation import apply_step, coordinatewise, step_norm
from fedstep.core.strategies.base import Aggregate, GlobalModel, ServerState, Strategy, Updates


@dataclass(frozen=True)
class TrimmedMeanParams:
    beta: float = field(
        default=0.1,
        metadata={
            "help": "fraction beta cut from each end, per coordinate: floor(beta*n) values each side; 0 <= beta < 0.5"
        },
    )


class TrimmedMean(Strategy):
    """x <- x + mean of the n - 2k middle values of each coordinate, k = floor(beta*n). Default beta 0.1."""

    name = "trimmed_mean"
    summary = "coordinate-wise beta-trimmed mean of the updates, unweighted (Yin et al. 2018)"
    Params = TrimmedMeanParams
    access = "slices"
    sliceable = True
    accepts_sparse = False
    sparse_refusal = "trims each coordinate's extremes, which among sparse updates are the few non-zero values"
    secure_aggregation = False
    secure_refusal = "trims each coordinate's extremes among the updates, which needs each update"

    def check(self, params: Any) -> None:
        if not 0 <= params.beta < 0.5:
            raise ValueError(f"parameter 'beta' of strategy {self.name!r} must be in [0, 0.5), got {params.beta}")

    def aggregate(
        self, round_number: int, global_model: GlobalModel, state: ServerState, updates: Updates
    ) -> Aggregate:
        n = len(updates.accepted())
        if n == 0:
            raise ValueError("no updates to aggregate")
        cut = math.floor(self.params.beta * n)
        if n - 2 * cut < 1:
            raise ValueError(
                f"parameter 'beta' {self.params.beta} cuts {cut} values from each side of {n} updates: none is left"
            )

        def trimmed(rows: np.ndarray, weights: np.ndarray) -> np.ndarray:
            kept = np.sort(rows, axis=0)[cut : n - cut]  # sorted: the same sum whatever the updates' order
            return kept.astype(np.float64).sum(axis=0) / (n - 2 * cut)

        step = coordinatewise(updates, trimmed)
        norm = step_norm(step)
        measurements = {"step_norm": norm, "trimmed_per_side": float(cut)}
        return Aggregate(apply_step(global_model, step), ServerState(), measurements)
