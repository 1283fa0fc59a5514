"""Wire formats: the round message, the run-ended message, the evaluate message, the update item, the
evaluation item, the round record, the run record, the feedback and heartbeat items, the stop marker.

Every format carries `schema` (an integer, `fedstep.SCHEMA_VERSION`). Parsing validates types, ranges
and sizes (`fedstep.core.limits`) and raises `InvalidMessage` naming the first bad field, so a malformed
message or item is rejected with a reason instead of failing somewhere deeper; one of another schema
version raises `SchemaMismatch`, naming both versions and which side to upgrade.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field, fields
from typing import Any, TypeVar

from fedstep.core import keys, limits, statistics
from fedstep.core.clock import parse_utc
from fedstep.core.errors import FedstepError
from fedstep.core.selection import SELECTIONS, select
from fedstep.core.version import SCHEMA_VERSION, __version__

T = TypeVar("T")


class InvalidMessage(FedstepError):
    """A message, item or event does not match its schema."""


class SchemaMismatch(InvalidMessage):
    """A message or item of another wire schema version (`fedstep.SCHEMA_VERSION`) than this fedstep
    reads: `found` is the writer's, `supported` this reader's. Agents and the stack work together only
    at the same schema (docs/operations.md: upgrading)."""

    def __init__(self, where: str, found: int, supported: int = SCHEMA_VERSION) -> None:
        self.found, self.supported = found, supported
        super().__init__(
            f"{where}: wire schema {found}, but this fedstep ({__version__}) reads schema {supported} only: "
            f"upgrade the side on schema {min(found, supported)} (docs/operations.md, Upgrading)"
        )


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


def _positive_int(data: dict[str, Any], name: str, where: str, minimum: int = 1, maximum: int | None = None) -> int:
    value = _get(data, name, int, where)
    if value < minimum or (maximum is not None and value > maximum):
        bound = f">= {minimum}" if maximum is None else f"from {minimum} to {maximum}"
        raise InvalidMessage(f"{where}: field {name!r} must be {bound}, got {value}")
    return value


def _optional_number(data: dict[str, Any], name: str, where: str) -> float | None:
    """A number that may be absent or null (inf allowed: no noise means no guarantee)."""
    return None if data.get(name) is None else _get(data, name, float, where)


def _short_str(data: dict[str, Any], name: str, where: str, max_chars: int) -> str:
    value = _get(data, name, str, where)
    if len(value) > max_chars:
        raise InvalidMessage(f"{where}: field {name!r} is {len(value)} characters, at most {max_chars} allowed")
    return value


def _timestamp(data: dict[str, Any], name: str, where: str) -> str:
    """An ISO 8601 time with its UTC offset (`2026-11-30T12:00:00.123Z`), at most
    `limits.MAX_TIMESTAMP_CHARS` long: a deadline counted from anything else would never pass."""
    value = _short_str(data, name, where, limits.MAX_TIMESTAMP_CHARS)
    try:
        parse_utc(value)
    except ValueError as exc:
        raise InvalidMessage(f"{where}: field {name!r} {exc}") from None
    return value


def _id(data: dict[str, Any], name: str, kind: str, where: str) -> str:
    try:
        return keys.check_id(kind, _get(data, name, str, where))
    except ValueError as exc:
        raise InvalidMessage(f"{where}: {exc}") from None


def _check_schema(data: dict[str, Any], where: str) -> None:
    schema = _get(data, "schema", int, where)
    if schema != SCHEMA_VERSION:
        raise SchemaMismatch(where, schema)


def check_metrics(data: Any, where: str) -> dict[str, float]:
    """A client's metrics: at most `limits.MAX_METRICS`, each name and value within `limits`."""
    if not isinstance(data, dict):
        raise InvalidMessage(f"{where}: metrics must be an object")
    if len(data) > limits.MAX_METRICS:
        raise InvalidMessage(f"{where}: {len(data)} metrics, at most {limits.MAX_METRICS} allowed")
    out: dict[str, float] = {}
    for name, value in data.items():
        problem = limits.metric_problem(name, value)
        if problem:
            raise InvalidMessage(f"{where}: {problem}")
        out[name] = float(value)
    return out


def check_scalars(data: Any, where: str, max_entries: int) -> dict[str, bool | int | float | str]:
    """A small flat object of named scalars (a strategy's instructions or parameters): at most
    `max_entries`, names like metric names, values finite numbers, booleans or short text."""
    if not isinstance(data, dict):
        raise InvalidMessage(f"{where}: expected an object")
    if len(data) > max_entries:
        raise InvalidMessage(f"{where}: {len(data)} entries, at most {max_entries} allowed")
    for name, value in data.items():
        if not isinstance(name, str) or not limits.METRIC_NAME.match(name):
            raise InvalidMessage(f"{where}: {str(name)[:80]!r} is not a valid name")
        ok_text = isinstance(value, str) and len(value) <= limits.MAX_PARAM_TEXT_CHARS
        ok_number = isinstance(value, int | float) and math.isfinite(value)
        if not (ok_text or ok_number):
            raise InvalidMessage(f"{where}: {name!r} must be a finite number, true/false or short text")
    return dict(data)


def check_measurements(data: Any, where: str) -> dict[str, float]:
    """A strategy's measurements of a round: at most `limits.MAX_MEASUREMENTS` finite numbers."""
    values = check_scalars(data, where, limits.MAX_MEASUREMENTS)
    if any(isinstance(v, bool | str) for v in values.values()):
        raise InvalidMessage(f"{where}: measurements must be numbers")
    return {k: float(v) for k, v in values.items()}


