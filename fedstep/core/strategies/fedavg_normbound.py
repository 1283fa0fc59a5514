"""Norm-bounded FedAvg (Sun et al. 2019, "Can You Really Backdoor Federated Learning?"): each delta is
clipped to the L2 norm `max_norm` (scaled by min(1, max_norm / ||delta_i||), over all its tensors), then
the example-weighted mean is taken:

    x <- x + sum n_i min(1, M / ||delta_i||) delta_i / sum n_i

A boosted (scaled-up) update then moves the model at most as far as an honest one of norm M.
Default max_norm M = 1.0; tune it to a little above the norm of the honest updates (the round's
measurement "largest_norm" shows the largest norm before clipping).

One pass: each update's norm, then the update added with its weight times its clip factor (the
update's buffer is not modified). By slices (a sliced run): a first sweep sums every update's
squares, a second one takes the clipped mean. This clip is the strategy's own, after the run's
bounds (`max_update_norm`) have been applied.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fedstep.core.strategies.aggregation import Step, add_weighted, apply_step, coordinatewise, step_norm
from fedstep.core.strategies.base import Aggregate, GlobalModel, ServerState, Strategy, Updates
from fedstep.core.tensors import l2_norm


@dataclass(frozen=True)
class NormBoundParams:
    max_norm: float = field(
        default=1.0, metadata={"help": "each update's delta is clipped to this L2 norm (> 0) before averaging"}
    )


def _clip_factors(norms: np.ndarray, max_norm: float) -> np.ndarray:
    return np.minimum(1.0, max_norm / np.maximum(norms, np.finfo(np.float64).tiny))


class NormBoundedFedAvg(Strategy):
    """x <- x + sum n_i min(1, M/||delta_i||) delta_i / sum n_i. Default max_norm M = 1.0."""

    name = "fedavg_normbound"
    summary = "FedAvg of the updates clipped to an L2 norm (Sun et al. 2019, Can You Really Backdoor FL?)"
    Params = NormBoundParams
    secure_aggregation = False
    secure_refusal = "clips each update to its own norm bound, which needs each update's norm"

    def check(self, params: Any) -> None:
        if not params.max_norm > 0:
            raise ValueError(f"parameter 'max_norm' of strategy {self.name!r} must be > 0, got {params.max_norm}")

    def aggregate(
        self, round_number: int, global_model: GlobalModel, state: ServerState, updates: Updates
    ) -> Aggregate:
        max_norm = float(self.params.max_norm)
        step, norms = self._sliced(updates, max_norm) if updates.sliced else self._one_pass(updates, max_norm)
        norm = step_norm(step)
        measurements = {
            "step_norm": norm,
            "clipped": float(np.count_nonzero(norms > max_norm)),
            "largest_norm": float(norms.max()),
        }
        return Aggregate(apply_step(global_model, step), ServerState(), measurements)

    @staticmethod
    def _one_pass(updates: Updates, max_norm: float) -> tuple[Step, np.ndarray]:
        sums = {name: np.zeros(shape, dtype=np.float64) for name, shape in updates.spec.shapes.items()}
        total, norms, iterator = 0.0, [], iter(updates)
        while (update := next(iterator, None)) is not None:
            norm = l2_norm(update.delta)
            factor = float(_clip_factors(np.array([norm]), max_norm)[0])
            for name, acc in sums.items():
                add_weighted(acc, float(update.num_examples) * factor, update.delta[name])
            total += float(update.num_examples)
            norms.append(norm)
            update = None  # one update in memory at a time
        if total == 0:
            raise ValueError("no updates to aggregate")
        for acc in sums.values():
            acc /= total
        return sums, np.array(norms)

    @staticmethod
    def _sliced(updates: Updates, max_norm: float) -> tuple[Step, np.ndarray]:
        accepted = updates.accepted()
        if not accepted:
            raise ValueError("no updates to aggregate")
        squares = np.zeros(len(accepted), dtype=np.float64)
        for name, shape in updates.spec.shapes.items():
            size = int(np.prod(shape, dtype=np.int64))
            for start in range(0, size, updates.slice_elements):
                rows = updates.slice(name, start, min(size, start + updates.slice_elements)).astype(np.float64)
                squares += np.einsum("ij,ij->i", rows, rows)
        norms = np.sqrt(squares)
        factors = _clip_factors(norms, max_norm)

        def clipped_mean(rows: np.ndarray, weights: np.ndarray) -> np.ndarray:
            return ((weights * factors) @ rows.astype(np.float64)) / weights.sum()

        return coordinatewise(updates, clipped_mean), norms
