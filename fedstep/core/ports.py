"""The core's ports: what the round logic needs from storage and from the state machine.

`fedstep.aws` adapts them to S3, DynamoDB and Step Functions; `fedstep.memory` holds in-memory versions
whose conditional writes are atomic, as DynamoDB's and S3's are (the tests, the benches). One contract
suite runs against both (tests/test_round_table_contract.py, tests/test_model_store_contract.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from fedstep.core.schemas import ObjectRef, RunRecord, RunStop


@dataclass(frozen=True)
class RangeRead:
    """Bytes `start`.. of an object, the object's whole size, and the version they were read from
    (None where the store has no versions): later reads name the version, so a file replaced in
    between cannot mix into one update."""

    data: bytes
    total_bytes: int
    version: str | None


class ModelStore(Protocol):
    def get(self, key: str) -> bytes: ...

    def put(self, key: str, data: bytes) -> None: ...

    def put_once(self, key: str, data: bytes) -> bool:
        """Write `data` unless `key` exists (S3 `If-None-Match: *`); False if it existed."""
        ...

    def read_range(self, key: str, start: int, length: int, version: str | None = None) -> RangeRead:
        """Up to `length` bytes from `start` (fewer at the end of the object); `start` >= 0 and
        `length` >= 1, else ValueError (no empty or inverted range is ever requested)."""
        ...

    def read_into(self, key: str, start: int, buffer: memoryview, version: str | None) -> None:
        """Fill `buffer` with the bytes from `start` on; raise if the object ends first. An empty
        buffer reads nothing."""
        ...

    def delete(self, key: str) -> None:
        """Remove `key` so that readers of the current version no longer find it (S3 DeleteObject:
        a delete marker in a versioned bucket); nothing if it is absent."""
        ...


class MultipartStore(Protocol):
    """A model written in parts by several invocations (S3 multipart upload): a sliced aggregation."""

    def start_upload(self, key: str) -> str:
        """Begin writing `key` in parts; the upload's id."""
        ...

    def upload_part(self, key: str, upload_id: str, number: int, data: bytes) -> None:
        """Write part `number` (1-based; all but the last at least 5 MiB); a repeat replaces it."""
        ...

    def complete_upload(self, key: str, upload_id: str, parts: int) -> None:
        """Join parts 1..`parts` into the object; raise if one is missing. Nothing if `key` was
        completed already (a retried assembly)."""
        ...


class RoundTable(Protocol):
    """The server's records (run, round) and the clients' update and feedback items. Round records
    are items as stored (`fedstep.core.round_record.RoundRecord` types them and states their rules)."""

    def get_run(self, run_id: str) -> RunRecord | None: ...

    def get_round(self, run_id: str, round_number: int) -> dict[str, Any] | None: ...

    def get_stop(self, run_id: str) -> RunStop | None:
        """The run's stop marker (`fedstep stop`), None while the run was not stopped."""
        ...

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
        """Record a round's publication: its newest attempt's task token and `issued_at`, the model and
        strategy state it starts from, the clients it is `selected` for and those `skipped` as offline
        (client -> heartbeat status), and (on its first publication) `issued_at` as `first_issued_at`.
        False, changing nothing, unless the round is new or still open."""
        ...

    def claim_round(
        self, run_id: str, round_number: int, claim_id: str, now: float, lease_until: float
    ) -> dict[str, Any] | None:
        """Take the round for aggregation if it is open, or if its claim's lease ended before `now`:
        the round record as claimed (its task token and input model as of the claim), else None."""
        ...

    def hold_round(
        self, run_id: str, round_number: int, claim_id: str, lease_until: float, plan: dict[str, Any]
    ) -> bool:
        """Extend the claim `claim_id` (still held) to `lease_until` and record the round's slice
        plan (a sliced aggregation); False, changing nothing, if the claim no longer holds."""
        ...

    def release_round(self, run_id: str, round_number: int, claim_id: str) -> None:
        """Give a claim back (the round could not be aggregated); the round is open again."""
        ...

    def complete_round(self, item: dict[str, Any], claim_id: str) -> bool:
        """Write the round's summary if the claim `claim_id` still holds it; False otherwise. Raises
        `RunStopped`, writing nothing, if the run's stop marker exists: checked in the same atomic
        write (a DynamoDB transaction), so no round is committed after a stop."""
        ...

    def count_release(self, run_id: str, round_number: int, claim_id: str) -> int | None:
        """Add one to the round's count of noisy releases (`noisy_releases`, kept across its
        attempts and claims) if the claim `claim_id` still holds it: the new count, or None, changing
        nothing, if it does not."""
        ...

    def mark_reported(self, run_id: str, round_number: int) -> None: ...

    def list_rounds(self, run_id: str, after: int = 0) -> list[dict[str, Any]]:
        """The run's completed round records (with summaries), in round order; `after`: only the rounds
        numbered above it (a watcher reads only what is new)."""
        ...

    def get_updates(self, run_id: str, round_number: int, client_ids: list[str]) -> dict[str, dict[str, Any]]:
        """The update items of these clients for the round, by client id (strongly consistent)."""
        ...

    def put_feedback(self, item: dict[str, Any]) -> None: ...

    def get_failures(self, run_id: str, client_ids: list[str]) -> dict[str, dict[str, Any]]:
        """The clients' failure items in the run (their last failed round and its error), by client id."""
        ...

    def get_heartbeats(self, client_ids: list[str]) -> dict[str, dict[str, Any]]:
        """The heartbeat items of these clients, by client id (absent: never seen); client-written."""
        ...


