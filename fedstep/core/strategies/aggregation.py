"""Building blocks the strategies share: the weighted mean of the deltas (one pass or by slices),
a coordinate-wise combination over slices, and applying a step to the global weights in place.

Sums are taken in float64, a chunk at a time, so temporaries stay small (`tensors.CHUNK_ELEMENTS`).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from fedstep.core.strategies.base import GlobalModel, Updates
from fedstep.core.tensors import CHUNK_ELEMENTS, Tensors, chunks

Step = dict[str, np.ndarray]
"""A float64 step per tensor (same names and shapes as the model)."""


def add_weighted(acc: np.ndarray, weight: float, values: np.ndarray) -> None:
    """acc += weight * values, with the product and the sum in float64 (values may be float32),
    a chunk at a time so the temporary is small."""
    tmp = np.empty(min(CHUNK_ELEMENTS, acc.size), dtype=np.float64)
    for acc_part, part in zip(chunks(acc), chunks(values), strict=True):
        out = tmp[: part.size]
        np.multiply(part, np.float64(weight), out=out, dtype=np.float64)
        acc_part += out


def coordinatewise(updates: Updates, combine: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> Step:
    """Each tensor's step from `combine(rows, weights)`, called per slice: `rows` holds the slice of
    every accepted update (float32, clients x elements), `weights` their examples (float64); it
    returns the slice's step (elements,). Memory: one slice of every update, plus the step."""
    accepted = updates.accepted()
    if not accepted:
        raise ValueError("no updates to aggregate")
    weights = np.array([u.num_examples for u in accepted], dtype=np.float64)
    step: Step = {}
    for name, shape in updates.spec.shapes.items():
        out = np.empty(int(np.prod(shape, dtype=np.int64)), dtype=np.float64)
        for start in range(0, out.size, updates.slice_elements):
            stop = min(out.size, start + updates.slice_elements)
            out[start:stop] = combine(updates.slice(name, start, stop), weights)
        step[name] = out.reshape(shape)
    return step


def _mean_of_rows(rows: np.ndarray, weights: np.ndarray) -> np.ndarray:
    return (weights @ rows.astype(np.float64)) / weights.sum()


def weighted_mean(updates: Updates) -> Step:
    """The example-weighted mean of the deltas: one pass (one update in memory at a time), or by
    slices when `updates.sliced`. ValueError if there are no updates."""
    if updates.sliced:
        return coordinatewise(updates, _mean_of_rows)
    sums = {name: np.zeros(shape, dtype=np.float64) for name, shape in updates.spec.shapes.items()}
    total, iterator = 0.0, iter(updates)
    while (update := next(iterator, None)) is not None:
        for name, acc in sums.items():
            add_weighted(acc, float(update.num_examples), update.delta[name])
        total += float(update.num_examples)
        update = None  # let its buffer go before the next update is read: one update in memory at a time
    if total == 0:
        raise ValueError("no updates to aggregate")
    for acc in sums.values():
        acc /= total
    return sums


def apply_step(global_model: GlobalModel, step: Step, scale: float = 1.0) -> Tensors:
    """The global weights plus `scale` x `step`, computed in float64 and written over the global
    weights (float32) in place: no third copy of the model. Each step tensor is dropped from `step`
    once applied, so the peak stays near the step's size."""
    weights = global_model.load()
    for name in list(step):
        delta = step.pop(name)
        if scale != 1.0:
            delta *= scale
        # an overflow gives inf, which the caller refuses to publish
        with np.errstate(over="ignore", invalid="ignore"):
            np.add(weights[name], delta, out=weights[name], dtype=np.float64, casting="unsafe")
    return weights


def step_norm(step: Step) -> float:
    """The L2 norm of a step, over all tensors."""
    return float(np.sqrt(sum(float(np.dot(p, p)) for t in step.values() for p in chunks(t))))
