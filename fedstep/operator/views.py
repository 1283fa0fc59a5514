"""What an operator sees of a run: its record, its execution, and its round summaries, read together.

`fedstep runs`, `status`, `stop`, `download` and `report` all start from a `RunView`. The execution is
the authority on the run's state (RUNNING, SUCCEEDED, FAILED, ABORTED, TIMED_OUT); the round
summaries are the authority on what each round did.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from botocore.exceptions import ClientError

from fedstep.aws.adapters import DynamoRoundTable
from fedstep.aws.errors import error_code
from fedstep.aws.stack import StackOutputs
from fedstep.core import keys, limits
from fedstep.core.errors import FedstepError
from fedstep.core.label_counts import LabelCounts
from fedstep.core.presence import presence
from fedstep.core.rounds import selected_in
from fedstep.core.schemas import (
    DECLINED_KIND,
    FailureItem,
    Feedback,
    InvalidMessage,
    RoundSummary,
    RunRecord,
    RunStop,
)
from fedstep.operator.client_rounds import ClientRound, load_client_rounds

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Execution:
    status: str
    started: datetime
    stopped: datetime | None
    output: dict[str, Any]
    error: str = ""
    cause: str = ""

    @property
    def stop_reason(self) -> str:
        """max_rounds, target_reached, stopped (by an operator), or the failure's error name."""
        if self.status == "ABORTED":
            return "stopped"
        return str(self.output.get("stop_reason") or self.error or "")

    @property
    def failure(self) -> str:
        """The failure as a person reads it, `error: cause`: a Lambda error payload as the cause shows as
        its `errorType: errorMessage` (without the stack trace), and the error is not said twice."""
        return failure_text(self.error, self.cause)


def failure_text(error: str, cause: str) -> str:
    """An execution's error and cause as a person reads them (see `Execution.failure`)."""
    readable = readable_cause(cause)
    if not error or readable == error or readable.startswith(f"{error}: "):
        return readable or error
    return f"{error}: {readable}" if readable else error


def readable_cause(cause: str) -> str:
    """An execution's cause; a Lambda error payload (`{"errorMessage": ..., "errorType": ...,
    "stackTrace": ...}`) becomes `errorType: errorMessage`."""
    try:
        payload = json.loads(cause)
    except ValueError:
        return cause
    if not isinstance(payload, dict) or "errorMessage" not in payload:
        return cause
    message, kind = str(payload["errorMessage"]), str(payload.get("errorType") or "")
    return f"{kind}: {message}" if kind else message


@dataclass(frozen=True)
class OpenRound:
    """The round in progress, as `fedstep status` shows it: whom it was sent to, who has answered,
    and when its deadline is. Client-written facts (decline reasons) are shown cleaned."""

    round: int
    attempt: int
    status: str
    """open (waiting for updates), or claimed (being aggregated)."""
    issued_at: str
    deadline: datetime | None
    """When the attempt's task times out (issued + the run's round deadline); None if unknown."""
    selected: list[str]
    sent: list[str]
    """Selected clients whose update item is in (not yet checked: the aggregation may reject it)."""
    declined: dict[str, str]
    """Selected clients that refused the round, with their reason."""
    pending: dict[str, str]
    """Selected clients not heard from in the round, with their heartbeat's status (online, offline ...)."""
    skipped: dict[str, str]
    """Clients left out of the round as offline at its selection (`select_online`), with that status."""
    failed: dict[str, str] = field(default_factory=dict)
    """Selected clients whose round failed, with their last error: the place for the clients' failure
    items (issue 21, finding 2); empty until the agents write them."""


