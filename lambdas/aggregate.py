"""The aggregation function: opens rounds, completes them from the table's stream or at their deadline.

Four kinds of invocation, each a thin shell around `fedstep.core.rounds`:
- `{"mode": "publish", ...}` from the state machine when it opens a round (with the task token it
  waits on): `publish_round` records the token and sends the round message to the selected clients;
- a DynamoDB stream batch of client items (updates, refusals, a secure round's keys, shares and
  reveals): `on_client_item` for each round touched (`fedstep.core.rounds.paths`);
- `{"mode": "deadline", ...}` from the state machine when a round's task timed out:
  `at_round_deadline`, whose result is the task's output;
- `{"mode": "secagg_publish", "phase", ...}` and `{"mode": "secagg_deadline", "phase", ...}` from the
  state machine for the later phases of a secure round (`fedstep.core.rounds.secure`);
- `{"mode": "card", "run_id", "round"}` from the state machine when a run finished: writes the
  model card of its final global model (`fedstep.core.model_card.write_card`), returns its ref;
- `{"mode": "slice", "plan", "index"}` and `{"mode": "assemble", "plan", "results"}` from the state
  machine when a round's model is larger than SLICE_BYTES (`fedstep.core.sliced`): one slice of the
  round aggregated and uploaded as a part (its measurements are the result), then the parts joined
  into the global model (the round's task output).

Environment: BUCKET_NAME (model registry), TABLE_NAME (the single table), TOPIC_ARN (the round
topic), LEASE_S (how long a claim on a round holds, s), SLICE_BYTES (models larger than this are
aggregated by slices; absent: never), POWERTOOLS_METRICS_NAMESPACE (CloudWatch
namespace, "fedstep"), PROJECT (the stack's project name, a metric dimension).

Every round this function aggregates emits CloudWatch metrics (Powertools Metrics, embedded metric
format, dimension `project`): Participants, RejectedUpdates, ClippedUpdates, RoundDuration (s),
AggregationDuration (s), BytesAggregated, and the weighted metrics as WeightedLoss / WeightedAccuracy
(test split, else train) and WeightedLossBefore / WeightedAccuracyBefore (the previous global model).
"""

from __future__ import annotations

import contextvars
import functools
import os
import warnings
from dataclasses import dataclass
from typing import Any

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.data_classes.dynamo_db_stream_event import (
    DynamoDBRecord,
    DynamoDBRecordEventName,
)
from aws_lambda_powertools.utilities.typing import LambdaContext
from botocore.credentials import EnvProvider

from fedstep.aws import adapters, boto
from fedstep.core import keys
from fedstep.core.errors import FedstepError
from fedstep.core.machine import Mode
from fedstep.core.model_card import write_card
from fedstep.core.rounds import (
    AggregationSettings,
    aggregate_slice,
    assemble_round,
    publish_round,
)
from fedstep.core.rounds.paths import at_round_deadline, on_client_item
from fedstep.core.rounds.secure import close_at_deadline, publish_phase
from fedstep.core.run_rules import check_run
from fedstep.core.schemas import (
    InvalidMessage,
    ObjectRef,
    RoundMessage,
    RoundSummary,
    headline_metric,
    state_machine_fields,
)
from fedstep.privacy import lazy_client_epsilon, lazy_operator_epsilon
from fedstep.privacy.secagg.server import SecAggServer

logger = Logger(service="fedstep-aggregate")
metrics = Metrics(namespace=os.environ.get("POWERTOOLS_METRICS_NAMESPACE", "fedstep"), service="fedstep-aggregate")
metrics.set_default_dimensions(project=os.environ.get("PROJECT", "fedstep"))
# Most invocations aggregate no round (the round still waits for updates): that is not worth a warning.
warnings.filterwarnings("ignore", message="No application metrics to publish")
_processor = BatchProcessor(event_type=EventType.DynamoDBStreams)