def check_kept(kept: Any, participants: list[str], where: str) -> list[str] | None:
    """The clients a strategy kept (`RoundSummary.kept`): None, or distinct participants (at most all of
    them), in the order given; a stored record names them by their positions in `participants`."""
    if kept is None:
        return None
    if not isinstance(kept, list) or len(kept) > len(participants):
        raise InvalidMessage(f"{where}: expected a list of at most the {len(participants)} participants")
    if all(isinstance(i, int) and not isinstance(i, bool) for i in kept):
        if any(not 0 <= i < len(participants) for i in kept):
            raise InvalidMessage(f"{where}: a position outside the {len(participants)} participants")
        kept = [participants[i] for i in kept]
    outsiders = [c for c in kept if not isinstance(c, str) or c not in participants]
    if outsiders or len(set(kept)) != len(kept):
        named = f"{str(outsiders[0])[:80]!r} is not a participant" if outsiders else "a client is named twice"
        raise InvalidMessage(f"{where}: {named}")
    return list(kept)


def from_state(path: str) -> Any:
    """Dataclass field metadata: the state machine supplies this field from the JSONPath `path`
    (`state_machine_fields` lists them; infra builds the state machine's payload from that list)."""
    return {"state_path": path}


def state_machine_fields(message: type) -> dict[str, tuple[str, str]]:
    """The fields of `message` the state machine supplies: name -> (JSONPath, kind), where kind is
    "string", "number" or "object" (how Step Functions passes it)."""
    kinds = {"str": "string", "int": "number", "ObjectRef": "object"}
    return {
        f.name: (f.metadata["state_path"], kinds[str(f.type)]) for f in fields(message) if "state_path" in f.metadata
    }


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
        key = _short_str(data, "key", where, 1024)  # S3's own limit on key length
        return cls(key, sha, _positive_int(data, "bytes", where, 0))


