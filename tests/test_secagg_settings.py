"""Turning secure aggregation on per run (issue 25): the flags, run files and `fedstep.simulate`
settings that give `RunRecord.secagg`, every refusal by the flag it names (at `fedstep start` and in
the aggregation function's `check_run`), and distributed DP's settings and accounting: the published
model's epsilon as central DP's, the operator's without amplification by sampling."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import dp_accounting as dpa
import pytest

import fedstep
from fedstep.cli import build_parser, run_flags
from fedstep.core.dp import distributed_client_stddev, neighbouring, operator_round_epsilon
from fedstep.core.errors import FedstepError
from fedstep.core.rounds import operator_privacy_spent, privacy_spent
from fedstep.core.run_rules import InvalidRun, check_run, check_sliceable
from fedstep.core.schemas import DPSettings, ObjectRef, RoundSummary, RunRecord, SecAggSettings, TrainingConfig
from fedstep.core.strategies import build
from fedstep.local.demo import demo_config
from fedstep.local.round_entries import round_entry, round_line
from fedstep.operator.settings import (
    LOCAL_DEFAULTS,
    START_DEFAULTS,
    RunSettings,
    RunSettingsDefaults,
    load_run_file,
    merge_settings,
)
from fedstep.operator.start import plan_run, resume_rounds
from fedstep.privacy import distributed as ddp
from fedstep.privacy import lazy_client_epsilon, lazy_operator_epsilon
from fedstep.render.status import epsilon_text, secagg_text

CLIENTS = [f"client-{i}" for i in range(1, 6)]
SECURE = {"secure_aggregation": True}
DISTRIBUTED = {**SECURE, "dp": "distributed", "dp_noise_multiplier": 1.0, "dp_clip": "2.0"}


def _settings(args, defaults: RunSettingsDefaults) -> RunSettings:
    """The run settings the CLI takes from parsed arguments (no run file)."""
    return merge_settings(RunSettings(rounds=defaults.rounds, round_timeout_s=defaults.timeout), run_flags(args))


def _record(flags: str = "", clients: list[str] = CLIENTS) -> RunRecord:
    """The run record `fedstep start --model m:f <flags>` plans for `clients`."""
    args = build_parser().parse_args(["start", "--model", "m:f", *flags.split()])
    return plan_run(_settings(args, START_DEFAULTS), clients, "run-secure")


def _plan(clients: list[str] = CLIENTS, **settings) -> RunRecord:
    return plan_run(merge_settings(RunSettings(), settings), clients, "run-secure")


# -- the settings ---------------------------------------------------------------------------------------


def test_the_start_flags_give_the_run_record_its_secure_aggregation():
    record = _record(
        "--secure-aggregation --secagg-threshold 3 --secagg-neighbours 2 --secagg-clip 5 --secagg-phase-timeout 120"
    )
    assert record.secagg == SecAggSettings(threshold=3, neighbours=2, clip=5.0, phase_timeout_s=120)
    assert record.quorum == 3  # raised to the threshold: a secure round never aggregates fewer
    assert _record().secagg is None  # off by default


def test_the_threshold_defaults_to_the_largest_floor_within_the_clients_per_round():
    assert _record("--secure-aggregation").secagg == SecAggSettings(threshold=3)  # quorum 3 of 5; everyone; 10.0
    assert _record("--secure-aggregation --quorum 4").secagg.threshold == 4
    assert _record("--secure-aggregation --min-participants 4").secagg.threshold == 4
    two = _record("--secure-aggregation", clients=["a", "b"])  # half of 2 is 1: the threshold is 2, so the quorum
    assert (two.secagg.threshold, two.quorum) == (2, 2)
    sampled = _record("--secure-aggregation --clients-per-round 3 --quorum 3 --min-participants 3")
    assert sampled.secagg.threshold == 3


def test_distributed_dp_takes_its_clip_for_the_clients_and_keeps_the_published_budget():
    flags = "--dp distributed --dp-noise-multiplier 1.5 --dp-clip 2 --dp-delta 1e-6 --dp-epsilon 50"
    record = _record("--secure-aggregation " + flags)
    assert record.dp == DPSettings("distributed", 1.5, 2.0, 1e-6, 50.0)
    assert record.secagg.clip == 2.0


def test_a_run_file_turns_secure_aggregation_on_and_flags_override_it(tmp_path):
    path = tmp_path / "run.json"
    path.write_text(
        json.dumps({"secure_aggregation": True, "secagg_threshold": 4, "secagg_neighbours": 0, "secagg_clip": 3})
    )
    record = plan_run(merge_settings(RunSettings(), load_run_file(str(path))), CLIENTS, "run-file")
    assert record.secagg == SecAggSettings(threshold=4, neighbours=0, clip=3.0)
    flags = vars(build_parser().parse_args(["start", "--model", "m:f", "--secagg-threshold", "5"]))
    assert plan_run(merge_settings(RunSettings(), load_run_file(str(path)), flags), CLIENTS, "r").secagg.threshold == 5
    with pytest.raises(FedstepError, match=r"run setting secagg_threshold must be int, got '3'"):
        merge_settings(RunSettings(), {**SECURE, "secagg_threshold": "3"})


def test_simulate_and_fedstep_local_take_the_same_settings():
    local = build_parser().parse_args(["local", "--secure-aggregation", "--secagg-neighbours", "2"])
    assert _settings(local, LOCAL_DEFAULTS).secagg_neighbours == 2
    config = demo_config(clients=5, settings={**DISTRIBUTED, "secagg_threshold": 3})
    record = plan_run(config.settings, CLIENTS, "run-local")
    assert record.secagg == SecAggSettings(threshold=3, clip=2.0) and record.dp.mode == "distributed"


def test_simulate_refuses_secure_aggregation_settings_as_fedstep_local_does(tmp_path):
    with pytest.raises(FedstepError, match=r"--secure-aggregation shows the server only the sum .* 'median'"):
        fedstep.simulate(out=tmp_path, verbose=False, secure_aggregation=True, strategy="median")


def test_the_run_record_keeps_its_secure_aggregation_and_distributed_dp_through_the_table():
    flags = "--secagg-neighbours 2 --dp distributed --dp-noise-multiplier 1 --dp-clip 0.5"
    record = _record("--secure-aggregation " + flags)
    item = json.loads(json.dumps(record.to_item()))
    assert RunRecord.parse(item) == record
    assert item["secagg"] == {"threshold": 3, "neighbours": 2, "clip": 0.5, "phase_timeout_s": 300}


def test_fedstep_status_shows_the_runs_secure_aggregation_on_its_settings_line():
    assert secagg_text(SecAggSettings(threshold=3)) == (
        "secure aggregation: threshold 3, every other client, clip 10, each later phase's deadline 5 min 0 s"
    )
    assert "4 neighbours each" in secagg_text(SecAggSettings(threshold=3, neighbours=4))


def test_a_continuation_refuses_secure_aggregation_flags_like_every_other_setting():
    flags = vars(build_parser().parse_args(["start", "--resume", "run-1", "--secure-aggregation"]))
    with pytest.raises(FedstepError, match=r"--secure-aggregation cannot be changed"):
        resume_rounds("run-1", flags, {})
    flags = vars(build_parser().parse_args(["start", "--resume", "run-1", "--secagg-phase-timeout", "9"]))
    with pytest.raises(FedstepError, match=r"--secagg-phase-timeout cannot be changed"):
        resume_rounds("run-1", flags, {})


# -- the refusals -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        *[
            ({**SECURE, "strategy": name, "min_participants": 3}, f"strategy {name!r} {why}")
            for name, why in (
                ("median", "takes the coordinate-wise median"),
                ("trimmed_mean", "trims each coordinate's extremes"),
                ("krum", "scores each update by its distances"),
                ("multikrum", "scores each update by its distances"),
                ("fedavg_normbound", "clips each update to its own norm bound"),
            )
        ],
        ({**SECURE, "max_update_norm": 5.0}, "--max-update-norm 5 is a bound the server applies to each update"),
        ({**SECURE, "bound_action": "reject"}, "--bound-action reject asks the server to reject an update"),
        ({**SECURE, "client_max_examples": {"client-1": 10}}, "client_max_examples sets a weight cap per client"),
        ({**SECURE, "codec": "int8"}, "--codec int8 cannot be used with --secure-aggregation"),
        ({**SECURE, "dp": "central", "dp_noise_multiplier": 1.0}, "--dp central cannot be used with --secure-agg"),
        ({**SECURE, "dp": "client-clip", "dp_noise_multiplier": 1.0}, "--dp client-clip cannot be used with"),
        ({**SECURE, "secagg_threshold": 2, "min_participants": 3}, "--secagg-threshold 2 is below min_participants 3"),
        ({**SECURE, "secagg_threshold": 4, "quorum": 3}, "quorum 3 is below --secagg-threshold 4"),
        ({**SECURE, "secagg_threshold": 6}, "--secagg-threshold 6 is more than the 5 client(s) selected per round"),
        ({**SECURE, "secagg_threshold": 5, "secagg_neighbours": 2}, "--secagg-neighbours 2 is too few for --secagg-t"),
        ({**SECURE, "secagg_threshold": 1}, "--secagg-threshold must be 2 or more"),
        ({**SECURE, "secagg_neighbours": 3}, "--secagg-neighbours must be 0 (every other selected client) or an even"),
        ({**SECURE, "secagg_clip": 0.0}, "--secagg-clip must be a number > 0"),
        ({**SECURE, "secagg_phase_timeout_s": 0}, "--secagg-phase-timeout must be 1 s to"),
        ({"secagg_threshold": 3, "secagg_clip": 1.0}, "--secagg-threshold, --secagg-clip given without --secure-agg"),
        ({"dp": "distributed", "dp_noise_multiplier": 1.0, "dp_clip": "1"}, "--dp distributed needs --secure-aggr"),
        ({**DISTRIBUTED, "dp_clip": None}, "--dp distributed needs --dp-clip C, a number > 0"),
        ({**DISTRIBUTED, "dp_clip": "adaptive"}, "--dp distributed needs --dp-clip C, a number > 0"),
        ({**DISTRIBUTED, "secagg_clip": 3.0}, "--secagg-clip 3 differs from --dp-clip 2"),
        ({**DISTRIBUTED, "dp_delta": 0.5}, "--dp-delta 0.5 is not below 1/clients = 0.2"),
        ({**DISTRIBUTED, "dp_noise_multiplier": 0.3, "dp_epsilon": 0.5}, "--dp-epsilon 0.5 is unreachable"),
    ],
)
def test_fedstep_start_refuses_what_secure_aggregation_cannot_do_naming_the_flag(settings, message):
    with pytest.raises(FedstepError) as refused:
        _plan(**settings)
    assert message in str(refused.value)


def test_secure_aggregation_takes_the_averaging_strategies_the_dp_sgd_mode_and_the_default_bound():
    for name in ("fedavg", "fedavgm", "fedadam", "fedyogi", "fedadagrad", "fedprox"):
        assert _plan(**SECURE, strategy=name).secagg is not None
    assert _plan(**SECURE, dp="dp-sgd", dp_noise_multiplier=1.0).dp.mode == "dp-sgd"
    assert _plan(**SECURE, secagg_threshold=5, secagg_neighbours=4).secagg.neighbours == 4  # k + 1 = t


RUN = RunRecord(
    "run-secure",
    CLIENTS,
    5,
    TrainingConfig(),
    "fedavg",
    "2026-12-06T12:00:00+00:00",
    quorum=3,
    secagg=SecAggSettings(threshold=3, clip=2.0),
)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"strategy": "median", "min_participants": 3}, "strategy 'median' takes the coordinate-wise median"),
        ({"quorum": 2}, "quorum 2 is below --secagg-threshold 3"),
        ({"codec": "float16"}, "--codec float16 cannot be used with --secure-aggregation"),
        ({"dp": DPSettings("central", 1.0, 2.0, 1e-5)}, "--dp central cannot be used with --secure-aggregation"),
        ({"dp": DPSettings("distributed", 1.0, None, 1e-5)}, "--dp distributed needs a fixed --dp-clip C"),
        ({"dp": DPSettings("distributed", 1.0, 1.0, 1e-5)}, "--secagg-clip 2 differs from --dp-clip 1"),
        ({"secagg": None, "dp": DPSettings("distributed", 1.0, 1.0, 1e-5)}, "--dp distributed needs --secure-agg"),
        ({"secagg": SecAggSettings(threshold=5, neighbours=2), "quorum": 5}, "--secagg-neighbours 2 is too few"),
    ],
)
def test_the_aggregation_function_refuses_a_secure_record_that_breaks_a_rule(change, message):
    check_run(RUN)
    check_run(replace(RUN, dp=DPSettings("distributed", 1.0, 2.0, 1e-5)), lazy_client_epsilon)
    with pytest.raises(InvalidRun) as refused:
        check_run(replace(RUN, **change))
    assert message in str(refused.value)


def test_a_sliced_model_is_securely_aggregated_by_a_strategy_that_slices_and_refused_with_one_that_does_not():
    mib = 2**20
    check_sliceable(build("fedavg", {}), None, 100 * mib, 512 * mib, secure=True)  # one pass: fine
    check_sliceable(build("fedavg", {}), None, 600 * mib, 512 * mib, secure=True)  # each slice its own range
    with pytest.raises(InvalidRun, match=r"strategy 'fedadam' cannot aggregate this model of 600 MiB"):
        check_sliceable(build("fedadam", {}), None, 600 * mib, 512 * mib, secure=True)
    check_run(RUN, model_bytes=600 * mib, slice_bytes=512 * mib)


# -- distributed DP's accounting ------------------------------------------------------------------------

DIST = DPSettings("distributed", 1.0, 2.0, 1e-5)


def test_each_client_adds_noise_so_that_any_threshold_of_survivors_carries_z_c():
    stddev = distributed_client_stddev(DIST, threshold=4)
    assert stddev == pytest.approx(1.0 * 2.0 / 2)
    assert 4 * stddev**2 == pytest.approx((DIST.noise_multiplier * DIST.clip) ** 2)
    assert stddev == pytest.approx(ddp.client_sigma(DIST.noise_multiplier * DIST.clip, 4))  # the clients' own
    with pytest.raises(ValueError, match="distributed"):
        distributed_client_stddev(DPSettings("central", 1.0, 2.0, 1e-5), 4)


def test_distributed_dp_is_client_level_and_its_epsilon_names_the_run_s_relation():
    assert DIST.client_level and not DIST.central
    assert neighbouring(DIST, "fixed") == "replace-one" and neighbouring(DIST, "poisson") == "add-remove"


def test_a_distributed_dp_round_leaves_offline_clients_out_of_its_seeded_sample_without_redrawing(monkeypatch):
    """Its published epsilon counts on the sample drawn from every client, as central DP's does."""
    from fedstep.core.rounds import choose_clients, inputs
    from fedstep.core.selection import Selection

    seen: dict[str, object] = {}
    monkeypatch.setattr(inputs, "select_round", lambda *args, **kwargs: seen.update(kwargs) or Selection([]))
    choose_clients(replace(RUN, dp=DIST), 1, {})
    assert seen["redraw"] is False
    choose_clients(RUN, 1, {})
    assert seen["redraw"] is True


