"""The items a client writes to its own partition of the table: its update (or refusal) for a round,
its evaluation and statistics answers, its failure and its heartbeat."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from fedstep.core import codecs, keys, limits, statistics
from fedstep.core.schemas.refs import ObjectRef
from fedstep.core.schemas.secagg import KEYS_KIND, MASKED_ENCODING, MAX_ATTEMPT, REVEAL_KIND, SHARE_KIND
from fedstep.core.schemas.validation import (
    InvalidMessage,
    binary,
    check_metrics,
    check_scalars,
    check_schema,
    get_field,
    id_field,
    optional_number,
    positive_int,
    short_str,
    timestamp,
)
from fedstep.core.version import SCHEMA_VERSION


def _client_round_item(data: dict[str, Any], where: str) -> tuple[str, int, str]:
    """(run id, round, client id) of a client's item for a round, whose key (its partition) must
    match them."""
    check_schema(data, where)
    run_id = id_field(data, "run_id", "run id", where)
    round_number = positive_int(data, "round", where, 1, limits.MAX_ROUNDS)
    client_id = id_field(data, "client_id", "client id", where)
    own_key = keys.update_item_key(run_id, round_number, client_id)
    if any(data.get(k) not in (None, v) for k, v in own_key.items()):
        raise InvalidMessage(f"{where}: its key does not match its run, round and client")
    return run_id, round_number, client_id


UPDATE_KIND = "delta"
"""What an update file holds: the trained weights minus the round's global weights, float32."""
UPDATE_ITEM_KIND = "update"
"""The `kind` of an update item (and of its file's metadata)."""


@dataclass(frozen=True)
class UpdateItem:
    """A client's report for a round: written to its own partition after the update file is on S3.

    Every field is the client's claim: `parse` bounds each one (`fedstep.core.limits`), and the
    aggregation function checks the file against it."""

    run_id: str
    round: int
    client_id: str
    num_examples: int
    update: ObjectRef
    metrics: dict[str, float]
    created_at: str
    privacy: dict[str, float] = field(default_factory=dict)
    """The client's own privacy figures (`PRIVACY_FIELDS`), e.g. its record-level epsilon under
    DP-SGD, and under client-side clipping whether its update was within the clip norm."""
    encoding: str = codecs.DEFAULT
    """The codec the file was written with (`fedstep.core.codecs`, canonical name); the aggregation
    function refuses an update whose encoding is not the run's codec. Under secure aggregation,
    `MASKED_ENCODING`: the file is a masked input (`fedstep.core.schemas.secagg`)."""
    attempt: int = 0
    """The round's attempt a masked input belongs to (written only for a masked input: a retried
    secure round gets fresh keys, so an earlier attempt's input is never used)."""

    @property
    def masked(self) -> bool:
        return self.encoding == MASKED_ENCODING

    def to_item(self) -> dict[str, Any]:
        item = {
            **keys.update_item_key(self.run_id, self.round, self.client_id),
            "schema": SCHEMA_VERSION,
            "kind": UPDATE_ITEM_KIND,
            **asdict(self),
        }
        if self.encoding == codecs.DEFAULT:  # float32 items are written as before the codecs
            del item["encoding"]
        if not self.masked:
            del item["attempt"]
        return item

    def file_metadata(self) -> dict[str, Any]:
        """What the client writes into its update file's metadata: the item's facts. The file is the
        record of what was sent (an agent restarted between upload and item reports from it)."""
        return {
            "schema": SCHEMA_VERSION,
            "kind": UPDATE_ITEM_KIND,
            "update": UPDATE_KIND,
            "run_id": self.run_id,
            "round": self.round,
            "client_id": self.client_id,
            "num_examples": self.num_examples,
            "metrics": self.metrics,
            "privacy": self.privacy,
            **({} if self.encoding == codecs.DEFAULT else {"encoding": self.encoding}),
            **({"attempt": self.attempt} if self.masked else {}),
        }

    @classmethod
    def parse(cls, data: dict[str, Any]) -> UpdateItem:
        where = "update item"
        run_id, round_number, client_id = _client_round_item(data, where)
        update = ObjectRef.parse(get_field(data, "update", dict, where), f"{where} update")
        if update.key != keys.update_key(run_id, round_number, client_id):
            raise InvalidMessage(f"{where}: update key {update.key[:80]!r} is not this client's key for this round")
        if update.bytes < limits.MIN_UPDATE_FILE_BYTES:
            raise InvalidMessage(
                f"{where}: update bytes {update.bytes} is less than the smallest safetensors file "
                f"({limits.MIN_UPDATE_FILE_BYTES} bytes: its header length and header)"
            )
        return cls(
            run_id=run_id,
            round=round_number,
            client_id=client_id,
            num_examples=positive_int(data, "num_examples", where, 1, limits.MAX_EXAMPLES),
            update=update,
            metrics=check_metrics(data.get("metrics", {}), where),
            created_at=short_str(data, "created_at", where, limits.MAX_TIMESTAMP_CHARS),
            privacy=check_privacy(data.get("privacy", {}), where),
            encoding=check_encoding(data.get("encoding", codecs.DEFAULT), where),
            attempt=positive_int(data, "attempt", where, 0, MAX_ATTEMPT) if "attempt" in data else 0,
        )


