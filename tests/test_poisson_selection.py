"""`--selection poisson` (issue 21, finding 7): each client takes part in a round independently with
probability q = clients_per_round / clients, seeded per run and round; central DP under it is
DP-FedAvg's fixed-denominator estimator (McMahan et al. 2018), accounted under add/remove-one
neighbours with sensitivity C, the convention of the DP-FedAvg literature."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, replace

import dp_accounting as dpa
import numpy as np
import pytest
from dp_accounting.pld.pld_privacy_accountant import PLDAccountant
from dp_accounting.rdp import RdpAccountant

from fedstep.cli import build_parser, run_flags
from fedstep.core import strategies
from fedstep.core.dp import DPAggregation, neighbouring
from fedstep.core.errors import FedstepError
from fedstep.core.rounds import AggregationSettings, build_strategy
from fedstep.core.schemas import DPSettings, RunRecord
from fedstep.core.selection import select, select_round
from fedstep.core.strategies import ClientUpdate, GlobalModel, ServerState, UpdateList
from fedstep.core.tensors import TensorSpec
from fedstep.operator.settings import RunSettings, merge_settings
from fedstep.operator.start import plan_run, poisson_warning
from fedstep.privacy.accounting import client_epsilon, epsilon_fixed
from tests.round_world import World, make_run

CLIENTS = [f"c{i:02d}" for i in range(100)]


def independent_poisson_epsilon(z: float, q: float, rounds: int, delta: float) -> float:
    """dp-accounting, called here directly: each round takes each client with probability q and adds
    noise of std z C to the sum of updates clipped to C. Adding or removing one client moves that sum
    by at most C, so the mechanism's noise multiplier is z. The tighter of RDP and PLD."""
    event = dpa.GaussianDpEvent(z) if q >= 1 else dpa.PoissonSampledDpEvent(q, dpa.GaussianDpEvent(z))
    event = dpa.SelfComposedDpEvent(event, rounds)
    relation = dpa.NeighboringRelation.ADD_OR_REMOVE_ONE
    bounds = []
    for accountant in (RdpAccountant(neighboring_relation=relation), PLDAccountant(relation, 1e-2)):
        accountant.compose(event)
        bounds.append(float(accountant.get_epsilon(delta)))
    return min(bounds)


# -- the sample ------------------------------------------------------------------------------------


def test_a_poisson_round_is_seeded_and_selects_q_n_clients_on_average():
    rounds = [select(CLIENTS, 10, seed=7, round_number=r, sampling="poisson") for r in range(1, 2001)]
    again = [select(CLIENTS[::-1], 10, seed=7, round_number=r, sampling="poisson") for r in range(1, 2001)]
    assert rounds == again  # every invocation that publishes, retries or takes over computes the same set
    sizes = [len(r) for r in rounds]
    assert np.mean(sizes) == pytest.approx(10, abs=0.25)  # q N = 0.1 x 100; its standard error is 0.067
    assert len(set(sizes)) > 5 and all(r == sorted(r) for r in rounds)  # sizes vary, unlike a fixed sample
    counts = {c: sum(c in r for r in rounds) for c in CLIENTS}  # each client with probability 0.1
    assert min(counts.values()) > 120 and max(counts.values()) < 290  # 200 expected, sd 13.4
    assert select(CLIENTS, 10, seed=8, round_number=1, sampling="poisson") != rounds[0]
    assert select(CLIENTS, 100, seed=7, round_number=1, sampling="poisson") == CLIENTS  # q = 1: everyone


def test_under_central_dp_the_poisson_sample_is_drawn_from_everyone_and_its_offline_members_left_out():
    sample = select(CLIENTS, 30, 3, 1, "poisson")
    gone = {sample[0]: "offline", next(c for c in CLIENTS if c not in sample): "stopped"}
    chosen = select_round(CLIENTS, 30, 3, 1, gone, needs=1, redraw=False, sampling="poisson")
    assert chosen.selected == sample[1:] and chosen.skipped == {sample[0]: "offline"}  # the drawn sample, not redrawn


