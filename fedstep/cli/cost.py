"""`fedstep cost <run> [--json]`: the run's estimated AWS cost, per service and per participant.

The facts come from the run view (`fedstep.cli.run_view`: its record, execution and round records),
the stack's outputs (`MaxModelBytes` sizes the aggregation function, `infra.config`) and, when the
execution still exists, its history (the billed state transitions); `fedstep.costs.model` prices
them with `fedstep.costs.prices`. The report's "Cost estimate" section uses the same estimate.
"""

from __future__ import annotations

import html
import json
import logging
import math
from datetime import UTC, datetime
from typing import Any

from botocore.exceptions import ClientError

from fedstep.aws.errors import error_code
from fedstep.aws.stack import StackOutputs
from fedstep.cli.run_view import RunView, execution_arn
from fedstep.cli.text import table
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
from fedstep.costs.prices import PRICES_READ, REGION, REGION_NOTE
from infra.config import aggregation_memory_mb

log = logging.getLogger(__name__)
_ENDED = {"SUCCEEDED": "succeeded", "FAILED": "failed", "TIMED_OUT": "failed", "ABORTED": "stopped"}


def lambda_memory_mb(max_model_bytes: int, slice_bytes: int | None = None) -> int:
    """The aggregation function's memory (MB) for the stack's largest model (output MaxModelBytes),
    or for one slice where the stack aggregates larger models by slices (output SliceBytes)."""
    held = max_model_bytes if slice_bytes is None else min(max_model_bytes, slice_bytes)
    return aggregation_memory_mb(max(1, math.ceil(held / 2**20)))


def run_facts(
    view: RunView, memory_mb: int, observed_transitions: int | None = None, paths: Paths | None = None
) -> RunFacts:
    """What the estimate needs of a run, read from its view."""
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
        observed_transitions=observed_transitions,
        paths=paths or Paths(),
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
    """The run's estimate, with the stack's function memory, the deployed definition's paths and the
    execution's own transitions."""
    observed = observed_transitions(sfn, execution_arn(outputs, view.run_id)) if view.execution else None
    paths = deployed_paths(sfn, outputs.state_machine_arn)
    return estimate(run_facts(view, lambda_memory_mb(outputs.max_model_bytes, outputs.slice_bytes), observed, paths))


def estimate_view(view: RunView) -> Estimate:
    """The estimate from the view alone (the report): transitions from the definition, the function's
    memory for the default `max_model_mb`."""
    return estimate(run_facts(view, lambda_memory_mb(DEFAULT_MAX_BYTES)))


def _usd(value: float) -> str:
    return f"{value:.6f}"


def _quantity(value: float) -> str:
    return f"{value:,.0f}" if float(value).is_integer() else f"{value:.4g}"


def headline(est: Estimate) -> str:
    return (
        f"cost estimate for run {est.run_id}: ${est.usd:.6f} (USD, {REGION} on-demand prices read {PRICES_READ}; "
        "other regions differ)"
    )


def detail(est: Estimate) -> str:
    so_far = "so far (the run is still running); " if est.ended == "running" else ""
    return (
        f"{so_far}{_quantity(est.transitions)} state transitions, counted from the {est.transitions_source}; "
        f"aggregation function {est.lambda_memory_mb} MB; free tiers not subtracted; assumptions in docs/cost.md"
    )


def service_rows(est: Estimate) -> list[tuple[str, ...]]:
    return [(line.service, line.item, _quantity(line.quantity), line.unit, _usd(line.usd)) for line in est.lines()]


def party_rows(est: Estimate) -> list[tuple[str, ...]]:
    rows = [
        (name, str(p.rounds), _usd(p.direct.usd()), _usd(p.share.usd()), _usd(p.usd))
        for name, p in sorted(est.clients.items())
    ]
    rows.append(("server (shared)", "-", "-", _usd(est.server.usd()), _usd(est.server.usd())))
    return rows


SERVICE_HEADER = ("SERVICE", "ITEM", "QUANTITY", "UNIT", "USD")
PARTY_HEADER = ("PARTICIPANT", "ROUNDS", "OWN REQUESTS USD", "SHARE OF ROUNDS USD", "TOTAL USD")


def render_text(est: Estimate, region: str | None = None) -> str:
    lines = [headline(est), detail(est)]
    if region and region != REGION:
        lines.append(f"note: the stack is in {region}; {REGION_NOTE}")
    lines += ["", *table(SERVICE_HEADER, [*service_rows(est), ("TOTAL", "", "", "", _usd(est.usd))])]
    lines += ["", *table(PARTY_HEADER, party_rows(est))]
    return "\n".join(lines)


def render_json(est: Estimate, region: str | None = None) -> str:
    data = {
        **est.to_dict(),
        "currency": "USD",
        "prices": {"region": REGION, "read": PRICES_READ, "note": REGION_NOTE},
        "stack_region": region,
    }
    return json.dumps(data, indent=2)


def report_section(view: RunView) -> str:
    """The report's "Cost estimate" section (HTML)."""
    est = estimate_view(view)
    e = html.escape

    def rows(header: tuple[str, ...], body: list[tuple[str, ...]]) -> str:
        head = "".join(f"<th>{e(h)}</th>" for h in header)
        cells = "\n".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>" for row in body)
        return f"<thead><tr>{head}</tr></thead><tbody>\n{cells}\n</tbody>"

    services = [*service_rows(est), ("TOTAL", "", "", "", _usd(est.usd))]
    return f"""
<h2>Cost estimate</h2>
<p id="cost-headline">{e(headline(est))}</p>
<p>{e(detail(est))}. The report assumes the default <code>max_model_mb</code>; <code>fedstep cost
{e(view.run_id)}</code> reads the stack's own, and the execution's history.</p>
<table id="cost">{rows(SERVICE_HEADER, services)}</table>
<table id="cost-participants">{rows(PARTY_HEADER, party_rows(est))}</table>
"""