def check_encoding(value: Any, where: str) -> str:
    """An item's codec name: text naming a known codec (`fedstep.core.codecs.get`), canonical, or
    a masked input's `MASKED_ENCODING`."""
    if value == MASKED_ENCODING:
        return MASKED_ENCODING
    try:
        return codecs.canonical(value)
    except ValueError as exc:
        raise InvalidMessage(f"{where}: encoding: {exc}") from None


@dataclass(frozen=True)
class DeclineItem:
    """A selected client's refusal to train a round, in place of its update item (same key): e.g.
    its data owner's privacy budget would be exceeded. The round treats it as a non-participant,
    without waiting for its deadline, and lists it in the summary's `declined`."""

    run_id: str
    round: int
    client_id: str
    reason: str
    created_at: str
    privacy: dict[str, float] = field(default_factory=dict)

    def to_item(self) -> dict[str, Any]:
        return {
            **keys.update_item_key(self.run_id, self.round, self.client_id),
            "schema": SCHEMA_VERSION,
            "kind": DECLINED_KIND,
            **asdict(self),
        }

    @classmethod
    def parse(cls, data: dict[str, Any]) -> DeclineItem:
        where = "decline item"
        run_id, round_number, client_id = _client_round_item(data, where)
        return cls(
            run_id=run_id,
            round=round_number,
            client_id=client_id,
            reason=limits.reason(short_str(data, "reason", where, limits.MAX_REASON_CHARS * 4)),
            created_at=short_str(data, "created_at", where, limits.MAX_TIMESTAMP_CHARS),
            privacy=check_privacy(data.get("privacy", {}), where),
        )


DECLINED_KIND = "declined"
STREAM_KINDS = (UPDATE_ITEM_KIND, DECLINED_KIND, KEYS_KIND, SHARE_KIND, REVEAL_KIND)
"""The kinds of the client items whose writes invoke the aggregation function (the table stream's
filter, `infra/aggregation.py`, on AWS and, through the deployed template, in the local cloud): an
update or a decline, which may complete a round, and a secure round's keys, shares and reveals,
which may complete one of its phases. Never a heartbeat, an evaluation answer or a server record."""
PRIVACY_FIELDS = ("epsilon", "delta", "within_clip")
"""What a client may report of its privacy: its record-level epsilon and delta (DP-SGD), and
`within_clip` (1 or 0: its update's norm was within the round's clip norm, client-side clipping).
Each is bounded (at most `limits.MAX_METRIC_MAGNITUDE`): a round summary carries the largest
epsilon reported, and DynamoDB refuses numbers above 1e125."""


