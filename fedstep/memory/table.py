"""The single table in memory (`fedstep.core.ports.RoundTable`): DynamoDB's conditional writes, atomic
under a lock, with the round record's rules (`fedstep.core.round_record`) and the 400 KB item limit."""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable
from typing import Any

from fedstep.core import keys, limits
from fedstep.core.errors import RunStopped
from fedstep.core.round_record import RoundRecord
from fedstep.core.schemas import ROUND_CLAIMED, ROUND_OPEN, ROUND_REPORTED, ObjectRef, RunRecord, RunStop, is_completed
from fedstep.memory.sizes import record_bytes

Condition = Callable[[dict[str, Any] | None], bool]
"""Whether a conditional write may change the item as it is now (None: absent)."""


class MemoryTable:
    """The single table, with DynamoDB's conditional-write semantics and its 400 KB item limit.
    `largest_item` is the size of the largest item ever written, bytes (`record_bytes`)."""

    record_type: type[RoundRecord] = RoundRecord
    """Whose rules the round's conditional writes follow (a test plants a broken rule by a subclass)."""

    def __init__(self, *runs: RunRecord) -> None:
        self.items: dict[tuple[str, str], dict[str, Any]] = {}
        self.lock = threading.RLock()
        self.largest_item = 0
        for run in runs:
            self.put(run.to_item())

    def put(self, item: dict[str, Any]) -> None:
        size = record_bytes(item)
        assert size <= limits.DYNAMODB_ITEM_BYTES, f"item {item[keys.SK]} is {size} bytes, over DynamoDB's limit"
        with self.lock:
            self.largest_item = max(self.largest_item, size)
            self.items[(item[keys.PK], item[keys.SK])] = copy.deepcopy(item)

    def get(self, key: dict[str, str]) -> dict[str, Any] | None:
        with self.lock:
            item = self.items.get((key[keys.PK], key[keys.SK]))
            return copy.deepcopy(item) if item else None

    def _update(
        self, key: dict[str, str], condition: Condition, changes: dict[str, Any], removes: tuple[str, ...] = ()
    ) -> dict[str, Any] | None:
        """The item as updated, or None when `condition(current item)` does not hold (atomically)."""
        with self.lock:
            current = self.items.get((key[keys.PK], key[keys.SK]))
            if not condition(current):
                return None
            item = {**(current or key), **changes}
            for name in removes:
                item.pop(name, None)
            self.put(item)
            return copy.deepcopy(item)

    def _rule(self, rule: Callable[[RoundRecord], bool]) -> Condition:
        """A rule on the round record, as a write's condition: an absent record satisfies none."""
        return lambda current: current is not None and rule(self.record_type.parse(current))

    def expire_lease(self, run_id: str, round_number: int) -> None:
        """As if the claim's holder had crashed long ago."""
        self._update(keys.round_item_key(run_id, round_number), lambda cur: True, {"lease_until": 1.0})

    # -- SecureTable ------------------------------------------------------------------------------
    def get_item(self, key: dict[str, str]) -> dict[str, Any] | None:
        return self.get(key)

    def get_items(self, item_keys: list[dict[str, str]]) -> list[dict[str, Any]]:
        return [item for item in (self.get(k) for k in item_keys) if item is not None]

    def query_items(self, pk: str, prefix: str) -> list[dict[str, Any]]:
        """The items of partition `pk` whose sort key starts with `prefix`, in key order (a client's
        Query of its own partition: its inbox, in the memory engine's secure rounds)."""
        with self.lock:
            found = sorted((sk, item) for (p, sk), item in self.items.items() if p == pk and sk.startswith(prefix))
            return [copy.deepcopy(item) for _, item in found]

    def put_server_items(self, items: list[dict[str, Any]]) -> None:
        for item in items:
            self.put(item)

    def update_where(
        self, key: dict[str, str], sets: dict[str, Any], statuses: tuple[str | None, ...]
    ) -> dict[str, Any] | None:
        named = tuple(s for s in statuses if s is not None)
        return self._update(key, lambda cur: cur.get("status") in named if cur else None in statuses, sets)

    # -- RoundTable -------------------------------------------------------------------------------
    def get_run(self, run_id: str) -> RunRecord | None:
        item = self.get(keys.run_item_key(run_id))
        return RunRecord.parse(item) if item else None

    def get_round(self, run_id: str, round_number: int) -> dict[str, Any] | None:
        return self.get(keys.round_item_key(run_id, round_number))

    def get_stop(self, run_id: str) -> RunStop | None:
        return RunStop.of_item(run_id, self.get(keys.stop_item_key(run_id)))

    def put_stop(self, stop: RunStop) -> bool:
        """What `fedstep stop` writes first, once: False (changing nothing) if the run has a marker."""
        item = stop.to_item()
        with self.lock:
            if self.get({keys.PK: item[keys.PK], keys.SK: item[keys.SK]}) is not None:
                return False
            self.put(item)
            return True

    def open_round(
        self,
        run_id: str,
        round_number: int,
        attempt: int,
        task_token: str,
        issued_at: str,
        input_model: ObjectRef,
        input_state: ObjectRef | None = None,
        selected: list[str] | None = None,
        skipped: dict[str, str] | None = None,
    ) -> bool:
        key = keys.round_item_key(run_id, round_number)
        with self.lock:
            first = (self.get(key) or {}).get("first_issued_at", issued_at)
            record = RoundRecord.opened(
                run_id, round_number, attempt, task_token, issued_at, input_model, input_state, selected, skipped, first
            )
            new_or_open = lambda cur: cur is None or self.record_type.parse(cur).reopenable  # noqa: E731
            return None is not self._update(key, new_or_open, record.to_item())

    def claim_round(
        self, run_id: str, round_number: int, claim_id: str, now: float, lease_until: float
    ) -> dict[str, Any] | None:
        changes = {"status": ROUND_CLAIMED, "claim_id": claim_id, "lease_until": lease_until}
        free = self._rule(lambda record: record.claimable(now))
        return self._update(keys.round_item_key(run_id, round_number), free, changes)

    def hold_round(
        self, run_id: str, round_number: int, claim_id: str, lease_until: float, plan: dict[str, Any]
    ) -> bool:
        key = keys.round_item_key(run_id, round_number)
        changes = {"lease_until": lease_until, "plan": dict(plan)}
        return None is not self._update(key, self._rule(lambda record: record.held_by(claim_id)), changes)

    def release_round(self, run_id: str, round_number: int, claim_id: str) -> None:
        key = keys.round_item_key(run_id, round_number)
        held = self._rule(lambda record: record.held_by(claim_id))
        self._update(key, held, {"status": ROUND_OPEN}, ("claim_id", "lease_until"))

    def complete_round(self, item: dict[str, Any], claim_id: str) -> bool:
        key = {keys.PK: item[keys.PK], keys.SK: item[keys.SK]}
        with self.lock:  # one transaction: the claim holds and the run has no stop marker
            if self.get(keys.stop_item_key(item[keys.PK])) is not None:
                raise RunStopped(f"run {item[keys.PK]} was stopped: round {item.get('round')} is not committed")
            held = self._rule(lambda record: record.held_by(claim_id))
            return None is not self._update(key, held, dict(item), ("lease_until",))

    def count_release(self, run_id: str, round_number: int, claim_id: str) -> int | None:
        key = keys.round_item_key(run_id, round_number)
        with self.lock:
            current = self.get(key) or {}
            changes = {"noisy_releases": int(current.get("noisy_releases", 0)) + 1}
            updated = self._update(key, self._rule(lambda record: record.held_by(claim_id)), changes)
            return None if updated is None else int(updated["noisy_releases"])

    def mark_reported(self, run_id: str, round_number: int) -> None:
        key = keys.round_item_key(run_id, round_number)
        self._update(key, lambda cur: cur is not None, {"status": ROUND_REPORTED}, ("task_token",))

    def list_rounds(self, run_id: str, after: int = 0) -> list[dict[str, Any]]:
        first = keys.round_sk(after + 1)
        with self.lock:
            return [
                copy.deepcopy(v)
                for (pk, sk), v in sorted(self.items.items())
                if pk == run_id and sk.startswith(keys.ROUND_PREFIX) and sk >= first and is_completed(v)
            ]

    def get_updates(self, run_id: str, round_number: int, client_ids: list[str]) -> dict[str, dict[str, Any]]:
        found = {c: self.get(keys.update_item_key(run_id, round_number, c)) for c in client_ids}
        return {c: item for c, item in found.items() if item is not None}

    def put_feedback(self, item: dict[str, Any]) -> None:
        self.put(item)

    def get_failures(self, run_id: str, client_ids: list[str]) -> dict[str, dict[str, Any]]:
        found = {c: self.get(keys.failure_item_key(run_id, c)) for c in client_ids}
        return {c: item for c, item in found.items() if item is not None}

    def get_heartbeats(self, client_ids: list[str]) -> dict[str, dict[str, Any]]:
        found = {c: self.get(keys.heartbeat_item_key(c)) for c in client_ids}
        return {c: item for c, item in found.items() if item is not None}
