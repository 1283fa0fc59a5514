"""Client-level differential privacy on the server: DP-FedAvg (McMahan et al. 2018) as a wrapper
around any averaging strategy, in the manner of Flower's DP wrappers, with fixed or adaptive
clipping (Andrew et al. 2021, "Differentially Private Learning with Adaptive Clipping").

Each round (`DPAggregation.aggregate`):
1. every accepted delta is clipped to the L2 norm C (all tensors together) and summed with weight 1
   (the examples a client claims do not weight it: that would change the sensitivity);
2. Gaussian noise of standard deviation z_delta x C is added to each coordinate of the sum, drawn
   from a generator seeded from the operating system's entropy, and the sum is divided by the
   expected number of participants (the clients a round selects), not by those that arrived;
3. that noisy mean is the one "update" the wrapped strategy sees (FedAvg adds it, FedAdam takes its
   step from it): anything after the noise is post-processing.
Adaptive clipping releases the count of updates within C with noise of standard deviation
`clipped_count_stddev`, and moves C towards the `target_quantile` of the norms:
C <- C exp(-eta (b - gamma)). The two releases together are the Gaussian mechanism with noise
multiplier z: z_delta = (z^-2 - (2 sigma_b)^-2)^(-1/2) (Andrew et al., Theorem 1).

Under client-side clipping (mode "client-clip") the clients clip before upload; the server clips
again (a client is never trusted to have done it), and takes the within-clip bit a client reports
for the adaptive count. A retried aggregation of a round draws new noise, but the round's result is
written once (`fedstep.core.rounds`), so no two noisy models of one round are ever published.

Accounting (epsilon for delta) is a port (`Accountant`), implemented with dp-accounting in
`fedstep.privacy.accounting`; the core stays numpy-only.

Distributed DP (mode "distributed", under secure aggregation) adds no noise here: each client clips
its update to C and adds discrete Gaussian noise of std `distributed_client_stddev` (z C / sqrt(t)),
so the sum of any t or more survivors, the only thing the server unmasks, carries noise of std at
least z C. The published model is accounted as central DP's (`round_epsilon`, with sampling
amplification); the operator, who knows the selection, gets `operator_round_epsilon` (its own port,
`OperatorAccountant`: no amplification by sampling, the discrete noise's correction).
"""

from __future__ import annotations

import math
from typing import Any, Protocol

import numpy as np

from fedstep.core.schemas import DPSettings
from fedstep.core.strategies.aggregation import add_weighted
from fedstep.core.strategies.base import (
    Aggregate,
    ClientUpdate,
    GlobalModel,
    Instructions,
    Scalar,
    ServerState,
    Strategy,
    Updates,
)
from fedstep.core.strategies.update_list import UpdateList
from fedstep.core.tensors import chunks, l2_norm

STATE_PREFIX = "dp."
"""The wrapper's own values in the server state (the wrapped strategy's keep their names)."""


class Accountant(Protocol):
    """Epsilon of the Gaussian mechanism with noise multiplier z on `sample` of `population` units
    drawn without replacement, composed `steps` times, then `unsampled` times more on every unit (no
    amplification by sampling), at `delta`. Called with `selection="poisson"` for a run that samples
    each unit with probability sample / population (add/remove-one neighbours); never with "fixed",
    so a fixed-sampling accountant (`epsilon_fixed`) serves fixed runs as it is."""

    def __call__(
        self, noise_multiplier: float, sample: int, population: int, steps: int, delta: float, unsampled: int = 0
    ) -> float: ...


class OperatorAccountant(Protocol):
    """Epsilon against the operator of distributed DP after `rounds` rounds, each the sum of at least
    `threshold` clients' inputs, each client's delta clipped to `clip` and quantised to fixed point
    with the headroom of `max_inputs` inputs, its `dimension` elements noised with discrete Gaussian
    noise so that any `threshold` of them carry std `noise_multiplier` x `clip`; composed without
    amplification by sampling, at `delta`; `replace_one`: one client's data replaced (sensitivity 2C),
    else its update against none (C). Implemented by `fedstep.privacy.lazy_operator_epsilon`."""

    def __call__(
        self,
        noise_multiplier: float,
        threshold: int,
        clip: float,
        max_inputs: int,
        dimension: int,
        rounds: int,
        delta: float,
        replace_one: bool,
    ) -> float: ...


NEIGHBOURING = {"fixed": "replace-one", "poisson": "add-remove"}
"""The neighbouring relation of a client-level DP run's epsilon, by its selection."""


