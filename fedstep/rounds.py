"""Completing a round: validate the updates, aggregate them, publish the next global model, report once.

This is the logic behind the aggregation Lambda, written against three small ports so it can be
tested without AWS. Exactly-once (DESIGN invariant 1): the round summary item is written with a
condition that it does not exist yet; only the writer of that item reports the round. A crash
between writing and reporting is repaired by the next invocation, which finds the summary not yet
marked as reported and reports it (Step Functions ignores a second report for the same token).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from fedstep import SCHEMA_VERSION, keys, strategies, tensors
from fedstep.errors import FedstepError, InvalidUpdate
from fedstep.schemas import InvalidMessage, ObjectRef, Rejection, RoundSummary, RunRecord, UpdateItem
from fedstep.strategies import ClientUpdate

log = logging.getLogger(__name__)


class ModelStore(Protocol):
    def get(self, key: str) -> bytes: ...
    def put(self, key: str, data: bytes) -> None: ...


class RoundTable(Protocol):
    def get_run(self, run_id: str) -> RunRecord | None: ...
    def list_updates(self, run_id: str, round_number: int) -> list[dict[str, Any]]: ...
    def get_round(self, run_id: str, round_number: int) -> dict[str, Any] | None: ...
    def put_round_once(self, item: dict[str, Any]) -> bool: ...
    def mark_reported(self, run_id: str, round_number: int) -> None: ...
    def list_rounds(self, run_id: str) -> list[dict[str, Any]]: ...


class Reporter(Protocol):
    def succeed(self, task_token: str, output: dict[str, Any]) -> None: ...
    def fail(self, task_token: str, error: str, cause: str) -> None: ...


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def _seconds_since(iso: str, now: float) -> float:
    try:
        started = datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return 0.0
    return round(max(0.0, now - started), 3)


@dataclass
class _Intake:
    """The round's update items sorted into usable ones and rejections, with the task token of the
    round's newest attempt."""

    selected: list[str]
    items: list[UpdateItem] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)
    task_token: str | None = None


def _sort_items(run: RunRecord, round_number: int, raw_items: list[dict[str, Any]]) -> _Intake:
    intake = _Intake(selected=run.selected(round_number))
    parsed: list[UpdateItem] = []
    for raw in sorted(raw_items, key=lambda r: str(r.get(keys.SK, ""))):
        client = str(raw.get("client_id", "?"))
        try:
            item = UpdateItem.parse(raw)
        except (InvalidMessage, ValueError) as exc:
            intake.rejected.append(Rejection(client, f"malformed update item: {exc}"))
            continue
        if item.client_id not in run.clients:
            intake.rejected.append(Rejection(client, "client is not registered for this run"))
        elif item.client_id not in intake.selected:
            intake.rejected.append(Rejection(client, "client was not selected for this round"))
        elif item.update.key != keys.update_key(run.run_id, round_number, item.client_id):
            intake.rejected.append(Rejection(client, f"update key {item.update.key!r} is not this client's"))
        else:
            parsed.append(item)
    if parsed:
        # A retried round is published again with a new token; updates of an earlier attempt trained
        # on the same global model and stay valid. The round is reported to its newest attempt.
        intake.task_token = max(parsed, key=lambda i: i.issued_at).task_token
    intake.items = parsed
    return intake


def update_metadata(item: UpdateItem) -> dict[str, Any]:
    """What a client writes into its update file's metadata: the item's facts, under the client's own
    prefix, where IAM lets no other client write."""
    return {
        "schema": SCHEMA_VERSION,
        "run_id": item.run_id,
        "round": item.round,
        "client_id": item.client_id,
        "num_examples": item.num_examples,
        "metrics": item.metrics,
    }


def check_update_metadata(metadata: dict[str, Any], item: UpdateItem) -> None:
    """Reject an item whose file says otherwise (IAM cannot stop a client writing an item that claims
    another client; it can stop it writing that client's file)."""
    expected = update_metadata(item)
    differing = sorted(k for k, v in expected.items() if metadata.get(k) != v)
    if differing:
        raise InvalidUpdate(f"update file's metadata differs from the update item in {differing}")


