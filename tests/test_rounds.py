"""The round logic (fedstep.rounds) against in-memory stores: the core without AWS."""

from __future__ import annotations

import copy
from dataclasses import replace
from typing import Any

import numpy as np
import pytest

from fedstep import keys, tensors
from fedstep.rounds import QuorumNotMet, complete_round_at_deadline, try_complete_round, update_metadata
from fedstep.schemas import ObjectRef, RunRecord, TrainingConfig, UpdateItem

RUN = "run-1"
GLOBAL = {"000/d/kernel": np.zeros((3, 2), np.float32), "001/d/bias": np.zeros(2, np.float32)}


class MemoryStore:
    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}
        self.puts: list[str] = []

    def get(self, key: str) -> bytes:
        return self.objects[key]

    def put(self, key: str, data: bytes) -> None:
        self.objects[key] = data
        self.puts.append(key)


class MemoryTable:
    def __init__(self, run: RunRecord) -> None:
        self.items: dict[tuple[str, str], dict[str, Any]] = {}
        item = run.to_item()
        self.items[(item["pk"], item["sk"])] = item

    def put(self, item: dict[str, Any]) -> None:
        self.items[(item["pk"], item["sk"])] = copy.deepcopy(item)

    def get_run(self, run_id: str) -> RunRecord | None:
        item = self.items.get((run_id, keys.RUN_SK))
        return RunRecord.parse(item) if item else None

    def list_updates(self, run_id: str, round_number: int) -> list[dict[str, Any]]:
        prefix = keys.update_sk_prefix(round_number)
        return [
            copy.deepcopy(v) for (pk, sk), v in sorted(self.items.items()) if pk == run_id and sk.startswith(prefix)
        ]

    def get_round(self, run_id: str, round_number: int) -> dict[str, Any] | None:
        item = self.items.get((run_id, keys.round_sk(round_number)))
        return copy.deepcopy(item) if item else None

    def put_round_once(self, item: dict[str, Any]) -> bool:
        if (item["pk"], item["sk"]) in self.items:
            return False
        self.put(item)
        return True

    def mark_reported(self, run_id: str, round_number: int) -> None:
        item = self.items[(run_id, keys.round_sk(round_number))]
        item["status"] = "reported"
        item.pop("task_token", None)

    def list_rounds(self, run_id: str) -> list[dict[str, Any]]:
        return [v for (pk, sk), v in sorted(self.items.items()) if pk == run_id and sk.startswith(keys.ROUND_PREFIX)]


class RecordingReporter:
    def __init__(self, fail_first: bool = False) -> None:
        self.successes: list[tuple[str, dict[str, Any]]] = []
        self.failures: list[tuple[str, str, str]] = []
        self.fail_first = fail_first

    def succeed(self, task_token: str, output: dict[str, Any]) -> None:
        if self.fail_first:
            self.fail_first = False
            raise ConnectionError("simulated crash before the report reached Step Functions")
        self.successes.append((task_token, output))

    def fail(self, task_token: str, error: str, cause: str) -> None:
        self.failures.append((task_token, error, cause))


@pytest.fixture
def world():
    return make_world(quorum=1)


def make_world(quorum: int, clients=("a", "b")):
    store, reporter = MemoryStore(), RecordingReporter()
    run = RunRecord(RUN, list(clients), 3, TrainingConfig(), "fedavg", "2026-11-21T00:00:00+00:00", quorum)
    table = MemoryTable(run)
    store.put(keys.global_key(RUN, 0), tensors.encode(GLOBAL))
    return store, table, reporter


def report(store, table, client, value, n, round_number=1, token="tok-1", weights=None, issued_at="2026-11-21T00:00Z"):
    """What an agent does: upload an update, write its item."""
    weights = weights if weights is not None else {k: np.full(v.shape, value, np.float32) for k, v in GLOBAL.items()}
    key = keys.update_key(RUN, round_number, client)
    metrics = {"test_accuracy": value / 10}
    item = UpdateItem(RUN, round_number, client, n, ObjectRef(key, "0" * 64, 0), metrics, token, issued_at, "")
    data = tensors.encode(weights, update_metadata(item))
    store.put(key, data)
    table.put(replace(item, update=ObjectRef(key, tensors.sha256_hex(data), len(data))).to_item())


