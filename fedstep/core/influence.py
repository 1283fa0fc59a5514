"""Bounded influence: how much one client may move a round (DESIGN "Trust model").

A client's weight is the number of examples it claims, capped by the run's `max_examples` (or its
own cap); its update's L2 norm is bounded by `max_update_norm`, or, when the run sets none, by the
default bound `default_norm_bound`: ten times the larger of the norm of the model the run started
from and sqrt(parameters) (the norm of a model whose every weight is 1). Beyond a bound an update is
clipped (weight capped, delta scaled down to the norm) or rejected, as the run's `bounds.action`
says; a clipped update is listed in the round summary with what was clipped.

The default bound is relative to the run's initial model, not to the round's: a bound that grew with
the global model would let one client multiply the model's norm by up to 1 + 10 x its weight share
every round, and overflow float32 within a few dozen rounds. Fixed for the run, it lets a client move
the model by at most the bound times its share per round: linear growth, never an overflow.
"""

from __future__ import annotations

import math

import numpy as np

from fedstep.core.errors import InvalidUpdate
from fedstep.core.schemas import Bounds
from fedstep.core.tensors import Tensors, l2_norm


def bounded_examples(client_id: str, claimed: int, bounds: Bounds) -> tuple[int, str | None]:
    """The examples the update is weighted by, and what was clipped (None: nothing); raises
    InvalidUpdate when the run rejects an update over its cap."""
    cap = bounds.examples_cap(client_id)
    if claimed <= cap:
        return claimed, None
    if bounds.action == "reject":
        raise InvalidUpdate(f"claims {claimed} examples, more than max_examples {cap}")
    return cap, f"examples {claimed} -> {cap}"


DEFAULT_NORM_FACTOR = 10.0
"""The default bound on an update's L2 norm is this many times the larger of the run's initial
model's norm and sqrt(parameters)."""


def default_norm_bound(initial_norm: float, num_parameters: int) -> float:
    """The bound on an update's L2 norm of a run without `max_update_norm`: `DEFAULT_NORM_FACTOR` x
    max(`initial_norm`, sqrt(`num_parameters`)), `initial_norm` the L2 norm of the model the run
    started from. The sqrt term is the floor that keeps an all-zeros initial model's updates (and any
    update moving each weight by less than 10 on average) unclipped; e.g. 693.5 for the demo's MLP
    of 4,810 parameters."""
    scale = math.sqrt(max(1, num_parameters))
    if math.isfinite(initial_norm):
        scale = max(scale, initial_norm)
    return DEFAULT_NORM_FACTOR * scale


def norm_bound(
    delta: Tensors, bounds: Bounds, norm: float | None = None, *, default: bool = False
) -> tuple[np.float32 | None, str | None]:
    """The factor that brings `delta` down to `bounds.max_update_norm` (None: within bounds, or no
    bound) and what was clipped; raises InvalidUpdate when the run rejects such updates. `delta` is
    not changed; `norm` is its L2 norm where the caller measured it already. `default`: the bound
    is the run's default one (`default_norm_bound`), as the reasons say."""
    limit = bounds.max_update_norm
    if limit is None:
        return None, None
    norm = l2_norm(delta) if norm is None else norm
    if norm <= limit:
        return None, None
    if bounds.action == "reject":
        what = f"the default norm bound {limit:.4g}" if default else f"max_update_norm {limit:g}"
        raise InvalidUpdate(f"update norm {norm:.4g} exceeds {what}")
    to = f"{limit:.4g} (default bound)" if default else f"{limit:g}"
    return np.float32(limit / norm), f"norm {norm:.4g} -> {to}"


def scale_in_place(delta: Tensors, scale: np.float32 | None) -> None:
    """Multiply every tensor by `scale` (float32), in place; nothing for None."""
    if scale is not None:
        for tensor in delta.values():
            tensor *= scale
