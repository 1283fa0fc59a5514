"""The run's rules in the core (`fedstep.core.run_rules`): each part of a run record checked in one
place, by `fedstep start` before anything is written and by the aggregation function before it
publishes a round of a record it reads, with the message the operator reads."""

from __future__ import annotations

from dataclasses import replace

import pytest

from fedstep.core.run_rules import InvalidRun, check_run, check_sliceable
from fedstep.core.schemas import DPSettings, ObjectRef, RunRecord, TrainingConfig
from fedstep.core.strategies import build
from fedstep.local.gaps.lambda_in_process import LocalLambdaContext
from fedstep.memory import MemoryStore, MemoryTable, RecordingPublisher, RecordingReporter
from fedstep.privacy.accounting import client_epsilon

CLIENTS = [f"client-{i}" for i in range(1, 6)]
RUN = RunRecord("run-rules", CLIENTS, 5, TrainingConfig(), "fedavg", "2026-12-06T12:00:00+00:00", quorum=3)


def test_a_record_fedstep_start_writes_keeps_every_rule():
    check_run(RUN)
    check_run(replace(RUN, strategy="krum", min_participants=3, quorum=3), client_epsilon)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"rounds": 0}, "rounds must be 1 to 99999, got 0"),
        ({"round_retries": 11}, "round_retries must be 0-10, got 11"),
        ({"round_timeout_s": 0}, "round_timeout_s must be 1 s to 1 year, got 0"),
        ({"quorum": 0}, "quorum must be >= 1, got 0"),
        ({"selection": "lottery"}, "selection must be one of fixed, poisson"),
        ({"min_participants": 0}, "min_participants must be >= 1, got 0"),
        ({"strategy": "krum", "min_participants": 2}, "strategy 'krum' needs at least 3 valid updates"),
        ({"quorum": 4, "clients_per_round": 3}, "quorum 4 is more than the 3 clients selected per round"),
        ({"min_participants": 4, "clients_per_round": 3}, "min_participants 4 is more than the 3 client(s)"),
        ({"dp": DPSettings("central", 1.0, 1.0, 0.5)}, "--dp-delta 0.5 is not below 1/clients = 0.2"),
        ({"strategy": "nonesuch"}, "run run-rules: unknown strategy 'nonesuch'"),
    ],
)
def test_a_record_that_breaks_a_rule_is_refused_naming_it(change, message):
    with pytest.raises(InvalidRun) as refused:
        check_run(replace(RUN, **change))
    assert message in str(refused.value)


def test_an_unreachable_epsilon_budget_is_refused_only_where_an_accountant_is_at_hand():
    run = replace(RUN, dp=DPSettings("central", 0.5, 1.0, 1e-5, epsilon_budget=0.1))
    check_run(run)  # the record alone: no accountant, no figure to compare
    with pytest.raises(InvalidRun, match=r"--dp-epsilon 0.1 is unreachable: one round with noise multiplier 0.5"):
        check_run(run, client_epsilon)


def test_a_model_aggregated_by_slices_refuses_krum_and_central_dp():
    mib = 2**20
    check_sliceable(build("fedavg", {}), None, 600 * mib, 512 * mib)
    with pytest.raises(InvalidRun, match="krum"):
        check_sliceable(build("krum", {}), None, 600 * mib, 512 * mib)
    with pytest.raises(InvalidRun, match=r"--dp central clips and noises whole updates"):
        check_sliceable(build("fedavg", {}), DPSettings("central", 1.0, 1.0, 1e-5), 600 * mib, 512 * mib)
    check_sliceable(build("krum", {}), None, 100 * mib, 512 * mib)  # one pass: any strategy


def test_the_aggregation_function_refuses_to_publish_a_round_of_a_record_that_breaks_the_rules(monkeypatch):
    """A run record put in the table by other means than `fedstep start` (a quorum its rounds can never
    meet) is refused before its first round reaches a client."""
    from lambdas import aggregate

    broken = replace(RUN, quorum=9, model=ObjectRef("runs/run-rules/model.keras", "0" * 64, 10))
    table, publisher = MemoryTable(broken), RecordingPublisher()
    monkeypatch.setattr(aggregate, "services", lambda: (MemoryStore(), table, RecordingReporter(), publisher))
    event = {
        "mode": "publish",
        "run_id": broken.run_id,
        "round": 1,
        "attempt": 0,
        "global_model": {
            "key": "runs/run-rules/rounds/00000/global-initial.safetensors",
            "sha256": "0" * 64,
            "bytes": 1,
        },
        "task_token": "token",
        "issued_at": "2026-12-06T12:00:00+00:00",
    }
    with pytest.raises(InvalidRun, match="quorum 9 is more than the 5 clients selected per round"):
        aggregate.handler(event, LocalLambdaContext("aggregate", "arn:aws:lambda:us-east-1:1:function:f", 512, "r1"))
    assert publisher.messages == [] and table.get_round(broken.run_id, 1) is None
