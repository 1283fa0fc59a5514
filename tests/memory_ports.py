"""In-memory versions of the core's ports (`fedstep.core.ports`), faithful where the protocol depends on it:
conditional writes are atomic (a lock, as DynamoDB and S3 make them), S3 objects are versioned and
write-once keys refuse a second write, and every record is checked against its service limit."""

from __future__ import annotations

import copy
import json
import threading
from dataclasses import asdict
from typing import Any

from fedstep.core import keys, limits
from fedstep.core.errors import RunStopped
from fedstep.core.ports import RangeRead
from fedstep.core.schemas import (
    ROUND_AGGREGATED,
    ROUND_CLAIMED,
    ROUND_OPEN,
    ROUND_REPORTED,
    ObjectRef,
    RunRecord,
    RunStop,
    is_completed,
)
from fedstep.core.version import SCHEMA_VERSION


def record_bytes(value: Any) -> int:
    """An upper estimate of a record's size on the wire: its JSON (quotes and separators included,
    which DynamoDB and Step Functions do not count as generously)."""
    return len(json.dumps(value, default=str, separators=(",", ":"), ensure_ascii=False).encode())


class MemoryStore:
    """A versioned bucket; `bytes_read` counts what reads returned, per key."""

    def __init__(self) -> None:
        self.objects: dict[str, list[bytes]] = {}
        self.puts: list[str] = []
        self.bytes_read: dict[str, int] = {}
        self.uploads: dict[str, dict[int, bytes]] = {}
        self.deleted: list[str] = []
        self.lock = threading.Lock()

    def _count(self, key: str, n: int) -> None:
        with self.lock:
            self.bytes_read[key] = self.bytes_read.get(key, 0) + n

    def get(self, key: str) -> bytes:
        self._count(key, len(self.objects[key][-1]))
        return self.objects[key][-1]

    def put(self, key: str, data: bytes) -> None:
        with self.lock:
            self.objects.setdefault(key, []).append(bytes(data))
            self.puts.append(key)

    def put_once(self, key: str, data: bytes) -> bool:
        with self.lock:
            if key in self.objects:
                return False
            self.objects[key] = [bytes(data)]
            self.puts.append(key)
            return True

    def _version(self, key: str, version: str | None) -> bytes:
        versions = self.objects[key]
        return versions[int(version)] if version is not None else versions[-1]

    def read_range(self, key: str, start: int, length: int, version: str | None = None) -> RangeRead:
        if start < 0 or length < 1:  # S3 answers a malformed range with the whole object: never ask for one
            raise ValueError(f"an empty or inverted range was requested: start {start}, length {length}")
        data = self._version(key, version)
        self._count(key, len(data[start : start + length]))
        return RangeRead(data[start : start + length], len(data), version or str(len(self.objects[key]) - 1))

    def read_into(self, key: str, start: int, buffer: memoryview, version: str | None) -> None:
        if start < 0:
            raise ValueError(f"a negative range start was requested: {start}")
        data = memoryview(self._version(key, version))[start : start + len(buffer)]  # no copy but the buffer's
        if len(data) != len(buffer):
            raise ValueError("object ended early")
        self._count(key, len(data))
        buffer[:] = data

    def delete(self, key: str) -> None:
        with self.lock:
            self.objects.pop(key, None)
            self.deleted.append(key)

    # -- MultipartStore ---------------------------------------------------------------------------
    def start_upload(self, key: str) -> str:
        with self.lock:
            upload_id = f"upload-{len(self.uploads)}"
            self.uploads[upload_id] = {}
            return upload_id

    def upload_part(self, key: str, upload_id: str, number: int, data: bytes) -> None:
        if number > 1 and len(data) == 0:
            raise ValueError("empty part")
        with self.lock:
            self.uploads[upload_id][number] = bytes(data)

    def complete_upload(self, key: str, upload_id: str, parts: int) -> None:
        with self.lock:
            if upload_id not in self.uploads and key in self.objects:
                return
            got = self.uploads.pop(upload_id)
            if sorted(got) != list(range(1, parts + 1)):
                raise ValueError(f"parts {sorted(got)} of {parts}")
            self.objects.setdefault(key, []).append(b"".join(got[n] for n in range(1, parts + 1)))
            self.puts.append(key)


