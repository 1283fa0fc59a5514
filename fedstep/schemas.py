"""Wire formats: the round message, the run-ended message, the update item, the round summary, the run record.

Every format carries `schema` (an integer, `fedstep.SCHEMA_VERSION`). Parsing validates types and
ranges and raises `InvalidMessage` naming the first bad field, so a malformed message or item is
rejected with a reason instead of failing somewhere deeper.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, TypeVar

from fedstep import SCHEMA_VERSION, keys
from fedstep.errors import FedstepError
from fedstep.selection import select

T = TypeVar("T")


class InvalidMessage(FedstepError):
    """A message, item or event does not match its schema."""


def _get(data: dict[str, Any], name: str, kind: type[T] | tuple[type, ...], where: str) -> T:
    if not isinstance(data, dict):
        raise InvalidMessage(f"{where}: expected an object, got {type(data).__name__}")
    if name not in data:
        raise InvalidMessage(f"{where}: missing field {name!r}")
    value = data[name]
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if (isinstance(value, bool) and kind is not bool) or not isinstance(value, kind):
        expected = getattr(kind, "__name__", str(kind))
        raise InvalidMessage(f"{where}: field {name!r} must be {expected}, got {value!r:.80}")
    return value  # type: ignore[return-value]


def _positive_int(data: dict[str, Any], name: str, where: str, minimum: int = 1) -> int:
    value = _get(data, name, int, where)
    if value < minimum:
        raise InvalidMessage(f"{where}: field {name!r} must be >= {minimum}, got {value}")
    return value


def _id(data: dict[str, Any], name: str, kind: str, where: str) -> str:
    try:
        return keys.check_id(kind, _get(data, name, str, where))
    except ValueError as exc:
        raise InvalidMessage(f"{where}: {exc}") from None


def _check_schema(data: dict[str, Any], where: str) -> None:
    schema = _get(data, "schema", int, where)
    if schema != SCHEMA_VERSION:
        raise InvalidMessage(f"{where}: schema {schema} is not supported (this is schema {SCHEMA_VERSION})")


def _metrics(data: Any, where: str) -> dict[str, float]:
    if not isinstance(data, dict):
        raise InvalidMessage(f"{where}: metrics must be an object")
    out: dict[str, float] = {}
    for name, value in data.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise InvalidMessage(f"{where}: metric {name!r} must be a finite number, got {value!r:.40}")
        out[str(name)] = float(value)
    return out


@dataclass(frozen=True)
class ObjectRef:
    """An S3 object: key, sha256 (hex) and size in bytes."""

    key: str
    sha256: str
    bytes: int

    @classmethod
    def parse(cls, data: Any, where: str) -> ObjectRef:
        sha = _get(data, "sha256", str, where)
        if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
            raise InvalidMessage(f"{where}: sha256 must be 64 lowercase hex digits")
        return cls(_get(data, "key", str, where), sha, _positive_int(data, "bytes", where, 0))


@dataclass(frozen=True)
class TrainingConfig:
    """Local training settings sent with every round. Defaults: 1 epoch, batch 32, learning rate 0.01."""

    epochs: int = 1
    batch_size: int = 32
    learning_rate: float = 0.01
    params: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or not (0 < self.learning_rate < math.inf):
            raise InvalidMessage(
                f"training config: epochs and batch_size must be >= 1 and learning_rate > 0 "
                f"(got {self.epochs}, {self.batch_size}, {self.learning_rate})"
            )

    @classmethod
    def parse(cls, data: Any, where: str = "training") -> TrainingConfig:
        params = data.get("params", {}) if isinstance(data, dict) else {}
        if not isinstance(params, dict):
            raise InvalidMessage(f"{where}: params must be an object")
        return cls(
            epochs=_positive_int(data, "epochs", where),
            batch_size=_positive_int(data, "batch_size", where),
            learning_rate=_get(data, "learning_rate", float, where),
            params=params,
        )


@dataclass(frozen=True)
class RoundMessage:
    """Published by the state machine to the clients selected for a round (SNS -> SQS, raw delivery)."""

    run_id: str
    round: int
    model: ObjectRef
    global_model: ObjectRef
    training: TrainingConfig
    deadline_s: int
    issued_at: str
    task_token: str
    type: str = "round"

    @classmethod
    def parse(cls, data: dict[str, Any]) -> RoundMessage:
        where = "round message"
        _check_schema(data, where)
        return cls(
            run_id=_id(data, "run_id", "run id", where),
            round=_positive_int(data, "round", where),
            model=ObjectRef.parse(_get(data, "model", dict, where), f"{where} model"),
            global_model=ObjectRef.parse(_get(data, "global_model", dict, where), f"{where} global_model"),
            training=TrainingConfig.parse(_get(data, "training", dict, where)),
            deadline_s=_positive_int(data, "deadline_s", where),
            issued_at=_get(data, "issued_at", str, where),
            task_token=_get(data, "task_token", str, where),
        )


@dataclass(frozen=True)
class RunEndedMessage:
    """Published when a run is over; agents stop serving it."""

    run_id: str
    reason: str
    rounds_completed: int
    type: str = "run_ended"

    @classmethod
    def parse(cls, data: dict[str, Any]) -> RunEndedMessage:
        where = "run_ended message"
        _check_schema(data, where)
        return cls(
            run_id=_id(data, "run_id", "run id", where),
            reason=_get(data, "reason", str, where),
            rounds_completed=_positive_int(data, "rounds_completed", where, 0),
        )


def parse_message(data: Any) -> RoundMessage | RunEndedMessage:
    """Parse a message body (already JSON-decoded) into its typed form."""
    kind = _get(data, "type", str, "message")
    if kind == "round":
        return RoundMessage.parse(data)
    if kind == "run_ended":
        return RunEndedMessage.parse(data)
    raise InvalidMessage(f"message: unknown type {kind!r} (expected 'round' or 'run_ended')")


@dataclass(frozen=True)
class UpdateItem:
    """A client's report for a round: written to DynamoDB after the update file is on S3."""

    run_id: str
    round: int
    client_id: str
    num_examples: int
    update: ObjectRef
    metrics: dict[str, float]
    task_token: str
    issued_at: str
    created_at: str

    def to_item(self) -> dict[str, Any]:
        return {
            **keys.update_item_key(self.run_id, self.round, self.client_id),
            "schema": SCHEMA_VERSION,
            "kind": "update",
            **asdict(self),
        }

    @classmethod
    def parse(cls, data: dict[str, Any]) -> UpdateItem:
        where = "update item"
        _check_schema(data, where)
        run_id = _id(data, "run_id", "run id", where)
        round_number = _positive_int(data, "round", where)
        client_id = _id(data, "client_id", "client id", where)
        if data.get(keys.SK) not in (None, keys.update_item_key(run_id, round_number, client_id)[keys.SK]):
            raise InvalidMessage(f"{where}: sort key does not match run, round and client")
        return cls(
            run_id=run_id,
            round=round_number,
            client_id=client_id,
            num_examples=_positive_int(data, "num_examples", where),
            update=ObjectRef.parse(_get(data, "update", dict, where), f"{where} update"),
            metrics=_metrics(data.get("metrics", {}), where),
            task_token=_get(data, "task_token", str, where),
            issued_at=_get(data, "issued_at", str, where),
            created_at=_get(data, "created_at", str, where),
        )


