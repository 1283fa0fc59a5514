"""A client whose round fails reaches the operator at once, not after the round's deadline.

Its agent writes a failure item in its own partition (the round, the attempt, the error on one line)
each time a round fails; `fedstep local`'s console and `fedstep status` show it within one poll, and
a round that misses its quorum fails with a cause naming each missing client and its last error.
The failure text is the client's: bounded when read, escaped when printed.
"""

from __future__ import annotations

import json

import pytest
from botocore.exceptions import ClientError

from client_agent.agent import Outcome
from fedstep.aws.adapters import DynamoRoundTable
from fedstep.aws.ddb import to_attributes
from fedstep.aws.errors import error_code
from fedstep.core import keys, limits
from fedstep.core.clock import utc_now
from fedstep.core.schemas import FailureItem
from fedstep.local import gaps
from fedstep.local.demo import FailureWatch
from tests.cloud_helpers import agent, fedstep, serve, start, wait_for_execution

DENIED = ("AccessDenied", "AccessDeniedException")
RANK_ERROR = "Arguments `target` and `output` must have the same rank (ndim). Received: target.shape=(None,)"


class RaisingTrainer:
    """The issue's client: Keras refuses its labels under the model's loss, on every attempt."""

    def fit(self, architecture, weights, training):
        raise ValueError(RANK_ERROR)


def fail_once(a) -> None:
    """Poll until the agent receives its round message and fails it (the message goes back)."""
    for _ in range(30):
        outcome = a.poll_once()
        if outcome is not None:
            gaps.wait_for_stream_batches()
            assert outcome is Outcome.KEPT
            return
    raise AssertionError(f"no message for {a.config.client_id}")


def table_of(cloud) -> DynamoRoundTable:
    return DynamoRoundTable(cloud.outputs.table, cloud.client("dynamodb", "operator"))


def test_a_failing_client_is_shown_at_once_and_named_with_its_error_when_the_round_misses_its_quorum(cloud, tmp_path):
    run = start(cloud, rounds=1, round_timeout_s=45, quorum=2)
    watch = FailureWatch(table_of(cloud), run.run_id, ["client-1", "client-2"], {"client-2": tmp_path / "c2.log"})
    assert watch.new_lines() == []
    serve(agent(cloud, "client-1", tmp_path))  # client-1 serves round 1
    failing = agent(cloud, "client-2", tmp_path, trainer=RaisingTrainer())
    fail_once(failing)

    # fedstep local's console: the very next poll shows it, once
    [line] = watch.new_lines()
    assert line.startswith("client client-2: round 1 failed at ")
    assert f"ValueError: {RANK_ERROR}" in line and f"(its log: {tmp_path / 'c2.log'})" in line
    assert watch.new_lines() == []
    # fedstep status, while the round still waits for its deadline
    status = fedstep(cloud, "status", run.run_id)
    assert status.returncode == 0, status.stderr
    assert "last failure per client (its agent's log has the details):" in status.stdout
    assert "  client-2: round 1 failed at " in status.stdout and f"ValueError: {RANK_ERROR}" in status.stdout
    assert "  failed    client-2 (attempt 1)" in status.stdout.splitlines()  # in the round in progress
    as_json = json.loads(fedstep(cloud, "status", run.run_id, "--json").stdout)
    [failure] = as_json["failures"]
    assert (failure["client_id"], failure["round"], failure["attempt"]) == ("client-2", 1, 1)

    fail_once(failing)  # the agent tries again: the same item, its attempt counted
    [again] = watch.new_lines()
    assert again.startswith("client client-2: round 1 failed (attempt 2) at ")

    desc = wait_for_execution(cloud, run.execution_arn, timeout_s=90)
    assert (desc["status"], desc["error"]) == ("FAILED", "QuorumNotMet")
    assert "1 of 2 updates by the deadline of round 1 (quorum 2)" in desc["cause"]
    assert "client-2: no update, its last error: round 1 failed (attempt 2) at " in desc["cause"]
    assert RANK_ERROR in desc["cause"]


def test_a_client_that_never_answers_is_named_without_an_error(cloud, tmp_path):
    run = start(cloud, rounds=1, round_timeout_s=3, quorum=2)
    serve(agent(cloud, "client-1", tmp_path))
    desc = wait_for_execution(cloud, run.execution_arn, timeout_s=60)
    assert desc["error"] == "QuorumNotMet"
    assert "client-2: no update and no failure reported (is its agent running? `fedstep clients`)" in desc["cause"]


