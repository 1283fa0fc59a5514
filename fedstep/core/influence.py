"""Bounded influence: how much one client may move a round (DESIGN "Trust model").

A client's weight is the number of examples it claims, capped by the run's `max_examples` (or its
own cap); its update's L2 norm is bounded by `max_update_norm`. Beyond a bound an update is clipped
(weight capped, delta scaled down to the norm) or rejected, as the run's `bounds.action` says; a
clipped update is listed in the round summary with what was clipped.
"""

from __future__ import annotations

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


def norm_bound(delta: Tensors, bounds: Bounds, norm: float | None = None) -> tuple[np.float32 | None, str | None]:
    """The factor that brings `delta` down to `max_update_norm` (None: within bounds) and what was
    clipped; raises InvalidUpdate when the run rejects such updates. `delta` is not changed; `norm`
    is its L2 norm where the caller measured it already."""
    if bounds.max_update_norm is None:
        return None, None
    norm = l2_norm(delta) if norm is None else norm
    if norm <= bounds.max_update_norm:
        return None, None
    if bounds.action == "reject":
        raise InvalidUpdate(f"update norm {norm:.4g} exceeds max_update_norm {bounds.max_update_norm:g}")
    return np.float32(bounds.max_update_norm / norm), f"norm {norm:.4g} -> {bounds.max_update_norm:g}"


def scale_in_place(delta: Tensors, scale: np.float32 | None) -> None:
    """Multiply every tensor by `scale` (float32), in place; nothing for None."""
    if scale is not None:
        for tensor in delta.values():
            tensor *= scale
