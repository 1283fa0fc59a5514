"""DP-FedAvg with central noise on the local cloud (issue 12's acceptance): the reported epsilon is
dp-accounting's, the aggregate is the clipped mean plus noise of the right scale, and a budget
stops the run with `privacy_budget`."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from client_agent.agent import Outcome
from fedstep.aws.adapters import DynamoRoundTable, S3ModelStore
from fedstep.core import tensors
from tests.cloud_helpers import (
    SHIFTS,
    ShiftTrainer,
    agent,
    fedstep,
    serve,
    serve_run,
    start,
    summaries,
    wait_for_execution,
)
from tests.test_dp import independent_epsilon

BIG = {"000/d/kernel": np.zeros((200, 100), np.float32), "001/d/bias": np.zeros(100, np.float32)}
SIZE = 200 * 100 + 100
Z, CLIP, DELTA = 1.2, 0.5, 1e-5


def start_dp(cloud, rounds: int, **dp):
    return start(cloud, rounds=rounds, initial=BIG, dp="central", dp_noise_multiplier=Z, **dp)


def test_three_rounds_of_central_dp_report_dp_accountings_epsilon_and_add_noise_of_the_right_scale(cloud, tmp_path):
    run = start_dp(cloud, rounds=3, dp_clip=str(CLIP), dp_delta=DELTA)
    serve_run([agent(cloud, c, tmp_path) for c in SHIFTS], 3)
    desc = wait_for_execution(cloud, run.execution_arn)
    assert desc["status"] == "SUCCEEDED", desc.get("cause")
    rounds = summaries(cloud, run.run_id)
    for s in rounds:  # 2 of 2 clients every round: no sampling amplification
        assert s.epsilon == pytest.approx(independent_epsilon(Z, 2, 2, s.round, DELTA), abs=1e-6)
        assert s.delta == DELTA
    assert json.loads(desc["output"])["last_round"]["epsilon"] == rounds[-1].epsilon  # in the execution output
    # each noisy model was counted in its round record before it was written (DynamoDB's ADD, under the claim)
    table = DynamoRoundTable(cloud.outputs.table, cloud.client("dynamodb"))
    assert [table.get_round(run.run_id, s.round)["noisy_releases"] for s in rounds] == [1, 1, 1]
    assert [s.repeated_releases for s in rounds] == [0, 0, 0]

    # Round 1: both clients shift every weight (by 1 and by 3): norms of about 141 and 424, both clipped to
    # C = 0.5, i.e. C / sqrt(size) per weight. Without noise the aggregate would be their unweighted mean.
    store = S3ModelStore(cloud.outputs.bucket, cloud.client("s3"))
    first = tensors.decode(store.get(rounds[0].global_model.key))
    noise = np.concatenate([first[k].ravel() for k in sorted(first)]).astype(np.float64) - CLIP / np.sqrt(SIZE)
    expected_std = Z * CLIP / 2  # the sum's noise z*C, divided by the 2 expected participants
    assert noise.std() == pytest.approx(expected_std, rel=0.03)
    assert abs(noise.mean()) < 5 * expected_std / np.sqrt(SIZE)


def test_a_budget_stops_the_run_before_the_round_that_would_exceed_it(cloud, tmp_path):
    budget = (independent_epsilon(Z, 2, 2, 2, DELTA) + independent_epsilon(Z, 2, 2, 3, DELTA)) / 2
    run = start_dp(cloud, rounds=5, dp_clip=str(CLIP), dp_epsilon=budget)
    agents = [agent(cloud, c, tmp_path) for c in SHIFTS]
    for _ in range(2):
        for a in agents:
            serve(a)
    desc = wait_for_execution(cloud, run.execution_arn)
    output = json.loads(desc["output"])
    assert (desc["status"], output["stop_reason"], output["rounds_completed"]) == ("SUCCEEDED", "privacy_budget", 2)
    assert summaries(cloud, run.run_id)[-1].epsilon <= budget


def test_a_run_whose_budget_runs_out_in_its_last_round_ended_by_its_rounds_not_the_budget(cloud, tmp_path):
    """Issue 21, finding 10: a run that ran every round it was given reported privacy_budget."""
    budget = (independent_epsilon(Z, 2, 2, 2, DELTA) + independent_epsilon(Z, 2, 2, 3, DELTA)) / 2
    run = start_dp(cloud, rounds=2, dp_clip=str(CLIP), dp_epsilon=budget)  # round 3 would exceed it
    serve_run([agent(cloud, c, tmp_path) for c in SHIFTS], 2)
    desc = wait_for_execution(cloud, run.execution_arn)
    output = json.loads(desc["output"])
    assert (desc["status"], output["stop_reason"], output["rounds_completed"]) == ("SUCCEEDED", "max_rounds", 2)
    assert summaries(cloud, run.run_id)[-1].privacy_budget_spent  # the round knew; the run had no round left


class CountingShift(ShiftTrainer):
    """A ShiftTrainer that says how many local examples it has (what a DP-SGD ledger accounts)."""

    @property
    def num_examples(self) -> int:
        return self.n


def test_a_client_whose_budget_is_spent_is_not_trained_and_the_round_goes_on(cloud, tmp_path):
    run = start(cloud, rounds=2, quorum=1, min_participants=1, dp="dp-sgd", dp_noise_multiplier=1.0, dp_clip="1.0")
    willing = agent(cloud, "client-1", tmp_path, CountingShift(*SHIFTS["client-1"]))
    spent = agent(cloud, "client-2", tmp_path, CountingShift(*SHIFTS["client-2"]))
    spent.config = replace(spent.config, dp_epsilon_budget=0.01)  # its data owner's budget: far too small
    trained = []
    original_fit = spent.trainer.fit
    spent.trainer.fit = lambda *args: trained.append(args) or original_fit(*args)
    for _ in range(2):
        serve(willing)
        serve(spent, expect=Outcome.DECLINED)
    desc = wait_for_execution(cloud, run.execution_arn)
    assert desc["status"] == "SUCCEEDED", desc.get("cause")
    assert trained == []  # never trained
    rounds = summaries(cloud, run.run_id)
    assert [s.participants for s in rounds] == [["client-1"], ["client-1"]]
    assert all(d.client_id == "client-2" and "privacy budget" in d.reason for s in rounds for d in s.declined)
    assert all(s.duration_s < 60 for s in rounds)  # the round did not wait for its 120 s deadline
    assert rounds[-1].epsilon is not None and rounds[-1].epsilon > rounds[0].epsilon  # client-1's, growing


class EvaluatingShift(ShiftTrainer):
    """A ShiftTrainer that reports what a Keras client does: the global model's accuracy on its test split
    before training (0.1 in round 1, 0.2 in round 2: the noisy model is poor) and its own after (0.9)."""

    def __init__(self, shift: float, n: int) -> None:
        super().__init__(shift, n)
        self.rounds = 0

    def fit(self, architecture, weights, training):
        self.rounds += 1
        result = super().fit(architecture, weights, training)
        metrics = {"test_accuracy_before": 0.1 * self.rounds, "test_accuracy": 0.9}
        return replace(result, metrics={**result.metrics, **metrics})


def test_the_privacy_views_pair_epsilon_with_the_global_models_accuracy_not_the_clients(cloud, tmp_path):
    """Issue 21, finding 4: under central DP the clients' accuracy after local training (0.9) says nothing
    about the noisy global model. `fedstep status` and `fedstep report` show, beside each round's epsilon,
    the accuracy of the model that round released, from the next round's federated evaluation."""
    run = start_dp(cloud, rounds=2, dp_clip=str(CLIP), dp_delta=DELTA)
    serve_run([agent(cloud, c, tmp_path, EvaluatingShift(*SHIFTS[c])) for c in SHIFTS], 2)
    assert wait_for_execution(cloud, run.execution_arn)["status"] == "SUCCEEDED"

    status = fedstep(cloud, "status", run.run_id)
    assert status.returncode == 0, status.stderr
    rows = [cells for line in status.stdout.splitlines() if (cells := line.split()) and "/" in cells[1]]
    assert "ACCURACY  MODEL ACC" in status.stdout
    assert "epsilon for replace-one neighbours (a client's data replaced)" in status.stdout  # finding 7
    assert [(r[0], r[5], r[6]) for r in rows] == [("1", "0.9000", "0.2000"), ("2", "0.9000", "-")]

    report = fedstep(cloud, "report", run.run_id, "-o", str(tmp_path / "report"))
    assert report.returncode == 0, report.stderr
    page = (tmp_path / "report" / "report.html").read_text()
    table = page.split('<table id="privacy-utility">', 1)[1].split("</table>", 1)[0]
    assert "<th>epsilon after it (replace-one neighbours)</th>" in table
    epsilon = [f"{s.epsilon:.3f}" for s in summaries(cloud, run.run_id)]
    assert f"<tr><td>1</td><td>{epsilon[0]}</td><td>0.2000</td><td>0.9000</td></tr>" in table
    assert f"<tr><td>2</td><td>{epsilon[1]}</td><td>-</td><td>0.9000</td></tr>" in table
    assert (tmp_path / "report" / "privacy.png").stat().st_size > 1000


