"""A run on the in-memory ports: its round-0 model stored, and rounds published as the state machine
publishes them. Used by the in-process simulation engine (`fedstep.local.memory_engine`) and the
benchmarks (bench/strategies.py, bench/compression.py, bench/privacy.py)."""

from __future__ import annotations

import json

from fedstep.core import keys, tensors
from fedstep.core.clock import utc_now
from fedstep.core.rounds import publish_round
from fedstep.core.schemas import ObjectRef, RoundMessage, RunRecord
from fedstep.core.version import SCHEMA_VERSION
from fedstep.memory.messaging import RecordingPublisher, RecordingReporter
from fedstep.memory.store import MemoryStore
from fedstep.memory.table import MemoryTable


def store_initial(store: MemoryStore, run_id: str, initial: tensors.Tensors) -> ObjectRef:
    """The round-0 global model written as `fedstep start` writes it; its reference."""
    data = tensors.encode(initial, {"schema": SCHEMA_VERSION, "run_id": run_id, "round": 0, "kind": "global"})
    key = keys.global_key(run_id, 0, keys.INITIAL_VERSION)
    store.put(key, data)
    return ObjectRef(key, tensors.sha256_hex(data), len(data))


def start_in_memory(record: RunRecord, initial: tensors.Tensors) -> tuple[MemoryStore, MemoryTable, ObjectRef]:
    """A run on the in-memory ports: its store, its table (holding `record`) and its round-0 model's reference."""
    store, table = MemoryStore(), MemoryTable(record)
    return store, table, store_initial(store, record.run_id, initial)


def publish_in_memory(
    store: MemoryStore,
    table: MemoryTable,
    run_id: str,
    round_number: int,
    model: ObjectRef,
    *,
    issued_at: str | None = None,
    attempt: int = 0,
    reporter: RecordingReporter | None = None,
) -> tuple[RoundMessage, list[str]]:
    """Publish a round's `attempt` as the state machine does (`issued_at`: when it entered the round's
    state, default now; task token `token-<round>-<attempt>`, reported to `reporter`); the round message
    as a client receives it (through JSON) and the clients it went to. ValueError when the round was
    aggregated already (nothing is sent then)."""
    publisher = RecordingPublisher()
    sent = publish_round(
        run_id,
        round_number,
        attempt,
        model,
        f"token-{round_number}-{attempt}",
        issued_at or utc_now(),
        store=store,
        table=table,
        publisher=publisher,
        reporter=reporter or RecordingReporter(),
    )
    if sent is None:
        raise ValueError(f"round {round_number} of run {run_id} was aggregated already; nothing was published")
    body, recipients = publisher.messages[-1]
    return RoundMessage.parse(json.loads(json.dumps(body))), recipients
