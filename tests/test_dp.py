"""Client-level differential privacy on the server (DP-FedAvg around any averaging strategy), its
accounting with dp-accounting, the run's budget, and clients that decline a round."""

from __future__ import annotations

import math

import dp_accounting as dpa
import numpy as np
import pytest
from dp_accounting.pld.pld_privacy_accountant import PLDAccountant
from dp_accounting.rdp import RdpAccountant

from fedstep.core import strategies
from fedstep.core.dp import DPAggregation, update_noise_multiplier
from fedstep.core.errors import FedstepError
from fedstep.core.rounds import AggregationSettings, StrategyFailed, task_output
from fedstep.core.schemas import DeclineItem, DPSettings
from fedstep.core.strategies import ClientUpdate, GlobalModel, ServerState, UpdateList
from fedstep.core.tensors import TensorSpec
from fedstep.operator.settings import RunSettings
from fedstep.privacy.accounting import epsilon_fixed
from tests.round_world import RUN, make_world

SETTINGS = AggregationSettings(accountant=epsilon_fixed)


def independent_epsilon(z: float, sample: int, population: int, rounds: int, delta: float) -> float:
    """dp-accounting, called here directly: the Gaussian mechanism on the clipped sum, clients drawn
    without replacement. Neighbours replace one client's data by another's: the sum moves by up to
    2C while the noise's std is z C, so the mechanism's noise multiplier is z / 2. The tighter of the
    RDP and PLD bounds (PLD does not support sampling without replacement)."""
    event = dpa.GaussianDpEvent(z / 2)
    if sample < population:
        event = dpa.SampledWithoutReplacementDpEvent(population, sample, event)
    event = dpa.SelfComposedDpEvent(event, rounds)
    bounds = []
    # a plain Gaussian (everyone in every round) already holds the 2C in z / 2: add/remove of it, as
    # dp-accounting's PLD would double the sensitivity again under REPLACE_ONE
    relation = dpa.NeighboringRelation.REPLACE_ONE if sample < population else dpa.NeighboringRelation.ADD_OR_REMOVE_ONE
    for accountant in (
        RdpAccountant(neighboring_relation=relation),
        PLDAccountant(relation, value_discretization_interval=1e-2),
    ):
        if accountant.supports(event):
            accountant.compose(event)
            bounds.append(float(accountant.get_epsilon(delta)))
    return min(bounds)


def _aggregate(dp: DPSettings, deltas: list[np.ndarray], expected: int, state=None):
    spec = TensorSpec({"w": deltas[0].shape})
    updates = UpdateList([ClientUpdate(f"c{i}", 1 + i, {"w": d}) for i, d in enumerate(deltas)], spec=spec)
    wrapper = DPAggregation(strategies.build("fedavg"), dp, expected)
    model = GlobalModel(spec, lambda: {"w": np.zeros(spec.shapes["w"], np.float32)})
    return wrapper.aggregate(1, model, state or ServerState(), updates)


def test_the_noisy_mean_is_the_clipped_sum_plus_noise_of_std_z_c_over_the_expected_participants():
    size, clip, z, expected = 200_000, 0.5, 1.5, 4
    rng = np.random.default_rng(0)
    deltas = [rng.normal(0, 1, size).astype(np.float32) for _ in range(3)]  # norms ~447: all clipped to 0.5
    result = _aggregate(DPSettings("central", z, clip, 1e-5), deltas, expected)
    clipped_sum = sum(d.astype(np.float64) * (clip / np.linalg.norm(d.astype(np.float64))) for d in deltas)
    noise = result.weights["w"].astype(np.float64) - clipped_sum / expected  # divided by 4, not by the 3 that came
    assert abs(noise.mean()) < 5 * z * clip / expected / math.sqrt(size)
    assert noise.std() == pytest.approx(z * clip / expected, rel=0.02)
    assert result.measurements["dp_clip"] == clip


def test_two_aggregations_of_the_same_updates_draw_different_noise():
    deltas = [np.ones(1000, np.float32)]
    dp = DPSettings("central", 1.0, 1.0, 1e-5)
    assert not np.array_equal(_aggregate(dp, deltas, 2).weights["w"], _aggregate(dp, deltas, 2).weights["w"])


def test_adaptive_clipping_moves_the_clip_towards_the_target_quantile():
    dp = DPSettings("central", 0.5, None, 1e-5, clip_learning_rate=0.5, initial_clip=1.0, clipped_count_stddev=0.3)
    small = [np.full(100, 0.001, np.float32) for _ in range(10)]  # every norm far below the clip
    state = ServerState()
    clips = []
    for _ in range(5):
        result = _aggregate(dp, small, 10, state)
        state = result.state
        clips.append(state.values["dp.clip"])
    assert clips == sorted(clips, reverse=True) and clips[-1] < 0.5  # all within: the clip shrinks
    assert update_noise_multiplier(dp, 10) > dp.noise_multiplier  # part of the noise went to the count