def put(cloud, principal: str, item: dict) -> str:
    try:
        cloud.client("dynamodb", principal).put_item(TableName=cloud.outputs.table, Item=to_attributes(item))
    except ClientError as exc:
        return error_code(exc)
    return "written"


def test_a_forged_failure_item_is_bounded_escaped_and_only_the_clients_own(cloud, tmp_path):
    """A client controls its failure text: control sequences are shown escaped, a text past the
    bound is refused when read (and so never shown), and its role writes the item's attributes in
    its own partition only."""
    run = start(cloud, rounds=1, round_timeout_s=60, quorum=2)
    evil = FailureItem(run.run_id, 1, "client-1", "boom \x1b[2J\x1b]0;pwned\x07", 1, utc_now()).to_item()
    assert put(cloud, "client-1", evil) == "written"
    too_long = FailureItem(run.run_id, 1, "client-2", "x" * (limits.MAX_FAILURE_CHARS + 1), 1, utc_now()).to_item()
    assert put(cloud, "client-2", too_long) == "written"
    # ...but only its own partition, and only a failure item's attributes
    other = FailureItem(run.run_id, 1, "client-2", "framed", 1, utc_now()).to_item()
    assert put(cloud, "client-1", other) in DENIED
    assert put(cloud, "client-1", {**evil, "task_token": "tok"}) in DENIED

    status = fedstep(cloud, "status", run.run_id)
    assert "\x1b" not in status.stdout and "\x07" not in status.stdout
    assert "client-1: round 1 failed at " in status.stdout and "boom \\x1b[2J\\x1b]0;pwned\\x07" in status.stdout
    assert "client-2:" not in status.stdout  # its invalid item is left out
    lines = FailureWatch(table_of(cloud), run.run_id, ["client-1", "client-2"], {}).new_lines()
    assert len(lines) == 1 and "\x1b" not in lines[0]
    fedstep(cloud, "stop", run.run_id)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"error": "x" * (limits.MAX_FAILURE_CHARS + 1)}, "at most 300 allowed"),
        ({"error": ""}, "field 'error' is empty"),
        ({"attempt": 0}, "'attempt' must be from 1"),
        ({"round": 0}, "'round' must be from 1"),
        ({"created_at": "yesterday"}, "created_at"),
        ({keys.PK: keys.client_pk("client-2")}, "its key does not match"),
        ({keys.SK: "FAILURE#other-run"}, "its key does not match"),
        ({"kind": "update"}, "kind must be 'failure'"),
    ],
)
def test_an_invalid_failure_item_is_refused_when_read(change, message):
    from fedstep.core.schemas import InvalidMessage

    item = FailureItem("run-1", 1, "client-1", "ValueError: rank", 1, "2026-12-06T12:00:00+00:00").to_item()
    with pytest.raises(InvalidMessage, match=message):
        FailureItem.parse({**item, **change})


def test_the_agent_cuts_its_error_to_one_bounded_line():
    long = FailureItem.of("run-1", 1, "client-1", "ValueError:\n" + "é" * 1000, 99_999, "2026-12-06T12:00:00+00:00")
    assert len(long.error) == limits.MAX_FAILURE_CHARS and "\n" not in long.error and long.error.isascii()
    assert long.attempt == limits.MAX_FAILURE_ATTEMPTS
    assert FailureItem.parse(long.to_item()) == long


def test_a_round_cause_names_at_most_ten_missing_clients_each_with_its_own_runs_failure():
    """A cause stays small with 1,000 clients missing, and another run's failure is not this run's."""
    from fedstep.core.rounds import missing_clients
    from fedstep.memory import MemoryTable

    table = MemoryTable()
    table.put(FailureItem("run-1", 2, "c-0", "OSError: disk full", 1, "2026-12-06T12:00:00+00:00").to_item())
    table.put(FailureItem("run-2", 1, "c-1", "ValueError: elsewhere", 1, "2026-12-06T12:00:00+00:00").to_item())
    table.put({**FailureItem("run-1", 1, "c-2", "x", 1, "2026-12-06T12:00:00+00:00").to_item(), "attempt": 0})
    cause = missing_clients("run-1", [f"c-{i}" for i in range(1000)], table)
    assert cause.startswith("; c-0: no update, its last error: round 2 failed at 2026-12-06T12:00:00+00:00: OSError")
    assert "; c-1: no update and no failure reported" in cause and "elsewhere" not in cause
    assert "; c-2: no update; its failure item is invalid: failure item: field 'attempt' must be from 1" in cause
    assert cause.count("no update") == limits.MAX_FAILURES_NAMED
    assert cause.endswith("; and 990 more client(s) without an update")
    assert missing_clients("run-1", [], table) == ""
