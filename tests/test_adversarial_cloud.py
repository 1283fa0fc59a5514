"""Issue 20's acceptance attack on the local cloud, which needs a consortium of three: one client of a
FedAdam run sends a delta of 1e30 in every weight, every round, with the run's default settings.

Before, the second moment v (float32) overflowed in round 1 and the run failed as `InvalidAggregate`.
Now the default norm bound clips the update, every round is aggregated, and `fedstep status` names the
client and the clip. The in-memory versions of the attack, strategy by strategy, are in
`tests/test_adversarial.py` ("issue 20: 2.")."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fedstep.core import tensors
from tests.cloud_helpers import (
    INITIAL,
    SHIFTS,
    ShiftTrainer,
    agent,
    cloud_of,
    fedstep,
    global_after,
    serve_run,
    start,
    summaries,
    wait_for_execution,
)

CLIENTS = ("client-1", "client-2", "client-3")
ATTACKER = "client-3"


@pytest.fixture(scope="module")
def local_cloud():
    """The stack with three clients, for this module."""
    with cloud_of(CLIENTS, round_timeout_s=120) as cloud:
        yield cloud


def test_a_client_sending_1e30_every_round_cannot_end_a_fedadam_run(cloud, tmp_path):
    rounds = 3
    run = start(cloud, rounds=rounds, strategy="fedadam")
    agents = [agent(cloud, c, tmp_path) for c in SHIFTS] + [agent(cloud, ATTACKER, tmp_path, ShiftTrainer(1e30, 10))]
    serve_run(agents, rounds)
    desc = wait_for_execution(cloud, run.execution_arn)
    assert desc["status"] == "SUCCEEDED", desc.get("cause")

    parameters = sum(v.size for v in INITIAL.values())
    bound = 10 * np.sqrt(parameters)  # INITIAL is all zeros: the default bound's floor, 10 x sqrt(15)
    done = summaries(cloud, run.run_id)
    assert [s.round for s in done] == list(range(1, rounds + 1))
    for summary in done:
        assert sorted(summary.participants) == list(CLIENTS)
        [clipped] = summary.clipped
        assert clipped.client_id == ATTACKER and clipped.what.endswith(f"-> {bound:.4g} (default bound)")
    final = tensors.decode(global_after(cloud, run.run_id, rounds))
    assert all(np.isfinite(v).all() and np.abs(v).max() < 10 for v in final.values())  # FedAdam's steps: <= eta

    status = fedstep(cloud, "status", run.run_id)
    assert status.returncode == 0, status.stderr
    assert f"run {run.run_id}: SUCCEEDED (max_rounds), round {rounds} of {rounds}" in status.stdout
    assert f"update norm <= default {bound:.4g} = 10 x max(initial model norm, sqrt(parameters))" in status.stdout
    for round_number in range(1, rounds + 1):
        assert f"round {round_number}: {ATTACKER} clipped: norm 3.873e+30 -> {bound:.4g} (default bound)" in (
            status.stdout
        )


def test_status_names_the_clients_multikrum_kept_and_not_the_outlier_it_dropped(cloud, tmp_path):
    run = start(cloud, rounds=1, min_participants=3, strategy="multikrum", strategy_params={"num_selected": 2})
    agents = [agent(cloud, c, tmp_path) for c in SHIFTS] + [agent(cloud, ATTACKER, tmp_path, ShiftTrainer(50.0, 10))]
    serve_run(agents, 1)
    assert wait_for_execution(cloud, run.execution_arn)["status"] == "SUCCEEDED"
    [summary] = summaries(cloud, run.run_id)
    assert summary.kept == ["client-1", "client-2"]
    assert summary.measurements["selected"] == 2.0  # the count stays, for scripts that read it

    status = fedstep(cloud, "status", run.run_id)
    assert status.returncode == 0, status.stderr
    assert "round 1: strategy kept client-1, client-2 (2 of 3 updates)" in status.stdout
    as_json = fedstep(cloud, "status", run.run_id, "--json")
    assert as_json.returncode == 0, as_json.stderr
    [row] = json.loads(as_json.stdout)["rounds"]
    assert row["kept"] == ["client-1", "client-2"]