@dataclass(frozen=True)
class RunView:
    run_id: str
    record: RunRecord
    execution: Execution | None
    """None when the run record exists but its execution does not (a failed start)."""
    rounds: list[RoundSummary]
    last_rejections: dict[str, Feedback] = field(default_factory=dict)
    """Each client's last rejected update, where it was in this run (including rounds that could not
    be aggregated, which have no summary)."""
    partition: LabelCounts | None = None
    """Each client's label counts, for a simulated run (`fedstep local`) read with `with_partition`."""
    clients: dict[int, list[ClientRound]] = field(default_factory=dict)
    """Per round, each selected client's own metrics (`fedstep.operator.client_rounds`), read with
    `with_clients`; empty unless asked for."""
    failures: dict[str, FailureItem] = field(default_factory=dict)
    """Each client's last failed round in this run, as its agent reported it (its failure item);
    clients without one (or with an invalid one, which is logged) are absent."""
    current: OpenRound | None = None
    """The round in progress while the run is RUNNING (None between rounds, or after the run)."""
    stop: RunStop | None = None
    """The run's stop marker (`fedstep stop`: when, and the operator's reason), None unless stopped."""

    @property
    def status(self) -> str:
        return self.execution.status if self.execution else "NOT STARTED"

    @property
    def last_round(self) -> int:
        return max((r.round for r in self.rounds), default=0)


def execution_arn(outputs: StackOutputs, run_id: str) -> str:
    """The execution of a run: the state machine's, named after the run id."""
    return outputs.state_machine_arn.replace(":stateMachine:", ":execution:") + f":{run_id}"


def describe(sfn: Any, arn: str) -> Execution | None:
    try:
        desc = sfn.describe_execution(executionArn=arn)
    except ClientError as exc:
        if error_code(exc) == "ExecutionDoesNotExist":
            return None
        raise
    return Execution(
        status=desc["status"],
        started=desc["startDate"],
        stopped=desc.get("stopDate"),
        output=json.loads(desc["output"]) if desc.get("output") else {},
        error=desc.get("error", ""),
        cause=desc.get("cause", ""),
    )


def load_run(run_id: str, outputs: StackOutputs, table: DynamoRoundTable, sfn: Any) -> RunView:
    """The run's record, execution and round summaries; FedstepError if there is no such run."""
    try:
        item = table.get_item(keys.run_item_key(run_id))
    except ValueError as exc:
        raise FedstepError(str(exc)) from None
    if item is None:
        raise FedstepError(f"there is no run {run_id!r} in table {outputs.table}; `fedstep runs` lists the runs")
    try:
        record = RunRecord.parse(item)
        rounds = sorted((RoundSummary.parse(r) for r in table.list_rounds(run_id)), key=lambda r: r.round)
        told = [Feedback.parse(f) for f in table.get_feedback(record.clients, run_id).values()]
    except InvalidMessage as exc:
        raise FedstepError(f"run {run_id} has an unreadable item: {exc}") from None
    last_rejections = {f.client_id: f for f in told}  # get_feedback read the run's own items
    execution = describe(sfn, execution_arn(outputs, run_id))
    failures = load_failures(table, run_id, record.clients)
    current = load_open_round(table, record, failures) if execution and execution.status == "RUNNING" else None
    stop = table.get_stop(run_id)
    return RunView(run_id, record, execution, rounds, last_rejections, failures=failures, current=current, stop=stop)


def load_failures(table: DynamoRoundTable, run_id: str, client_ids: list[str]) -> dict[str, FailureItem]:
    """Each client's last failed round in the run (its failure item, written by its agent), by client
    id. A client writes its item, so each is checked (`FailureItem.parse`): an invalid one is logged
    and left out."""
    failures = {}
    for client, item in table.get_failures(run_id, client_ids).items():
        try:
            failure = FailureItem.parse(item)
        except InvalidMessage as exc:
            log.warning("client %s's failure item in run %s is invalid: %s", client, run_id, exc)
            continue
        failures[client] = failure
    return failures