def test_a_poisson_central_dp_run_divides_by_q_n_reports_the_add_remove_epsilon_and_says_so(cloud, tmp_path):
    """Issue 21, finding 7: `--selection poisson` takes each client with probability q (here 1 of 2: 0.5),
    divides each round's noisy clipped sum by q N = 1 whoever sent, and accounts epsilon under add/remove
    neighbours; `fedstep status` names the relation. Seed 3 selects both, then client-1, then both."""
    from fedstep.core.selection import select
    from tests.test_poisson_selection import independent_poisson_epsilon

    clients = sorted(SHIFTS)
    plan = [select(clients, 1, 3, r, "poisson") for r in (1, 2, 3)]
    assert plan == [clients, ["client-1"], clients]
    run = start_dp(
        cloud, rounds=3, dp_clip=str(CLIP), selection="poisson", clients_per_round="1", min_participants=1, seed=3
    )
    agents = {c: agent(cloud, c, tmp_path) for c in clients}
    for chosen in plan:
        for c in chosen:
            serve(agents[c])
    desc = wait_for_execution(cloud, run.execution_arn)
    assert desc["status"] == "SUCCEEDED", desc.get("cause")
    rounds = summaries(cloud, run.run_id)
    assert [s.selected for s in rounds] == plan and [s.participants for s in rounds] == plan
    for s in rounds:
        assert s.epsilon == pytest.approx(independent_poisson_epsilon(Z, 0.5, s.round, DELTA), abs=1e-6)
    assert rounds[-1].epsilon < independent_epsilon(Z, 1, 2, 3, DELTA)  # the fixed-size, replace-one figure

    # Round 1: both clients' updates, each clipped to C = 0.5 (C / sqrt(size) per weight), summed and
    # divided by q N = 1, not by the 2 that arrived; the noise's std is z C / 1.
    store = S3ModelStore(cloud.outputs.bucket, cloud.client("s3"))
    first = tensors.decode(store.get(rounds[0].global_model.key))
    weights = np.concatenate([first[k].ravel() for k in sorted(first)]).astype(np.float64)
    noise = weights - 2 * CLIP / np.sqrt(SIZE)
    assert noise.std() == pytest.approx(Z * CLIP, rel=0.03)
    assert abs(noise.mean()) < 5 * Z * CLIP / np.sqrt(SIZE)

    status = fedstep(cloud, "status", run.run_id)
    assert status.returncode == 0, status.stderr
    assert "each with probability 0.5 per round (poisson, 1 on average)" in status.stdout
    assert "epsilon for add/remove neighbours (a client added or removed)" in status.stdout
    as_json = json.loads(fedstep(cloud, "status", run.run_id, "--json").stdout)
    assert (as_json["neighbouring"], as_json["settings"]["selection"]) == ("add-remove", "poisson")