def check_privacy(data: Any, where: str) -> dict[str, float]:
    """A client's privacy figures: only `PRIVACY_FIELDS`, finite non-negative numbers."""
    values = check_scalars(data, f"{where} privacy", len(PRIVACY_FIELDS))
    unknown = sorted(set(values) - set(PRIVACY_FIELDS))
    if unknown:
        raise InvalidMessage(f"{where}: privacy has unknown fields {unknown[:4]}")
    if any(isinstance(v, bool | str) or not 0 <= v <= limits.MAX_METRIC_MAGNITUDE for v in values.values()):
        raise InvalidMessage(f"{where}: privacy figures must be numbers from 0 to {limits.MAX_METRIC_MAGNITUDE:g}")
    if values.get("within_clip", 0) not in (0, 1):
        raise InvalidMessage(f"{where}: privacy within_clip must be 0 or 1")
    return {k: float(v) for k, v in values.items()}


def parse_client_item(data: dict[str, Any]) -> UpdateItem | DeclineItem:
    """A client's item for a round: its update, or its refusal."""
    return DeclineItem.parse(data) if data.get("kind") == DECLINED_KIND else UpdateItem.parse(data)


EVAL_KIND = "evaluation"


@dataclass(frozen=True)
class EvalItem:
    """A client's answer to an evaluation request, in its own partition (`keys.eval_item_key`):
    the global model of `round` evaluated on its local test split of `num_examples` examples, or
    `error`, why it could not evaluate (then no metrics). Every field is the client's claim, shown
    to the operator only after `parse` bounded it; the aggregation function never reads it."""

    run_id: str
    round: int
    request_id: str
    client_id: str
    num_examples: int
    metrics: dict[str, float]
    created_at: str
    error: str = ""

    def to_item(self) -> dict[str, Any]:
        return {
            **keys.eval_item_key(self.run_id, self.round, self.request_id, self.client_id),
            "schema": SCHEMA_VERSION,
            "kind": EVAL_KIND,
            **asdict(self),
        }

    @classmethod
    def parse(cls, data: dict[str, Any]) -> EvalItem:
        where = "evaluation item"
        check_schema(data, where)
        run_id = id_field(data, "run_id", "run id", where)
        round_number = positive_int(data, "round", where, 0, limits.MAX_ROUNDS)
        client_id = id_field(data, "client_id", "client id", where)
        try:
            request_id = keys.check_request_id(get_field(data, "request_id", str, where))
        except ValueError as exc:
            raise InvalidMessage(f"{where}: {exc}") from None
        own_key = keys.eval_item_key(run_id, round_number, request_id, client_id)
        if any(data.get(k) not in (None, v) for k, v in own_key.items()):
            raise InvalidMessage(f"{where}: its key does not match its run, round, request and client")
        error = ""
        if data.get("error"):
            error = limits.reason(short_str(data, "error", where, limits.MAX_REASON_CHARS * 4))
        minimum = 0 if error else 1
        item = cls(
            run_id=run_id,
            round=round_number,
            request_id=request_id,
            client_id=client_id,
            num_examples=positive_int(data, "num_examples", where, minimum, limits.MAX_EXAMPLES),
            metrics=check_metrics(data.get("metrics", {}), where),
            created_at=short_str(data, "created_at", where, limits.MAX_TIMESTAMP_CHARS),
            error=error,
        )
        if not error and not item.metrics:
            raise InvalidMessage(f"{where}: no metrics and no error")
        return item


STATS_KIND = "statistics"