def neighbouring(dp: DPSettings | None, selection: str) -> str | None:
    """The neighbouring relation a run's epsilon is for: "replace-one" (client-level modes, fixed-size
    selection: one client's data replaced, sensitivity 2C), "add-remove" (client-level modes with
    Poisson selection: one client added or removed, sensitivity C; and dp-sgd: one record); None
    without DP."""
    if dp is None:
        return None
    return NEIGHBOURING.get(selection, "replace-one") if dp.client_level else "add-remove"


def distributed_client_stddev(dp: DPSettings, threshold: int) -> float:
    """Under distributed DP, the std of the noise each client adds to its clipped delta (in the
    delta's units; a round message's `SecAggRound.noise_stddev`): z C / sqrt(t), so that the noises
    of any `threshold` t or more survivors add up to a variance of at least (z C)^2 (variances add).
    ValueError for another mode, an adaptive clip or a threshold below 1."""
    if dp.mode != "distributed" or dp.clip is None:
        raise ValueError(f"distributed noise needs --dp distributed with a fixed clip, got {dp.mode} clip {dp.clip}")
    if threshold < 1:
        raise ValueError(f"the secure-aggregation threshold must be at least 1, got {threshold}")
    return dp.noise_multiplier * dp.clip / math.sqrt(threshold)


def clipped_count_stddev(dp: DPSettings, expected: int) -> float:
    """sigma_b: the setting, or by default max(expected / 20, z) (the paper's expected/20, raised
    where a small cohort would leave no noise for the updates)."""
    return dp.clipped_count_stddev or max(expected / 20.0, dp.noise_multiplier)


def update_noise_multiplier(dp: DPSettings, expected: int) -> float:
    """z_delta: the noise multiplier of the updates' sum. z itself with a fixed clip; with adaptive
    clipping what is left of z after the clipped count's release. ValueError when nothing is left."""
    if dp.clip is not None:
        return dp.noise_multiplier
    sigma_b = clipped_count_stddev(dp, expected)
    rest = dp.noise_multiplier**-2 - (2 * sigma_b) ** -2
    if rest <= 0:
        raise ValueError(
            f"adaptive clipping with noise multiplier {dp.noise_multiplier:g} needs a clipped-count noise above "
            f"{dp.noise_multiplier / 2:g} (it is {sigma_b:g}); use a fixed --dp-clip"
        )
    return rest**-0.5


class DPAggregation(Strategy):
    """DP-FedAvg around `inner` (an averaging strategy): see the module docstring. `expected`: the
    clients a round selects (under Poisson selection, q N: the expected number, whatever arrives).
    `selection` "poisson" releases the adaptive clip's count centred, sum(b_i - 1/2) + noise, whose
    sensitivity under add/remove is 1/2 (Andrew et al.); "fixed" releases sum(b_i) + noise."""

    access = "pass"

    def __init__(self, inner: Strategy, dp: DPSettings, expected: int, selection: str = "fixed") -> None:
        if inner.access != "pass":
            raise ValueError(
                f"differential privacy wraps averaging strategies; {inner.name!r} reads updates by slices "
                "(median, trimmed mean and Krum have no calibrated noise here)"
            )
        self.inner, self.dp, self.expected, self.selection = inner, dp, expected, selection
        self.name, self.summary, self.params = inner.name, inner.summary, inner.params
        self.z_updates = update_noise_multiplier(dp, expected)

    def min_updates(self) -> tuple[int, str]:
        return self.inner.min_updates()

    def clip(self, state_values: dict[str, Scalar]) -> float:
        """This round's clip norm: the fixed one, or the adaptive one the state carries."""
        if self.dp.clip is not None:
            return self.dp.clip
        return float(state_values.get(f"{STATE_PREFIX}clip", self.dp.initial_clip))

    def configure_round(self, round_number: int, state_values: dict[str, Scalar]) -> Instructions:
        inner = self.inner.configure_round(round_number, _inner_values(state_values))
        if self.dp.mode == "client-clip":
            return {**inner, "dp_mode": "client-clip", "dp_clip": self.clip(state_values)}
        return inner

    def aggregate(
        self, round_number: int, global_model: GlobalModel, state: ServerState, updates: Updates
    ) -> Aggregate:
        clip = self.clip(state.values)
        sums = {name: np.zeros(shape, dtype=np.float64) for name, shape in updates.spec.shapes.items()}
        within, count, iterator = 0, 0, iter(updates)
        while (update := next(iterator, None)) is not None:
            norm = l2_norm(update.delta)
            for name, acc in sums.items():
                add_weighted(acc, min(1.0, clip / norm) if norm > 0 else 1.0, update.delta[name])
            within += _within_clip(update, norm, clip, self.dp.mode)
            count += 1
            update = None  # one update in memory at a time
        if count == 0:
            raise ValueError("no updates to aggregate")
        rng = np.random.default_rng()  # seeded from the operating system's entropy
        noisy: dict[str, np.ndarray] = {}
        for name in list(sums):
            acc = sums.pop(name)
            for part in chunks(acc):
                part += rng.normal(0.0, self.z_updates * clip, size=part.size)
            acc /= self.expected
            noisy[name] = acc.astype(np.float32)
            del acc
        mean = UpdateList([ClientUpdate("dp-noisy-mean", 1, noisy)], spec=updates.spec)
        inner_state = ServerState(state.tensors, _inner_values(state.values))
        result = self.inner.aggregate(round_number, global_model, inner_state, mean)
        values = dict(result.state.values)
        measurements = {**result.measurements, "dp_clip": clip}
        if self.dp.clip is None:
            sigma_b = clipped_count_stddev(self.dp, self.expected)
            if self.selection == "poisson":  # centred: adding or removing a client moves it by 1/2
                fraction = (within - count / 2 + rng.normal(0.0, sigma_b)) / self.expected + 0.5
            else:
                fraction = (within + rng.normal(0.0, sigma_b)) / self.expected
            values[f"{STATE_PREFIX}clip"] = clip * math.exp(
                -self.dp.clip_learning_rate * (fraction - self.dp.target_quantile)
            )
            measurements["dp_within_clip"] = fraction
        return Aggregate(result.weights, ServerState(result.state.tensors, values), measurements)


