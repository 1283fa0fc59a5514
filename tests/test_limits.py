"""DESIGN invariant 7: the largest records the bounds allow stay inside the service limits, for the
largest consortium a run may have (`limits.MAX_CLIENTS_PER_RUN`, 1,000) and any number of rounds.

Each record is built at its worst: the longest ids (64 characters), every client rejected with the
longest reason (or every one clipped), the most metrics with the longest names. Sizes are the
records' JSON (an upper estimate of what DynamoDB, SNS and Step Functions count)."""

from __future__ import annotations

from dataclasses import asdict, replace

from fedstep.core import keys, limits
from fedstep.core.rounds import task_output
from fedstep.core.schemas import (
    Adjustment,
    ObjectRef,
    Rejection,
    RoundMessage,
    RoundSummary,
    RunRecord,
    SecAggSettings,
    TrainingConfig,
    UpdateItem,
)
from fedstep.memory import record_bytes

CLIENTS = [f"{i:04d}".ljust(64, "c") for i in range(limits.MAX_CLIENTS_PER_RUN)]
RUN = "r".ljust(64, "x")
METRICS = {f"m{i:02d}".ljust(64, "m"): 123456.789012 for i in range(limits.MAX_METRICS)}
REF = ObjectRef(keys.global_key(RUN, limits.MAX_ROUNDS, "f" * 16), "a" * 64, 2**40)
LONGEST_REASON = "é" * (limits.MAX_REASON_CHARS * 2)  # cut, and made ASCII: a byte a character


def summary(rejected: list[Rejection], participants: list[str], clipped: list[Adjustment]) -> RoundSummary:
    return RoundSummary(
        RUN, limits.MAX_ROUNDS, CLIENTS, participants, 2**40, rejected, METRICS, REF, 1e9, 1e9, "t" * 40, 2**50, clipped
    )


def round_record(s: RoundSummary) -> dict:
    """The round record as the server stores it: the summary plus its protocol fields."""
    extra = {"status": "aggregated", "attempt": 10, "task_token": "t" * 2048, "claim_id": "f" * 16}
    return {**keys.round_item_key(RUN, s.round), "kind": "round", **s.to_dict(), **extra, "input_model": asdict(REF)}


def test_a_round_record_with_every_client_rejected_fits_a_dynamodb_item():
    rejected = [Rejection(c, LONGEST_REASON) for c in CLIENTS]
    assert len(rejected[0].reason.encode()) == limits.MAX_REASON_CHARS
    assert record_bytes(round_record(summary(rejected, [], []))) < 0.85 * limits.DYNAMODB_ITEM_BYTES


def test_a_round_record_with_every_client_clipped_fits_a_dynamodb_item():
    clipped = [Adjustment(c, LONGEST_REASON) for c in CLIENTS]
    assert record_bytes(round_record(summary([], CLIENTS, clipped))) < 0.85 * limits.DYNAMODB_ITEM_BYTES


def test_a_round_record_naming_every_client_a_strategy_kept_fits_a_dynamodb_item():
    """Multi-Krum keeping all but one of 1,000 clipped updates: the record names them by position."""
    clipped = [Adjustment(c, LONGEST_REASON) for c in CLIENTS]
    kept = replace(summary([], CLIENTS, clipped), kept=CLIENTS[1:])
    assert record_bytes(round_record(kept)) < 0.85 * limits.DYNAMODB_ITEM_BYTES
    assert RoundSummary.parse(round_record(kept)).kept == CLIENTS[1:]


def test_a_task_output_is_small_whatever_the_round():
    s = summary([Rejection(c, LONGEST_REASON) for c in CLIENTS], [], [])
    run = RunRecord(RUN, CLIENTS, limits.MAX_ROUNDS, TrainingConfig(), "fedavg", "t")
    assert record_bytes(task_output(s, run)) < 4_000  # the brief: counts and metrics, no lists of clients


def test_a_round_message_to_every_client_fits_an_sns_message():
    instructions = {f"instruction_{i:02d}": "x" * limits.MAX_PARAM_TEXT_CHARS for i in range(limits.MAX_INSTRUCTIONS)}
    message = RoundMessage(
        run_id=RUN,
        round=limits.MAX_ROUNDS,
        attempt=10,
        global_model=REF,
        issued_at="2026-11-30T12:00:00.123456+00:00",  # moto's $$.State.EnteredTime, longer than AWS's
        model=REF,
        training=TrainingConfig(),
        deadline_s=3600,
        instructions=instructions,
    ).to_dict()
    RoundMessage.parse(message)  # the largest instructions a strategy may give are accepted
    attributes = {"kind": "round", "clients": CLIENTS}  # each subscription filters on its client id
    assert record_bytes(message) + record_bytes(attributes) < limits.SNS_MESSAGE_BYTES


def test_the_execution_state_of_the_largest_run_fits_a_step_functions_payload():
    from fedstep.operator.start import execution_input

    s = summary([Rejection(c, LONGEST_REASON) for c in CLIENTS], [], [])
    longest = limits.MAX_ROUND_TIMEOUT_S
    run = replace(
        RunRecord(RUN, CLIENTS, limits.MAX_ROUNDS, TrainingConfig(), "fedavg", "t"),
        round_timeout_s=longest,
        round_retries=10,
        secagg=SecAggSettings(threshold=2, phase_timeout_s=longest),
    )
    state = {
        **execution_input(run, limits.MAX_ROUNDS, REF),  # what `fedstep start` writes
        "attempt": 10,
        "round_summary": s.brief(),
        "result": task_output(s, RunRecord(RUN, CLIENTS, 1, TrainingConfig(), "fedavg", "t")),
    }
    assert set(state["run"]) == {
        "run_id",
        "rounds",
        "clients",
        "round_timeout_s",
        "round_retries",
        "secagg_phase_timeout_s",
    }
    assert record_bytes(state) < limits.STEP_FUNCTIONS_PAYLOAD_BYTES


def test_every_runs_execution_input_carries_the_deadline_of_a_secure_rounds_later_phases():
    """The phases' states read `$.run.secagg_phase_timeout_s` (infra/state_machine.py): a secure run's
    own, the default for a plain run (whose rounds never enter them)."""
    from fedstep.core.schemas.run_record import DEFAULT_SECAGG_PHASE_TIMEOUT_S
    from fedstep.operator.start import execution_input

    plain = RunRecord(RUN, CLIENTS[:3], 5, TrainingConfig(), "fedavg", "t")
    assert execution_input(plain, 0, REF)["run"]["secagg_phase_timeout_s"] == DEFAULT_SECAGG_PHASE_TIMEOUT_S
    secure = replace(plain, secagg=SecAggSettings(threshold=2, phase_timeout_s=90))
    started = execution_input(secure, 3, REF)
    assert started["run"]["secagg_phase_timeout_s"] == 90
    assert (started["round"], started["attempt"], started["round_summary"]) == (3, 0, {})


def test_the_largest_update_item_a_client_may_write_fits_a_dynamodb_item():
    item = UpdateItem(RUN, limits.MAX_ROUNDS, CLIENTS[0], limits.MAX_EXAMPLES, REF, METRICS, "t" * 40).to_item()
    assert UpdateItem.parse({**item, "update": {**item["update"], "key": keys.update_key(RUN, 99_999, CLIENTS[0])}})
    assert record_bytes(item) < 10_000
