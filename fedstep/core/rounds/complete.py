"""Steps 2-4 of a round, on its two paths: the stream path (`try_complete_round`, once every selected
client's update is in; it reports to the round's task token) and the deadline path
(`complete_round_at_deadline`, when the round's task timed out; its result is the task's output). Both
claim the round, then run it with one sequence (`run_claimed_round`): aggregate -> hold for slices ->
commit."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fedstep.core import limits
from fedstep.core.errors import FedstepError, RunStopped
from fedstep.core.ports import ModelStore, Reporter, RoundTable
from fedstep.core.round_record import RoundRecord
from fedstep.core.rounds.aggregate import aggregate_round
from fedstep.core.rounds.errors import ClaimLost, RoundBusy, RoundNotAggregated, StrategyFailed
from fedstep.core.rounds.inputs import selected_in
from fedstep.core.rounds.results import commit, new_claim_id, release
from fedstep.core.rounds.settings import DEFAULT_SETTINGS, AggregationSettings
from fedstep.core.rounds.slices import hold_for_slices, plan_output
from fedstep.core.rounds.summary import task_output
from fedstep.core.schemas import ROUND_AGGREGATED, ROUND_REPORTED, ObjectRef, RoundSummary, RunRecord

log = logging.getLogger(__package__)


@dataclass(frozen=True)
class Claimed:
    """A claimed round: its run, its record as of the claim, the claim's id and the selected clients'
    update items (as stored)."""

    run: RunRecord
    round_number: int
    record: RoundRecord
    claim: str
    raw: dict[str, dict[str, Any]]


@dataclass(frozen=True)
class Outcome:
    """How running a claimed round ended: its summary committed (`summary`), its plan held for the
    slices (`plan`), the run stopped before the commit (`stopped`: nothing of the round stays, its
    claim went back), or none of these: the claim was lost to another invocation, which finishes it."""

    summary: RoundSummary | None = None
    plan: ObjectRef | None = None
    stopped: RunStopped | None = None


def run_claimed_round(
    claimed: Claimed,
    *,
    store: ModelStore,
    table: RoundTable,
    settings: AggregationSettings,
    at_deadline: bool,
    status: str,
    on_aggregated: Callable[[RoundSummary], None] | None,
    aggregate: Callable[..., RoundSummary | ObjectRef] = aggregate_round,
) -> Outcome:
    """Aggregate a claimed round, then hold it for its slices (a model larger than
    `settings.slice_bytes`) or commit its summary with `status`; `on_aggregated` is called once the
    summary is committed. An aggregation that raises gives the claim back and raises (ClaimLost, the
    claim already gone, is an outcome instead). `aggregate`: how (a secure round's: from the sum)."""
    run, round_number, claim = claimed.run, claimed.round_number, claimed.claim
    try:
        result = aggregate(run, round_number, claimed.record, claimed.raw, store, table, claim, at_deadline, settings)
    except ClaimLost:
        return Outcome()  # another invocation took the round over: it finishes the round
    except BaseException:
        release(table, run.run_id, round_number, claim)
        raise
    if isinstance(result, ObjectRef):  # planned for slices: the state machine fans out
        held = hold_for_slices(table, run.run_id, round_number, claim, result)
        return Outcome(plan=result) if held else Outcome()
    try:
        if not commit(store, table, result, claim, status):
            return Outcome()  # the lease ran out and another invocation took the round over
    except RunStopped as exc:  # stopped while it was aggregated: nothing of it stays
        release(table, run.run_id, round_number, claim)
        return Outcome(stopped=exc)
    if on_aggregated is not None:
        on_aggregated(result)
    return Outcome(summary=result)


def try_complete_round(
    run_id: str,
    round_number: int,
    *,
    store: ModelStore,
    table: RoundTable,
    reporter: Reporter,
    settings: AggregationSettings = DEFAULT_SETTINGS,
    on_aggregated: Callable[[RoundSummary], None] | None = None,
    run: RunRecord | None = None,
) -> RoundSummary | None:
    """Aggregate the round once every selected client has an update in, and report it to the round's
    task token. Returns the summary when this call aggregated the round, else None (still waiting,
    taken by another invocation, or already done). `run`: its record, when the caller read it."""
    item = table.get_round(run_id, round_number)
    if item is None:
        return None
    record = RoundRecord.parse(item)
    if record.status == ROUND_REPORTED or record.lease_active(time.time()):
        return None
    run = run or table.get_run(run_id)
    if run is None:
        return None
    if run.secagg is not None:  # a secure round closes phase by phase (`fedstep.core.rounds.secure`)
        raise FedstepError(f"run {run_id} aggregates securely: its rounds close by `secure.advance_secure_round`")
    if record.status == ROUND_AGGREGATED:  # the writer crashed before reporting: report for it
        if record.task_token is None:
            raise KeyError("task_token")
        reporter.succeed(record.task_token, task_output(record.summary(), run))
        table.mark_reported(run_id, round_number)
        return None
    selected = selected_in(record, run, round_number)
    raw = table.get_updates(run_id, round_number, selected)
    if set(selected) - set(raw):
        log.info("round %s/%d: %d of %d updates in", run_id, round_number, len(raw), len(selected))
        return None
    if table.get_stop(run_id) is not None:  # read once all are in, not per update (the commit checks it too)
        log.info("round %s/%d: the run was stopped, its updates are not aggregated", run_id, round_number)
        return None
    claim = new_claim_id()
    now = time.time()
    claimed = table.claim_round(run_id, round_number, claim, now, now + settings.lease_s)
    if claimed is None:
        return None
    record = RoundRecord.parse(claimed)
    token = record.task_token or ""  # as of the claim: a retry may have replaced it
    try:
        outcome = run_claimed_round(
            Claimed(run, round_number, record, claim, raw),
            store=store,
            table=table,
            settings=settings,
            at_deadline=False,
            status=ROUND_AGGREGATED,
            on_aggregated=on_aggregated,
        )
    except (RoundNotAggregated, StrategyFailed) as exc:
        reporter.fail(token, type(exc).__name__, str(exc)[: limits.MAX_FAILURE_CAUSE_CHARS])
        return None
    if outcome.plan is not None:
        reporter.succeed(token, plan_output(store, outcome.plan))
        return None
    if outcome.stopped is not None:  # nobody is told
        log.info("%s", outcome.stopped)
        return None
    summary = outcome.summary
    if summary is None:
        return None  # the claim was lost: the invocation that took the round over reports
    reporter.succeed(token, task_output(summary, run))
    table.mark_reported(run_id, round_number)
    return summary


def complete_round_at_deadline(
    run_id: str,
    round_number: int,
    *,
    store: ModelStore,
    table: RoundTable,
    settings: AggregationSettings = DEFAULT_SETTINGS,
    on_aggregated: Callable[[RoundSummary], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, Any]:
    """The round's deadline passed (its task timed out): aggregate the valid updates that arrived if
    they meet the run's quorum and `min_participants`, else raise QuorumNotMet / TooFewParticipants.
    Returns the task output directly (the timed-out token can no longer be used). A round completed
    meanwhile returns that; one being aggregated by another invocation is waited for (RoundBusy
    after `settings.wait_s`). `on_aggregated` is called only when this call aggregated the round."""
    run = table.get_run(run_id)
    if run is None:
        raise FedstepError(f"run {run_id} has no run record")
    if run.secagg is not None:
        raise FedstepError(f"run {run_id} aggregates securely: its deadlines close by `secure.close_at_deadline`")
    stop = table.get_stop(run_id)
    if stop is not None:
        raise RunStopped(f"run {run_id} was stopped ({stop.reason}): round {round_number} is not aggregated")
    give_up = time.monotonic() + settings.wait_s
    while True:
        item = table.get_round(run_id, round_number)
        if item is None:
            raise FedstepError(f"round {round_number} of run {run_id} was never published")
        record = RoundRecord.parse(item)
        if record.completed:
            return task_output(record.summary(), run)
        if record.plan is not None:  # planned for slices (its report may have been lost): fan out again
            return plan_output(store, record.plan)
        now = time.time()
        if record.lease_active(now):
            if time.monotonic() > give_up:
                raise RoundBusy(f"round {round_number} of run {run_id} is still being aggregated by another invocation")
            sleep(1.0)
            continue
        claim = new_claim_id()
        claimed = table.claim_round(run_id, round_number, claim, now, now + settings.lease_s)
        if claimed is None:
            continue
        record = RoundRecord.parse(claimed)
        raw = table.get_updates(run_id, round_number, selected_in(record, run, round_number))
        outcome = run_claimed_round(
            Claimed(run, round_number, record, claim, raw),
            store=store,
            table=table,
            settings=settings,
            at_deadline=True,
            status=ROUND_REPORTED,
            on_aggregated=on_aggregated,
        )
        if outcome.stopped is not None:
            raise outcome.stopped
        if outcome.plan is not None:
            return plan_output(store, outcome.plan)
        if outcome.summary is not None:
            return task_output(outcome.summary, run)
        # the claim was lost: wait for the invocation that took the round over
