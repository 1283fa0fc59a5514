"""A run on the in-memory ports (`fedstep.memory`): publish rounds, report updates as an agent
would, complete rounds as the aggregation function would. The core's protocol without AWS."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from fedstep.core import keys, tensors
from fedstep.core.rounds import complete_round_at_deadline, publish_round, try_complete_round
from fedstep.core.schemas import Bounds, ObjectRef, RunRecord, TrainingConfig
from fedstep.core.updates import encode_update
from fedstep.memory import MemoryStore, MemoryTable, RecordingPublisher, RecordingReporter

RUN = "run-1"
GLOBAL = {"000/d/kernel": np.zeros((3, 2), np.float32), "001/d/bias": np.zeros(2, np.float32)}


@dataclass
class World:
    """A run with its round-0 model published, its table and the recording ports."""

    run: RunRecord
    store: MemoryStore = field(default_factory=MemoryStore)
    reporter: RecordingReporter = field(default_factory=RecordingReporter)
    publisher: RecordingPublisher = field(default_factory=RecordingPublisher)
    table: MemoryTable = field(init=False)
    initial: ObjectRef = field(init=False)

    def __post_init__(self) -> None:
        self.table = MemoryTable(self.run)
        self.initial = self.put_model(0, GLOBAL, keys.INITIAL_VERSION)

    def put_model(self, round_number: int, weights: dict, version: str) -> ObjectRef:
        data = tensors.encode(weights)
        key = keys.global_key(RUN, round_number, version)
        self.store.put(key, data)
        return ObjectRef(key, tensors.sha256_hex(data), len(data))

    def publish(self, round_number: int = 1, attempt: int = 0, token: str = "tok-1", model: ObjectRef | None = None):
        return publish_round(
            RUN,
            round_number,
            attempt,
            model or self.initial,
            token,
            f"2026-11-21T00:{attempt:02d}:00Z",
            store=self.store,
            table=self.table,
            publisher=self.publisher,
            reporter=self.reporter,
        )

    def report(self, client, value=None, n=10, round_number=1, delta=None, metrics=None, privacy=None, **overrides):
        """What an agent does: upload its update (a delta) under its own prefix, write its item."""
        delta = delta if delta is not None else {k: np.full(v.shape, value, np.float32) for k, v in GLOBAL.items()}
        metrics = metrics if metrics is not None else {"test_accuracy": min(1.0, abs(value or 0) / 10)}
        data, item = encode_update(
            delta,
            run_id=RUN,
            round_number=round_number,
            client_id=client,
            num_examples=n,
            metrics=metrics,
            created_at="2026-11-21T00:01Z",
            privacy=privacy,
        )
        self.store.put(item.update.key, data)
        self.table.put({**item.to_item(), **overrides})
        return item

    def complete(self, round_number=1, **kwargs):
        return try_complete_round(
            RUN, round_number, store=self.store, table=self.table, reporter=self.reporter, **kwargs
        )

    def at_deadline(self, round_number=1, **kwargs):
        return complete_round_at_deadline(RUN, round_number, store=self.store, table=self.table, **kwargs)

    def next_round(self, round_number: int) -> None:
        """Publish `round_number` from the global model of the round before it, as the state machine does."""
        previous = self.table.get_round(RUN, round_number - 1)
        model = ObjectRef.parse(previous["global_model"], "previous round's global model")
        self.publish(round_number, token=f"tok-r{round_number}", model=model)

    def new_global(self, round_number=1) -> dict[str, np.ndarray]:
        summary = self.table.get_round(RUN, round_number)
        return tensors.decode(self.store.get(summary["global_model"]["key"]))


def make_world(
    quorum=1,
    clients=("a", "b"),
    min_participants=1,
    bounds=None,
    target=None,
    strategy="fedavg",
    rounds=3,
    dp=None,
    store=None,
    strategy_params=None,
) -> World:
    """A run of these `clients` with round 1 published (into `store`, a fresh MemoryStore if None)."""
    run = make_run(quorum, clients, min_participants, bounds, target, strategy, rounds, dp, strategy_params)
    world = World(run) if store is None else World(run, store=store)
    world.publish()
    return world


def make_run(
    quorum=1,
    clients=("a", "b"),
    min_participants=1,
    bounds=None,
    target=None,
    strategy="fedavg",
    rounds=3,
    dp=None,
    strategy_params=None,
) -> RunRecord:
    """The run record of `make_world` (nothing published)."""
    return RunRecord(
        RUN,
        list(clients),
        rounds,
        TrainingConfig(),
        strategy,
        "2026-11-21T00:00:00+00:00",
        quorum,
        target=target,
        min_participants=min_participants,
        bounds=bounds or Bounds(),
        model=ObjectRef(keys.model_key(RUN), "0" * 64, 1),
        dp=dp,
        strategy_params=dict(strategy_params or {}),
    )
