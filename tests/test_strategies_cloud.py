"""Strategies on the local cloud: server state persisted per round and continued by a resume; the
strategy's instructions reaching the clients; a strategy's exception reported as what it is."""

from __future__ import annotations

import json

import numpy as np

from client_agent.training import TrainResult
from fedstep.aws.adapters import S3ModelStore
from fedstep.core import strategies, tensors
from fedstep.operator.start import resume_run
from tests.cloud_helpers import (
    INITIAL,
    SHIFTS,
    ShiftTrainer,
    agent,
    drain_queues,
    fedstep,
    serve,
    serve_run,
    start,
    summaries,
    wait_for_execution,
)

FEDADAM = {"strategy": "fedadam", "strategy_params": {"eta": 0.05}}


def _final(cloud, execution_arn: str) -> dict[str, np.ndarray]:
    desc = wait_for_execution(cloud, execution_arn)
    assert desc["status"] == "SUCCEEDED", desc.get("cause")
    key = json.loads(desc["output"])["global_model"]["key"]
    return tensors.decode(S3ModelStore(cloud.outputs.bucket, cloud.client("s3")).get(key))


def test_fedadam_stopped_after_3_rounds_and_resumed_ends_with_the_model_of_an_uninterrupted_run(cloud, tmp_path):
    uninterrupted = start(cloud, rounds=5, **FEDADAM)
    agents = [agent(cloud, c, tmp_path / "a") for c in SHIFTS]
    serve_run(agents, 5)
    expected = _final(cloud, uninterrupted.execution_arn)
    states = [s.state for s in summaries(cloud, uninterrupted.run_id)]
    assert all(s is not None and "/state-" in s.key for s in states)  # the optimizer's moments, every round

    interrupted = start(cloud, rounds=5, **FEDADAM)
    agents = [agent(cloud, c, tmp_path / "b") for c in SHIFTS]
    for _ in range(3):
        for a in agents:
            serve(a)
    result = fedstep(cloud, "stop", interrupted.run_id)
    assert result.returncode == 0, result.stderr
    assert wait_for_execution(cloud, interrupted.execution_arn)["status"] == "ABORTED"
    drain_queues(cloud)  # round 4 of the stopped run, and its run-ended message

    clients = {"s3": cloud.client("s3"), "dynamodb": cloud.client("dynamodb")}
    resumed = resume_run(interrupted.run_id, cloud.outputs, **clients, stepfunctions=cloud.client("stepfunctions"))
    serve_run(agents, 2)
    final = _final(cloud, resumed.execution_arn)
    for name in INITIAL:
        assert np.array_equal(final[name], expected[name]), name  # bit for bit
    assert [s.round for s in summaries(cloud, resumed.run_id)] == [4, 5]
    # the moments matter: FedAdam's steps differ from round to round, so a reset state would show
    steps = [s.measurements["step_norm"] for s in summaries(cloud, uninterrupted.run_id)]
    assert len(set(steps)) == 5


class RecordingTrainer(ShiftTrainer):
    """A ShiftTrainer that keeps the training config of each round it served."""

    def __init__(self, shift: float, n: int) -> None:
        super().__init__(shift, n)
        self.seen: list[dict] = []

    def fit(self, architecture, weights, training) -> TrainResult:
        self.seen.append(dict(training.instructions))
        return super().fit(architecture, weights, training)


def test_fedprox_sends_mu_to_every_client_in_the_round_message(cloud, tmp_path):
    run = start(cloud, rounds=2, strategy="fedprox", strategy_params={"mu": 0.05})
    trainers = {c: RecordingTrainer(*SHIFTS[c]) for c in SHIFTS}
    serve_run([agent(cloud, c, tmp_path, trainers[c]) for c in SHIFTS], 2)
    assert wait_for_execution(cloud, run.execution_arn)["status"] == "SUCCEEDED"
    assert all(t.seen == [{"proximal_mu": 0.05}] * 2 for t in trainers.values())


class Broken(strategies.FedAvg):
    name = "broken"

    def aggregate(self, round_number, global_model, state, updates):
        raise ZeroDivisionError("the strategy divided by zero")


def test_an_exception_inside_a_strategy_fails_the_run_as_a_strategy_failure(cloud, tmp_path, monkeypatch):
    monkeypatch.setitem(strategies.STRATEGIES, Broken.name, Broken)
    run = start(cloud, rounds=2, strategy="broken")
    for c in SHIFTS:
        serve(agent(cloud, c, tmp_path))
    desc = wait_for_execution(cloud, run.execution_arn)
    assert (desc["status"], desc["error"]) == ("FAILED", "StrategyFailed")
    assert "ZeroDivisionError: the strategy divided by zero" in desc["cause"]
    assert "QuorumNotMet" not in desc["cause"]