def complete(store, table, reporter, round_number=1):
    return try_complete_round(RUN, round_number, store=store, table=table, reporter=reporter)


def test_round_waits_until_every_client_has_reported(world):
    store, table, reporter = world
    report(store, table, "a", 1.0, 10)
    assert complete(store, table, reporter) is None
    assert reporter.successes == [] and table.get_round(RUN, 1) is None


def test_round_is_aggregated_with_example_weights_and_reported(world):
    store, table, reporter = world
    report(store, table, "a", 1.0, 10)
    report(store, table, "b", 4.0, 30)
    summary = complete(store, table, reporter)
    assert summary is not None and summary.participants == ["a", "b"] and summary.num_examples == 40
    new_global = tensors.decode(store.get(keys.global_key(RUN, 1)))
    np.testing.assert_allclose(new_global["001/d/bias"], (1.0 * 10 + 4.0 * 30) / 40)
    assert summary.metrics["test_accuracy"] == pytest.approx((0.1 * 10 + 0.4 * 30) / 40)
    [(token, output)] = reporter.successes
    assert token == "tok-1"
    assert output["global_model"]["key"] == keys.global_key(RUN, 1)
    assert [h["round"] for h in output["history"]] == [1]
    assert table.get_round(RUN, 1)["status"] == "reported"


def test_duplicate_invocation_aggregates_and_reports_once(world):
    store, table, reporter = world
    report(store, table, "a", 1.0, 10)
    report(store, table, "b", 4.0, 30)
    assert complete(store, table, reporter) is not None
    puts = len(store.puts)
    assert complete(store, table, reporter) is None
    assert complete(store, table, reporter) is None
    assert len(reporter.successes) == 1 and len(store.puts) == puts


def test_a_crash_between_writing_and_reporting_is_repaired_by_the_next_invocation(world):
    store, table, _ = world
    crashing = RecordingReporter(fail_first=True)
    report(store, table, "a", 1.0, 10)
    report(store, table, "b", 4.0, 30)
    with pytest.raises(ConnectionError):
        complete(store, table, crashing)
    assert table.get_round(RUN, 1)["status"] == "aggregated"
    assert complete(store, table, crashing) is None  # the retry reports the stored summary
    [(token, output)] = crashing.successes
    assert token == "tok-1" and output["summary"]["participants"] == ["a", "b"]
    assert table.get_round(RUN, 1)["status"] == "reported"


def test_an_invalid_update_is_rejected_with_its_reason_and_the_round_goes_on(world):
    store, table, reporter = world
    report(store, table, "a", 1.0, 10)
    nan = {k: np.full(v.shape, np.nan, np.float32) for k, v in GLOBAL.items()}
    report(store, table, "b", 0.0, 30, weights=nan)
    summary = complete(store, table, reporter)
    assert summary.participants == ["a"]
    assert [(r.client_id, "non-finite" in r.reason) for r in summary.rejected] == [("b", True)]
    np.testing.assert_allclose(tensors.decode(store.get(keys.global_key(RUN, 1)))["001/d/bias"], 1.0)


def test_a_round_with_no_valid_update_fails_with_a_named_error(world):
    store, table, reporter = world
    for client in ("a", "b"):
        report(store, table, client, 0.0, 5, weights={"wrong": np.zeros(1, np.float32)})
    assert complete(store, table, reporter) is None
    [(_, error, cause)] = reporter.failures
    assert error == "QuorumNotMet" and cause.startswith("0 of 2 updates in round 1") and "names differ" in cause


