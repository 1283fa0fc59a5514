"""A run's estimated AWS cost (what `fedstep cost` shows; its docstring gives the model), from the
run's view, the stack's outputs and the state machine's execution history."""

from __future__ import annotations

import json
import logging
import math
from datetime import UTC, datetime
from typing import Any

from botocore.exceptions import ClientError

from fedstep.aws.errors import error_code
from fedstep.aws.stack import StackOutputs
from fedstep.core.tensors import DEFAULT_MAX_BYTES
from fedstep.costs.model import (
    Estimate,
    Paths,
    RoundFacts,
    RunFacts,
    estimate,
    history_transitions,
    paths_from_definition,
)
from fedstep.operator.views import RunView, execution_arn
from infra.config import aggregation_memory_mb

log = logging.getLogger(__name__)
_ENDED = {"SUCCEEDED": "succeeded", "FAILED": "failed", "TIMED_OUT": "failed", "ABORTED": "stopped"}


def lambda_memory_mb(max_model_bytes: int, slice_bytes: int | None = None) -> int:
    """The aggregation function's memory (MB) for the stack's largest model (output MaxModelBytes),
    or for one slice where the stack aggregates larger models by slices (output SliceBytes)."""
    held = max_model_bytes if slice_bytes is None else min(max_model_bytes, slice_bytes)
    return aggregation_memory_mb(max(1, math.ceil(held / 2**20)))


def run_facts(
    view: RunView,
    memory_mb: int,
    observed_transitions: int | None = None,
    paths: Paths | None = None,
    audit: bool = False,
) -> RunFacts:
    """What the estimate needs of a run, read from its view; `audit`: the stack's audit trail is on."""
    rounds = []
    for s in view.rounds:
        rejected = tuple(r.client_id for r in s.rejected)
        declined = tuple(d.client_id for d in s.declined)
        answered = set(s.participants) | set(rejected) | set(declined)
        rounds.append(
            RoundFacts(
                round=s.round,
                selected=tuple(s.selected or s.participants),
                participants=tuple(s.participants),
                rejected=rejected,
                declined=declined,
                duration_s=s.duration_s,
                aggregation_s=s.aggregation_s,
                model_bytes=s.global_model.bytes,
                update_bytes=s.bytes_aggregated // len(s.participants) if s.participants else s.global_model.bytes,
                state_bytes=s.state.bytes if s.state else 0,
                record_bytes=len(json.dumps(s.to_dict())),
                at_deadline=bool(set(s.selected) - answered),
                retries=s.attempt,
                slices=int(s.measurements.get("slices", 0)),
            )
        )
    ex = view.execution
    run_s = ((ex.stopped or datetime.now(UTC)) - ex.started).total_seconds() if ex else 0.0
    ended = _ENDED.get(view.status, "running") if ex else "not started"
    model = view.record.model
    return RunFacts(
        run_id=view.run_id,
        clients=tuple(view.record.clients),
        rounds=tuple(rounds),
        run_s=max(0.0, run_s),
        lambda_memory_mb=memory_mb,
        ended=ended,
        architecture_bytes=model.bytes if model else 0,
        initial_model_bytes=rounds[0].model_bytes if rounds else 0,
        select_online=view.record.select_online,
        secure_aggregation=view.record.secagg is not None,
        secagg_neighbours=view.record.secagg.neighbours if view.record.secagg else 0,
        observed_transitions=observed_transitions,
        paths=paths or Paths(),
        audit=audit,
    )


def observed_transitions(sfn: Any, arn: str) -> int | None:
    """The billed state transitions in the execution's history; None when it has none (a failed
    start, or an execution past Step Functions' retention)."""
    events: list[dict[str, Any]] = []
    kwargs: dict[str, Any] = {"executionArn": arn, "maxResults": 1000}
    try:
        while True:
            resp = sfn.get_execution_history(**kwargs)
            events += resp.get("events", [])
            if not resp.get("nextToken"):
                break
            kwargs["nextToken"] = resp["nextToken"]
    except ClientError as exc:
        if error_code(exc) == "ExecutionDoesNotExist":
            return None
        raise
    return history_transitions(events) if events else None


def deployed_paths(sfn: Any, state_machine_arn: str) -> Paths:
    """The paths of the deployed state machine; fedstep's own (logged) when it differs from them."""
    definition = json.loads(sfn.describe_state_machine(stateMachineArn=state_machine_arn)["definition"])
    try:
        return paths_from_definition(definition)
    except ValueError as exc:
        log.warning("counting transitions with fedstep's own state machine: %s", exc)
        return Paths()


def estimate_run(view: RunView, outputs: StackOutputs, sfn: Any) -> Estimate:
    """The run's estimate, with the stack's function memory, the deployed definition's paths, the
    execution's own transitions, and the audit trail's data events when the stack has one (output
    AuditTrailArn)."""
    observed = observed_transitions(sfn, execution_arn(outputs, view.run_id)) if view.execution else None
    paths = deployed_paths(sfn, outputs.state_machine_arn)
    memory = lambda_memory_mb(outputs.max_model_bytes, outputs.slice_bytes)
    return estimate(run_facts(view, memory, observed, paths, audit=bool(outputs.audit_trail_arn)))


def estimate_view(view: RunView) -> Estimate:
    """The estimate from the view alone (the report): transitions from the definition, the function's
    memory for the default `max_model_mb`."""
    return estimate(run_facts(view, lambda_memory_mb(DEFAULT_MAX_BYTES)))