class MemoryTable:
    """The single table, with DynamoDB's conditional-write semantics and its 400 KB item limit."""

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
        self, key: dict[str, str], condition: Any, changes: dict[str, Any], removes: tuple = ()
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

    def expire_lease(self, run_id: str, round_number: int) -> None:
        """As if the claim's holder had crashed long ago."""
        self._update(keys.round_item_key(run_id, round_number), lambda cur: True, {"lease_until": 1.0})

    # -- RoundTable -------------------------------------------------------------------------------
    def get_run(self, run_id: str) -> RunRecord | None:
        item = self.get(keys.run_item_key(run_id))
        return RunRecord.parse(item) if item else None

    def get_round(self, run_id: str, round_number: int) -> dict[str, Any] | None:
        return self.get(keys.round_item_key(run_id, round_number))

    def get_stop(self, run_id: str) -> RunStop | None:
        item = self.get(keys.stop_item_key(run_id))
        return RunStop.parse(item) if item else None

    def put_stop(self, stop: RunStop) -> None:
        """What `fedstep stop` writes first."""
        self.put(stop.to_item())

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
        first = (self.get(key) or {}).get("first_issued_at", issued_at)
        changes = {
            "schema": SCHEMA_VERSION,
            "kind": "round",
            "run_id": run_id,
            "round": round_number,
            "status": ROUND_OPEN,
            "attempt": attempt,
            "task_token": task_token,
            "first_issued_at": first,
            "input_model": {"key": input_model.key, "sha256": input_model.sha256, "bytes": input_model.bytes},
            "input_state": asdict(input_state) if input_state else None,
            "issued_at": issued_at,
            **({"selected": list(selected)} if selected is not None else {}),
            **({"skipped": dict(skipped)} if skipped is not None else {}),
        }
        return None is not self._update(key, lambda cur: cur is None or cur.get("status") == ROUND_OPEN, changes)

    def claim_round(
        self, run_id: str, round_number: int, claim_id: str, now: float, lease_until: float
    ) -> dict[str, Any] | None:
        def free(cur: dict[str, Any] | None) -> bool:
            if cur is None:
                return False
            expired = cur.get("status") == ROUND_CLAIMED and cur.get("lease_until", 0) < now
            return cur.get("status") == ROUND_OPEN or expired

        changes = {"status": ROUND_CLAIMED, "claim_id": claim_id, "lease_until": lease_until}
        return self._update(keys.round_item_key(run_id, round_number), free, changes)

    def _held_by(self, claim_id: str) -> Any:
        return lambda cur: cur is not None and cur.get("status") == ROUND_CLAIMED and cur.get("claim_id") == claim_id

    def hold_round(
        self, run_id: str, round_number: int, claim_id: str, lease_until: float, plan: dict[str, Any]
    ) -> bool:
        key = keys.round_item_key(run_id, round_number)
        changes = {"lease_until": lease_until, "plan": dict(plan)}
        return None is not self._update(key, self._held_by(claim_id), changes)

    def release_round(self, run_id: str, round_number: int, claim_id: str) -> None:
        key = keys.round_item_key(run_id, round_number)
        self._update(key, self._held_by(claim_id), {"status": ROUND_OPEN}, ("claim_id", "lease_until"))

    def complete_round(self, item: dict[str, Any], claim_id: str) -> bool:
        key = {keys.PK: item[keys.PK], keys.SK: item[keys.SK]}
        with self.lock:  # one transaction: the claim holds and the run has no stop marker
            if self.get(keys.stop_item_key(item[keys.PK])) is not None:
                raise RunStopped(f"run {item[keys.PK]} was stopped: round {item.get('round')} is not committed")
            return None is not self._update(key, self._held_by(claim_id), dict(item), ("lease_until",))

    def count_release(self, run_id: str, round_number: int, claim_id: str) -> int | None:
        key = keys.round_item_key(run_id, round_number)
        with self.lock:
            current = self.get(key) or {}
            changes = {"noisy_releases": int(current.get("noisy_releases", 0)) + 1}
            updated = self._update(key, self._held_by(claim_id), changes)
            return None if updated is None else int(updated["noisy_releases"])

    def mark_reported(self, run_id: str, round_number: int) -> None:
        key = keys.round_item_key(run_id, round_number)
        self._update(key, lambda cur: cur is not None, {"status": ROUND_REPORTED}, ("task_token",))

    def list_rounds(self, run_id: str) -> list[dict[str, Any]]:
        with self.lock:
            return [
                copy.deepcopy(v)
                for (pk, sk), v in sorted(self.items.items())
                if pk == run_id and sk.startswith(keys.ROUND_PREFIX) and is_completed(v)
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


class RecordingReporter:
    """Step Functions' task tokens: each may be answered once."""

    def __init__(self, fail_first: bool = False) -> None:
        self.successes: list[tuple[str, dict[str, Any]]] = []
        self.failures: list[tuple[str, str, str]] = []
        self.fail_first = fail_first
        self.lock = threading.Lock()

    def succeed(self, task_token: str, output: dict[str, Any]) -> None:
        with self.lock:
            if self.fail_first:
                self.fail_first = False
                raise ConnectionError("simulated crash before the report reached Step Functions")
            size = record_bytes(output)
            assert size <= limits.STEP_FUNCTIONS_PAYLOAD_BYTES, f"task output of {size} bytes"
            if task_token not in {t for t, _ in self.successes}:
                self.successes.append((task_token, output))

    def fail(self, task_token: str, error: str, cause: str) -> None:
        with self.lock:
            self.failures.append((task_token, error, cause))


class RecordingPublisher:
    def __init__(self) -> None:
        self.messages: list[tuple[dict[str, Any], list[str]]] = []

    def publish(self, message: dict[str, Any], clients: list[str]) -> None:
        size = record_bytes(message) + record_bytes(clients)
        assert size <= limits.SNS_MESSAGE_BYTES, f"round message of {size} bytes"
        self.messages.append((message, clients))


__all__ = ["ROUND_AGGREGATED", "MemoryStore", "MemoryTable", "RecordingPublisher", "RecordingReporter"]