@dataclass(frozen=True)
class TrainingConfig:
    """Local training settings sent with every round. Defaults: 1 epoch, batch 32, no learning rate.
    `epochs` lies in 1-`limits.MAX_EPOCHS` (1000), `batch_size` in 1-`limits.MAX_BATCH_SIZE` (65,536):
    `fedstep start` refuses more, and an agent refuses a round message asking more.

    `learning_rate` None (null on the wire): the model's own optimizer keeps the learning rate it was
    compiled with; a number (> 0) replaces it for the round.

    `params` are the operator's settings for the clients' train functions (`--train-param NAME=VALUE`):
    at most `limits.MAX_TRAIN_PARAMS`, each named like a Python identifier (at most 64 characters)
    with a boolean, a finite number or a text of at most `limits.MAX_TRAIN_PARAM_CHARS` characters.

    `standardize` is how each client scales its features before training and evaluation: "none"
    (default: as they are), "local" (its own mean and standard deviation) or "federated" (the
    statistics of every client, `fedstep.core.statistics`, in the object `standardization`, which
    the agent reads and checks by its sha256).

    `instructions` are the strategy's instructions for this round (e.g. FedProx's `proximal_mu`):
    the agent sets them from the round message before it calls the train function; they are never
    read from the wire as part of this object."""

    epochs: int = 1
    batch_size: int = 32
    learning_rate: float | None = None
    params: dict[str, Any] = field(default_factory=dict)
    standardize: str = "none"
    standardization: ObjectRef | None = None
    instructions: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name, most in (("epochs", limits.MAX_EPOCHS), ("batch_size", limits.MAX_BATCH_SIZE)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= most:
                raise InvalidMessage(f"training config: {name} must be a whole number from 1 to {most}, got {value!r}")
        if not (self.learning_rate is None or 0 < self.learning_rate < math.inf):
            raise InvalidMessage(f"training config: learning_rate must be > 0 or null, got {self.learning_rate}")
        _check_train_params(self.params)
        if self.standardize not in STANDARDIZE_MODES:
            raise InvalidMessage(
                f"training config: standardize must be one of {', '.join(STANDARDIZE_MODES)}, got {self.standardize!r}"
            )
        if (self.standardize == "federated") != (self.standardization is not None):
            raise InvalidMessage("training config: standardize 'federated' goes with a standardization object, only")

    @classmethod
    def parse(cls, data: Any, where: str = "training") -> TrainingConfig:
        params = data.get("params", {}) if isinstance(data, dict) else {}
        if not isinstance(params, dict):
            raise InvalidMessage(f"{where}: params must be an object")
        standardization = data.get("standardization") if isinstance(data, dict) else None
        return cls(
            epochs=_positive_int(data, "epochs", where, 1, limits.MAX_EPOCHS),
            batch_size=_positive_int(data, "batch_size", where, 1, limits.MAX_BATCH_SIZE),
            learning_rate=_optional_number(data, "learning_rate", where),
            params=params,
            standardize=_short_str(data, "standardize", where, 16) if "standardize" in data else "none",
            standardization=None
            if standardization is None
            else ObjectRef.parse(standardization, f"{where} standardization"),
        )


STANDARDIZE_MODES = ("none", "local", "federated")
"""How clients scale their features (`TrainingConfig.standardize`)."""


_PARAM_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")


def _check_train_params(params: Any) -> None:
    """`TrainingConfig.params`: bounded, named like identifiers, scalar values (InvalidMessage otherwise)."""
    if not isinstance(params, dict):
        raise InvalidMessage("training params must be an object of name -> value")
    if len(params) > limits.MAX_TRAIN_PARAMS:
        raise InvalidMessage(f"training params: {len(params)} given, at most {limits.MAX_TRAIN_PARAMS}")
    for name, value in params.items():
        if not isinstance(name, str) or not _PARAM_NAME.fullmatch(name):
            raise InvalidMessage(f"training param {str(name)[:80]!r}: a name is letters, digits and _ (at most 64)")
        scalar = isinstance(value, bool | int | str) or (isinstance(value, float) and math.isfinite(value))
        if not scalar:
            raise InvalidMessage(f"training param {name}: a value is a boolean, a finite number or a text")
        if isinstance(value, str) and len(value) > limits.MAX_TRAIN_PARAM_CHARS:
            raise InvalidMessage(f"training param {name}: a text of at most {limits.MAX_TRAIN_PARAM_CHARS} characters")


@dataclass(frozen=True)
class RoundMessage:
    """Published to the clients selected for a round (SNS -> SQS, raw delivery) by the aggregation
    function, when the state machine opens the round. It carries no task token: clients never see one.

    The fields marked `from_state` come from the state machine's call (infra builds that call's
    payload from this definition: `state_machine_fields(RoundMessage)`); the function adds the rest
    from the run record and the strategy. `attempt` is 0 for a round's first publication and counts
    its retries (`--round-retries`). `instructions` are the strategy's per-round parameters for the
    clients (e.g. FedProx's `proximal_mu`), passed to the train function."""

    run_id: str = field(metadata=from_state("$.run.run_id"))
    round: int = field(metadata=from_state("$.round"))
    attempt: int = field(metadata=from_state("$.attempt"))
    global_model: ObjectRef = field(metadata=from_state("$.global_model"))
    issued_at: str = field(metadata=from_state("$$.State.EnteredTime"))
    model: ObjectRef | None = None
    training: TrainingConfig = field(default_factory=TrainingConfig)
    deadline_s: int = 3600
    instructions: dict[str, Any] = field(default_factory=dict)
    type: str = "round"

    def to_dict(self) -> dict[str, Any]:
        return {"schema": SCHEMA_VERSION, **asdict(self)}

    @classmethod
    def parse(cls, data: dict[str, Any]) -> RoundMessage:
        where = "round message"
        _check_schema(data, where)
        return cls(
            run_id=_id(data, "run_id", "run id", where),
            round=_positive_int(data, "round", where),
            attempt=_positive_int(data, "attempt", where, 0),
            model=ObjectRef.parse(_get(data, "model", dict, where), f"{where} model"),
            global_model=ObjectRef.parse(_get(data, "global_model", dict, where), f"{where} global_model"),
            training=TrainingConfig.parse(_get(data, "training", dict, where)),
            deadline_s=_positive_int(data, "deadline_s", where, 1, limits.MAX_ROUND_TIMEOUT_S),
            issued_at=_timestamp(data, "issued_at", where),
            instructions=check_scalars(data.get("instructions", {}), f"{where} instructions", limits.MAX_INSTRUCTIONS),
        )


@dataclass(frozen=True)
class RunEndedMessage:
    """Published when a run is over; agents stop serving it. The state machine publishes it: its
    payload is built from this definition (`state_machine_fields`)."""

    run_id: str = field(metadata=from_state("$.run.run_id"))
    reason: str = field(metadata=from_state("$.stop_reason"))
    rounds_completed: int = field(metadata=from_state("$.round"))
    type: str = "run_ended"

    def to_dict(self) -> dict[str, Any]:
        return {"schema": SCHEMA_VERSION, **asdict(self)}

    @classmethod
    def parse(cls, data: dict[str, Any]) -> RunEndedMessage:
        where = "run_ended message"
        _check_schema(data, where)
        return cls(
            run_id=_id(data, "run_id", "run id", where),
            reason=_get(data, "reason", str, where),
            rounds_completed=_positive_int(data, "rounds_completed", where, 0),
        )


MAX_EVAL_DEADLINE_S = 7 * 24 * 3600
"""The longest an evaluation request may wait for its answers (a week, like a round's deadline)."""


@dataclass(frozen=True)
class EvaluateMessage:
    """Published by the operator (`fedstep evaluate`) to the clients it asks: evaluate the run's
    global model after `round` (0: the initial weights) on the local test split and write an
    evaluation item (`EvalItem`) for `request_id`. Agents serve it even when the run has ended (that
    is its main use) and skip it once `deadline_s` seconds after `issued_at` have passed. Every field
    is bounded, so the message stays far below SNS's 256 KiB."""

    run_id: str
    round: int
    request_id: str
    model: ObjectRef
    global_model: ObjectRef
    issued_at: str
    deadline_s: int = 900
    training: TrainingConfig = field(default_factory=TrainingConfig)
    """The run's training settings: the batch size and the standardization the model was trained with."""
    type: str = "evaluate"

    def to_dict(self) -> dict[str, Any]:
        return {"schema": SCHEMA_VERSION, **asdict(self)}

    @classmethod
    def parse(cls, data: dict[str, Any]) -> EvaluateMessage:
        where = "evaluate message"
        _check_schema(data, where)
        try:
            request_id = keys.check_request_id(_get(data, "request_id", str, where))
        except ValueError as exc:
            raise InvalidMessage(f"{where}: {exc}") from None
        return cls(
            run_id=_id(data, "run_id", "run id", where),
            round=_positive_int(data, "round", where, 0, limits.MAX_ROUNDS),
            request_id=request_id,
            model=ObjectRef.parse(_get(data, "model", dict, where), f"{where} model"),
            global_model=ObjectRef.parse(_get(data, "global_model", dict, where), f"{where} global_model"),
            issued_at=_timestamp(data, "issued_at", where),
            deadline_s=_positive_int(data, "deadline_s", where, 1, MAX_EVAL_DEADLINE_S),
            training=TrainingConfig.parse(data["training"], f"{where} training")
            if "training" in data
            else TrainingConfig(),
        )


@dataclass(frozen=True)
class StatsMessage:
    """Published by the operator (`fedstep stats`, `fedstep start` with `standardize: federated`) to
    the clients it asks: answer `request` with this site's bounded sums of its local training split
    (`fedstep.core.statistics`) in a statistics item (`StatsItem`) for `request_id`. `run_id` names
    the run it is for ("" when the operator asked outside a run). Skipped once `deadline_s` seconds
    after `issued_at` have passed. Bounded: at most 4,096 ranges, far below SNS's 256 KiB."""

    request_id: str
    request: dict[str, Any]
    issued_at: str
    deadline_s: int = 900
    run_id: str = ""
    type: str = "statistics"

    def to_dict(self) -> dict[str, Any]:
        return {"schema": SCHEMA_VERSION, **asdict(self)}

    @classmethod
    def parse(cls, data: dict[str, Any]) -> StatsMessage:
        where = "statistics message"
        _check_schema(data, where)
        try:
            request_id = keys.check_request_id(_get(data, "request_id", str, where))
            request = statistics.StatsRequest.parse(_get(data, "request", dict, where), f"{where} request").to_dict()
        except (ValueError, statistics.StatisticsError) as exc:
            raise InvalidMessage(f"{where}: {exc}") from None
        run_id = _get(data, "run_id", str, where) if data.get("run_id") else ""
        return cls(
            request_id=request_id,
            request=request,
            issued_at=_timestamp(data, "issued_at", where),
            deadline_s=_positive_int(data, "deadline_s", where, 1, MAX_EVAL_DEADLINE_S),
            run_id=_id(data, "run_id", "run id", where) if run_id else "",
        )


def parse_message(data: Any) -> RoundMessage | RunEndedMessage | EvaluateMessage | StatsMessage:
    """Parse a message body (already JSON-decoded) into its typed form."""
    kind = _get(data, "type", str, "message")
    if kind == "round":
        return RoundMessage.parse(data)
    if kind == "run_ended":
        return RunEndedMessage.parse(data)
    if kind == "evaluate":
        return EvaluateMessage.parse(data)
    if kind == "statistics":
        return StatsMessage.parse(data)
    raise InvalidMessage(f"message: unknown type {kind!r} (expected 'round', 'run_ended', 'evaluate' or 'statistics')")


def _client_round_item(data: dict[str, Any], where: str) -> tuple[str, int, str]:
    """(run id, round, client id) of a client's item for a round, whose key (its partition) must
    match them."""
    _check_schema(data, where)
    run_id = _id(data, "run_id", "run id", where)
    round_number = _positive_int(data, "round", where, 1, limits.MAX_ROUNDS)
    client_id = _id(data, "client_id", "client id", where)
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

    def to_item(self) -> dict[str, Any]:
        return {
            **keys.update_item_key(self.run_id, self.round, self.client_id),
            "schema": SCHEMA_VERSION,
            "kind": UPDATE_ITEM_KIND,
            **asdict(self),
        }

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
        }

    @classmethod
    def parse(cls, data: dict[str, Any]) -> UpdateItem:
        where = "update item"
        run_id, round_number, client_id = _client_round_item(data, where)
        update = ObjectRef.parse(_get(data, "update", dict, where), f"{where} update")
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
            num_examples=_positive_int(data, "num_examples", where, 1, limits.MAX_EXAMPLES),
            update=update,
            metrics=check_metrics(data.get("metrics", {}), where),
            created_at=_short_str(data, "created_at", where, limits.MAX_TIMESTAMP_CHARS),
            privacy=check_privacy(data.get("privacy", {}), where),
        )


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
            reason=limits.reason(_short_str(data, "reason", where, limits.MAX_REASON_CHARS * 4)),
            created_at=_short_str(data, "created_at", where, limits.MAX_TIMESTAMP_CHARS),
            privacy=check_privacy(data.get("privacy", {}), where),
        )


