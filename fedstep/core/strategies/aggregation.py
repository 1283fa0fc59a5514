"""Building blocks the strategies share: the weighted mean of the deltas (one pass or by slices),
a coordinate-wise combination over slices, and applying a step to the global weights in place.

The weighted mean runs at memory speed: `accumulate` adds `weight x update` into a float32 sum in
place, a block at a time, so the product lives only in the CPU's cache (`ACCUMULATE_BLOCK`); one
pass over the update and the sum, no temporaries per update (`bench/aggregation_memory.py` measures
it against an in-place float32 sum of the same bytes). Its sum is float32: a relative error of
about 1e-7 per client added, far below what training notices. The one-pass and the sliced means
make the same float32 operations on every element in the same order, so they give the same bytes.
Other sums (norms, DP, norm-bounded FedAvg) are float64, a chunk at a time (`tensors.CHUNK_ELEMENTS`).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from fedstep.core import limits
from fedstep.core.strategies.base import GlobalModel, Updates
from fedstep.core.tensors import CHUNK_ELEMENTS, Tensors, chunks, l2_norm

Step = dict[str, np.ndarray]
"""A step per tensor (same names and shapes as the model): float32 from the weighted mean and the
coordinate-wise strategies, float64 where a strategy sums in float64."""

ACCUMULATE_BLOCK = 1 << 18
"""Elements `accumulate` multiplies at a time: a 1 MiB float32 product that stays in the cache."""


def accumulate(acc: np.ndarray, weight: np.float32, values: np.ndarray, block: np.ndarray | None = None) -> None:
    """acc += weight x values, in float32 and in place (`acc`, `values`: float32 of the same size;
    `block`: a float32 scratch of at least `ACCUMULATE_BLOCK` elements, allocated if None)."""
    flat_acc, flat = acc.reshape(-1), values.reshape(-1)
    if block is None:
        block = np.empty(min(ACCUMULATE_BLOCK, flat.size), dtype=np.float32)
    for start in range(0, flat.size, ACCUMULATE_BLOCK):
        part = flat[start : start + ACCUMULATE_BLOCK]
        product = block[: part.size]
        np.multiply(part, weight, out=product)
        target = flat_acc[start : start + part.size]
        np.add(target, product, out=target)


WEIGHT_SCALE = np.float32(1.0 / limits.MAX_EXAMPLES)
"""Examples are scaled by this power of two (2**-40, exactly) before the float32 multiply: an item
may claim at most `limits.MAX_EXAMPLES` (2**40) examples, so every weight is at most 1 and no product
is larger than the update's own value. An exact power of two changes no bit of the mean (barring
float32 underflow, below 1e-26 for one example). The weights of a round sum to at most the clients
times their cap times 2**-40 (1,000 clients at the default cap of 100,000: 1e-4), so the sum of
finite updates stays finite unless several of them near float32's largest value carry an
operator-set cap near 2**40."""


def mean_weight(examples: int) -> np.float32:
    """An update's weight in the float32 sum: its examples, rounded to float32, times `WEIGHT_SCALE`
    (at most 1)."""
    return np.float32(examples) * WEIGHT_SCALE


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
    returns the slice's step (elements,), stored as float32. Memory: one slice of every update,
    plus the step."""
    accepted = updates.accepted()
    if not accepted:
        raise ValueError("no updates to aggregate")
    weights = np.array([u.num_examples for u in accepted], dtype=np.float64)
    step: Step = {}
    for name, shape in updates.spec.shapes.items():
        out = np.empty(int(np.prod(shape, dtype=np.int64)), dtype=np.float32)
        for start in range(0, out.size, updates.slice_elements):
            stop = min(out.size, start + updates.slice_elements)
            out[start:stop] = combine(updates.slice(name, start, stop), weights)
        step[name] = out.reshape(shape)
    return step


def mean_of_rows(rows: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """The example-weighted mean of `rows` (float32, clients x elements) by `weights` (examples):
    the same float32 operations, in the same order, as the one-pass mean, element by element."""
    acc = np.zeros(rows.shape[1], dtype=np.float32)
    for row, examples in zip(rows, weights, strict=True):
        accumulate(acc, mean_weight(int(examples)), row)
    acc /= mean_weight(sum(int(w) for w in weights))
    return acc


def weighted_mean(updates: Updates) -> Step:
    """The example-weighted mean of the deltas (float32): one pass, one update in memory at a time
    beside the float32 sum (`accumulate`), or by slices when `updates.sliced`. ValueError if there
    are no updates."""
    if updates.sliced:
        return coordinatewise(updates, mean_of_rows)
    sums = {name: np.zeros(shape, dtype=np.float32) for name, shape in updates.spec.shapes.items()}
    largest = max((acc.size for acc in sums.values()), default=0)
    block = np.empty(min(ACCUMULATE_BLOCK, largest), dtype=np.float32)
    total, iterator = 0, iter(updates)
    while (update := next(iterator, None)) is not None:
        weight = mean_weight(update.num_examples)
        for name, acc in sums.items():
            accumulate(acc, weight, update.delta[name], block)
        total += update.num_examples
        update = None  # let its buffer go before the next update is read: one update in memory at a time
    if total == 0:
        raise ValueError("no updates to aggregate")
    for acc in sums.values():
        acc /= mean_weight(total)
    return sums


def apply_step(global_model: GlobalModel, step: Step, scale: float = 1.0) -> Tensors:
    """The global weights plus `scale` x `step`, computed in the step's precision and written over
    the global weights (float32) in place: no third copy of the model. Each step tensor is dropped from `step`
    once applied, so the peak stays near the step's size."""
    weights = global_model.load()
    for name in list(step):
        delta = step.pop(name)
        if scale != 1.0:
            delta *= scale
        # an overflow gives inf, which the caller refuses to publish
        with np.errstate(over="ignore", invalid="ignore"):
            np.add(weights[name], delta, out=weights[name], casting="unsafe")
    return weights


def step_norm(step: Step) -> float:
    """The L2 norm of a step, over all tensors (summed in float64)."""
    return l2_norm(step)
