"""Distributed differential privacy under secure aggregation (issue 25, in progress): each client adds
discrete Gaussian noise to its quantised update, so the sum of any `threshold` or more survivors
carries at least the target noise, and the operator, who only ever sees that sum, gets a guarantee.

- `client_sigma`: each client's noise for a target on the sum of `threshold` survivors;
- `discrete_gaussian`: samples of the discrete Gaussian N_Z(0, sigma^2), by Canonne, Kamath and
  Steinke's (2020) rejection from a discrete Laplace (their Algorithm 3; the acceptance test in
  floating point);
- `sum_rdp` and `operator_epsilon`: the Renyi DP of a sum of n independent discrete Gaussians
  (Kairouz, Liu and Steinke 2021, "The Distributed Discrete Gaussian Mechanism for Federated Learning
  with Secure Aggregation", Proposition 14: the continuous Gaussian's bound plus a correction tau
  that vanishes as sigma grows), composed over the rounds with no amplification by sampling (the
  operator knows the selection), converted to (epsilon, delta) by dp-accounting;
- `client_level_operator_epsilon`: that epsilon for a client's whole update (clipped to C, quantised
  with stochastic rounding), from the run's noise multiplier and the fixed-point step.

Sensitivities are in quantised units (the update's clipped bound divided by the fixed-point step),
for the neighbouring relation the caller accounts (replace-one doubles the add/remove one).
"""

from __future__ import annotations

import math

import numpy as np
from dp_accounting.rdp.rdp_privacy_accountant import DEFAULT_RDP_ORDERS, compute_epsilon

MIN_SIGMA = 0.5
"""Proposition 14 holds for sigma >= 1/2."""


def client_sigma(target_sigma: float, threshold: int) -> float:
    """Each client's sigma so that any `threshold` survivors' noises add up to at least `target_sigma`
    (variances add: threshold x sigma^2 >= target^2)."""
    if threshold < 1 or not target_sigma > 0:
        raise ValueError(f"need a threshold of at least 1 and a positive target, got {threshold}, {target_sigma}")
    return target_sigma / math.sqrt(threshold)


def discrete_gaussian(sigma: float, size: int, rng: np.random.Generator) -> np.ndarray:
    """`size` independent samples of N_Z(0, sigma^2) (int64): a discrete Laplace of scale
    t = floor(sigma) + 1 (two geometrics' difference), kept with probability
    exp(-(|y| - sigma^2 / t)^2 / (2 sigma^2)); the rejected are drawn again."""
    if not sigma > 0:
        raise ValueError(f"sigma must be positive, got {sigma}")
    t = math.floor(sigma) + 1
    p = -math.expm1(-1.0 / t)  # 1 - e^(-1/t): the geometric's success probability
    out = np.empty(size, dtype=np.int64)
    todo = np.arange(size)
    while todo.size:
        y = (rng.geometric(p, todo.size) - rng.geometric(p, todo.size)).astype(np.int64)
        keep = rng.random(todo.size) < np.exp(-((np.abs(y) - sigma**2 / t) ** 2) / (2 * sigma**2))
        out[todo[keep]] = y[keep]
        todo = todo[~keep]
    return out


def tau(sigma: float, summands: int) -> float:
    """Proposition 14's correction: 10 x sum over k = 1 .. n-1 of exp(-2 pi^2 sigma^2 k / (k + 1))."""
    return 10 * sum(math.exp(-2 * math.pi**2 * sigma**2 * k / (k + 1)) for k in range(1, summands))


def sum_rdp(order: float, sigma: float, summands: int, l2: float, l1: float, dimension: int) -> float:
    """Renyi DP of order `order` of the sum of `summands` independent N_Z(0, sigma^2) vectors of
    `dimension` elements, for a change of L2 norm `l2` and L1 norm `l1` (Proposition 14)."""
    if sigma < MIN_SIGMA or order < 1 or summands < 1:
        raise ValueError(f"the bound needs sigma >= {MIN_SIGMA}, order >= 1, summands >= 1")
    t = tau(sigma, summands)
    scale = math.sqrt(summands) * sigma
    return min(
        order * l2**2 / (2 * scale**2) + t * dimension,
        order / 2 * (l2**2 / scale**2 + 2 * l1 * t / scale + t**2 * dimension),
        order / 2 * (l2 / scale + t * math.sqrt(dimension)) ** 2,
    )


def integer_l1(l2: float, dimension: int) -> float:
    """The L1 bound of an integer vector of L2 norm at most `l2`: min(sqrt(d) l2, l2^2)."""
    return min(math.sqrt(dimension) * l2, l2**2)


def operator_epsilon(
    sigma: float, survivors: int, l2: float, dimension: int, rounds: int, delta: float, l1: float | None = None
) -> float:
    """Epsilon against the operator after `rounds` rounds: the sum of at least `survivors` clients'
    noises (sigma each) in every round, no amplification by sampling, dp-accounting's conversion
    from RDP at dp-accounting's default orders."""
    if rounds < 0 or not 0 < delta < 1:
        raise ValueError(f"need rounds >= 0 and 0 < delta < 1, got {rounds}, {delta}")
    if rounds == 0:
        return 0.0
    l1 = integer_l1(l2, dimension) if l1 is None else l1
    orders = [a for a in DEFAULT_RDP_ORDERS if a > 1]
    rdp = [rounds * sum_rdp(a, sigma, survivors, l2, l1, dimension) for a in orders]
    epsilon, _ = compute_epsilon(orders, rdp, delta)
    return float(epsilon)


def client_level_operator_epsilon(
    noise_multiplier: float,
    threshold: int,
    clip_steps: float,
    dimension: int,
    rounds: int,
    delta: float,
    replace_one: bool = False,
) -> float:
    """Epsilon against the operator after `rounds` rounds of distributed DP with noise multiplier z:
    each client's delta clipped to C, `clip_steps` = C over the fixed-point step, its `dimension`
    elements quantised with stochastic rounding (each moved by less than a step) and noised with
    N_Z(0, sigma^2), sigma = z C / sqrt(t) in steps (`client_sigma`), so that any `threshold` t
    survivors carry z C. One client moves the sum of quantised inputs by at most
    s C / step + 2 sqrt(d) in L2 (s = 2 with `replace_one`: its data replaced by any other; s = 1: its
    update against none; the 2 sqrt(d) bounds the two roundings' difference), the sensitivity
    `operator_epsilon` takes, with at least t summands' noise and no amplification by sampling."""
    if not clip_steps > 0 or dimension < 1:
        raise ValueError(f"need a positive clip in steps and at least one element, got {clip_steps}, {dimension}")
    sensitivity = 2.0 if replace_one else 1.0
    l2 = sensitivity * clip_steps + 2 * math.sqrt(dimension)
    sigma = client_sigma(noise_multiplier * clip_steps, threshold)
    return operator_epsilon(sigma, threshold, l2, dimension, rounds, delta)