@dataclass(frozen=True)
class StatsItem:
    """A client's answer to a statistics request, in its own partition (`keys.stats_item_key`): its
    `SiteStatistics` as float64 bytes (`values`, features x (5 + bins)), the noise it added, or
    `error`, why it could not answer. Every field is the client's claim: `parse` bounds the shape and
    the operator checks the numbers (`SiteStatistics.check`) before it combines them."""

    request_id: str
    client_id: str
    features: int
    bins: int
    values: bytes
    created_at: str
    noise_std: float = 0.0
    error: str = ""

    def to_item(self) -> dict[str, Any]:
        return {
            **keys.stats_item_key(self.request_id, self.client_id),
            "schema": SCHEMA_VERSION,
            "kind": STATS_KIND,
            **asdict(self),
        }

    @classmethod
    def parse(cls, data: dict[str, Any]) -> StatsItem:
        where = "statistics item"
        check_schema(data, where)
        client_id = id_field(data, "client_id", "client id", where)
        try:
            request_id = keys.check_request_id(get_field(data, "request_id", str, where))
        except ValueError as exc:
            raise InvalidMessage(f"{where}: {exc}") from None
        own_key = keys.stats_item_key(request_id, client_id)
        if any(data.get(k) not in (None, v) for k, v in own_key.items()):
            raise InvalidMessage(f"{where}: its key does not match its request and client")
        created_at = short_str(data, "created_at", where, limits.MAX_TIMESTAMP_CHARS)
        if data.get("error"):
            error = limits.reason(short_str(data, "error", where, limits.MAX_REASON_CHARS * 4))
            return cls(request_id, client_id, 0, 0, b"", created_at, 0.0, error)
        values = binary(data.get("values"), f"{where}: values")
        noise = optional_number(data, "noise_std", where) or 0.0
        if not 0 <= noise <= limits.MAX_METRIC_MAGNITUDE:
            raise InvalidMessage(f"{where}: noise_std must be a number >= 0")
        return cls(
            request_id=request_id,
            client_id=client_id,
            features=positive_int(data, "features", where, 1, statistics.MAX_FEATURES),
            bins=positive_int(data, "bins", where, 0, statistics.MAX_BINS),
            values=bytes(values),
            created_at=created_at,
            noise_std=noise,
        )


FAILURE_KIND = "failure"


@dataclass(frozen=True)
class FailureItem:
    """A client's word that its round failed, in its own partition (`keys.failure_item_key`, one per
    run, overwritten by each failure): the round, the agent's `attempt` at it (the message's receive
    count), the error on one line and when. Written by the agent each time a round fails and the
    message goes back to the queue; the operator's views (`fedstep status`, `fedstep local`) and a
    round's QuorumNotMet cause show it. The stream filter passes only update and decline items, so it
    never starts an aggregation. Every field is the client's claim, bounded by `parse`."""

    run_id: str
    round: int
    client_id: str
    error: str
    attempt: int
    created_at: str

    def to_item(self) -> dict[str, Any]:
        return {
            **keys.failure_item_key(self.run_id, self.client_id),
            "schema": SCHEMA_VERSION,
            "kind": FAILURE_KIND,
            **asdict(self),
        }

    @classmethod
    def of(
        cls, run_id: str, round_number: int, client_id: str, error: str, attempt: int, created_at: str
    ) -> FailureItem:
        """A failure item with `error` cut to one ASCII line of `limits.MAX_FAILURE_CHARS` and `attempt`
        kept within its bounds (what the agent writes)."""
        shown = limits.reason(error, limits.MAX_FAILURE_CHARS) or "unknown error"
        attempt = min(max(attempt, 1), limits.MAX_FAILURE_ATTEMPTS)
        return cls(run_id, round_number, client_id, shown, attempt, created_at)

    @classmethod
    def parse(cls, data: dict[str, Any]) -> FailureItem:
        where = "failure item"
        check_schema(data, where)
        if data.get("kind") != FAILURE_KIND:
            raise InvalidMessage(f"{where}: kind must be {FAILURE_KIND!r}")
        run_id = id_field(data, "run_id", "run id", where)
        client_id = id_field(data, "client_id", "client id", where)
        own_key = keys.failure_item_key(run_id, client_id)
        if any(data.get(k) not in (None, v) for k, v in own_key.items()):
            raise InvalidMessage(f"{where}: its key does not match its run and client")
        error = limits.reason(short_str(data, "error", where, limits.MAX_FAILURE_CHARS), limits.MAX_FAILURE_CHARS)
        if not error:
            raise InvalidMessage(f"{where}: field 'error' is empty")
        return cls(
            run_id=run_id,
            round=positive_int(data, "round", where, 1, limits.MAX_ROUNDS),
            client_id=client_id,
            error=error,
            attempt=positive_int(data, "attempt", where, 1, limits.MAX_FAILURE_ATTEMPTS),
            created_at=timestamp(data, "created_at", where),
        )

    def line(self) -> str:
        """e.g. `round 2 failed (attempt 3) at 2026-12-06T12:00:00Z: ValueError: ...`"""
        attempt = f" (attempt {self.attempt})" if self.attempt > 1 else ""
        return f"round {self.round} failed{attempt} at {self.created_at}: {self.error}"


