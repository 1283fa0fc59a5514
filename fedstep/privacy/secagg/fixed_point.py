"""Values clipped to a range the round sets and quantised to integers modulo 2^32, so that masked
inputs add up without overflow: with `headroom_for(n)` bits spare, the sum of n inputs is exact."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

MODULUS_BITS = 32


def headroom_for(inputs: int) -> int:
    """Bits a sum of `inputs` quantised values needs above one value's: ceil(log2(inputs))."""
    if inputs < 1:
        raise ValueError(f"a sum has at least one input, got {inputs}")
    return math.ceil(math.log2(inputs)) if inputs > 1 else 0


@dataclass(frozen=True)
class FixedPoint:
    """Values in [-bound, bound] as integers 0 .. 2^bits - 1 (`bits` = 32 less the headroom of the
    round's most inputs). `encode` clips, then rounds stochastically (unbiased); `decode_sum` turns
    the modular sum of `count` encoded arrays back into the sum of their values (error at most
    `count` steps of `2 bound / (2^bits - 1)`)."""

    bound: float
    bits: int

    @classmethod
    def for_sum(cls, bound: float, max_inputs: int) -> FixedPoint:
        bits = MODULUS_BITS - headroom_for(max_inputs)
        if bits < 8:
            raise ValueError(f"{max_inputs} inputs leave {bits} bits a value: too few to quantise")
        if not (math.isfinite(bound) and bound > 0):
            raise ValueError(f"the range bound must be positive and finite, got {bound}")
        return cls(float(bound), bits)

    @property
    def levels(self) -> int:
        return 2**self.bits - 1

    @property
    def step(self) -> float:
        return 2 * self.bound / self.levels

    def encode(self, values: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """uint32 of float `values` clipped to [-bound, bound]; ValueError on a non-finite value."""
        x = np.asarray(values, dtype=np.float64)
        if not np.isfinite(x).all():
            raise ValueError("cannot quantise non-finite values")
        scaled = (np.clip(x, -self.bound, self.bound) + self.bound) / self.step
        q = np.floor(scaled + rng.random(x.shape))
        return np.clip(q, 0, self.levels).astype(np.uint32)

    def decode_sum(self, total: np.ndarray, count: int) -> np.ndarray:
        """The sum of `count` inputs' values from the modular sum of their encodings (float64)."""
        if not 1 <= count <= 2 ** (MODULUS_BITS - self.bits):
            raise ValueError(f"{count} inputs do not fit the {MODULUS_BITS - self.bits} bits of headroom")
        return np.asarray(total, dtype=np.uint32).astype(np.float64) * self.step - count * self.bound