def test_differential_privacy_refuses_to_wrap_a_strategy_without_calibrated_noise():
    with pytest.raises(ValueError, match="'median' reads updates by slices"):
        DPAggregation(strategies.build("median"), DPSettings("central", 1.0, 1.0, 1e-5), 3)


def test_fedadam_takes_its_step_from_the_noisy_mean_and_keeps_its_moments():
    dp = DPSettings("central", 1.0, 1.0, 1e-5)
    wrapper = DPAggregation(strategies.build("fedadam"), dp, 2)
    spec = TensorSpec({"w": (10,)})
    updates = UpdateList([ClientUpdate("a", 5, {"w": np.ones(10, np.float32)})], spec=spec)
    result = wrapper.aggregate(1, GlobalModel(spec, lambda: {"w": np.zeros(10, np.float32)}), ServerState(), updates)
    assert set(result.state.tensors) == {"m/w", "v/w"} and result.state.values["steps"] == 1


def test_each_rounds_epsilon_is_dp_accountings_for_the_rounds_so_far():
    dp = DPSettings("central", 1.1, 1.0, 1e-5)
    world = make_world(clients=("a", "b", "c"), dp=dp)
    for round_number in (1, 2):
        if round_number > 1:
            world.publish(round_number, token=f"tok-{round_number}")
        for c in ("a", "b", "c"):
            world.report(c, 0.1, round_number=round_number)
        summary = world.complete(round_number, settings=SETTINGS)
        assert summary.epsilon == pytest.approx(independent_epsilon(1.1, 3, 3, round_number, 1e-5), abs=1e-6)
        assert summary.delta == 1e-5


def test_a_repeated_noisy_release_is_accounted_as_another_release_and_without_sampling_when_sampled():
    """`round_epsilon` with repeated releases (an aggregation's model released, not committed, done
    again): with every client in every round one more Gaussian step; with clients sampled, two more
    steps without amplification each (an upper bound on k releases on one sample)."""
    from fedstep.core.dp import round_epsilon

    dp = DPSettings("central", 1.5, 1.0, 1e-5)
    assert round_epsilon(dp, epsilon_fixed, 3, 3, 4, repeated=2) == epsilon_fixed(1.5, 3, 3, 6, 1e-5)
    sampled = round_epsilon(dp, epsilon_fixed, 2, 5, 4, repeated=1)
    assert sampled == epsilon_fixed(1.5, 2, 5, 4, 1e-5, unsampled=2)
    assert sampled > epsilon_fixed(1.5, 2, 5, 4, 1e-5) and sampled > epsilon_fixed(1.5, 2, 5, 5, 1e-5)
    event = dpa.ComposedDpEvent(
        [
            dpa.SelfComposedDpEvent(dpa.SampledWithoutReplacementDpEvent(5, 2, dpa.GaussianDpEvent(0.75)), 4),
            dpa.SelfComposedDpEvent(dpa.GaussianDpEvent(0.75), 2),
        ]
    )
    accountant = RdpAccountant(neighboring_relation=dpa.NeighboringRelation.REPLACE_ONE)
    accountant.compose(event)
    assert sampled == pytest.approx(float(accountant.get_epsilon(1e-5)), rel=1e-9)


def test_the_round_before_the_budget_would_be_exceeded_says_so():
    budget = (independent_epsilon(2.0, 2, 2, 2, 1e-5) + independent_epsilon(2.0, 2, 2, 3, 1e-5)) / 2
    world = make_world(dp=DPSettings("central", 2.0, 1.0, 1e-5, epsilon_budget=budget))
    spent = []
    for round_number in (1, 2):
        if round_number > 1:
            world.publish(round_number, token=f"tok-{round_number}")
        for c in ("a", "b"):
            world.report(c, 0.1, round_number=round_number)
        summary = world.complete(round_number, settings=SETTINGS)
        spent.append(task_output(summary, world.run)["privacy_budget_spent"])
    assert spent == [False, True]  # round 3 would pass the budget: the run stops after round 2


def test_a_dp_run_without_an_accountant_fails_loudly():
    world = make_world(dp=DPSettings("central", 1.0, 1.0, 1e-5))
    for c in ("a", "b"):
        world.report(c, 0.1)
    with pytest.raises(FedstepError, match="has no accountant"):
        world.complete()