HEARTBEAT_STATES = ("idle", "training", "declined", "stopped")
"""`declined`: it refused to train `run_id` round `round` (e.g. its privacy budget is spent)."""


@dataclass(frozen=True)
class Heartbeat:
    """A client agent's sign of life, overwritten every `interval_s` seconds (see `fedstep clients`).

    `state` is idle (polling its queue), training (serving `run_id` round `round`) or stopped (the
    agent exited cleanly). `hardware` is a flat summary: os, arch, python, cpus, memory_gib, gpus.
    """

    client_id: str
    agent_version: str
    state: str
    last_seen: str
    interval_s: int
    hardware: dict[str, Any]
    run_id: str | None = None
    round: int | None = None
    privacy: dict[str, float] | None = None
    """The agent's record-level epsilon and delta so far in `run_id` (DP-SGD), if any."""

    def to_item(self) -> dict[str, Any]:
        fields_ = {k: v for k, v in asdict(self).items() if v is not None}
        return {**keys.heartbeat_item_key(self.client_id), "schema": SCHEMA_VERSION, "kind": "heartbeat", **fields_}

    @classmethod
    def parse(cls, data: dict[str, Any]) -> Heartbeat:
        where = "heartbeat item"
        check_schema(data, where)
        client_id = id_field(data, "client_id", "client id", where)
        if data.get(keys.PK) not in (None, keys.heartbeat_item_key(client_id)[keys.PK]):
            raise InvalidMessage(f"{where}: partition key does not match client {client_id}")
        state = get_field(data, "state", str, where)
        if state not in HEARTBEAT_STATES:
            raise InvalidMessage(f"{where}: state must be one of {HEARTBEAT_STATES}, got {state!r}")
        hardware = get_field(data, "hardware", dict, where)
        if len(hardware) > limits.MAX_HARDWARE_FIELDS or len(str(hardware)) > limits.MAX_HARDWARE_CHARS:
            raise InvalidMessage(f"{where}: hardware summary is larger than {limits.MAX_HARDWARE_CHARS} characters")
        return cls(
            client_id=client_id,
            agent_version=short_str(data, "agent_version", where, limits.MAX_TIMESTAMP_CHARS),
            state=state,
            last_seen=short_str(data, "last_seen", where, limits.MAX_TIMESTAMP_CHARS),
            interval_s=positive_int(data, "interval_s", where, 1, limits.MAX_HEARTBEAT_INTERVAL_S),
            hardware={str(k): v for k, v in hardware.items()},
            run_id=id_field(data, "run_id", "run id", where) if data.get("run_id") is not None else None,
            round=positive_int(data, "round", where) if data.get("round") is not None else None,
            privacy=check_privacy(data["privacy"], where) if data.get("privacy") is not None else None,
        )