DECLINED_KIND = "declined"
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
        _check_schema(data, where)
        run_id = _id(data, "run_id", "run id", where)
        round_number = _positive_int(data, "round", where, 0, limits.MAX_ROUNDS)
        client_id = _id(data, "client_id", "client id", where)
        try:
            request_id = keys.check_request_id(_get(data, "request_id", str, where))
        except ValueError as exc:
            raise InvalidMessage(f"{where}: {exc}") from None
        own_key = keys.eval_item_key(run_id, round_number, request_id, client_id)
        if any(data.get(k) not in (None, v) for k, v in own_key.items()):
            raise InvalidMessage(f"{where}: its key does not match its run, round, request and client")
        error = ""
        if data.get("error"):
            error = limits.reason(_short_str(data, "error", where, limits.MAX_REASON_CHARS * 4))
        minimum = 0 if error else 1
        item = cls(
            run_id=run_id,
            round=round_number,
            request_id=request_id,
            client_id=client_id,
            num_examples=_positive_int(data, "num_examples", where, minimum, limits.MAX_EXAMPLES),
            metrics=check_metrics(data.get("metrics", {}), where),
            created_at=_short_str(data, "created_at", where, limits.MAX_TIMESTAMP_CHARS),
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
        _check_schema(data, where)
        client_id = _id(data, "client_id", "client id", where)
        try:
            request_id = keys.check_request_id(_get(data, "request_id", str, where))
        except ValueError as exc:
            raise InvalidMessage(f"{where}: {exc}") from None
        own_key = keys.stats_item_key(request_id, client_id)
        if any(data.get(k) not in (None, v) for k, v in own_key.items()):
            raise InvalidMessage(f"{where}: its key does not match its request and client")
        created_at = _short_str(data, "created_at", where, limits.MAX_TIMESTAMP_CHARS)
        if data.get("error"):
            error = limits.reason(_short_str(data, "error", where, limits.MAX_REASON_CHARS * 4))
            return cls(request_id, client_id, 0, 0, b"", created_at, 0.0, error)
        raw = data.get("values")
        values = getattr(raw, "value", raw)  # boto3 reads a binary attribute as a Binary
        if not isinstance(values, bytes | bytearray):
            raise InvalidMessage(f"{where}: values must be binary")
        noise = _optional_number(data, "noise_std", where) or 0.0
        if not 0 <= noise <= limits.MAX_METRIC_MAGNITUDE:
            raise InvalidMessage(f"{where}: noise_std must be a number >= 0")
        return cls(
            request_id=request_id,
            client_id=client_id,
            features=_positive_int(data, "features", where, 1, statistics.MAX_FEATURES),
            bins=_positive_int(data, "bins", where, 0, statistics.MAX_BINS),
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
        _check_schema(data, where)
        if data.get("kind") != FAILURE_KIND:
            raise InvalidMessage(f"{where}: kind must be {FAILURE_KIND!r}")
        run_id = _id(data, "run_id", "run id", where)
        client_id = _id(data, "client_id", "client id", where)
        own_key = keys.failure_item_key(run_id, client_id)
        if any(data.get(k) not in (None, v) for k, v in own_key.items()):
            raise InvalidMessage(f"{where}: its key does not match its run and client")
        error = limits.reason(_short_str(data, "error", where, limits.MAX_FAILURE_CHARS), limits.MAX_FAILURE_CHARS)
        if not error:
            raise InvalidMessage(f"{where}: field 'error' is empty")
        return cls(
            run_id=run_id,
            round=_positive_int(data, "round", where, 1, limits.MAX_ROUNDS),
            client_id=client_id,
            error=error,
            attempt=_positive_int(data, "attempt", where, 1, limits.MAX_FAILURE_ATTEMPTS),
            created_at=_timestamp(data, "created_at", where),
        )

    def line(self) -> str:
        """e.g. `round 2 failed (attempt 3) at 2026-12-06T12:00:00Z: ValueError: ...`"""
        attempt = f" (attempt {self.attempt})" if self.attempt > 1 else ""
        return f"round {self.round} failed{attempt} at {self.created_at}: {self.error}"


def headline_metric(metrics: dict[str, float], name: str) -> float | None:
    """The metric `name` ("loss", "accuracy") people see for a round: the clients' test split after
    local training, else their train split; None if neither was reported."""
    return metrics.get(f"test_{name}", metrics.get(f"train_{name}"))


@dataclass(frozen=True)
class Rejection:
    """A client whose update did not count, and why (cut to `limits.MAX_REASON_CHARS`)."""

    client_id: str
    reason: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "reason", limits.reason(self.reason))


@dataclass(frozen=True)
class Adjustment:
    """A client whose update counted within the run's bounds only after it was clipped: `what`
    says which bound and by how much (e.g. "examples 1000000000 -> 100000")."""

    client_id: str
    what: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "what", limits.reason(self.what, limits.MAX_ADJUSTMENT_CHARS))