def test_a_distributed_dp_run_is_not_resumed_without_its_revoked_clients():
    from types import SimpleNamespace

    from fedstep.operator.start import without_revoked

    with pytest.raises(FedstepError, match=r"accounted over its 5 clients, and some are revoked now \(client-5\)"):
        without_revoked(replace(RUN, dp=DIST), SimpleNamespace(revoked=("client-5",)))


def test_the_published_model_s_epsilon_is_central_dp_s_and_its_budget_stops_the_run():
    run = replace(RUN, dp=replace(DIST, epsilon_budget=18.0))  # rounds cost 10.0, 15.5, 20.1 (replace-one)
    epsilon, delta, spent = privacy_spent(run, 1, [], lazy_client_epsilon)
    assert epsilon == round(lazy_client_epsilon(1.0, 5, 5, 1, 1e-5), 6) and delta == 1e-5
    assert not spent and privacy_spent(run, 2, [], lazy_client_epsilon)[2]  # a 3rd round would pass 18


def test_the_operator_s_epsilon_is_never_below_the_published_model_s():
    run = replace(RUN, dp=DIST)
    for rounds in (1, 10):
        for sampled, selection in ((run, "fixed"), (replace(run, clients_per_round=3, selection="poisson"), "poisson")):
            published, _, _ = privacy_spent(sampled, rounds, [], lazy_client_epsilon)
            operator = operator_privacy_spent(sampled, rounds, lazy_operator_epsilon, dimension=1000)
            assert operator is not None and operator >= published, (rounds, selection)
    assert operator_privacy_spent(replace(RUN, dp=DPSettings("central", 1.0, 2.0, 1e-5)), 3, None, 10) is None
    assert operator_privacy_spent(RUN, 3, None, 10) is None