def test_a_run_record_keeps_its_selection_and_one_written_before_it_existed_reads_fixed():
    run = replace(make_run(clients=tuple(CLIENTS)), clients_per_round=10, seed=5, selection="poisson")
    item = json.loads(json.dumps(run.to_item()))
    assert RunRecord.parse(item).selection == "poisson"
    assert RunRecord.parse(item).selected(4) == select(CLIENTS, 10, 5, 4, "poisson")
    del item["selection"]
    assert RunRecord.parse(item).selection == "fixed"


# -- the settings ----------------------------------------------------------------------------------


def test_selection_is_a_flag_of_start_and_local_and_a_run_file_field():
    for command in ("start", "local"):
        args = build_parser().parse_args(
            [command, "--model", "m:f", "--selection", "poisson", "--clients-per-round", "3"]
        )
        assert merge_settings(RunSettings(), {}, run_flags(args)).selection == "poisson"
    assert merge_settings(RunSettings(), {"selection": "poisson"}).selection == "poisson"
    assert RunSettings().validated().selection == "fixed"  # the default, today's behaviour


def test_an_unknown_selection_is_refused_naming_the_allowed_ones():
    with pytest.raises(FedstepError, match=r"selection must be one of fixed, poisson .*got 'bernoulli'"):
        merge_settings(RunSettings(), {"selection": "bernoulli"})


def test_a_poisson_run_waits_for_min_participants_not_half_of_the_expected_clients():
    settings = RunSettings(selection="poisson", clients_per_round="10", min_participants=1).validated()
    run = plan_run(settings, CLIENTS, "run-p")
    assert (run.selection, run.clients_per_round, run.quorum) == ("poisson", 10, 1)
    assert plan_run(RunSettings(clients_per_round="10").validated(), CLIENTS, "run-f").quorum == 5


def test_start_warns_when_some_round_of_a_poisson_run_may_select_too_few():
    small = plan_run(RunSettings(selection="poisson", clients_per_round="2", rounds=20).validated(), CLIENTS[:3], "r")
    warning = poisson_warning(small)  # 2 of 3, min_participants 2: a round has too few with probability 7/27
    assert warning is not None and "with probability 25.93%" in warning and "--min-participants" in warning
    many = plan_run(RunSettings(selection="poisson", clients_per_round="30", rounds=20).validated(), CLIENTS, "r")
    assert poisson_warning(many) is None  # fewer than 2 of 100 at q 0.3: never in practice
    assert poisson_warning(plan_run(RunSettings(clients_per_round="2").validated(), CLIENTS[:3], "r")) is None


# -- the accounting --------------------------------------------------------------------------------


def test_poisson_epsilon_is_dp_accountings_add_remove_figure_and_smaller_than_fixed_replace_one():
    z, delta = 1.0, 1e-5
    # the worked example of docs/privacy.md: 10 of 100 clients per round, 100 rounds
    poisson = client_epsilon(z, 10, 100, 100, delta, selection="poisson")
    assert poisson == pytest.approx(independent_poisson_epsilon(z, 0.1, 100, delta), rel=1e-9)
    fixed = client_epsilon(z, 10, 100, 100, delta)
    assert fixed == epsilon_fixed(z, 10, 100, 100, delta)  # the fixed-size accounting is unchanged
    assert (round(fixed, 1), round(poisson, 2)) == (83.9, 7.05)
    # every client in every round: the sensitivity alone (2C against C) makes replace-one 2.5-3 x larger
    for rounds in (30, 100):
        full = client_epsilon(z, 100, 100, rounds, delta)
        added = client_epsilon(z, 100, 100, rounds, delta, selection="poisson")
        assert added == pytest.approx(independent_poisson_epsilon(z, 1.0, rounds, delta), rel=1e-9)
        assert 2.5 < full / added < 3.2


def test_a_poisson_dp_runs_rounds_report_the_add_remove_epsilon():
    run = replace(
        make_run(clients=tuple(CLIENTS[:10]), dp=DPSettings("central", 1.1, 1.0, 1e-5)),
        clients_per_round=4,
        seed=3,
        selection="poisson",
    )
    world = World(run)
    world.publish()
    selected = world.table.get_round(run.run_id, 1)["selected"]
    assert selected == select(run.clients, 4, 3, 1, "poisson") and selected
    for c in selected:
        world.report(c, 0.1)
    summary = world.complete(settings=AggregationSettings(accountant=client_epsilon))
    assert summary.epsilon == pytest.approx(independent_poisson_epsilon(1.1, 0.4, 1, 1e-5), abs=1e-6)
    assert neighbouring(run.dp, run.selection) == "add-remove"
    assert neighbouring(replace(run, selection="fixed").dp, "fixed") == "replace-one"
    assert neighbouring(DPSettings("dp-sgd", 1.0, 1.0, 1e-5), "fixed") == "add-remove"  # one record
    assert asdict(run)["selection"] == "poisson"


