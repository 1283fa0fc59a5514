"""The scheduled integrity check: what `fedstep verify` checks, for every run started in the last
LOOKBACK_DAYS, once every SWEEP_EVERY_DAYS (`fedstep.core.integrity.sweep`).

An EventBridge rule invokes it once a day. A day's invocation goes on with the sweep under way (the
runs it has left, kept in the bucket at `keys.integrity_cursor_key()`), or starts a new sweep when the
last one finished and started SWEEP_EVERY_DAYS ago or more; otherwise it returns at once. It stops
between two objects once less than RESERVE_S of its time is left, so an invocation never times out
midway: a sweep larger than one invocation ends on later days.

Every invocation that checks emits CloudWatch metrics (Powertools, embedded metric format, namespace
POWERTOOLS_METRICS_NAMESPACE, dimensions service `fedstep-integrity` and `project`):
IntegrityMismatches (objects that do not match their records, or are missing), IntegrityObjectsChecked
and IntegrityRunsChecked; the alarm `<project>-integrity-mismatch` watches the first. Each mismatch is
also logged (run, round, what, key, expected, found).

Environment: BUCKET_NAME, TABLE_NAME, LOOKBACK_DAYS (default 30), SWEEP_EVERY_DAYS (default 7),
RESERVE_S (default 60), POWERTOOLS_METRICS_NAMESPACE ("fedstep"), PROJECT.
"""

from __future__ import annotations

import os
import time
import warnings
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from typing import Any

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext

from fedstep.aws import adapters, boto
from fedstep.aws.errors import missing_object
from fedstep.core import integrity
from fedstep.core.clock import parse_utc

SERVICE = "fedstep-integrity"
logger = Logger(service=SERVICE)
metrics = Metrics(namespace=os.environ.get("POWERTOOLS_METRICS_NAMESPACE", "fedstep"), service=SERVICE)
metrics.set_default_dimensions(project=os.environ.get("PROJECT", "fedstep"))
warnings.filterwarnings("ignore", message="No application metrics to publish")  # a day with nothing due


def _days(name: str, default: float) -> float:
    return float(os.environ.get(name, default))


def due(now: datetime, every_days: float):
    """Whether a new sweep is due, given when the last one started (ISO; "" or unreadable: yes)."""

    def is_due(started: str) -> bool:
        try:
            return now.timestamp() - parse_utc(started) >= every_days * 86400 - 3600  # an hour's slack
        except ValueError:
            return True

    return is_due


@metrics.log_metrics
@logger.inject_lambda_context
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    """The day's share of the sweep; returns what it checked and found (`SweepResult.to_dict`)."""
    env = os.environ
    session = boto.new_session()
    endpoint = env.get("AWS_ENDPOINT_URL")
    store = adapters.S3ModelStore(env["BUCKET_NAME"], boto.client("s3", session, endpoint))
    table = adapters.DynamoRoundTable(env["TABLE_NAME"], boto.client("dynamodb", session, endpoint))
    now = datetime.now(UTC)
    since = (now - timedelta(days=_days("LOOKBACK_DAYS", 30))).isoformat(timespec="milliseconds")
    reserve_s = _days("RESERVE_S", 60)
    give_up = time.monotonic() + 840  # no context (a direct call): at most Lambda's 15 minutes, less the reserve

    def should_stop() -> bool:
        if context is not None and hasattr(context, "get_remaining_time_in_millis"):
            return context.get_remaining_time_in_millis() / 1000 < reserve_s
        return time.monotonic() > give_up

    result = integrity.sweep(
        store,
        table,
        lambda: table.runs_created_since(since),
        now=now.isoformat(timespec="milliseconds"),
        due=due(now, _days("SWEEP_EVERY_DAYS", 7)),
        should_stop=should_stop,
        missing=missing_object,
    )
    for mismatch in result.mismatches:
        logger.error("integrity mismatch: " + mismatch.line(), extra=asdict(mismatch))
    if result.objects or result.started_sweep:
        metrics.add_metric("IntegrityMismatches", MetricUnit.Count, len(result.mismatches))
        metrics.add_metric("IntegrityObjectsChecked", MetricUnit.Count, result.objects)
        metrics.add_metric("IntegrityRunsChecked", MetricUnit.Count, len(result.runs_checked))
    logger.info(
        "integrity check",
        extra={"runs_checked": len(result.runs_checked), "objects": result.objects, "remaining": len(result.remaining)},
    )
    return result.to_dict()