def record_round_metrics(summary: RoundSummary) -> None:
    """The round's CloudWatch metrics (flushed when the invocation ends)."""
    metrics.add_metric("Participants", MetricUnit.Count, len(summary.participants))
    metrics.add_metric("RejectedUpdates", MetricUnit.Count, len(summary.rejected))
    metrics.add_metric("ClippedUpdates", MetricUnit.Count, len(summary.clipped))
    metrics.add_metric("RoundDuration", MetricUnit.Seconds, summary.duration_s)
    metrics.add_metric("AggregationDuration", MetricUnit.Seconds, summary.aggregation_s)
    metrics.add_metric("BytesAggregated", MetricUnit.Bytes, summary.bytes_aggregated)
    for name in ("Loss", "Accuracy"):
        weighted = {
            f"Weighted{name}": headline_metric(summary.metrics, name.lower()),
            f"Weighted{name}Before": summary.metrics.get(f"test_{name.lower()}_before"),
        }
        for metric, value in weighted.items():
            if value is not None:
                metrics.add_metric(metric, MetricUnit.NoUnit, value)


def _aggregated(summary: RoundSummary) -> None:
    logger.info("round aggregated", extra=summary.brief())
    record_round_metrics(summary)


@dataclass(frozen=True)
class RoundEvent:
    """The state machine's call: which round; for `publish` also the fields of the round message the
    state machine supplies (`state_machine_fields(RoundMessage)`: the attempt, its input model, the
    time it was entered) and the task token the state waits on."""

    mode: str
    run_id: str
    round: int
    attempt: int = 0
    global_model: ObjectRef | None = None
    task_token: str = ""
    issued_at: str = ""

    @classmethod
    def parse(cls, event: dict[str, Any]) -> RoundEvent:
        try:
            mode, run_id, round_number = event["mode"], keys.check_id("run id", event["run_id"]), int(event["round"])
            if mode == Mode.PUBLISH:
                supplied = {name: event[name] for name in state_machine_fields(RoundMessage)}
                return cls(
                    mode,
                    run_id,
                    round_number,
                    int(supplied["attempt"]),
                    ObjectRef.parse(supplied["global_model"], "publish event global_model"),
                    str(event["task_token"]),
                    str(supplied["issued_at"]),
                )
        except (KeyError, TypeError, ValueError, InvalidMessage) as exc:
            raise ValueError(f"{event.get('mode')} event is malformed: {exc}") from None
        return cls(mode, run_id, round_number)


def round_of(record: DynamoDBRecord) -> tuple[str, int] | None:
    """(run id, round) of an update item a client wrote or rewrote, or of a secure round's item (keys,
    shares, reveal: `SECAGG#...` in a client's partition); None for any other record: a
    heartbeat, an evaluation item (`EVAL#...`, the answer to `fedstep evaluate`, which must never
    start an aggregation), a run or round record. The event source's filter (the kinds
    `fedstep.core.schemas.items.STREAM_KINDS`) already drops them, on AWS and in the local cloud;
    this check is defence in depth."""
    image = record.dynamodb.new_image if record.dynamodb else None
    if record.event_name not in (DynamoDBRecordEventName.INSERT, DynamoDBRecordEventName.MODIFY) or not image:
        return None
    pk, sk = str(image.get(keys.PK)), str(image.get(keys.SK))
    try:
        if sk.startswith(keys.SECAGG_PREFIX):  # a secure round's keys, shares or reveal
            _, run_id, round_number, _, _ = keys.parse_secagg_item_key(pk, sk)
        else:
            _, run_id, round_number = keys.parse_update_item_key(pk, sk)
    except ValueError:
        return None
    return run_id, round_number


@functools.lru_cache(maxsize=4)
def _services(bucket: str, table: str, topic: str, endpoint: str | None, access_key: str) -> tuple[Any, Any, Any, Any]:
    """AWS clients, built once per execution environment (and again if the settings change, or the
    role session's credentials, `access_key`, do)."""
    session = boto.new_session()
    return (
        adapters.S3ModelStore(bucket, boto.client("s3", session, endpoint)),
        adapters.DynamoRoundTable(table, boto.client("dynamodb", session, endpoint)),
        adapters.StepFunctionsReporter(boto.client("stepfunctions", session, endpoint)),
        adapters.SnsPublisher(topic, boto.client("sns", session, endpoint)),
    )


def services() -> tuple[Any, Any, Any, Any]:
    env = os.environ
    # The execution role's, which Lambda sets in the environment: read from there alone (a whole session's
    # credential chain costs more than a small round's aggregation); they key the kept clients.
    credentials = EnvProvider().load()
    return _services(
        env["BUCKET_NAME"],
        env["TABLE_NAME"],
        env.get("TOPIC_ARN", ""),
        env.get("AWS_ENDPOINT_URL"),
        credentials.access_key if credentials else "",
    )