def _weighted_metrics(items: list[UpdateItem]) -> dict[str, float]:
    names = set().union(*(i.metrics for i in items)) if items else set()
    out: dict[str, float] = {}
    for name in sorted(names):
        having = [i for i in items if name in i.metrics]
        total = sum(i.num_examples for i in having)
        out[name] = round(sum(i.metrics[name] * i.num_examples for i in having) / total, 6)
    return out


class QuorumNotMet(FedstepError):
    """Fewer valid updates than the run's quorum; the class name is the Step Functions error name."""


def try_complete_round(
    run_id: str,
    round_number: int,
    *,
    store: ModelStore,
    table: RoundTable,
    reporter: Reporter,
    max_update_bytes: int = tensors.DEFAULT_MAX_BYTES,
) -> RoundSummary | None:
    """Aggregate round `round_number` of `run_id` once every client has reported, and report it to the
    round's task token. Returns the summary when this call wrote it, else None (still waiting, or
    already done)."""
    existing = table.get_round(run_id, round_number)
    if existing is not None:
        if existing.get("status") == "aggregated" and existing.get("task_token"):
            # The writer crashed before reporting: report for it.
            run = table.get_run(run_id)
            reporter.succeed(existing["task_token"], _output(table, RoundSummary.parse(existing), run))
            table.mark_reported(run_id, round_number)
        return None
    run = table.get_run(run_id)
    if run is None:
        log.warning("update for unknown run %s ignored", run_id)
        return None
    intake = _sort_items(run, round_number, table.list_updates(run_id, round_number))
    waiting_for = sorted(set(intake.selected) - {i.client_id for i in intake.items})
    if waiting_for or intake.task_token is None:
        log.info("round %s/%d: waiting for %s", run_id, round_number, ", ".join(waiting_for))
        return None
    try:
        summary = _aggregate(run, round_number, intake, store, max_update_bytes, at_deadline=False)
    except QuorumNotMet as exc:
        reporter.fail(intake.task_token, "QuorumNotMet", str(exc))
        return None
    if not table.put_round_once({**summary.to_item(), "status": "aggregated", "task_token": intake.task_token}):
        return None  # a concurrent invocation won; it reports
    reporter.succeed(intake.task_token, _output(table, summary, run))
    table.mark_reported(run_id, round_number)
    return summary


def complete_round_at_deadline(
    run_id: str,
    round_number: int,
    *,
    store: ModelStore,
    table: RoundTable,
    max_update_bytes: int = tensors.DEFAULT_MAX_BYTES,
    on_aggregated: Callable[[RoundSummary], None] | None = None,
) -> dict[str, Any]:
    """The round's deadline passed (its task timed out): aggregate the valid updates that arrived if
    they meet the run's quorum, else raise QuorumNotMet. Returns the task output directly (the
    timed-out token can no longer be used). If the round was completed meanwhile, returns that.
    `on_aggregated` is called with the summary only when this call aggregated the round."""
    run = table.get_run(run_id)
    if run is None:
        raise FedstepError(f"run {run_id} has no run record")
    existing = table.get_round(run_id, round_number)
    if existing is not None:
        return _output(table, RoundSummary.parse(existing), run)
    intake = _sort_items(run, round_number, table.list_updates(run_id, round_number))
    summary = _aggregate(run, round_number, intake, store, max_update_bytes, at_deadline=True)
    if not table.put_round_once({**summary.to_item(), "status": "reported"}):
        return _output(table, RoundSummary.parse(table.get_round(run_id, round_number) or {}), run)
    if on_aggregated is not None:
        on_aggregated(summary)
    return _output(table, summary, run)