def headline_metric(metrics: dict[str, float], name: str) -> float | None:
    """The metric `name` ("loss", "accuracy") people see for a round: the clients' test split after
    local training, else their train split; None if neither was reported."""
    return metrics.get(f"test_{name}", metrics.get(f"train_{name}"))


@dataclass(frozen=True)
class Rejection:
    client_id: str
    reason: str


@dataclass(frozen=True)
class RoundSummary:
    """The outcome of a round: written once to DynamoDB and returned to Step Functions.

    Durations are seconds; `duration_s` runs from the round message's issue time to the end of aggregation.
    """

    run_id: str
    round: int
    selected: list[str]
    participants: list[str]
    num_examples: int
    rejected: list[Rejection]
    metrics: dict[str, float]
    global_model: ObjectRef
    duration_s: float
    aggregation_s: float
    completed_at: str
    bytes_aggregated: int = 0
    """Size of the accepted update files, bytes."""

    def to_dict(self) -> dict[str, Any]:
        return {"schema": SCHEMA_VERSION, **asdict(self)}

    def to_item(self) -> dict[str, Any]:
        return {**keys.round_item_key(self.run_id, self.round), "kind": "round", **self.to_dict()}

    def brief(self) -> dict[str, Any]:
        """The compact per-round entry kept in the execution's history."""
        return {
            "round": self.round,
            "selected": len(self.selected),
            "participants": len(self.participants),
            "rejected": len(self.rejected),
            "num_examples": self.num_examples,
            "metrics": self.metrics,
            "duration_s": self.duration_s,
        }

    @classmethod
    def parse(cls, data: dict[str, Any]) -> RoundSummary:
        where = "round summary"
        _check_schema(data, where)
        return cls(
            run_id=_get(data, "run_id", str, where),
            round=_positive_int(data, "round", where),
            selected=list(data.get("selected", [])),
            participants=list(_get(data, "participants", list, where)),
            num_examples=_positive_int(data, "num_examples", where, 0),
            rejected=[Rejection(**r) for r in _get(data, "rejected", list, where)],
            metrics=_metrics(data.get("metrics", {}), where),
            global_model=ObjectRef.parse(_get(data, "global_model", dict, where), f"{where} global_model"),
            duration_s=_get(data, "duration_s", float, where),
            aggregation_s=_get(data, "aggregation_s", float, where),
            completed_at=_get(data, "completed_at", str, where),
            bytes_aggregated=_positive_int(data, "bytes_aggregated", where, 0) if "bytes_aggregated" in data else 0,
        )