def settings(context: LambdaContext | None = None) -> AggregationSettings:
    """The lease from the environment; the deadline path waits at most until 20 s before its own timeout."""
    lease_s = float(os.environ.get("LEASE_S", AggregationSettings.lease_s))
    remaining_s = context.get_remaining_time_in_millis() / 1000 if context is not None else lease_s
    slice_bytes = os.environ.get("SLICE_BYTES")
    return AggregationSettings(
        lease_s=lease_s,
        wait_s=max(0.0, min(AggregationSettings.wait_s, remaining_s - 20)),
        accountant=accountant,
        slice_bytes=int(slice_bytes) if slice_bytes else None,
        secure=SECURE,
        operator_accountant=lazy_operator_epsilon,
    )


accountant = lazy_client_epsilon
SECURE = SecAggServer()


class UnknownEvent(FedstepError):
    """An event that is neither a call of the state machine (a mode) nor a stream batch."""


def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    """Stream batches of update items, or the state machine's calls (`mode`). A stream batch with no
    record is answered with no failure; anything else is refused by name, with the event's keys."""
    mode = event.get("mode") if isinstance(event, dict) else None
    if mode in MODES:
        return MODES[mode](event, context)
    records = event.get("Records") if isinstance(event, dict) else None
    if records == []:
        return {"batchItemFailures": []}
    if mode is not None or not isinstance(records, list):
        shown = sorted(map(str, event))[:10] if isinstance(event, dict) else type(event).__name__
        raise UnknownEvent(
            f"the aggregation function handles the modes {', '.join(MODES)} and stream batches (Records), "
            f"not this event (mode {mode!r}, keys {shown})"
        )
    return stream_handler(event, context)


_checked: contextvars.ContextVar[set[tuple[str, int]] | None] = contextvars.ContextVar("checked", default=None)
"""The rounds a stream batch has already checked (every record of a batch was written before it came)."""


def complete_round_of(record: DynamoDBRecord) -> None:
    """One stream record: if it is an update item, complete its round if that round is ready. A round
    is checked once per batch: its other records in the batch were already in the table then."""
    touched = round_of(record)
    if touched is None:
        return
    checked = _checked.get()
    if checked is not None:
        if touched in checked:
            return
        checked.add(touched)
    store, table, reporter, _ = services()
    on_client_item(
        *touched, store=store, table=table, reporter=reporter, settings=settings(), on_aggregated=_aggregated
    )


@metrics.log_metrics
@logger.inject_lambda_context
def stream_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    """A batch of stream records; records that raised are reported back as batch item failures, so
    Lambda retries from the first of them (the event source mapping reports item failures)."""
    token = _checked.set(set())
    try:
        return process_partial_response(
            event=event, record_handler=complete_round_of, processor=_processor, context=context
        )
    finally:
        _checked.reset(token)


@metrics.log_metrics
@logger.inject_lambda_context
def deadline_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    """{"mode": "deadline", "run_id", "round"} -> the round's task output; raises QuorumNotMet,
    TooFewParticipants, InvalidAggregate (the state machine may retry the round) or RoundBusy (it
    retries this call)."""
    parsed = RoundEvent.parse(event)
    store, table, _, _ = services()
    return at_round_deadline(
        parsed.run_id,
        parsed.round,
        store=store,
        table=table,
        settings=settings(context),
        on_aggregated=_aggregated,
    )


def _plan_ref(event: dict[str, Any]) -> ObjectRef:
    try:
        return ObjectRef.parse(event["plan"], f"{event.get('mode')} event plan")
    except (KeyError, InvalidMessage) as exc:
        raise ValueError(f"{event.get('mode')} event is malformed: {exc}") from None


@logger.inject_lambda_context
def slice_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    """{"mode": "slice", "plan": {key, sha256, bytes}, "index"}: aggregate one slice of a planned
    round and upload it as part index + 1; returns the slice's measurements."""
    index = event.get("index")
    if type(index) is not int or index < 0:
        raise ValueError(f"slice event is malformed: index {index!r}")
    store, _, _, _ = services()
    return aggregate_slice(_plan_ref(event), index, store, SECURE)


@metrics.log_metrics
@logger.inject_lambda_context
def assemble_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    """{"mode": "assemble", "plan", "results": [one per slice]}: the planned round's global model
    from its parts, its summary committed; returns the round's task output."""
    store, table, _, _ = services()
    return assemble_round(_plan_ref(event), event.get("results"), store=store, table=table, on_aggregated=_aggregated)


