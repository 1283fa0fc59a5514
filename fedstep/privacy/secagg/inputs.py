"""A client's update as its secure-aggregation input, and the unmasked sum as the round's FedAvg step.

A client uploads `[w, w x delta]` in fixed point: w = min(examples, max_examples) / max_examples (its
FedAvg weight, scaled to [0, 1]) and its delta clipped to L2 norm `clip`, so every element of
w x delta lies in [-clip, clip]. The sum of the survivors' inputs gives sum(w) and sum(w x delta),
hence FedAvg's weighted mean of the deltas, without any single update being seen. What the server
can still check is on the sum (`mean_delta`): finite, in range, sum(w) > 0, and its norm within what
the survivors' clipped updates can reach; what it can no longer check per update (finiteness, the
norm, the weight cap) the client's own step does before it masks (`encode`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedstep.core.rounds.errors import InvalidAggregate
from fedstep.core.schemas.secagg import SecAggRound
from fedstep.privacy.distributed import discrete_gaussian
from fedstep.privacy.secagg.fixed_point import MODULUS_BITS, FixedPoint

NOISE_MARGIN = 10.0
"""Under distributed DP the fixed-point range reaches this many noise stds past the clip, so that the
noisy sum of the inputs never wraps around the modulus (it would with probability below e^-50)."""


@dataclass(frozen=True)
class InputCodec:
    """`clip`: the L2 bound of a delta; `max_examples`: the weight cap; `max_inputs`: the round's most
    participants (the sum's headroom); `noise_stddev`: the std of the discrete Gaussian noise each
    client adds to its weighted delta, in the delta's units (distributed DP; 0: none)."""

    clip: float
    max_examples: int
    max_inputs: int
    noise_stddev: float = 0.0

    @classmethod
    def for_round(cls, spec: SecAggRound) -> InputCodec:
        """The codec a round message's `secagg` part sets (the client's and the server's alike)."""
        return cls(spec.clip, spec.max_examples, spec.max_inputs, spec.noise_stddev)

    @property
    def weights(self) -> FixedPoint:
        return FixedPoint.for_sum(1.0, self.max_inputs)

    @property
    def values(self) -> FixedPoint:
        return FixedPoint.for_sum(self.clip + NOISE_MARGIN * self.noise_stddev, self.max_inputs)

    def encode(self, delta: np.ndarray, examples: int, rng: np.random.Generator) -> np.ndarray:
        """The uint32 input of a client's flat `delta` trained on `examples` examples: its weight, then
        its weighted, clipped delta. ValueError on a non-finite delta or a count below 1."""
        d = np.asarray(delta, dtype=np.float64).ravel()
        if not np.isfinite(d).all():
            raise ValueError("the delta is not finite: it cannot be aggregated")
        if examples < 1:
            raise ValueError(f"a client's update counts at least 1 example, got {examples}")
        norm = float(np.linalg.norm(d))
        if norm > self.clip:
            d = d * (self.clip / norm)
        w = min(examples, self.max_examples) / self.max_examples
        values = self.values.encode(w * d, rng)
        if self.noise_stddev > 0:  # integer noise on the integer grid: the sum carries it exactly
            noise = discrete_gaussian(self.noise_stddev / self.values.step, values.size, rng)
            values = ((values.astype(np.int64) + noise) % (1 << MODULUS_BITS)).astype(np.uint32)
        return np.concatenate([self.weights.encode(np.array([w]), rng), values])

    def mean_delta(self, total: np.ndarray, survivors: int) -> tuple[float, np.ndarray]:
        """(the survivors' examples, FedAvg's weighted mean of their clipped deltas) from the unmasked
        modular sum of `survivors` inputs. InvalidAggregate for a sum no honest survivors could give."""
        total = np.asarray(total, dtype=np.uint32)
        weight = float(self.weights.decode_sum(total[:1], survivors)[0])
        weighted = self.values.decode_sum(total[1:], survivors)
        slack_w = survivors * self.weights.step
        noise = self.noise_stddev * np.sqrt(survivors)  # the std of the sum's noise, per element
        slack = survivors * self.values.step + NOISE_MARGIN * noise
        if not (np.isfinite(weight) and np.isfinite(weighted).all()):
            raise InvalidAggregate("the unmasked sum is not finite")
        if not 0 < weight <= survivors + slack_w:
            raise InvalidAggregate(f"the unmasked sum's weight {weight:.6g} is outside (0, {survivors}]")
        if np.max(np.abs(weighted), initial=0.0) > survivors * self.clip + slack:
            raise InvalidAggregate("the unmasked sum is outside the range the survivors' clipped updates can reach")
        reach = (weight + slack_w) * self.clip + np.sqrt(weighted.size) * (survivors * self.values.step + 1.5 * noise)
        if float(np.linalg.norm(weighted)) > reach:
            raise InvalidAggregate(
                f"the unmasked sum's norm {np.linalg.norm(weighted):.6g} is above its weights' reach {reach:.6g}"
            )
        return weight * self.max_examples, weighted / weight