ROUND_OPEN, ROUND_CLAIMED, ROUND_AGGREGATED, ROUND_REPORTED = "open", "claimed", "aggregated", "reported"
"""A round record's status: published and collecting updates; being aggregated by one invocation
(which holds a lease); aggregated (its summary written, its task not yet told); reported."""


@dataclass(frozen=True)
class RoundSummary:
    """The outcome of a round: written once to its round record in DynamoDB.

    Durations are seconds; `duration_s` runs from the round's first publication to the end of
    aggregation. `num_examples` and the weighted `metrics` use the clients' examples as capped by
    the run's `max_examples`."""

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
    clipped: list[Adjustment] = field(default_factory=list)
    attempt: int = 0
    measurements: dict[str, float] = field(default_factory=dict)
    """The strategy's measurements of the round (e.g. `step_norm`, `selected`)."""
    state: ObjectRef | None = None
    """The strategy's state after this round (None: a stateless strategy)."""
    epsilon: float | None = None
    """The run's privacy loss after this round, at `delta` (None: no DP): client-level under the
    central modes (dp-accounting's RDP accountant), the largest participant's record-level epsilon
    under dp-sgd."""
    delta: float | None = None
    declined: list[Rejection] = field(default_factory=list)
    """Selected clients that declined the round (e.g. their privacy budget), with their reason."""
    privacy_budget_spent: bool = False
    """The next round would take the run's epsilon past its budget: the run stops here."""
    norm_bound: float | None = None
    """The bound on an update's L2 norm in this round: the run's `max_update_norm`, or its default
    (`fedstep.core.influence.default_norm_bound`); None in summaries of earlier versions."""
    repeated_releases: int = 0
    """Central DP: noisy models released beyond one per round, in this round and every earlier one of
    the run (and of the runs it continues): an aggregation whose model was written but not committed
    (a crash, a lost claim) and then done again. The accountant counts each (docs/privacy.md)."""
    kept: list[str] | None = None
    """The participants whose updates the strategy kept for its step, by client id, when it keeps some
    and drops the others (Krum, Multi-Krum; `check_kept`); None: every participant's update counted."""

    def to_dict(self) -> dict[str, Any]:
        """As stored in the round record: `kept` as positions in `participants` (1,000 of them take
        about 4 KB rather than 66 KB of client ids, so the largest record stays inside DynamoDB's item)."""
        data = {"schema": SCHEMA_VERSION, **asdict(self)}
        if self.kept is not None:
            position = {client: i for i, client in enumerate(self.participants)}
            data["kept"] = [position[c] for c in self.kept]
        return data

    def brief(self) -> dict[str, Any]:
        """The round in a few fields of bounded size: what the state machine carries and shows."""
        return {
            "run_id": self.run_id,
            "round": self.round,
            "selected": len(self.selected),
            "participants": len(self.participants),
            "rejected": len(self.rejected),
            "clipped": len(self.clipped),
            "num_examples": self.num_examples,
            "metrics": self.metrics,
            "measurements": self.measurements,
            "epsilon": self.epsilon,
            "delta": self.delta,
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
            metrics=dict(_get(data, "metrics", dict, where)),
            global_model=ObjectRef.parse(_get(data, "global_model", dict, where), f"{where} global_model"),
            duration_s=_get(data, "duration_s", float, where),
            aggregation_s=_get(data, "aggregation_s", float, where),
            completed_at=_get(data, "completed_at", str, where),
            bytes_aggregated=_positive_int(data, "bytes_aggregated", where, 0) if "bytes_aggregated" in data else 0,
            clipped=[Adjustment(**c) for c in data.get("clipped", [])],
            attempt=int(data.get("attempt", 0)),
            measurements=check_measurements(data.get("measurements", {}), f"{where} measurements"),
            state=ObjectRef.parse(data["state"], f"{where} state") if data.get("state") else None,
            epsilon=_optional_number(data, "epsilon", where),
            delta=_optional_number(data, "delta", where),
            declined=[Rejection(**r) for r in data.get("declined", [])],
            privacy_budget_spent=bool(data.get("privacy_budget_spent", False)),
            norm_bound=_optional_number(data, "norm_bound", where),
            repeated_releases=_positive_int(data, "repeated_releases", where, 0) if "repeated_releases" in data else 0,
            kept=check_kept(data.get("kept"), list(data.get("participants") or []), f"{where} kept"),
        )


