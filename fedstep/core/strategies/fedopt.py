"""Adaptive server optimizers (Reddi et al. 2021, "Adaptive Federated Optimization", Algorithm 2):
the part FedAdam, FedYogi and FedAdagrad share. Each of those modules only gives its rule for the
second moment v and its default parameters.

With delta the example-weighted mean of the round's deltas (the paper's pseudo-gradient, as an
ascent step):

    m <- beta_1 m + (1 - beta_1) delta
    v <- rule(v, delta^2)                      (Adagrad, Adam or Yogi)
    x <- x + eta m / (sqrt(v) + tau)

all coordinate-wise. Before the first round m = 0 and v = tau^2 (the paper asks for
v_{-1} >= tau^2). There is no bias correction, as in the paper's Algorithm 2. m and v are kept per model tensor in the
server state (float32, named "m/<tensor>" and "v/<tensor>"), with the number of steps taken in its
values ("steps"); the arithmetic is float64, a chunk at a time.

Memory: the mean delta (float32, turned into the step in place), m and v (float32, updated in
place) and the global weights: never O(clients x model).
"""

from __future__ import annotations

from abc import abstractmethod
from typing import Any

import numpy as np

from fedstep.core.strategies.aggregation import apply_step, step_norm, weighted_mean
from fedstep.core.strategies.base import Aggregate, GlobalModel, ServerState, Strategy, Updates
from fedstep.core.tensors import TensorSpec, chunks


def state_tensors(state: ServerState, spec: TensorSpec, initial: dict[str, float]) -> dict[str, np.ndarray]:
    """The state's tensors "<prefix>/<model tensor>" for every prefix of `initial` and every tensor of
    the model, as writable float32 arrays that may be updated in place (the state's own arrays when
    they already are; the state passed in is consumed). For an empty state (the first round): new
    arrays filled with `initial[prefix]`. ValueError when the state does not fit the model."""
    wanted = {
        f"{prefix}/{name}": (shape, fill) for prefix, fill in initial.items() for name, shape in spec.shapes.items()
    }
    if not state.tensors:
        return {key: np.full(shape, fill, dtype=np.float32) for key, (shape, fill) in wanted.items()}
    missing, extra = sorted(wanted.keys() - state.tensors.keys()), sorted(state.tensors.keys() - wanted.keys())
    if missing or extra:
        raise ValueError(
            f"the server state does not fit the model: {len(missing)} tensors missing (e.g. {missing[:3]}), "
            f"{len(extra)} unexpected (e.g. {extra[:3]})"
        )
    out: dict[str, np.ndarray] = {}
    for key, (shape, _) in wanted.items():
        tensor = state.tensors[key]
        if tuple(tensor.shape) != shape:
            raise ValueError(f"the server state's tensor {key!r} has shape {tuple(tensor.shape)}, the model {shape}")
        usable = tensor.dtype == np.float32 and tensor.flags.c_contiguous and tensor.flags.writeable
        out[key] = tensor if usable else np.array(tensor, dtype=np.float32, order="C")
    return out


def steps_taken(state: ServerState) -> int:
    """The state's step counter ("steps"; 0 for an empty state)."""
    steps = state.values.get("steps", 0)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"the server state's step counter is not a count: {steps!r}")
    return steps


class FedOpt(Strategy):
    """The shared server optimizer (see the module docstring); subclasses give `second_moment` and
    a `Params` with eta, beta_1, tau (and beta_2 where their rule uses it)."""

    def check(self, params: Any) -> None:
        if not params.eta > 0:
            raise ValueError(f"parameter 'eta' of strategy {self.name!r} must be > 0, got {params.eta}")
        if not 0 <= params.beta_1 < 1:
            raise ValueError(f"parameter 'beta_1' of strategy {self.name!r} must be in [0, 1), got {params.beta_1}")
        beta_2 = getattr(params, "beta_2", 0.0)
        if not 0 <= beta_2 < 1:
            raise ValueError(f"parameter 'beta_2' of strategy {self.name!r} must be in [0, 1), got {beta_2}")
        if not params.tau > 0:
            raise ValueError(f"parameter 'tau' of strategy {self.name!r} must be > 0, got {params.tau}")

    @abstractmethod
    def second_moment(self, v: np.ndarray, squared: np.ndarray) -> np.ndarray:
        """The new v (float64) from the old v and delta^2 (both float64, one chunk)."""

    def aggregate(
        self, round_number: int, global_model: GlobalModel, state: ServerState, updates: Updates
    ) -> Aggregate:
        step = weighted_mean(updates)  # delta, float32; becomes the step in place below
        delta_norm = step_norm(step)
        steps = steps_taken(state)
        p = self.params
        moments = state_tensors(state, updates.spec, {"m": 0.0, "v": p.tau * p.tau})
        with np.errstate(over="ignore", invalid="ignore"):  # an overflow gives inf, refused by the caller
            for name, delta in step.items():
                m, v = moments[f"m/{name}"], moments[f"v/{name}"]
                for part, m_part, v_part in zip(chunks(delta), chunks(m), chunks(v), strict=True):
                    d = part.astype(np.float64)
                    m_part[...] = p.beta_1 * m_part.astype(np.float64) + (1.0 - p.beta_1) * d
                    v_part[...] = self.second_moment(v_part.astype(np.float64), d * d)
                    # the step from the moments as stored, so a resumed run continues bit for bit
                    part[...] = p.eta * m_part.astype(np.float64) / (np.sqrt(v_part.astype(np.float64)) + p.tau)
        norm = step_norm(step)
        weights = apply_step(global_model, step)
        measurements = {"step_norm": norm, "mean_delta_norm": delta_norm, "steps": float(steps + 1)}
        return Aggregate(weights, ServerState(moments, {"steps": steps + 1}), measurements)