# -- the fixed-denominator estimator ---------------------------------------------------------------


def _aggregate(wrapper: DPAggregation, deltas: list[np.ndarray], state: ServerState | None = None):
    spec = TensorSpec({"w": deltas[0].shape})
    updates = UpdateList([ClientUpdate(f"c{i}", 1 + i, {"w": d}) for i, d in enumerate(deltas)], spec=spec)
    model = GlobalModel(spec, lambda: {"w": np.zeros(spec.shapes["w"], np.float32)})
    return wrapper.aggregate(1, model, state or ServerState(), updates)


def test_a_poisson_dp_round_divides_the_noisy_sum_by_q_n_not_by_the_updates_that_arrived():
    run = replace(
        make_run(clients=tuple(CLIENTS[:10]), dp=DPSettings("central", 1.5, 0.5, 1e-5)),
        clients_per_round=4,
        selection="poisson",
    )
    wrapper = build_strategy(run)
    assert isinstance(wrapper, DPAggregation) and wrapper.expected == 4  # q N = 0.4 x 10
    size, clip, z = 200_000, 0.5, 1.5
    rng = np.random.default_rng(0)
    deltas = [rng.normal(0, 1, size).astype(np.float32) for _ in range(6)]  # 6 arrived this round
    result = _aggregate(wrapper, deltas)
    clipped_sum = sum(d.astype(np.float64) * (clip / np.linalg.norm(d.astype(np.float64))) for d in deltas)
    noise = result.weights["w"].astype(np.float64) - clipped_sum / 4
    assert abs(noise.mean()) < 5 * z * clip / 4 / math.sqrt(size)  # centred: the divisor is 4, not 6
    assert noise.std() == pytest.approx(z * clip / 4, rel=0.02)


def test_adaptive_clipping_under_poisson_releases_the_centred_count():
    """Adding or removing a client moves sum(b_i - 1/2) by 1/2 (Andrew et al. 2021), the sensitivity
    the noise split z_delta = (z^-2 - (2 sigma_b)^-2)^-1/2 assumes under add/remove: 2 of an expected 4
    within the clip estimate (2 - 1) / 4 + 1/2 = 0.75, where the uncentred count gives 2 / 4."""
    dp = DPSettings("central", 0.5, None, 1e-5, initial_clip=1.0, clipped_count_stddev=0.3)
    small = [np.full(100, 0.001, np.float32) for _ in range(2)]
    centred = DPAggregation(strategies.build("fedavg"), dp, 4, "poisson")
    plain = DPAggregation(strategies.build("fedavg"), dp, 4)
    estimates = [_aggregate(centred, small).measurements["dp_within_clip"] for _ in range(40)]
    uncentred = [_aggregate(plain, small).measurements["dp_within_clip"] for _ in range(40)]
    assert np.mean(estimates) == pytest.approx(0.75, abs=0.05)  # noise 0.3 / 4 each, 0.012 over 40
    assert np.mean(uncentred) == pytest.approx(0.5, abs=0.05)


def test_the_worked_example_in_docs_privacy_md_is_what_fedstep_computes():
    from pathlib import Path

    text = (Path(__file__).parent.parent / "docs" / "privacy.md").read_text()
    section = text.split("**A worked example.**", 1)[1].split("To compute a figure yourself", 1)[0]
    table = [line for line in section.splitlines() if line.startswith("| ") and "rounds" not in line]
    rows = [line.strip("|").split("|") for line in table]
    assert [int(r[0]) for r in rows] == [1, 10, 100]
    for rounds, fixed, poisson in rows:
        assert float(fixed) == round(client_epsilon(1.0, 10, 100, int(rounds), 1e-5), 1)
        assert float(poisson) == round(client_epsilon(1.0, 10, 100, int(rounds), 1e-5, selection="poisson"), 2)
    assert "--selection fixed\\|poisson" in (Path(__file__).parent.parent / "README.md").read_text()