def test_a_retried_round_counts_earlier_attempts_and_reports_to_the_newest(world):
    store, table, reporter = world
    report(store, table, "a", 1.0, 10, token="attempt-1")  # reported in the round's first attempt
    report(store, table, "b", 4.0, 30, token="attempt-2", issued_at="2026-11-21T00:10:00Z")
    summary = complete(store, table, reporter)
    assert summary.participants == ["a", "b"]
    [(token, _)] = reporter.successes
    assert token == "attempt-2"


def test_an_item_pointing_at_another_clients_file_is_rejected(world):
    store, table, reporter = world
    report(store, table, "a", 1.0, 10)
    report(store, table, "b", 4.0, 30)
    item = table.list_updates(RUN, 1)[1]
    item["update"]["key"] = keys.update_key(RUN, 1, "a")
    table.put(item)
    assert complete(store, table, reporter) is None
    assert reporter.successes == []


def test_an_item_claiming_another_client_is_rejected_by_the_file_metadata(world):
    store, table, reporter = world
    report(store, table, "a", 1.0, 10)
    report(store, table, "b", 4.0, 30)
    # A client that may put items (but not write b's files) re-points b's item at a copy of a's file.
    forged = table.list_updates(RUN, 1)[1]
    a_bytes = store.get(keys.update_key(RUN, 1, "a"))
    store.put(keys.update_key(RUN, 1, "b"), a_bytes)
    forged["update"] = {
        "key": keys.update_key(RUN, 1, "b"),
        "sha256": tensors.sha256_hex(a_bytes),
        "bytes": len(a_bytes),
    }
    table.put(forged)
    summary = complete(store, table, reporter)
    assert summary.participants == ["a"]
    [rejection] = summary.rejected
    assert rejection.client_id == "b" and "metadata differs" in rejection.reason


def at_deadline(store, table, round_number=1):
    return complete_round_at_deadline(RUN, round_number, store=store, table=table)


def test_at_the_deadline_the_updates_that_arrived_are_aggregated_when_the_quorum_is_met():
    store, table, reporter = make_world(quorum=2, clients=("a", "b", "c"))
    report(store, table, "a", 1.0, 10)
    report(store, table, "b", 4.0, 30)
    assert complete(store, table, reporter) is None  # c is missing: the round waits for its deadline
    output = at_deadline(store, table)
    assert output["summary"]["participants"] == ["a", "b"]
    np.testing.assert_allclose(tensors.decode(store.get(keys.global_key(RUN, 1)))["001/d/bias"], 3.25)
    assert reporter.successes == []  # the timed-out token is not used: the output goes back directly


def test_at_the_deadline_below_the_quorum_the_round_fails_with_a_named_error():
    store, table, _ = make_world(quorum=2, clients=("a", "b", "c"))
    report(store, table, "a", 1.0, 10)
    with pytest.raises(QuorumNotMet, match=r"^1 of 3 updates by the deadline of round 1 \(quorum 2\)"):
        at_deadline(store, table)
    assert table.get_round(RUN, 1) is None and keys.global_key(RUN, 1) not in store.objects


def test_a_late_update_after_the_deadline_changes_nothing():
    store, table, reporter = make_world(quorum=1)
    report(store, table, "a", 1.0, 10)
    first = at_deadline(store, table)
    model = store.get(keys.global_key(RUN, 1))
    report(store, table, "b", 9.0, 30)  # the straggler arrives after the deadline aggregation
    assert complete(store, table, reporter) is None and reporter.successes == []
    assert store.get(keys.global_key(RUN, 1)) == model
    assert at_deadline(store, table)["summary"] == first["summary"]


def test_rejections_that_leave_fewer_valid_updates_than_the_quorum_fail_the_round():
    store, table, reporter = make_world(quorum=2)
    report(store, table, "a", 1.0, 10)
    report(store, table, "b", 0.0, 30, weights={k: np.full(v.shape, np.inf, np.float32) for k, v in GLOBAL.items()})
    assert complete(store, table, reporter) is None
    [(_, error, cause)] = reporter.failures
    assert error == "QuorumNotMet" and "1 of 2 updates in round 1" in cause and "non-finite" in cause
