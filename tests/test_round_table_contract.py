"""The round table's contract (`fedstep.core.ports.RoundTable`): one suite, run against the in-memory
table (`fedstep.memory.MemoryTable`, the round record's rules as Python) and the DynamoDB table
(`fedstep.aws.adapters.DynamoRoundTable`, the same rules as condition expressions) on a moto server.

Each transition of a round record and each conditional write: open (once per attempt, a retry with
its new token), claim with a lease (only when open or the lease ran out: a takeover), hold, release,
commit (only under the claim, never after a stop), count a release, report. Both tables store the
same items. A broken rule planted in either table makes the suite fail (the last tests).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from fedstep.aws.adapters import DynamoRoundTable
from fedstep.core import keys
from fedstep.core.errors import RunStopped
from fedstep.core.round_record import RoundRecord
from fedstep.core.rounds import summary_item
from fedstep.core.schemas import ObjectRef, RoundSummary, RunStop
from fedstep.memory import MemoryTable
from tests.moto_process import client, moto_server, new_table

pytestmark = pytest.mark.contract

RUN = "run-1"
MODEL = ObjectRef(keys.global_key(RUN, 0, keys.INITIAL_VERSION), "a" * 64, 1234)
STATE = ObjectRef(keys.state_key(RUN, 0, "c0"), "b" * 64, 56)
PLAN = ObjectRef(keys.plan_key(RUN, 1, "c1"), "c" * 64, 789)
FIRST, LATER = "2026-12-06T10:00:00Z", "2026-12-06T10:05:00Z"
NOW = 1_000_000.0
LEASE = 360.0

Table = Any  # a RoundTable with `put` (either implementation)


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    with moto_server() as url:
        yield url


def dynamo_tables(endpoint: str, cls: type[DynamoRoundTable] = DynamoRoundTable) -> Callable[[], Table]:
    """New empty DynamoDB tables (the stack's key schema) on the moto server, as `cls`."""
    dynamodb = client("dynamodb", endpoint)
    return lambda: cls(new_table(dynamodb), dynamodb)


@pytest.fixture(params=["memory", "dynamodb"])
def table(request) -> Table:
    """An empty round table of each implementation."""
    if request.param == "memory":
        return MemoryTable()
    return dynamo_tables(request.getfixturevalue("endpoint"))()


def open_round(table: Table, attempt: int = 0, token: str = "tok-1", issued_at: str = FIRST, number: int = 1) -> bool:
    return table.open_round(RUN, number, attempt, token, issued_at, MODEL, STATE, ["a", "b"], {"c": "offline"})


def claim(table: Table, claim_id: str, now: float = NOW, number: int = 1) -> dict[str, Any] | None:
    return table.claim_round(RUN, number, claim_id, now, now + LEASE)


def summary(number: int = 1) -> dict[str, Any]:
    """A round's summary item, as the aggregation commits it."""
    done = RoundSummary(
        run_id=RUN,
        round=number,
        selected=["a", "b"],
        participants=["a", "b"],
        num_examples=40,
        rejected=[],
        metrics={"test_accuracy": 0.75},
        global_model=ObjectRef(keys.global_key(RUN, number, "c1"), "d" * 64, 1234),
        duration_s=12.5,
        aggregation_s=0.25,
        completed_at=LATER,
        attempt=0,
    )
    return {**summary_item(done), "status": "aggregated"}


def record(table: Table, number: int = 1) -> RoundRecord:
    item = table.get_round(RUN, number)
    assert item is not None, f"round {number} has no record"
    return RoundRecord.parse(item)


# -- open ------------------------------------------------------------------------------------------


def test_publishing_opens_the_round_with_its_token_model_state_and_selection(table):
    assert open_round(table)
    item = table.get_round(RUN, 1)
    assert {k: item[k] for k in ("schema", "kind", "run_id", "round", "status")} == {
        "schema": 2,
        "kind": "round",
        "run_id": RUN,
        "round": 1,
        "status": "open",
    }
    opened = RoundRecord.parse(item)
    assert (opened.attempt, opened.task_token, opened.issued_at, opened.first_issued_at) == (0, "tok-1", FIRST, FIRST)
    assert (opened.input_model, opened.input_state) == (MODEL, STATE)
    assert (opened.selected, opened.skipped) == (["a", "b"], {"c": "offline"})
    assert (opened.claim_id, opened.lease_until, opened.plan) == (None, None, None)


def test_a_retry_reopens_an_open_round_with_its_new_token_and_keeps_the_first_publication_time(table):
    assert open_round(table)
    assert open_round(table, attempt=1, token="tok-2", issued_at=LATER)
    retried = record(table)
    assert (retried.status, retried.attempt, retried.task_token) == ("open", 1, "tok-2")
    assert (retried.issued_at, retried.first_issued_at) == (LATER, FIRST)


def test_a_round_being_aggregated_or_aggregated_is_not_reopened(table):
    open_round(table)
    assert claim(table, "c1") is not None
    assert not open_round(table, attempt=1, token="tok-2", issued_at=LATER)
    assert (record(table).status, record(table).task_token, record(table).attempt) == ("claimed", "tok-1", 0)
    assert table.complete_round(summary(), "c1")
    assert not open_round(table, attempt=2, token="tok-3", issued_at=LATER)
    assert (record(table).status, record(table).task_token) == ("aggregated", "tok-1")


# -- claim, lease, takeover --------------------------------------------------------------------------


def test_a_round_never_published_cannot_be_claimed_and_no_record_appears(table):
    assert claim(table, "c1") is None
    assert table.get_round(RUN, 1) is None


def test_an_open_round_is_claimed_once_with_a_lease_and_its_token_as_of_the_claim(table):
    open_round(table)
    claimed = claim(table, "c1")
    assert claimed is not None
    taken = RoundRecord.parse(claimed)
    assert (taken.status, taken.claim_id, taken.lease_until) == ("claimed", "c1", NOW + LEASE)
    assert taken.task_token == "tok-1"
    assert claim(table, "c2", now=NOW + LEASE - 1) is None  # its lease runs: nobody else takes it
    assert record(table).claim_id == "c1"


def test_a_lease_that_ends_exactly_now_is_not_yet_taken_over(table):
    open_round(table)
    claim(table, "c1")
    assert claim(table, "c2", now=NOW + LEASE) is None


def test_a_claim_whose_lease_ran_out_is_taken_over_and_its_holder_can_no_longer_act(table):
    open_round(table)
    claim(table, "c1")
    later = NOW + LEASE + 1  # the holder crashed
    taken = claim(table, "c2", now=later)
    assert taken is not None and (taken["claim_id"], taken["lease_until"]) == ("c2", later + LEASE)
    assert not table.hold_round(RUN, 1, "c1", later + 600, {"key": "x"})
    assert table.count_release(RUN, 1, "c1") is None
    table.release_round(RUN, 1, "c1")
    assert not table.complete_round(summary(), "c1")
    assert (record(table).status, record(table).claim_id) == ("claimed", "c2")


def test_holding_extends_the_lease_and_records_the_plan_for_the_holder_only(table):
    open_round(table)
    claim(table, "c1")
    assert not table.hold_round(RUN, 1, "c2", NOW + 9999, {"key": PLAN.key, "sha256": PLAN.sha256, "bytes": 789})
    assert record(table).plan is None
    assert table.hold_round(RUN, 1, "c1", NOW + 9999, {"key": PLAN.key, "sha256": PLAN.sha256, "bytes": 789})
    held = record(table)
    assert (held.lease_until, held.plan, held.claim_id) == (NOW + 9999, PLAN, "c1")
    assert claim(table, "c2", now=NOW + LEASE + 1) is None  # the extended lease holds


def test_a_released_round_is_open_again_and_another_invocation_claims_it(table):
    open_round(table)
    claim(table, "c1")
    table.release_round(RUN, 1, "c2")  # not the holder: nothing changes
    assert (record(table).status, record(table).claim_id) == ("claimed", "c1")
    table.release_round(RUN, 1, "c1")
    released = record(table)
    assert (released.status, released.claim_id, released.lease_until) == ("open", None, None)
    assert claim(table, "c2") is not None


def test_releasing_a_round_never_published_writes_nothing(table):
    table.release_round(RUN, 1, "c1")
    assert table.get_round(RUN, 1) is None


# -- commit ----------------------------------------------------------------------------------------


def test_a_summary_is_committed_only_under_the_claim_that_holds_the_round(table):
    open_round(table)
    claim(table, "c1")
    assert not table.complete_round(summary(), "c2")
    assert record(table).status == "claimed" and "global_model" not in table.get_round(RUN, 1)
    assert table.complete_round(summary(), "c1")
    done = record(table)
    assert (done.status, done.lease_until, done.task_token) == ("aggregated", None, "tok-1")
    assert done.summary().global_model.key == keys.global_key(RUN, 1, "c1")
    assert not table.complete_round(summary(), "c1")  # a commit is one: the claim no longer holds
    assert claim(table, "c2", now=NOW + 10 * LEASE) is None  # nor is a completed round claimed again


def test_an_open_round_is_never_committed(table):
    open_round(table)
    assert not table.complete_round(summary(), "c1")
    assert record(table).status == "open"


def test_no_round_is_committed_after_the_run_was_stopped(table):
    open_round(table)
    claim(table, "c1")
    assert table.get_stop(RUN) is None
    table.put_stop(RunStop(RUN, "wrong learning rate", LATER))
    assert table.get_stop(RUN) == RunStop(RUN, "wrong learning rate", LATER)
    with pytest.raises(RunStopped):
        table.complete_round(summary(), "c1")
    with pytest.raises(RunStopped):  # the stop is told first, whichever claim asks
        table.complete_round(summary(), "c2")
    assert (record(table).status, record(table).claim_id) == ("claimed", "c1")


def test_a_stop_marker_is_written_once_and_the_first_reason_stays(table):
    assert table.put_stop(RunStop(RUN, "wrong learning rate", FIRST))
    assert not table.put_stop(RunStop(RUN, "again", LATER))  # a marker left by an earlier try stays
    assert table.get_stop(RUN) == RunStop(RUN, "wrong learning rate", FIRST)


def test_an_unreadable_stop_marker_still_stops_the_run(table):
    open_round(table)
    claim(table, "c1")
    table.put({**keys.stop_item_key(RUN), "schema": 2, "kind": "stop", "reason": 7})
    assert table.get_stop(RUN) is not None
    with pytest.raises(RunStopped):
        table.complete_round(summary(), "c1")


def test_another_runs_stop_does_not_stop_this_one(table):
    open_round(table)
    claim(table, "c1")
    table.put_stop(RunStop("run-2", "done", LATER))
    assert table.complete_round(summary(), "c1")


# -- noisy releases, report, listing ---------------------------------------------------------------


def test_noisy_releases_are_counted_under_the_claim_across_claims(table):
    open_round(table)
    assert table.count_release(RUN, 1, "c1") is None  # not claimed
    claim(table, "c1")
    assert table.count_release(RUN, 1, "c1") == 1
    assert table.count_release(RUN, 1, "c1") == 2
    assert table.count_release(RUN, 1, "c2") is None
    table.release_round(RUN, 1, "c1")
    claim(table, "c2")
    assert table.count_release(RUN, 1, "c2") == 3
    assert record(table).noisy_releases == 3


def test_counting_a_release_of_a_round_never_published_writes_nothing(table):
    assert table.count_release(RUN, 1, "c1") is None
    assert table.get_round(RUN, 1) is None


def test_a_reported_round_has_no_task_token_left(table):
    open_round(table)
    claim(table, "c1")
    table.complete_round(summary(), "c1")
    table.mark_reported(RUN, 1)
    reported = record(table)
    assert (reported.status, reported.task_token, reported.completed) == ("reported", None, True)
    assert not open_round(table, attempt=1, token="tok-2")


def test_reporting_a_round_never_published_writes_nothing(table):
    table.mark_reported(RUN, 1)
    assert table.get_round(RUN, 1) is None


def test_the_completed_rounds_are_listed_in_round_order(table):
    for number in (1, 2, 3):
        open_round(table, number=number)
    for number in (2, 1):
        claim(table, f"c{number}", number=number)
        assert table.complete_round(summary(number), f"c{number}")
    table.mark_reported(RUN, 1)
    listed = table.list_rounds(RUN)
    assert [(r["round"], r["status"]) for r in listed] == [(1, "reported"), (2, "aggregated")]
    assert table.list_rounds("run-2") == []


# -- the same items --------------------------------------------------------------------------------


def test_both_tables_store_the_same_round_record_at_every_step(endpoint):
    memory, dynamo = MemoryTable(), dynamo_tables(endpoint)()
    plan = {"key": PLAN.key, "sha256": PLAN.sha256, "bytes": PLAN.bytes}
    steps: list[Callable[[Table], object]] = [
        lambda t: open_round(t),
        lambda t: open_round(t, attempt=1, token="tok-2", issued_at=LATER),
        lambda t: claim(t, "c1"),
        lambda t: t.release_round(RUN, 1, "c1"),
        lambda t: claim(t, "c2", now=NOW + 0.5),
        lambda t: t.count_release(RUN, 1, "c2"),
        lambda t: t.hold_round(RUN, 1, "c2", NOW + 1000.25, plan),
        lambda t: t.complete_round(summary(), "c2"),
        lambda t: t.mark_reported(RUN, 1),
    ]
    for number, step in enumerate(steps):
        assert step(memory) == step(dynamo), f"step {number}"
        assert memory.get_round(RUN, 1) == dynamo.get_round(RUN, 1), f"after step {number}"


# -- a planted bug fails the suite -----------------------------------------------------------------


class LeaseBlindRecord(RoundRecord):
    """A broken rule: a claimed round may be taken whatever its lease."""

    def claimable(self, now: float) -> bool:
        return self.status in ("open", "claimed")


class ClaimBlindRecord(RoundRecord):
    """A broken rule: any claim holds a claimed round (a commit ignores whose claim it is)."""

    def held_by(self, claim_id: str) -> bool:
        return self.status == "claimed"


class ReopeningRecord(RoundRecord):
    """A broken rule: a round is reopened whatever its status (a retry overwrites a claim or a summary)."""

    @property
    def reopenable(self) -> bool:
        return True


class ReopeningMemory(MemoryTable):
    record_type = ReopeningRecord


class StopBlindMemory(MemoryTable):
    """A broken commit: the claim is checked, the run's stop marker is not."""

    def complete_round(self, item: dict[str, Any], claim_id: str) -> bool:
        key = {keys.PK: item[keys.PK], keys.SK: item[keys.SK]}
        held = self._rule(lambda record: record.held_by(claim_id))
        return None is not self._update(key, held, dict(item), ("lease_until",))


class LeaseBlindMemory(MemoryTable):
    record_type = LeaseBlindRecord


class ClaimBlindMemory(MemoryTable):
    record_type = ClaimBlindRecord


class LeaseBlindDynamo(DynamoRoundTable):
    """The claim's condition expression without its lease."""

    def _update(self, key, sets, condition, values, removes=(), extra_sets=""):
        condition = condition.replace("lease_until < :now", ":now = :now")
        return super()._update(key, sets, condition, values, removes, extra_sets)


class ClaimBlindDynamo(DynamoRoundTable):
    """The condition expressions of hold, release and commit satisfied by any claim."""

    def _update_request(self, key, sets, condition, values, removes=(), extra_sets=""):
        condition = condition.replace("claim_id = :claim", "(claim_id = :claim OR claim_id <> :claim)")
        return super()._update_request(key, sets, condition, values, removes, extra_sets)


class ReopeningDynamo(DynamoRoundTable):
    """The publication's condition expression satisfied by any status."""

    def _update(self, key, sets, condition, values, removes=(), extra_sets=""):
        if condition == "attribute_not_exists(pk) OR #s = :open":
            condition += " OR #s <> :open"
        return super()._update(key, sets, condition, values, removes, extra_sets)


class _WithoutStopCheck:
    """A DynamoDB client whose transactions lose their condition checks."""

    def __init__(self, dynamodb: Any) -> None:
        self.dynamodb = dynamodb

    def __getattr__(self, name: str) -> Any:
        return getattr(self.dynamodb, name)

    def transact_write_items(self, TransactItems: list[dict[str, Any]]) -> Any:
        return self.dynamodb.transact_write_items(TransactItems=[i for i in TransactItems if "ConditionCheck" not in i])


class StopBlindDynamo(DynamoRoundTable):
    """The commit's transaction without the check of the stop marker."""

    def __init__(self, name: str, dynamodb: Any) -> None:
        super().__init__(name, _WithoutStopCheck(dynamodb))


PLANTED = [
    (ReopeningMemory, test_a_round_being_aggregated_or_aggregated_is_not_reopened),
    (ReopeningDynamo, test_a_round_being_aggregated_or_aggregated_is_not_reopened),
    (StopBlindMemory, test_no_round_is_committed_after_the_run_was_stopped),
    (StopBlindDynamo, test_no_round_is_committed_after_the_run_was_stopped),
    (LeaseBlindMemory, test_an_open_round_is_claimed_once_with_a_lease_and_its_token_as_of_the_claim),
    (LeaseBlindMemory, test_a_lease_that_ends_exactly_now_is_not_yet_taken_over),
    (ClaimBlindMemory, test_a_summary_is_committed_only_under_the_claim_that_holds_the_round),
    (ClaimBlindMemory, test_a_claim_whose_lease_ran_out_is_taken_over_and_its_holder_can_no_longer_act),
    (LeaseBlindDynamo, test_an_open_round_is_claimed_once_with_a_lease_and_its_token_as_of_the_claim),
    (LeaseBlindDynamo, test_a_lease_that_ends_exactly_now_is_not_yet_taken_over),
    (ClaimBlindDynamo, test_a_summary_is_committed_only_under_the_claim_that_holds_the_round),
    (ClaimBlindDynamo, test_a_claim_whose_lease_ran_out_is_taken_over_and_its_holder_can_no_longer_act),
]


@pytest.mark.parametrize(
    ("broken", "contract_test"), PLANTED, ids=[f"{b.__name__}-{t.__name__[5:45]}" for b, t in PLANTED]
)
def test_the_contract_fails_on_a_table_with_a_planted_broken_rule(broken, contract_test, endpoint):
    table = broken() if issubclass(broken, MemoryTable) else dynamo_tables(endpoint, broken)()
    with pytest.raises((AssertionError, pytest.fail.Exception)):  # an assert, or a `pytest.raises` that failed
        contract_test(table)


def test_a_watcher_lists_only_the_completed_rounds_after_the_last_it_saw(table):
    for number in (1, 2, 3, 12):
        open_round(table, number=number)
        claim(table, f"c{number}", number=number)
        assert table.complete_round(summary(number), f"c{number}")
    assert [r["round"] for r in table.list_rounds(RUN, after=0)] == [1, 2, 3, 12]
    assert [r["round"] for r in table.list_rounds(RUN, after=2)] == [3, 12]
    assert [r["round"] for r in table.list_rounds(RUN, after=3)] == [12]
    assert table.list_rounds(RUN, after=12) == []