def _aggregate(
    run: RunRecord, round_number: int, intake: _Intake, store: ModelStore, max_update_bytes: int, at_deadline: bool
) -> RoundSummary:
    """Validate and aggregate the intake's updates; write the new global model; raise QuorumNotMet if
    fewer valid updates than the quorum remain."""
    when = f"by the deadline of round {round_number}" if at_deadline else f"in round {round_number}"

    def quorum_not_met(valid: int) -> QuorumNotMet:
        reasons = "".join(f"; {r.client_id}: {r.reason}" for r in intake.rejected)
        return QuorumNotMet(
            f"{valid} of {len(intake.selected)} updates {when} (quorum {run.quorum}) in run {run.run_id}{reasons}"
        )

    if len(intake.items) < run.quorum:
        raise quorum_not_met(len(intake.items))
    started = time.time()
    global_weights = tensors.decode(store.get(keys.global_key(run.run_id, round_number - 1)))
    spec = tensors.TensorSpec.of(global_weights)
    accepted: list[UpdateItem] = []

    def validated_updates() -> Iterator[ClientUpdate]:
        for item in intake.items:
            try:
                data = store.get(item.update.key)
                if len(data) != item.update.bytes:
                    raise InvalidUpdate(f"file is {len(data)} bytes, the item says {item.update.bytes}")
                weights = tensors.decode(data, expected=spec, sha256=item.update.sha256, max_bytes=max_update_bytes)
                check_update_metadata(tensors.read_metadata(data), item)
            except InvalidUpdate as exc:
                intake.rejected.append(Rejection(item.client_id, exc.reason))
                continue
            accepted.append(item)
            yield ClientUpdate(item.client_id, item.num_examples, weights)

    try:
        new_weights = strategies.get(run.strategy).aggregate(global_weights, validated_updates())
    except ValueError:
        raise quorum_not_met(0) from None
    if len(accepted) < run.quorum:
        raise quorum_not_met(len(accepted))
    data = tensors.encode(
        new_weights, {"schema": SCHEMA_VERSION, "run_id": run.run_id, "round": round_number, "kind": "global"}
    )
    global_ref = ObjectRef(keys.global_key(run.run_id, round_number), tensors.sha256_hex(data), len(data))
    store.put(global_ref.key, data)
    now = time.time()
    return RoundSummary(
        run_id=run.run_id,
        round=round_number,
        selected=intake.selected,
        participants=[i.client_id for i in accepted],
        num_examples=sum(i.num_examples for i in accepted),
        rejected=intake.rejected,
        metrics=_weighted_metrics(accepted),
        global_model=global_ref,
        duration_s=min(_seconds_since(i.issued_at, now) for i in accepted),
        aggregation_s=round(now - started, 3),
        completed_at=utc_now(),
        bytes_aggregated=sum(i.update.bytes for i in accepted),
    )


def round_history(table: RoundTable, run_id: str, up_to: int, run: RunRecord | None) -> list[dict[str, Any]]:
    """Brief summaries of rounds 1..`up_to`, following `resumed_from` back to the runs this one continues."""
    own = [RoundSummary.parse(r).brief() for r in table.list_rounds(run_id)]
    own = [h for h in own if h["round"] <= up_to]
    if run is None or not run.resumed_from:
        return own
    first = min((h["round"] for h in own), default=up_to + 1)
    earlier = round_history(table, run.resumed_from, first - 1, table.get_run(run.resumed_from))
    return earlier + own


def _output(table: RoundTable, summary: RoundSummary, run: RunRecord | None) -> dict[str, Any]:
    """What the round's task returns to Step Functions: this round, the new model, the run's history,
    and whether the run's target metric is reached (the state machine then stops)."""
    history = round_history(table, summary.run_id, summary.round, run)
    return {
        "summary": summary.to_dict(),
        "global_model": asdict(summary.global_model),
        "history": history,
        "target_reached": bool(run and run.target and run.target.reached(summary.metrics)),
        "next_selected": run.selected(summary.round + 1) if run else [],
    }