def test_the_operator_s_epsilon_is_the_gaussian_s_on_the_quantised_sum_when_the_discrete_correction_vanishes():
    z, t, clip_steps, d, rounds, delta = 1.0, 3, 1e6, 100, 20, 1e-5
    sigma = ddp.client_sigma(z * clip_steps, t)
    assert ddp.tau(sigma, t) == 0.0
    l2 = 2 * clip_steps + 2 * math.sqrt(d)  # replace-one, and the two clients' roundings
    found = ddp.client_level_operator_epsilon(z, t, clip_steps, d, rounds, delta, replace_one=True)
    gaussian = dpa.rdp.RdpAccountant([a for a in dpa.rdp.rdp_privacy_accountant.DEFAULT_RDP_ORDERS if a > 1])
    gaussian.compose(dpa.GaussianDpEvent(math.sqrt(t) * sigma / l2), rounds)
    assert found == pytest.approx(gaussian.get_epsilon(delta), rel=1e-9)
    unsampled = lazy_client_epsilon(z, 5, 5, rounds, delta)  # the published model's, everyone in every round
    assert found == pytest.approx(unsampled, rel=0.1)  # the same mechanism, RDP rather than PLD
    small = ddp.client_level_operator_epsilon(z, t, 0.9, d, rounds, delta, replace_one=True)
    assert small > found  # a coarse grid: the rounding and the correction add up