def _inner_values(values: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in values.items() if not k.startswith(STATE_PREFIX)}


def _within_clip(update: ClientUpdate, norm: float, clip: float, mode: str) -> int:
    """1 when the update was within the clip norm before clipping: the client's report under
    client-side clipping (its norm is not visible to the server any more), else the server's own."""
    if mode == "client-clip" and "within_clip" in update.privacy:
        return 1 if update.privacy["within_clip"] >= 0.5 else 0
    return 1 if norm <= clip else 0


def round_epsilon(
    dp: DPSettings,
    accountant: Accountant,
    expected: int,
    population: int,
    rounds: int,
    repeated: int = 0,
    selection: str = "fixed",
) -> float:
    """The run's client-level epsilon (at `dp.delta`) after `rounds` rounds of `expected` of
    `population` clients (central modes), `repeated` of whose noisy models were released more than
    once (`RoundSummary.repeated_releases`: an aggregation written, not committed, and done again).

    Every release counts. With every client in every round, a repeated release is one more Gaussian
    mechanism: `rounds + repeated` steps. With clients sampled, a round released k >= 2 times on one
    sample is not k independent samples; it is at most as private as k releases without sampling, so
    it is accounted as `2 (k - 1)` >= k more releases without amplification, on top of its sampled
    step: an upper bound. `selection` "poisson" asks the accountant for Poisson sampling (add/remove)."""
    poisson = {"selection": "poisson"} if selection == "poisson" else {}
    if repeated and expected >= population:
        return accountant(dp.noise_multiplier, expected, population, rounds + repeated, dp.delta, **poisson)
    if repeated:
        return accountant(
            dp.noise_multiplier, expected, population, rounds, dp.delta, unsampled=2 * repeated, **poisson
        )
    return accountant(dp.noise_multiplier, expected, population, rounds, dp.delta, **poisson)


def operator_round_epsilon(
    dp: DPSettings,
    threshold: int,
    accountant: OperatorAccountant,
    max_inputs: int,
    dimension: int,
    rounds: int,
    selection: str = "fixed",
    repeated: int = 0,
) -> float:
    """Under distributed DP, the run's client-level epsilon against the operator (at `dp.delta`) after
    `rounds` rounds (and `repeated` more releases of a round's sum: each one more round): the sum it
    unmasks is noised by at least `threshold` honest survivors, it knows whom each round selected (no
    amplification by sampling), and the noise is discrete (the accountant's correction). The
    neighbouring relation is the published model's (`neighbouring`), so the two figures compare:
    this one is never the smaller. `max_inputs`: the most inputs a round sums (its fixed-point
    headroom); `dimension`: the elements of one client's delta (the model's parameters)."""
    if dp.mode != "distributed" or dp.clip is None:
        raise ValueError(f"the operator's epsilon is distributed DP's, not {dp.mode}'s")
    replace_one = neighbouring(dp, selection) == "replace-one"
    return accountant(
        dp.noise_multiplier, threshold, dp.clip, max_inputs, dimension, rounds + repeated, dp.delta, replace_one
    )
