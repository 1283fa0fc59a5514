"""The typed round record (`fedstep.core.round_record.RoundRecord`): the items it reads and writes are
the round table's wire format, unchanged, and its rules say who may open, claim and commit."""

from __future__ import annotations

from dataclasses import replace

import pytest

from fedstep.core import keys
from fedstep.core.round_record import RoundRecord
from fedstep.core.schemas import ObjectRef

RUN = "run-1"
MODEL = ObjectRef(keys.global_key(RUN, 0, keys.INITIAL_VERSION), "a" * 64, 1234)
OPENED = RoundRecord.opened(RUN, 1, 0, "tok-1", "2026-12-06T10:00:00Z", MODEL, None, ["a", "b"], {"c": "offline"})


def test_an_opened_record_is_the_item_open_round_has_always_written():
    assert OPENED.to_item() == {
        **keys.round_item_key(RUN, 1),
        "schema": 2,
        "kind": "round",
        "run_id": RUN,
        "round": 1,
        "status": "open",
        "attempt": 0,
        "task_token": "tok-1",
        "issued_at": "2026-12-06T10:00:00Z",
        "first_issued_at": "2026-12-06T10:00:00Z",
        "input_model": {"key": MODEL.key, "sha256": MODEL.sha256, "bytes": 1234},
        "input_state": None,
        "selected": ["a", "b"],
        "skipped": {"c": "offline"},
    }


def test_a_record_read_back_writes_the_same_item_summary_fields_included():
    item = {
        **OPENED.to_item(),
        "status": "aggregated",
        "claim_id": "c1",
        "noisy_releases": 2,
        "participants": ["a"],
        "metrics": {"test_accuracy": 0.5},
        "plan": {"key": "runs/run-1/rounds/00001/plan-c1.json", "sha256": "b" * 64, "bytes": 9},
    }
    record = RoundRecord.parse(item)
    assert (record.claim_id, record.noisy_releases, record.plan.bytes, record.completed) == ("c1", 2, 9, True)
    assert record.to_item() == item


def test_a_record_without_a_recorded_selection_says_so():
    for selected in (None, "a,b", 3):
        item = {**OPENED.to_item(), "selected": selected}
        assert RoundRecord.parse(item).selected is None
    assert RoundRecord.parse({**OPENED.to_item(), "selected": ["a", 7, "b"]}).selected == ["a", "b"]


@pytest.mark.parametrize(
    ("status", "lease_until", "now", "claimable", "active"),
    [
        ("open", None, 100.0, True, False),
        ("claimed", 200.0, 100.0, False, True),
        ("claimed", 100.0, 100.0, False, False),  # ends now: neither active nor yet taken over
        ("claimed", 99.0, 100.0, True, False),
        ("claimed", None, 100.0, False, False),  # as DynamoDB: a missing lease never compares
        ("aggregated", None, 100.0, False, False),
        ("reported", None, 100.0, False, False),
    ],
)
def test_a_round_is_claimable_when_open_or_when_its_lease_ended(status, lease_until, now, claimable, active):
    record = replace(OPENED, status=status, lease_until=lease_until, claim_id="c1")
    assert (record.claimable(now), record.lease_active(now)) == (claimable, active)


def test_only_the_claim_that_holds_a_claimed_round_holds_it_and_only_an_open_round_reopens():
    claimed = replace(OPENED, status="claimed", claim_id="c1", lease_until=1.0)
    assert claimed.held_by("c1") and not claimed.held_by("c2")
    assert not replace(claimed, status="aggregated").held_by("c1")
    assert OPENED.reopenable and not claimed.reopenable


def test_a_record_without_its_input_model_is_refused_by_name():
    with pytest.raises(KeyError, match="no input_model"):
        replace(OPENED, input_model=None).require_input_model()
