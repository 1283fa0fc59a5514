"""The messages the server sends to the clients' queues (round, run ended, evaluate, statistics), and
the fields of them the state machine supplies (`from_state`)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from fedstep.core import keys, limits, statistics
from fedstep.core.schemas.refs import ObjectRef
from fedstep.core.schemas.secagg import PHASE_MESSAGE_TYPE, SecAggPhaseMessage, SecAggRound
from fedstep.core.schemas.training import TrainingConfig
from fedstep.core.schemas.validation import (
    InvalidMessage,
    check_scalars,
    check_schema,
    get_field,
    id_field,
    positive_int,
    timestamp,
)
from fedstep.core.version import SCHEMA_VERSION


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
    secagg: SecAggRound | None = None
    """Under secure aggregation: how the client encodes and masks its input (it trains, then
    advertises its keys instead of uploading; `fedstep.core.schemas.secagg`). None: a plain round."""

    def to_dict(self) -> dict[str, Any]:
        data = {"schema": SCHEMA_VERSION, **asdict(self)}
        if self.secagg is None:  # a plain round's message is as before
            del data["secagg"]
        else:
            data["secagg"] = self.secagg.to_dict()
        return data

    @classmethod
    def parse(cls, data: dict[str, Any]) -> RoundMessage:
        where = "round message"
        check_schema(data, where)
        return cls(
            run_id=id_field(data, "run_id", "run id", where),
            round=positive_int(data, "round", where),
            attempt=positive_int(data, "attempt", where, 0),
            model=ObjectRef.parse(get_field(data, "model", dict, where), f"{where} model"),
            global_model=ObjectRef.parse(get_field(data, "global_model", dict, where), f"{where} global_model"),
            training=TrainingConfig.parse(get_field(data, "training", dict, where)),
            deadline_s=positive_int(data, "deadline_s", where, 1, limits.MAX_ROUND_TIMEOUT_S),
            issued_at=timestamp(data, "issued_at", where),
            instructions=check_scalars(data.get("instructions", {}), f"{where} instructions", limits.MAX_INSTRUCTIONS),
            secagg=SecAggRound.parse(data["secagg"], f"{where} secagg") if data.get("secagg") else None,
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
        check_schema(data, where)
        return cls(
            run_id=id_field(data, "run_id", "run id", where),
            reason=get_field(data, "reason", str, where),
            rounds_completed=positive_int(data, "rounds_completed", where, 0),
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
        check_schema(data, where)
        try:
            request_id = keys.check_request_id(get_field(data, "request_id", str, where))
        except ValueError as exc:
            raise InvalidMessage(f"{where}: {exc}") from None
        return cls(
            run_id=id_field(data, "run_id", "run id", where),
            round=positive_int(data, "round", where, 0, limits.MAX_ROUNDS),
            request_id=request_id,
            model=ObjectRef.parse(get_field(data, "model", dict, where), f"{where} model"),
            global_model=ObjectRef.parse(get_field(data, "global_model", dict, where), f"{where} global_model"),
            issued_at=timestamp(data, "issued_at", where),
            deadline_s=positive_int(data, "deadline_s", where, 1, MAX_EVAL_DEADLINE_S),
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
        check_schema(data, where)
        try:
            request_id = keys.check_request_id(get_field(data, "request_id", str, where))
            request = statistics.StatsRequest.parse(
                get_field(data, "request", dict, where), f"{where} request"
            ).to_dict()
        except (ValueError, statistics.StatisticsError) as exc:
            raise InvalidMessage(f"{where}: {exc}") from None
        run_id = get_field(data, "run_id", str, where) if data.get("run_id") else ""
        return cls(
            request_id=request_id,
            request=request,
            issued_at=timestamp(data, "issued_at", where),
            deadline_s=positive_int(data, "deadline_s", where, 1, MAX_EVAL_DEADLINE_S),
            run_id=id_field(data, "run_id", "run id", where) if run_id else "",
        )


def parse_message(
    data: Any,
) -> RoundMessage | RunEndedMessage | EvaluateMessage | StatsMessage | SecAggPhaseMessage:
    """Parse a message body (already JSON-decoded) into its typed form."""
    kind = get_field(data, "type", str, "message")
    if kind == "round":
        return RoundMessage.parse(data)
    if kind == PHASE_MESSAGE_TYPE:
        return SecAggPhaseMessage.parse(data)
    if kind == "run_ended":
        return RunEndedMessage.parse(data)
    if kind == "evaluate":
        return EvaluateMessage.parse(data)
    if kind == "statistics":
        return StatsMessage.parse(data)
    raise InvalidMessage(
        f"message: unknown type {kind!r} (expected 'round', 'run_ended', 'evaluate', 'statistics' or 'secagg')"
    )