def test_a_client_that_declines_is_a_non_participant_and_the_round_goes_on_at_once():
    world = make_world(clients=("a", "b", "c"))
    world.report("a", 1.0)
    world.report("b", 3.0)
    decline = DeclineItem(RUN, 1, "c", "privacy budget: epsilon would reach 3.2 > budget 3.0", "2026-11-21T00:01Z")
    world.table.put(decline.to_item())
    summary = world.complete()  # no waiting for the deadline: every selected client answered
    assert summary is not None and summary.participants == ["a", "b"]
    assert [(d.client_id, d.reason) for d in summary.declined] == [("c", decline.reason)]
    assert world.new_global()["001/d/bias"][0] == pytest.approx(2.0)


def test_declines_below_the_quorum_fail_the_round_with_their_reasons():
    world = make_world(quorum=2, clients=("a", "b"), min_participants=1)
    world.report("a", 1.0)
    world.table.put(DeclineItem(RUN, 1, "b", "privacy budget spent", "2026-11-21T00:01Z").to_item())
    world.complete()
    [(_, error, cause)] = world.reporter.failures
    assert error == "QuorumNotMet" and "b: declined: privacy budget spent" in cause


def test_a_dp_run_with_a_strategy_that_cannot_take_noise_fails_when_its_first_round_is_published():
    with pytest.raises(StrategyFailed, match="reads updates by slices"):  # fedstep start refuses it before that
        make_world(strategy="median", dp=DPSettings("central", 1.0, 1.0, 1e-5))


@pytest.mark.parametrize(
    ("settings", "clients", "message"),
    [
        (RunSettings(dp="central"), 3, "needs --dp-noise-multiplier"),
        (RunSettings(dp_noise_multiplier=1.0), 3, "--dp-noise-multiplier given without --dp"),
        (RunSettings(dp="central", dp_noise_multiplier=1.0, dp_delta=0.5), 3, "is not below 1/clients"),
        (RunSettings(dp="central", dp_noise_multiplier=0.3, dp_epsilon=1.0, dp_clip="1"), 3, "is unreachable"),
        (RunSettings(dp="central", dp_noise_multiplier=1.0, dp_clip="big"), 3, "--dp-clip must be a number"),
        (RunSettings(dp="dp-sgd", dp_noise_multiplier=1.0, dp_epsilon=3.0), 3, "each data owner sets its own"),
        (
            RunSettings(dp="central", dp_noise_multiplier=1.0, strategy="krum", min_participants=3),
            3,
            "reads updates by slices",
        ),
    ],
)
def test_nonsense_dp_settings_are_refused_before_a_run_starts(settings, clients, message):
    with pytest.raises(FedstepError, match=message):
        settings.validated().for_clients([f"c{i}" for i in range(clients)])


def test_sensible_dp_settings_are_accepted_and_recorded():
    settings = RunSettings(dp="central", dp_noise_multiplier=1.0, dp_clip="0.5", dp_epsilon=20.0).validated()
    settings.for_clients(["a", "b", "c", "d"])
    assert settings.privacy() == DPSettings("central", 1.0, 0.5, 1e-5, 20.0)
    assert RunSettings(dp="client-clip", dp_noise_multiplier=1.0).privacy().clip is None  # adaptive by default


def test_a_client_reporting_an_epsilon_past_dynamodbs_numbers_is_rejected_and_the_round_goes_on():
    """The attack: under DP-SGD the round summary carries the largest epsilon a participant reports;
    1e300 would make the summary a number DynamoDB refuses (above 1e125), so no round could complete."""
    world = make_world(clients=("a", "b", "c"), dp=DPSettings("dp-sgd", 1.1, 1.0, 1e-5))
    world.report("a", 1.0, privacy={"epsilon": 2.5, "delta": 1e-5})
    world.report("b", 3.0, privacy={"epsilon": 3.0, "delta": 1e-5})
    world.report("c", 5.0, privacy={"epsilon": 1e300, "delta": 1e-5})
    summary = world.complete()
    assert summary is not None and summary.participants == ["a", "b"]
    [rejection] = summary.rejected
    assert rejection.client_id == "c" and "privacy figures must be numbers from 0 to 1e+12" in rejection.reason
    assert summary.epsilon == 3.0


def test_a_within_clip_bit_other_than_0_or_1_is_refused():
    from fedstep.core.schemas import InvalidMessage, check_privacy

    with pytest.raises(InvalidMessage, match="within_clip must be 0 or 1"):
        check_privacy({"within_clip": 50.0}, "update item")