def is_completed(round_item: dict[str, Any]) -> bool:
    """Whether a round record holds a summary (aggregated, reported or not yet)."""
    return round_item.get("status") in (ROUND_AGGREGATED, ROUND_REPORTED)


@dataclass(frozen=True)
class Target:
    """Stop early once the global model's `metric` is >= `value` (`at_least`) or <= `value` (otherwise).

    It is judged on the federated evaluation of a global model, never on the clients' metrics after
    their local training: round r's `test_<name>_before` metrics are the global model of round r-1
    evaluated on every participant's test split (weighted by examples), so `test_accuracy>=0.9` is
    reached after round r when round r-1's model scores 0.9 there. That model is the one that met
    the target (`met_by_round`); the run stops after round r.
    """

    metric: str
    value: float
    at_least: bool = True

    @property
    def judged_on(self) -> str:
        """The round metric the target is compared with: `test_<name>_before`."""
        return self.metric if self.metric.endswith("_before") else f"{self.metric}_before"

    @staticmethod
    def met_by_round(round_number: int) -> int:
        """The round whose global model met the target, when round `round_number` reached it."""
        return round_number - 1

    def reached(self, metrics: dict[str, float]) -> bool:
        current = metrics.get(self.judged_on)
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
                    target = cls(name.strip(), float(value), at_least)
                except ValueError:
                    break
                if not target.metric.startswith("test_"):
                    raise InvalidMessage(
                        f"target {text!r}: a target is judged on the global model's federated evaluation, "
                        "so it names a test metric, e.g. test_accuracy>=0.9 or test_loss<=0.3 (train metrics "
                        "are each client's own after local training, not the global model's)"
                    )
                return target
        raise InvalidMessage(f"target {text!r} must look like test_accuracy>=0.9 or test_loss<=0.3")

    @classmethod
    def parse(cls, data: Any, where: str) -> Target:
        return cls(
            _get(data, "metric", str, where), _get(data, "value", float, where), _get(data, "at_least", bool, where)
        )


BOUND_ACTIONS = ("clip", "reject")


@dataclass(frozen=True)
class Bounds:
    """How much one client may move a round (DESIGN "Trust model": influence is bounded).

    `max_examples` caps the examples a client's update is weighted by (default 100,000);
    `client_max_examples` sets a cap per client id instead. `max_update_norm` bounds the L2 norm of
    an update (the trained weights minus the global ones); None: the default bound, 10 x the larger
    of the initial model's norm and sqrt(parameters) (`fedstep.core.influence.default_norm_bound`,
    resolved by the aggregation; where a `Bounds` is used directly, None bounds nothing). `action` says
    what happens to an update beyond a bound: "clip" (weight capped, update scaled to the norm) or
    "reject"."""

    max_examples: int = 100_000
    client_max_examples: dict[str, int] = field(default_factory=dict)
    max_update_norm: float | None = None
    action: str = "clip"

    def __post_init__(self) -> None:
        caps = [self.max_examples, *self.client_max_examples.values()]
        if any(isinstance(c, bool) or not isinstance(c, int) or not 1 <= c <= limits.MAX_EXAMPLES for c in caps):
            raise InvalidMessage(f"max_examples must be whole numbers from 1 to {limits.MAX_EXAMPLES}")
        if self.max_update_norm is not None and not 0 < self.max_update_norm < math.inf:
            raise InvalidMessage(f"max_update_norm must be a positive number, got {self.max_update_norm}")
        if self.action not in BOUND_ACTIONS:
            raise InvalidMessage(f"bound action must be one of {BOUND_ACTIONS}, got {self.action!r}")

    def examples_cap(self, client_id: str) -> int:
        return self.client_max_examples.get(client_id, self.max_examples)

    @classmethod
    def parse(cls, data: Any, where: str) -> Bounds:
        if not isinstance(data, dict):
            raise InvalidMessage(f"{where}: bounds must be an object")
        norm = data.get("max_update_norm")
        return cls(
            max_examples=_positive_int(data, "max_examples", where),
            client_max_examples={str(k): v for k, v in dict(data.get("client_max_examples") or {}).items()},
            max_update_norm=float(norm) if norm is not None else None,
            action=_get(data, "action", str, where),
        )


