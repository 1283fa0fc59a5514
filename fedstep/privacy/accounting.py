"""Epsilon of the sampled Gaussian mechanism, composed over rounds or steps, by dp-accounting's RDP
accountant.

Two samplings:
- `poisson`: each unit (a record, in DP-SGD) takes part independently with probability `q`
  (`PoissonSampledDpEvent`; add/remove-one neighbours: one unit's clipped contribution moves the
  noisy sum by at most C, so the mechanism's noise multiplier is z);
- `fixed`: exactly `sample` of `population` units, drawn without replacement
  (`SampledWithoutReplacementDpEvent`) - how fedstep selects a round's clients
  (`fedstep.core.selection`). Its neighbouring relation is replace-one: one client's data replaced
  by another's, which moves the clipped sum by up to 2C, so the mechanism's noise multiplier is z/2.
  The same holds with every client in every round (no sampling to amplify).
"""

from __future__ import annotations

import functools
import logging

import dp_accounting as dpa
from dp_accounting.rdp import RdpAccountant

# dp-accounting logs a warning per RDP order it cannot evaluate (large q, small sigma) and leaves
# that order out; the epsilon it returns is still a valid bound.
logging.getLogger("absl").setLevel(logging.ERROR)


REPLACE_ONE_SENSITIVITY = 2.0
"""Replacing one client's clipped update by another moves the sum by up to 2C."""


@functools.lru_cache(maxsize=4096)
def epsilon_fixed(noise_multiplier: float, sample: int, population: int, steps: int, delta: float) -> float:
    """Epsilon after `steps` rounds of the Gaussian mechanism with noise std `noise_multiplier` x C on
    the sum of `sample` updates clipped to C, the clients drawn without replacement from
    `population` (replace-one neighbours: sensitivity 2C); inf when no noise."""
    if steps <= 0:
        return 0.0
    if noise_multiplier <= 0:
        return float("inf")
    event = dpa.GaussianDpEvent(noise_multiplier / REPLACE_ONE_SENSITIVITY)
    if sample < population:
        event = dpa.SampledWithoutReplacementDpEvent(population, sample, event)
    accountant = RdpAccountant(neighboring_relation=dpa.NeighboringRelation.REPLACE_ONE)
    accountant.compose(dpa.SelfComposedDpEvent(event, steps))
    return float(accountant.get_epsilon(delta))


@functools.lru_cache(maxsize=4096)
def epsilon_poisson(noise_multiplier: float, rate: float, steps: int, delta: float) -> float:
    """Epsilon after `steps` compositions of the Poisson-sampled Gaussian mechanism (sampling rate
    `rate`, std = noise_multiplier x the sensitivity); inf when no noise."""
    if steps <= 0:
        return 0.0
    if noise_multiplier <= 0:
        return float("inf")
    event = dpa.GaussianDpEvent(noise_multiplier)
    if rate < 1:
        event = dpa.PoissonSampledDpEvent(rate, event)
    accountant = RdpAccountant()
    accountant.compose(dpa.SelfComposedDpEvent(event, steps))
    return float(accountant.get_epsilon(delta))