@dataclass(frozen=True)
class Target:
    """Stop early once a round's weighted `metric` is >= `value` (`at_least`) or <= `value` (otherwise)."""

    metric: str
    value: float
    at_least: bool = True

    def reached(self, metrics: dict[str, float]) -> bool:
        current = metrics.get(self.metric)
        if current is None:
            return False
        return current >= self.value if self.at_least else current <= self.value

    def __str__(self) -> str:
        return f"{self.metric}{'>=' if self.at_least else '<='}{self.value:g}"

    @classmethod
    def parse_text(cls, text: str) -> Target:
        """'test_accuracy>=0.9' or 'test_loss<=0.3'."""
        for op, at_least in ((">=", True), ("<=", False)):
            name, sep, value = text.partition(op)
            if sep:
                try:
                    return cls(name.strip(), float(value), at_least)
                except ValueError:
                    break
        raise InvalidMessage(f"target {text!r} must look like test_accuracy>=0.9 or test_loss<=0.3")

    @classmethod
    def parse(cls, data: Any, where: str) -> Target:
        return cls(
            _get(data, "metric", str, where), _get(data, "value", float, where), _get(data, "at_least", bool, where)
        )


@dataclass(frozen=True)
class RunRecord:
    """Written by `fedstep start`: who takes part in a run and how it trains."""

    run_id: str
    clients: list[str]
    rounds: int
    training: TrainingConfig
    strategy: str
    created_at: str
    quorum: int = 1
    """The fewest valid updates a round may be aggregated from (at its deadline, or after rejections)."""
    target: Target | None = None
    clients_per_round: int = 0
    """How many clients each round selects (0: all)."""
    seed: int = 0
    """Seed of the per-round client selection."""
    round_timeout_s: int = 3600
    round_retries: int = 0
    resumed_from: str = ""
    """The run this one continues (`fedstep start --resume`), or ""."""

    def selected(self, round_number: int) -> list[str]:
        """The clients selected for `round_number` (see fedstep.selection)."""
        return select(self.clients, self.clients_per_round or len(self.clients), self.seed, round_number)

    def to_item(self) -> dict[str, Any]:
        return {**keys.run_item_key(self.run_id), "schema": SCHEMA_VERSION, "kind": "run", **asdict(self)}

    @classmethod
    def parse(cls, data: dict[str, Any]) -> RunRecord:
        where = "run record"
        _check_schema(data, where)
        clients = _get(data, "clients", list, where)
        return cls(
            run_id=_id(data, "run_id", "run id", where),
            clients=[_id({"client": c}, "client", "client id", where) for c in clients],
            rounds=_positive_int(data, "rounds", where),
            training=TrainingConfig.parse(_get(data, "training", dict, where)),
            strategy=_get(data, "strategy", str, where),
            created_at=_get(data, "created_at", str, where),
            quorum=_positive_int(data, "quorum", where) if "quorum" in data else 1,
            target=Target.parse(data["target"], f"{where} target") if data.get("target") else None,
            clients_per_round=_positive_int(data, "clients_per_round", where, 0) if "clients_per_round" in data else 0,
            seed=_positive_int(data, "seed", where, 0) if "seed" in data else 0,
            round_timeout_s=_positive_int(data, "round_timeout_s", where) if "round_timeout_s" in data else 3600,
            round_retries=_positive_int(data, "round_retries", where, 0) if "round_retries" in data else 0,
            resumed_from=str(data.get("resumed_from", "")),
        )


HEARTBEAT_STATES = ("idle", "training", "stopped")


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

    def to_item(self) -> dict[str, Any]:
        fields_ = {k: v for k, v in asdict(self).items() if v is not None}
        return {**keys.heartbeat_item_key(self.client_id), "schema": SCHEMA_VERSION, "kind": "heartbeat", **fields_}

    @classmethod
    def parse(cls, data: dict[str, Any]) -> Heartbeat:
        where = "heartbeat item"
        _check_schema(data, where)
        client_id = _id(data, "client_id", "client id", where)
        if data.get(keys.PK) not in (None, keys.heartbeat_item_key(client_id)[keys.PK]):
            raise InvalidMessage(f"{where}: partition key does not match client {client_id}")
        state = _get(data, "state", str, where)
        if state not in HEARTBEAT_STATES:
            raise InvalidMessage(f"{where}: state must be one of {HEARTBEAT_STATES}, got {state!r}")
        hardware = _get(data, "hardware", dict, where)
        return cls(
            client_id=client_id,
            agent_version=_get(data, "agent_version", str, where),
            state=state,
            last_seen=_get(data, "last_seen", str, where),
            interval_s=_positive_int(data, "interval_s", where),
            hardware={str(k): v for k, v in hardware.items()},
            run_id=_id(data, "run_id", "run id", where) if data.get("run_id") is not None else None,
            round=_positive_int(data, "round", where) if data.get("round") is not None else None,
        )