DP_MODES = ("central", "client-clip", "dp-sgd")


@dataclass(frozen=True)
class DPSettings:
    """A run's differential privacy (see docs/privacy.md).

    `mode`: "central" (client-level DP-FedAvg, the server clips each update and adds noise),
    "client-clip" (the same, but each client clips its update before upload) or "dp-sgd"
    (record-level DP on each client: per-example clipping and noise in every local step).
    `noise_multiplier` z: the noise's standard deviation over the clip norm. `clip`: the clip norm C
    (an update's L2 norm; under dp-sgd an example's gradient norm), or None for adaptive clipping
    (central modes: C tracks the `target_quantile` of the update norms, Andrew et al. 2021, starting
    at `initial_clip` and moving by `clip_learning_rate`; the count of clipped updates is released
    with noise of std `clipped_count_stddev`). `delta`: the delta of the (epsilon, delta) guarantee.
    `epsilon_budget`: stop the run before a round would take epsilon past it (central modes)."""

    mode: str
    noise_multiplier: float
    clip: float | None
    delta: float
    epsilon_budget: float | None = None
    target_quantile: float = 0.5
    clip_learning_rate: float = 0.2
    initial_clip: float = 0.1
    clipped_count_stddev: float = 0.0

    @property
    def central(self) -> bool:
        """Client-level DP applied by the server (clipping checked, noise added to the sum)."""
        return self.mode in ("central", "client-clip")

    @classmethod
    def parse(cls, data: Any, where: str) -> DPSettings:
        mode = _get(data, "mode", str, where)
        if mode not in DP_MODES:
            raise InvalidMessage(f"{where}: mode must be one of {DP_MODES}, got {mode!r}")
        numbers = {
            name: _get(data, name, float, where)
            for name in ("noise_multiplier", "delta", "target_quantile", "clip_learning_rate", "initial_clip")
            if name in data
        }
        numbers["clipped_count_stddev"] = float(data.get("clipped_count_stddev", 0.0))
        clip = data.get("clip")
        budget = data.get("epsilon_budget")
        if any(not math.isfinite(v) or v < 0 for v in numbers.values()):
            raise InvalidMessage(f"{where}: DP parameters must be finite numbers >= 0")
        return cls(
            mode=mode,
            clip=None if clip is None else _get(data, "clip", float, where),
            epsilon_budget=None if budget is None else _get(data, "epsilon_budget", float, where),
            **numbers,
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
    model: ObjectRef | None = None
    """The run's architecture file (`runs/<run>/model.keras`)."""
    min_participants: int = 2
    """A round is never aggregated from fewer valid updates: it would publish one client's update."""
    bounds: Bounds = field(default_factory=Bounds)
    strategy_params: dict[str, Any] = field(default_factory=dict)
    """The strategy's parameters, all of them (defaults included), as `fedstep strategies` names them."""
    initial_state: ObjectRef | None = None
    """The strategy's state the run starts from: the state a resumed run continues, or None."""
    dp: DPSettings | None = None
    """The run's differential privacy, or None."""
    select_online: bool = True
    """Leave out of each round's selection the clients whose heartbeat says offline or stopped
    (`fedstep.core.selection`); a record written before the setting existed reads False."""
    selection: str = "fixed"
    """How each round samples `clients_per_round` of the clients: "fixed" (exactly that many, without
    replacement) or "poisson" (each with probability clients_per_round / clients); a record written
    before the setting existed reads "fixed"."""

    def selected(self, round_number: int) -> list[str]:
        """The seeded sample of `round_number`, heartbeats aside (see fedstep.core.selection); the
        round's own selection is in its round record (`fedstep.core.rounds.selected_in`)."""
        per_round = self.clients_per_round or len(self.clients)
        return select(self.clients, per_round, self.seed, round_number, self.selection)

    def to_item(self) -> dict[str, Any]:
        return {**keys.run_item_key(self.run_id), "schema": SCHEMA_VERSION, "kind": "run", **asdict(self)}

    @classmethod
    def parse(cls, data: dict[str, Any]) -> RunRecord:
        where = "run record"
        _check_schema(data, where)
        clients = _get(data, "clients", list, where)

        def optional_int(name: str, default: int, minimum: int) -> int:
            return _positive_int(data, name, where, minimum) if name in data else default

        return cls(
            run_id=_id(data, "run_id", "run id", where),
            clients=[_id({"client": c}, "client", "client id", where) for c in clients],
            rounds=_positive_int(data, "rounds", where, 1, limits.MAX_ROUNDS),
            training=TrainingConfig.parse(_get(data, "training", dict, where)),
            strategy=_get(data, "strategy", str, where),
            created_at=_get(data, "created_at", str, where),
            quorum=optional_int("quorum", 1, 1),
            target=Target.parse(data["target"], f"{where} target") if data.get("target") else None,
            clients_per_round=optional_int("clients_per_round", 0, 0),
            seed=optional_int("seed", 0, 0),
            round_timeout_s=optional_int("round_timeout_s", 3600, 1),
            round_retries=optional_int("round_retries", 0, 0),
            resumed_from=str(data.get("resumed_from", "")),
            model=ObjectRef.parse(data["model"], f"{where} model") if data.get("model") else None,
            min_participants=optional_int("min_participants", 2, 1),
            bounds=Bounds.parse(data["bounds"], f"{where} bounds") if data.get("bounds") else Bounds(),
            strategy_params=check_scalars(data.get("strategy_params", {}), f"{where} strategy_params", 32),
            initial_state=(
                ObjectRef.parse(data["initial_state"], f"{where} initial_state") if data.get("initial_state") else None
            ),
            dp=DPSettings.parse(data["dp"], f"{where} dp") if data.get("dp") else None,
            select_online=_get(data, "select_online", bool, where) if "select_online" in data else False,
            selection=_selection(data, where),
        )


def _selection(data: dict[str, Any], where: str) -> str:
    """A run record's `selection`: "fixed" when absent (written before the setting existed)."""
    value = data.get("selection", "fixed")
    if value not in SELECTIONS:
        raise InvalidMessage(f"{where}: selection must be one of {', '.join(SELECTIONS)}, got {value!r}")
    return str(value)


@dataclass(frozen=True)
class Feedback:
    """Why a client's last update in a run was rejected: written by the aggregation function to the
    client's feedback partition, which its role may read but not write, once per run
    (`keys.rejection_item_key`) and as the client's latest rejection in any run
    (`keys.last_rejection_item_key`). An agent whose update of a retried round was rejected trains
    again (it reads its run's item, so two runs at once never mix up their rejections); `fedstep
    status` shows the run's items, `fedstep clients` the latest ones."""

    client_id: str
    run_id: str
    round: int
    update_sha256: str
    reason: str
    at: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "reason", limits.reason(self.reason))

    def to_item(self) -> dict[str, Any]:
        """The run's feedback item for this client."""
        return {**keys.rejection_item_key(self.client_id, self.run_id), "schema": SCHEMA_VERSION, **asdict(self)}

    def to_items(self) -> list[dict[str, Any]]:
        """What the server writes: the run's item, and the same facts as the client's latest rejection."""
        item = self.to_item()
        return [item, {**item, **keys.last_rejection_item_key(self.client_id)}]

    @classmethod
    def parse(cls, data: dict[str, Any]) -> Feedback:
        where = "feedback item"
        _check_schema(data, where)
        return cls(
            client_id=_id(data, "client_id", "client id", where),
            run_id=_id(data, "run_id", "run id", where),
            round=_positive_int(data, "round", where),
            update_sha256=_get(data, "update_sha256", str, where),
            reason=_get(data, "reason", str, where),
            at=_get(data, "at", str, where),
        )