class SecureTable(RoundTable, Protocol):
    """The records of a secure round's phases (`fedstep.core.rounds.secure`): the clients' items in
    their partitions, the server's inbox items, phase records and the survivors record."""

    def get_item(self, key: dict[str, str]) -> dict[str, Any] | None:
        """The item at `key` (strongly consistent), None if there is none."""
        ...

    def get_items(self, item_keys: list[dict[str, str]]) -> list[dict[str, Any]]:
        """These items (strongly consistent); absent ones are left out."""
        ...

    def put_server_items(self, items: list[dict[str, Any]]) -> None:
        """Write (or replace) server items outside the run's partition (relayed shares), in as few
        requests as the store allows."""
        ...

    def update_where(
        self, key: dict[str, str], sets: dict[str, Any], statuses: tuple[str | None, ...]
    ) -> dict[str, Any] | None:
        """Set `sets` on the item at `key` if its `status` is one of `statuses` (None: the item is
        absent), atomically: the item as updated, or None, changing nothing, if it was not."""
        ...


class SecureAggregation(Protocol):
    """The cryptography of a secure round, outside the core (`fedstep.privacy.secagg.server`)."""

    def neighbourhoods(self, clients: list[str], neighbours: int, seed: int) -> dict[str, list[str]]:
        """Each client's neighbours (0 or >= n - 1: everyone else)."""
        ...

    def unmask(
        self,
        roster: Any,
        survivors: frozenset[str],
        dropped: frozenset[str],
        masked_total: Any,
        reveals: dict[str, dict[str, tuple[str, bytes]]],
    ) -> Any:
        """The sum of the survivors' quantised inputs from the masked inputs' modular sum (uint32)."""
        ...

    def mean_delta(self, spec: Any, total: Any, survivors: int) -> tuple[float, Any]:
        """(the survivors' examples, FedAvg's weighted mean delta, flat float64) from the unmasked sum;
        InvalidAggregate for a sum honest survivors could not give."""
        ...

    def mask_seeds(
        self,
        roster: Any,
        survivors: frozenset[str],
        dropped: frozenset[str],
        reveals: dict[str, dict[str, tuple[str, bytes]]],
    ) -> list[tuple[bytes, int]]:
        """For a sliced round: the seeds of the masks left in the sum, with their signs."""
        ...

    def unmask_range(self, masked_total: Any, seeds: list[tuple[bytes, int]], offset: int) -> Any:
        """Elements `offset`.. of the masked sum without the masks of `seeds`."""
        ...

    def decode_weight(self, spec: Any, total: Any, survivors: int) -> float:
        """The survivors' summed weight from element 0 of the unmasked sum."""
        ...

    def decode_values(self, spec: Any, total: Any, survivors: int) -> Any:
        """A range of the survivors' summed weighted deltas (float64) from that range of the sum."""
        ...


class Reporter(Protocol):
    def succeed(self, task_token: str, output: dict[str, Any]) -> None: ...

    def fail(self, task_token: str, error: str, cause: str) -> None: ...


class Publisher(Protocol):
    def publish(self, message: dict[str, Any], clients: list[str]) -> None:
        """Send a message (a round, a run's end) to these clients (only their subscriptions match)."""
        ...
