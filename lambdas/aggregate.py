"""The aggregation function: DynamoDB stream of update items -> `fedstep.rounds.try_complete_round`.

Environment: BUCKET_NAME (model registry), TABLE_NAME (the single table), POWERTOOLS_METRICS_NAMESPACE
(CloudWatch namespace, "fedstep"), PROJECT (the stack's project name, a metric dimension).

Every round this function aggregates emits CloudWatch metrics (Powertools Metrics, embedded metric
format, dimension `project`): Participants, RejectedUpdates, RoundDuration (s), AggregationDuration
(s), BytesAggregated, and the weighted metrics as WeightedLoss / WeightedAccuracy (test split, else
train) and WeightedLossBefore / WeightedAccuracyBefore (the previous global model).
"""

from __future__ import annotations

import functools
import os
import warnings
from typing import Any

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.data_classes.dynamo_db_stream_event import (
    DynamoDBRecord,
    DynamoDBRecordEventName,
)
from aws_lambda_powertools.utilities.typing import LambdaContext

from fedstep import aws, keys
from fedstep.rounds import complete_round_at_deadline, try_complete_round
from fedstep.schemas import RoundSummary, headline_metric

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


def round_of(record: DynamoDBRecord) -> tuple[str, int] | None:
    """(run id, round) of a newly inserted update item; None for any other record."""
    image = record.dynamodb.new_image if record.dynamodb else None
    if record.event_name is not DynamoDBRecordEventName.INSERT or not image:
        return None
    if not str(image.get(keys.SK, "")).startswith(keys.UPDATE_PREFIX):
        return None
    try:
        return str(image["run_id"]), int(image["round"])
    except (KeyError, TypeError, ValueError):
        logger.warning("update item without a valid run_id/round ignored", extra={"sk": image.get(keys.SK)})
        return None


@functools.cache
def _services(bucket: str, table: str, endpoint: str | None) -> tuple[Any, Any, Any]:
    """AWS clients, built once per execution environment (and again if the settings change)."""
    return (
        aws.S3ModelStore(bucket, aws.client("s3", endpoint_url=endpoint)),
        aws.DynamoRoundTable(table, aws.client("dynamodb", endpoint_url=endpoint)),
        aws.StepFunctionsReporter(aws.client("stepfunctions", endpoint_url=endpoint)),
    )


def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    """Stream batches of update items, or the state machine's call at a round's deadline."""
    if isinstance(event, dict) and event.get("mode") == "deadline":
        return deadline_handler(event, context)
    return stream_handler(event, context)


def complete_round_of(record: DynamoDBRecord) -> None:
    """One stream record: if it is an update item, complete its round if that round is ready."""
    touched = round_of(record)
    if touched is None:
        return
    run_id, round_number = touched
    store, table, reporter = _services(
        os.environ["BUCKET_NAME"], os.environ["TABLE_NAME"], os.environ.get("AWS_ENDPOINT_URL")
    )
    summary = try_complete_round(run_id, round_number, store=store, table=table, reporter=reporter)
    if summary is not None:
        logger.info("round aggregated", extra=summary.brief() | {"run_id": run_id})
        record_round_metrics(summary)


@metrics.log_metrics
@logger.inject_lambda_context
def stream_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    """A batch of stream records; records that raised are reported back as batch item failures, so
    Lambda retries from the first of them (the event source mapping reports item failures)."""
    return process_partial_response(
        event=event, record_handler=complete_round_of, processor=_processor, context=context
    )


@metrics.log_metrics
@logger.inject_lambda_context
def deadline_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    """{"mode": "deadline", "run_id", "round"} -> the round's task output; raises QuorumNotMet."""
    try:
        run_id, round_number = keys.check_id("run id", event["run_id"]), int(event["round"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"deadline event needs run_id and round: {exc}") from None
    store, table, _ = _services(os.environ["BUCKET_NAME"], os.environ["TABLE_NAME"], os.environ.get("AWS_ENDPOINT_URL"))
    output = complete_round_at_deadline(
        run_id, round_number, store=store, table=table, on_aggregated=record_round_metrics
    )
    logger.info("round aggregated at its deadline", extra={"run_id": run_id, "round": round_number})
    return output