def load_open_round(
    table: DynamoRoundTable, run: RunRecord, failures: dict[str, FailureItem] | None = None, now: datetime | None = None
) -> OpenRound | None:
    """The run's round in progress (its newest round record not yet aggregated), with each selected
    client's progress: its update or decline item, else its heartbeat's status, and the error of its
    failure item if it failed this round (`failures`, by client); None if none is open."""
    records = table.open_rounds(run.run_id)
    if not records:
        return None
    record = max(records, key=lambda r: int(r.get("round", 0)))
    number = int(record.get("round", 0))
    selected = selected_in(record, run, number)
    items = table.get_updates(run.run_id, number, selected)
    declined = {c: limits.reason(str(i.get("reason", ""))) for c, i in items.items() if i.get("kind") == DECLINED_KIND}
    sent = sorted(c for c in items if c not in declined)
    now = now or datetime.now(UTC)
    waiting = [c for c in selected if c not in items]
    beats = table.get_heartbeats(waiting) if waiting else {}
    issued = str(record.get("issued_at") or record.get("first_issued_at") or "")
    try:
        deadline = datetime.fromisoformat(issued) + timedelta(seconds=run.round_timeout_s) if issued else None
    except ValueError:
        deadline = None
    skipped = record.get("skipped")
    return OpenRound(
        round=number,
        attempt=int(record.get("attempt", 0)),
        status=str(record.get("status", "")),
        issued_at=issued,
        deadline=deadline,
        selected=selected,
        sent=sent,
        declined=declined,
        pending={c: presence(beats.get(c), now) for c in waiting},
        skipped={str(c): str(v) for c, v in skipped.items()} if isinstance(skipped, dict) else {},
        failed={c: f"attempt {f.attempt}" for c, f in (failures or {}).items() if c in waiting and f.round == number},
    )


def load_partition(run_id: str, outputs: StackOutputs, s3: Any) -> LabelCounts | None:
    """The run's label counts (`runs/<run>/partition.json`, written by `fedstep local`), or None
    when there are none (any run not simulated); an unreadable object is logged and skipped."""
    key = keys.partition_key(run_id)
    try:
        body = s3.get_object(Bucket=outputs.bucket, Key=key)["Body"].read()
    except ClientError as exc:
        if error_code(exc) in ("NoSuchKey", "404"):
            return None
        raise
    try:
        return LabelCounts.parse(json.loads(body))
    except ValueError as exc:  # json.JSONDecodeError is a ValueError
        log.warning("s3://%s/%s is unreadable, so the report has no label histogram: %s", outputs.bucket, key, exc)
        return None


def with_partition(view: RunView, outputs: StackOutputs, s3: Any) -> RunView:
    """`view` with its label counts, where the run has them."""
    return replace(view, partition=load_partition(view.run_id, outputs, s3))


def with_clients(view: RunView, table: DynamoRoundTable, only: int | None = None) -> RunView:
    """`view` with each round's (or only round `only`'s) per-client metrics, from the update items."""
    return replace(view, clients=load_client_rounds(view.run_id, view.rounds, table, only))


@dataclass(frozen=True)
class RunListing:
    run_id: str
    status: str
    started: datetime
    stopped: datetime | None


def list_runs(outputs: StackOutputs, sfn: Any, limit: int = 20) -> list[RunListing]:
    """The newest `limit` runs of the stack (its state machine's executions), newest first."""
    runs: list[RunListing] = []
    kwargs: dict[str, Any] = {"stateMachineArn": outputs.state_machine_arn, "maxResults": min(limit, 1000)}
    while len(runs) < limit:
        resp = sfn.list_executions(**kwargs)
        runs += [
            RunListing(e["name"], e["status"], e["startDate"], e.get("stopDate")) for e in resp.get("executions", [])
        ]
        if not resp.get("nextToken"):
            break
        kwargs["nextToken"] = resp["nextToken"]
    return sorted(runs, key=lambda r: r.started, reverse=True)[:limit]


def view_of(stack: Any, run_id: str) -> RunView:
    """The run `run_id` of `stack` (a `fedstep.operator.stack.Stack`) as the operator sees it."""
    return load_run(run_id, stack.outputs, stack.table, stack.client("stepfunctions"))