STOP_KIND = "stop"


@dataclass(frozen=True)
class RunStop:
    """The run was stopped (`fedstep stop`): its marker (`keys.stop_item_key`), written once by the
    operator before the execution is stopped. While it exists no round of the run is published,
    claimed or committed (the aggregation function's commit checks it in the same transaction), and
    an agent neither trains nor uploads for the run. `reason` is the operator's `--reason` (one
    line, at most `limits.MAX_STOP_REASON_CHARS`), shown by `fedstep status` and to the run's agents."""

    run_id: str
    reason: str
    stopped_at: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "reason", limits.reason(self.reason, limits.MAX_STOP_REASON_CHARS))

    def to_item(self) -> dict[str, Any]:
        return {**keys.stop_item_key(self.run_id), "schema": SCHEMA_VERSION, "kind": STOP_KIND, **asdict(self)}

    @classmethod
    def parse(cls, data: dict[str, Any]) -> RunStop:
        where = "stop marker"
        _check_schema(data, where)
        return cls(
            run_id=_id(data, "run_id", "run id", where),
            reason=_short_str(data, "reason", where, limits.MAX_STOP_REASON_CHARS),
            stopped_at=_timestamp(data, "stopped_at", where),
        )

    @classmethod
    def of_item(cls, run_id: str, item: dict[str, Any] | None) -> RunStop | None:
        """The stop marker read at `keys.stop_item_key(run_id)` (None: there is none, the run was not
        stopped). A marker that cannot be parsed still means stopped: the commit's check is its existence."""
        if item is None:
            return None
        try:
            return cls.parse(item)
        except InvalidMessage as exc:
            return cls(run_id, f"(unreadable stop marker: {exc})", str(item.get("stopped_at", ""))[:40])


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
        _check_schema(data, where)
        client_id = _id(data, "client_id", "client id", where)
        if data.get(keys.PK) not in (None, keys.heartbeat_item_key(client_id)[keys.PK]):
            raise InvalidMessage(f"{where}: partition key does not match client {client_id}")
        state = _get(data, "state", str, where)
        if state not in HEARTBEAT_STATES:
            raise InvalidMessage(f"{where}: state must be one of {HEARTBEAT_STATES}, got {state!r}")
        hardware = _get(data, "hardware", dict, where)
        if len(hardware) > limits.MAX_HARDWARE_FIELDS or len(str(hardware)) > limits.MAX_HARDWARE_CHARS:
            raise InvalidMessage(f"{where}: hardware summary is larger than {limits.MAX_HARDWARE_CHARS} characters")
        return cls(
            client_id=client_id,
            agent_version=_short_str(data, "agent_version", where, limits.MAX_TIMESTAMP_CHARS),
            state=state,
            last_seen=_short_str(data, "last_seen", where, limits.MAX_TIMESTAMP_CHARS),
            interval_s=_positive_int(data, "interval_s", where, 1, limits.MAX_HEARTBEAT_INTERVAL_S),
            hardware={str(k): v for k, v in hardware.items()},
            run_id=_id(data, "run_id", "run id", where) if data.get("run_id") is not None else None,
            round=_positive_int(data, "round", where) if data.get("round") is not None else None,
            privacy=check_privacy(data["privacy"], where) if data.get("privacy") is not None else None,
        )
