"""What the operator is told of a round in flight, read from its round record and its clients' items:
`fedstep status` (the round in progress) and `fedstep stop` (what the stop caught). Both follow the
clients the round was sent to (its record's `selected`, offline ones left out), and tell a client that
declined from one that sent."""

from __future__ import annotations

from typing import Any

from fedstep.core.schemas import DECLINED_KIND, UPDATE_ITEM_KIND
from fedstep.operator.operate import in_flight
from fedstep.operator.views import load_open_round
from tests.round_world import make_run

RUN_CLIENTS = ("a", "b", "c")


class RoundInFlight:
    """The table as the operator reads it mid-round: round 1 open, sent to a and b (c left out as
    offline); a's update is in, b declined."""

    def __init__(self) -> None:
        self.record = {"round": 1, "status": "open", "attempt": 0, "selected": ["a", "b"], "skipped": {"c": "stopped"}}
        self.items = {"a": {"kind": UPDATE_ITEM_KIND}, "b": {"kind": DECLINED_KIND, "reason": "privacy budget"}}

    def open_rounds(self, run_id: str) -> list[dict[str, Any]]:
        return [self.record]

    def list_round_records(self, run_id: str) -> list[dict[str, Any]]:
        return [self.record]

    def get_updates(self, run_id: str, round_number: int, client_ids: list[str]) -> dict[str, dict[str, Any]]:
        return {c: self.items[c] for c in client_ids if c in self.items}

    def get_heartbeats(self, client_ids: list[str]) -> dict[str, dict[str, Any]]:
        return {}


def test_status_shows_a_declining_client_as_declined_not_as_sent():
    run = make_run(clients=RUN_CLIENTS)
    current = load_open_round(RoundInFlight(), run)
    assert current is not None
    assert current.selected == ["a", "b"] and current.sent == ["a"] and current.declined == {"b": "privacy budget"}


def test_a_stop_counts_the_clients_the_round_was_sent_to_not_the_seeded_sample():
    run = make_run(clients=RUN_CLIENTS)  # its seeded sample of round 1 is all three
    report = in_flight(run.run_id, run, RoundInFlight())
    assert (report.in_flight, report.selected, report.received, report.declined) == (1, ["a", "b"], ["a"], ["b"])