@logger.inject_lambda_context
def publish_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    """{"mode": "publish", "run_id", "round", "attempt", "global_model", "task_token", "issued_at"}:
    open the round and send its message; the state machine then waits for the token."""
    parsed = RoundEvent.parse(event)
    if parsed.global_model is None:
        raise ValueError("publish event is malformed: it names no global_model")
    store, table, reporter, publisher = services()
    run = table.get_run(parsed.run_id)
    if run is not None:  # the record that rounds follow must keep the run's rules, whoever wrote it
        check_run(run, accountant if run.dp is not None else None)
    message = publish_round(
        parsed.run_id,
        parsed.round,
        parsed.attempt,
        parsed.global_model,
        parsed.task_token,
        parsed.issued_at,
        store=store,
        table=table,
        publisher=publisher,
        reporter=reporter,
    )
    logger.info("round published", extra={"run_id": parsed.run_id, "round": parsed.round, "sent": bool(message)})
    return {"published": bool(message)}


@logger.inject_lambda_context
def card_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    """{"mode": "card", "run_id", "round"}: write the model card of the run's global model after
    `round` (once; an existing card stands) and return its ref {key, sha256, bytes}."""
    parsed = RoundEvent.parse(event)
    store, table, _, _ = services()
    ref = write_card(parsed.run_id, parsed.round, store, table)
    logger.info("model card written", extra={"run_id": parsed.run_id, "round": parsed.round, "key": ref.key})
    return {"key": ref.key, "sha256": ref.sha256, "bytes": ref.bytes}


@dataclass(frozen=True)
class PhaseEvent:
    """The state machine's call for a later phase of a secure round: `secagg_publish` (with the task
    token its state waits on and the time it was entered) or `secagg_deadline`."""

    phase: str
    run_id: str
    round: int
    attempt: int
    task_token: str = ""
    issued_at: str = ""

    @classmethod
    def parse(cls, event: dict[str, Any]) -> PhaseEvent:
        try:
            mode = event["mode"]
            publish = mode == Mode.SECAGG_PUBLISH
            return cls(
                str(event["phase"]),
                keys.check_id("run id", event["run_id"]),
                int(event["round"]),
                int(event["attempt"]),
                str(event["task_token"]) if publish else "",
                str(event["issued_at"]) if publish else "",
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{event.get('mode')} event is malformed: {exc}") from None


@logger.inject_lambda_context
def phase_publish_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    """{"mode": "secagg_publish", "phase", "run_id", "round", "attempt", "task_token", "issued_at"}: open a
    later phase of a secure round and send its message; the state machine then waits for the token."""
    parsed = PhaseEvent.parse(event)
    store, table, reporter, publisher = services()
    message = publish_phase(
        parsed.run_id,
        parsed.round,
        parsed.attempt,
        parsed.phase,
        parsed.task_token,
        parsed.issued_at,
        store=store,
        table=table,
        publisher=publisher,
        reporter=reporter,
    )
    logger.info(
        "secure phase published",
        extra={"run_id": parsed.run_id, "round": parsed.round, "phase": parsed.phase, "sent": bool(message)},
    )
    return {"published": bool(message)}


@metrics.log_metrics
@logger.inject_lambda_context
def phase_deadline_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    """{"mode": "secagg_deadline", "phase", "run_id", "round", "attempt"} -> the phase's output (the next
    phase, or after the reveal the round's task output); SecAggThresholdNotMet with fewer than t."""
    parsed = PhaseEvent.parse(event)
    store, table, _, _ = services()
    return close_at_deadline(
        parsed.run_id,
        parsed.round,
        parsed.phase,
        store=store,
        table=table,
        settings=settings(context),
        on_aggregated=_aggregated,
    )


MODES = {
    Mode.DEADLINE: deadline_handler,
    Mode.PUBLISH: publish_handler,
    Mode.CARD: card_handler,
    Mode.SLICE: slice_handler,
    Mode.ASSEMBLE: assemble_handler,
    Mode.SECAGG_PUBLISH: phase_publish_handler,
    Mode.SECAGG_DEADLINE: phase_deadline_handler,
}
"""The state machine's calls of the function, by their `mode` (`fedstep.core.machine.Mode`)."""