def test_the_operator_s_epsilon_is_accounted_at_the_fixed_point_step_of_the_most_inputs_a_round_sums():
    run = replace(RUN, dp=DIST, clients_per_round=3)
    calls = []

    def accountant(*args):
        calls.append(args)
        return 1.0

    assert operator_privacy_spent(run, 4, accountant, dimension=50) == 1.0
    assert calls == [(1.0, 3, 2.0, 3, 50, 4, 1e-5, True)]  # z, t, C, max inputs, d, rounds, delta, replace-one
    operator_privacy_spent(replace(run, selection="poisson"), 4, accountant, dimension=50)
    assert calls[-1] == (1.0, 3, 2.0, 5, 50, 4, 1e-5, False)  # any of the 5 may be drawn; add/remove
    assert operator_round_epsilon(DIST, 3, accountant, 3, 50, 4, repeated=2) == 1.0
    assert calls[-1][5] == 6  # a repeated release is one more round
    with pytest.raises(FedstepError, match="no operator accountant"):
        operator_privacy_spent(run, 1, None, 50)


def test_the_round_summary_keeps_the_operator_s_epsilon_and_status_shows_it_beside_the_published_one():
    summary = RoundSummary(
        "run-secure",
        1,
        CLIENTS,
        CLIENTS,
        100,
        [],
        {},
        ObjectRef("k", "0" * 64, 1),
        1.0,
        0.1,
        "2026-12-06",
        epsilon=1.25,
        delta=1e-5,
        operator_epsilon=2.5,
    )
    assert RoundSummary.parse(json.loads(json.dumps(summary.to_dict()))) == summary
    assert summary.brief()["operator_epsilon"] == 2.5
    assert epsilon_text(summary) == "1.250 (operator 2.500)"
    entry = round_entry(summary, {"test_accuracy": 0.9, "test_loss": 0.3}, "replace-one")
    assert entry["operator_epsilon"] == 2.5
    assert round_line(summary, entry, 5, "replace-one").endswith("epsilon 1.250 (replace-one)  operator epsilon 2.500")
    assert epsilon_text(replace(summary, operator_epsilon=None)) == "1.250"
    assert "operator_epsilon" not in replace(summary, operator_epsilon=None).brief()
