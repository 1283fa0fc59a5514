"""A round, from publication to report: publish it, claim it, aggregate its updates once, report once.

This is the logic behind the aggregation function, written against the ports in `fedstep.core.ports` so
it runs without AWS. Exactly once, by construction (DESIGN invariant 1):

1. **Open.** When the state machine publishes a round, `publish_round` selects its clients (the
   seeded sample, less those whose heartbeat says offline: `choose_clients`), records the attempt's
   task token and that selection in the round record (a server record: no client ever sees a token)
   and sends the round message to the selected clients. The later steps wait for the recorded
   selection (`selected_in`).
2. **Claim.** An invocation that finds every selected client's update in (the stream path), or that
   runs at the round's deadline, first takes the round with a conditional write: it succeeds only
   if the round is open, or if an earlier claim's lease ran out (its holder crashed). Only the
   holder reads updates and aggregates; everyone else leaves, or (at the deadline) waits for it.
3. **Write once.** The new global model is written under a key named by the claim, with
   `If-None-Match: *`, so two aggregations of a round can never overwrite each other's result,
   whatever the strategy (noise included).
4. **Commit, then report.** The summary is written on condition that the claim still holds; only
   then is the round reported, to the token the server recorded. A crash between the two is
   repaired by the next invocation, which finds the summary not yet reported and reports it.

**Stopped runs.** Once the operator has stopped a run (`fedstep stop` writes its stop marker first),
none of its rounds is published or claimed, and none is committed: the commit is one transaction
with the checks of the claim and of the marker (`RoundTable.complete_round`), so a round whose updates arrive
after the stop, or whose aggregation was under way when it came, leaves nothing behind (its model
and state are deleted, its claim released) and is never reported.

A round that cannot be aggregated (too few valid updates, for the run or for its strategy, or an
aggregate that is not finite) is given back (the claim released) and fails by name: QuorumNotMet,
TooFewParticipants or InvalidAggregate; the state machine retries it or fails the run.

A failed aggregation leaves nothing a client can read: every check that can fail (the strategy's
result, its measurements, finite weights and state, the privacy accounting) runs before the first
write, and what a later failure leaves (a state write refused, a claim lost before the commit) is
deleted, best effort. Under central DP each noisy model is counted in the round record before it is
written (`RoundTable.count_release`), so a model released and not committed is still accounted.
"""

from __future__ import annotations

import logging
import math
import secrets
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, cast

from fedstep.core import influence, keys, limits, sliced, strategies, tensors
from fedstep.core.clock import seconds_since, utc_now
from fedstep.core.dp import Accountant, DPAggregation, round_epsilon
from fedstep.core.errors import FedstepError, RunStopped
from fedstep.core.ports import ModelStore, MultipartStore, Publisher, Reporter, RoundTable
from fedstep.core.presence import away
from fedstep.core.round_record import RoundRecord, recorded_selection
from fedstep.core.schemas import (
    ROUND_AGGREGATED,
    ROUND_REPORTED,
    Bounds,
    DeclineItem,
    FailureItem,
    Feedback,
    InvalidMessage,
    ObjectRef,
    Rejection,
    RoundMessage,
    RoundSummary,
    RunRecord,
    UpdateItem,
    check_kept,
    check_measurements,
    check_scalars,
    is_completed,
    parse_client_item,
)
from fedstep.core.selection import Selection, select_round
from fedstep.core.strategies import GlobalModel
from fedstep.core.update_source import (
    ModelLayout,
    UnversionedStore,
    UpdateSource,
    model_norm,
    read_header,
    read_layout,
    read_model,
    stored_sha256,
)
from fedstep.core.version import SCHEMA_VERSION

log = logging.getLogger(__name__)


class RoundNotAggregated(FedstepError):
    """A round that cannot be aggregated; its class name is the Step Functions error name."""


class QuorumNotMet(RoundNotAggregated):
    """Fewer valid updates than the run's quorum."""


class TooFewParticipants(RoundNotAggregated):
    """Fewer valid updates than the run's `min_participants` (the aggregate would expose them), or
    than the run's strategy needs (`Strategy.min_updates`, e.g. Krum's 2f + 3)."""


class InvalidAggregate(RoundNotAggregated):
    """The strategy produced non-finite weights or state; nothing was written. A round failure like
    a quorum miss: the state machine retries the round (`round_retries`), never crashes the run."""


class StrategyFailed(FedstepError):
    """The run's strategy raised, or returned something unusable: reported as what it is (the
    strategy, the round, the exception), never as a quorum problem. Not retried: it would fail again."""


class RoundBusy(FedstepError):
    """Another invocation holds the round's claim and has not finished; the state machine retries."""


class ClaimLost(FedstepError):
    """This invocation's claim on the round ran out and another took the round over: it leaves the
    round to that one (nothing of its own stays readable)."""


@dataclass(frozen=True)
class AggregationSettings:
    """`lease_s`: how long a claim holds before another invocation may take the round over (longer
    than the function's timeout; default 360 s). `wait_s`: how long the deadline invocation waits for
    another claim's holder to finish (default 240 s)."""

    lease_s: float = 360.0
    wait_s: float = 240.0
    accountant: Accountant | None = None
    """The privacy accountant of DP runs (`fedstep.privacy.accounting.epsilon_fixed`)."""
    slice_bytes: int | None = None
    """Global models larger than this are aggregated by slices (`fedstep.core.sliced`); None: never.
    The store must then also be a `MultipartStore`."""


# -- 1. open -------------------------------------------------------------------------------------


def publish_round(
    run_id: str,
    round_number: int,
    attempt: int,
    global_model: ObjectRef,
    task_token: str,
    issued_at: str,
    *,
    store: ModelStore,
    table: RoundTable,
    publisher: Publisher,
    reporter: Reporter,
) -> RoundMessage | None:
    """Open the round's attempt and send its message, with the strategy's instructions for the round,
    to the round's selected clients; returns it. A round already aggregated (a late completion before
    a retry) is reported to the new token at once."""
    run = table.get_run(run_id)
    if run is None or run.model is None:
        raise FedstepError(f"run {run_id} has no run record with a model")
    stop = table.get_stop(run_id)
    if stop is not None:
        raise RunStopped(f"run {run_id} was stopped ({stop.reason}): round {round_number} is not published")
    state = input_state(table, run, round_number)
    instructions = _instructions(run, round_number, state, store)
    chosen = choose_clients(run, round_number, table.get_heartbeats(run.clients) if run.select_online else {})
    if chosen.skipped or chosen.kept_offline:
        log.info(
            "round %s/%d: skipped as offline %s; selected although offline %s",
            run_id,
            round_number,
            chosen.skipped,
            chosen.kept_offline,
        )
    opened = table.open_round(
        run_id, round_number, attempt, task_token, issued_at, global_model, state, chosen.selected, chosen.skipped
    )
    if not opened:
        existing = RoundRecord.parse(table.get_round(run_id, round_number) or {})
        if not existing.completed:
            raise RoundBusy(f"round {round_number} of run {run_id} is being aggregated; it cannot be published")
        reporter.succeed(task_token, task_output(existing.summary(), run))
        table.mark_reported(run_id, round_number)
        return None
    message = RoundMessage(
        run_id=run_id,
        round=round_number,
        attempt=attempt,
        model=run.model,
        global_model=global_model,
        training=run.training,
        deadline_s=run.round_timeout_s,
        issued_at=issued_at,
        instructions=instructions,
    )
    publisher.publish(message.to_dict(), chosen.selected)
    return message


def choose_clients(
    run: RunRecord, round_number: int, heartbeats: dict[str, dict[str, Any]], now: datetime | None = None
) -> Selection:
    """Round `round_number`'s selection: the run's seeded sample, less the clients whose heartbeat
    item (client-written: only its state and time are read) says offline or stopped when the run has
    `select_online` (`fedstep.core.selection.select_round`)."""
    per_round = expected_participants(run)
    if not run.select_online:
        return Selection(run.selected(round_number))
    gone = away(run.clients, heartbeats, now or datetime.now(UTC))
    central_dp = run.dp is not None and run.dp.central
    needs = max(run.quorum, run.min_participants)
    return select_round(
        run.clients, per_round, run.seed, round_number, gone, needs=needs, redraw=not central_dp, sampling=run.selection
    )


def selected_in(record: RoundRecord | dict[str, Any], run: RunRecord, round_number: int) -> list[str]:
    """The clients a round was published to, as its round record (typed, or an item as stored) holds
    them (the seeded sample for a record written before rounds recorded their selection); only the
    run's own clients."""
    chosen = record.selected if isinstance(record, RoundRecord) else recorded_selection(record)
    if chosen is None:
        return run.selected(round_number)
    members = set(run.clients)
    return sorted({c for c in chosen if c in members})


def build_strategy(run: RunRecord) -> strategies.Strategy:
    """The run's strategy with its parameters, wrapped in client-level DP when the run has it
    (checked by `fedstep start`; StrategyFailed if not)."""
    try:
        strategy = strategies.build(run.strategy, run.strategy_params)
        if run.dp is not None and run.dp.central:
            return DPAggregation(strategy, run.dp, expected_participants(run), run.selection)
        return strategy
    except ValueError as exc:
        raise StrategyFailed(f"run {run.run_id}: {exc}") from None


def dp_sgd_instructions(run: RunRecord) -> dict[str, Any]:
    """What each client's DP-SGD needs (record-level DP runs only): the noise multiplier, the
    per-example clip norm and the delta its own accounting uses."""
    dp = run.dp
    if dp is None or dp.mode != "dp-sgd":
        return {}
    return {"dp_mode": "dp-sgd", "dp_noise_multiplier": dp.noise_multiplier, "dp_clip": dp.clip, "dp_delta": dp.delta}


def expected_participants(run: RunRecord) -> int:
    """The clients each round selects, or under Poisson selection selects on average (q N): DP-FedAvg
    divides the noisy sum by it, not by the number that arrived (the fixed-denominator estimator)."""
    return run.clients_per_round or len(run.clients)


def privacy_spent(
    run: RunRecord,
    round_number: int,
    accepted: list[tuple[UpdateItem, int]],
    accountant: Accountant | None,
    repeated: int = 0,
) -> tuple[float | None, float | None, bool]:
    """(epsilon, delta, budget spent) after `round_number` rounds: client-level from the accountant
    (central modes, counting `repeated` releases too; spent when one more round would pass the
    budget), or under dp-sgd the largest record-level epsilon the participants reported, unknown
    (None) unless every participant reported one: a client that reports none may have spent any
    amount, so a figure from the others would understate the round; (None, None, False) without DP."""
    dp = run.dp
    if dp is None:
        return None, None, False
    if not dp.central:
        reported = [item.privacy["epsilon"] for item, _ in accepted if "epsilon" in item.privacy]
        known = bool(reported) and len(reported) == len(accepted)
        return (max(reported) if known else None), dp.delta, False
    if accountant is None:
        raise FedstepError(f"run {run.run_id} has differential privacy but the function has no accountant")
    expected, population = expected_participants(run), len(run.clients)
    epsilon = round_epsilon(dp, accountant, expected, population, round_number, repeated, run.selection)
    budget = dp.epsilon_budget
    after_next = round_epsilon(dp, accountant, expected, population, round_number + 1, repeated, run.selection)
    return round(epsilon, 6), dp.delta, budget is not None and after_next > budget


def input_state(table: RoundTable, run: RunRecord, round_number: int) -> ObjectRef | None:
    """The strategy's state a round starts from: the state after the previous round of this run, or
    for the run's first round the state it was started with (a resumed run's `initial_state`)."""
    previous = table.get_round(run.run_id, round_number - 1) if round_number > 1 else None
    if previous is not None and is_completed(previous):
        return RoundSummary.parse(previous).state
    return run.initial_state


def previous_summary(table: RoundTable, run: RunRecord, round_number: int) -> RoundSummary | None:
    """The summary of the round before `round_number`: this run's, or for the first round of a
    resumed run that of the run it continues; None before a run's first round (or if it is missing)."""
    if round_number <= 1:
        return None
    for run_id in (run.run_id, run.resumed_from):
        record = table.get_round(run_id, round_number - 1) if run_id else None
        if record is not None and is_completed(record):
            return RoundSummary.parse(record)
    return None


def round_bounds(
    run: RunRecord, previous: RoundSummary | None, store: ModelStore, input_model: ObjectRef, layout: ModelLayout
) -> tuple[Bounds, bool]:
    """The run's bounds for a round with its norm bound resolved, and whether that is the default
    bound: the run's `max_update_norm`, else `influence.default_norm_bound` of the model the run
    started from. That bound is carried from round to round in the summaries (`norm_bound`), so it
    is measured once per run, from its first round's input model (streamed: memory one block)."""
    if run.bounds.max_update_norm is not None:
        return run.bounds, False
    if previous is not None and previous.norm_bound is not None:
        bound = previous.norm_bound
    else:
        bound = influence.default_norm_bound(model_norm(store, input_model), layout.spec.num_parameters)
    return replace(run.bounds, max_update_norm=bound), True


def _instructions(run: RunRecord, round_number: int, state: ObjectRef | None, store: ModelStore) -> dict[str, Any]:
    strategy = build_strategy(run)
    values = read_state_values(store, state, run.strategy) if state is not None else {}
    try:
        instructions = {**strategy.configure_round(round_number, values), **dp_sgd_instructions(run)}
        return check_scalars(instructions, "instructions", limits.MAX_INSTRUCTIONS)
    except Exception as exc:
        raise StrategyFailed(
            f"strategy {run.strategy!r} could not configure round {round_number} of run {run.run_id}: "
            f"{type(exc).__name__}: {exc}"
        ) from exc


# -- 2-4. the stream path and the deadline path --------------------------------------------------


def new_claim_id() -> str:
    return secrets.token_hex(8)


def _release(table: RoundTable, run_id: str, round_number: int, claim: str) -> None:
    """Give the claim back so another invocation may try; a failure here is only logged (the
    lease runs out instead), so it never hides the error that made the claim go back."""
    try:
        table.release_round(run_id, round_number, claim)
    except Exception:  # the lease is the fallback
        log.warning("could not release the claim on round %d of run %s; its lease runs out", round_number, run_id)


def try_complete_round(
    run_id: str,
    round_number: int,
    *,
    store: ModelStore,
    table: RoundTable,
    reporter: Reporter,
    settings: AggregationSettings = AggregationSettings(),
    on_aggregated: Callable[[RoundSummary], None] | None = None,
) -> RoundSummary | None:
    """Aggregate the round once every selected client has an update in, and report it to the round's
    task token. Returns the summary when this call aggregated the round, else None (still waiting,
    taken by another invocation, or already done)."""
    item = table.get_round(run_id, round_number)
    if item is None:
        return None
    record = RoundRecord.parse(item)
    if record.status == ROUND_REPORTED or record.lease_active(time.time()):
        return None
    run = table.get_run(run_id)
    if run is None:
        return None
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
        summary = _aggregate(run, round_number, record, raw, store, table, claim, False, settings)
    except (RoundNotAggregated, StrategyFailed) as exc:
        _release(table, run_id, round_number, claim)
        reporter.fail(token, type(exc).__name__, str(exc)[: limits.MAX_FAILURE_CAUSE_CHARS])
        return None
    except ClaimLost:
        return None  # another invocation took the round over: it reports
    except BaseException:
        _release(table, run_id, round_number, claim)
        raise
    if isinstance(summary, ObjectRef):  # planned for slices: the state machine fans out
        if _hold_for_slices(table, run_id, round_number, claim, summary):
            reporter.succeed(token, plan_output(store, summary))
        return None
    try:
        if not _commit(store, table, summary, claim, ROUND_AGGREGATED):
            return None  # the lease ran out and another invocation took the round over: it reports
    except RunStopped as exc:  # stopped while it was aggregated: nothing of it stays, nobody is told
        _release(table, run_id, round_number, claim)
        log.info("%s", exc)
        return None
    if on_aggregated is not None:
        on_aggregated(summary)
    reporter.succeed(token, task_output(summary, run))
    table.mark_reported(run_id, round_number)
    return summary


def complete_round_at_deadline(
    run_id: str,
    round_number: int,
    *,
    store: ModelStore,
    table: RoundTable,
    settings: AggregationSettings = AggregationSettings(),
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
        try:
            summary = _aggregate(run, round_number, record, raw, store, table, claim, True, settings)
        except ClaimLost:
            continue  # another invocation took the round over: wait for it
        except BaseException:
            _release(table, run_id, round_number, claim)
            raise
        if isinstance(summary, ObjectRef):
            if _hold_for_slices(table, run_id, round_number, claim, summary):
                return plan_output(store, summary)
            continue
        try:
            committed = _commit(store, table, summary, claim, ROUND_REPORTED)
        except RunStopped:
            _release(table, run_id, round_number, claim)
            raise
        if committed:
            if on_aggregated is not None:
                on_aggregated(summary)
            return task_output(summary, run)


# -- aggregation ---------------------------------------------------------------------------------


@dataclass
class _Intake:
    """The selected clients' items, sorted into parsed updates, rejections and refusals."""

    items: list[UpdateItem] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)
    declined: list[Rejection] = field(default_factory=list)


def _intake(raw: dict[str, dict[str, Any]], selected: list[str], on_rejected: Callable[..., None]) -> _Intake:
    intake = _Intake()
    for client in selected:
        if client not in raw:
            continue
        try:
            item = parse_client_item(raw[client])  # its key (the client's partition) must match its fields
        except InvalidMessage as exc:
            reason = f"malformed update item: {exc}"
            intake.rejected.append(Rejection(client, reason))
            on_rejected(client, raw[client], reason)
            continue
        if isinstance(item, DeclineItem):
            intake.declined.append(Rejection(client, item.reason))
        else:
            intake.items.append(item)
    return intake


def missing_clients(run_id: str, missing: list[str], table: RoundTable) -> str:
    """What a round's failure cause says of the selected clients that sent nothing: each (at most
    `limits.MAX_FAILURES_NAMED`) with its last error in the run, from its failure item, e.g.
    `; client-2: no update, its last error: round 1 failed (attempt 3) at ...: ValueError: ...`."""
    if not missing:
        return ""
    named = missing[: limits.MAX_FAILURES_NAMED]
    try:
        raw = table.get_failures(run_id, named)
    except Exception as exc:  # the cause still names the clients; the round's error stays its own
        log.warning("could not read the failure items of %s: %s", ", ".join(named), exc)
        raw = {}
    parts = []
    for client in named:
        if client not in raw:
            parts.append(f"{client}: no update and no failure reported (is its agent running? `fedstep clients`)")
            continue
        try:
            failure = FailureItem.parse(raw[client])
        except InvalidMessage as exc:
            parts.append(f"{client}: no update; its failure item is invalid: {limits.reason(str(exc))}")
            continue
        parts.append(f"{client}: no update, its last error: {failure.line()}")
    more = len(missing) - len(named)
    if more > 0:
        parts.append(f"and {more} more client(s) without an update")
    return "".join(f"; {part}" for part in parts)


def _weighted_metrics(accepted: list[tuple[UpdateItem, int]]) -> dict[str, float]:
    """Each metric averaged over the clients reporting it, weighted by their bounded examples."""
    names = sorted(set().union(*(item.metrics for item, _ in accepted))) if accepted else []
    out: dict[str, float] = {}
    for name in names:
        having = [(item.metrics[name], n) for item, n in accepted if name in item.metrics]
        total = sum(n for _, n in having)
        out[name] = round(sum(v * n for v, n in having) / total, 6)
    return out


def _check_finite(result: strategies.Aggregate) -> None:
    """InvalidAggregate unless the new weights and the strategy's state (tensors and numbers) are
    finite: checked before anything is written, so a failed round leaves no model and no state."""
    for what, named in (("aggregate", result.weights), ("strategy's state", result.state.tensors)):
        for name, tensor in named.items():
            if not tensors.all_finite(tensor):
                raise InvalidAggregate(f"the {what} tensor {name!r} is not finite; nothing was published")
    for name, value in result.state.values.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise InvalidAggregate(f"the strategy's state value {name!r} is {value}; nothing was published")


def _aggregate(
    run: RunRecord,
    round_number: int,
    record: RoundRecord,
    raw: dict[str, dict[str, Any]],
    store: ModelStore,
    table: RoundTable,
    claim: str,
    at_deadline: bool,
    settings: AggregationSettings = AggregationSettings(),
) -> RoundSummary | ObjectRef:
    """Validate, bound and aggregate the updates; write the new global model (once, under the
    claim's key). Raises QuorumNotMet / TooFewParticipants when too few valid updates remain (for
    the run or for its strategy), InvalidAggregate when the result is not finite. A model larger
    than `settings.slice_bytes` is planned for slices instead: the plan's ref."""
    selected = selected_in(record, run, round_number)
    when = f"by the deadline of round {round_number}" if at_deadline else f"in round {round_number}"
    strategy = build_strategy(run)
    strategy_needs, why = strategy.min_updates()

    def feedback(client: str, sha256: str, reason: str) -> None:
        for item in Feedback(client, run.run_id, round_number, sha256, reason, utc_now()).to_items():
            table.put_feedback(item)

    def not_enough(valid: int, rejected: list[Rejection]) -> RoundNotAggregated | None:
        if valid >= max(run.quorum, run.min_participants, strategy_needs):
            return None
        reasons = "".join(f"; {r.client_id}: {r.reason}" for r in rejected[:10])
        reasons += missing_clients(run.run_id, [c for c in selected if c not in raw], table)
        counts = f"{valid} of {len(selected)} updates {when}"
        if valid < run.quorum:
            return QuorumNotMet(f"{counts} (quorum {run.quorum}) in run {run.run_id}{reasons}")
        if valid < run.min_participants:
            return TooFewParticipants(
                f"{counts} (min_participants {run.min_participants}: fewer would publish a client's update) "
                f"in run {run.run_id}{reasons}"
            )
        if valid < strategy_needs:
            needs = f"strategy {run.strategy!r} needs at least {strategy_needs}: {why}"
            return TooFewParticipants(f"{counts} ({needs}) in run {run.run_id}{reasons}")
        return None

    intake = _intake(raw, selected, lambda client, item, reason: feedback(client, _claimed_sha(item), reason))
    declined = [Rejection(d.client_id, f"declined: {d.reason}") for d in intake.declined]
    problem = not_enough(len(intake.items), intake.rejected + declined)
    if problem:
        raise problem
    started = time.time()
    input_model = record.require_input_model()
    layout = read_layout(store, input_model)
    previous = previous_summary(table, run, round_number)
    bounds, default_norm = round_bounds(run, previous, store, input_model, layout)
    if sliced.needs_slices(input_model.bytes, settings.slice_bytes):
        return _plan(
            _Planning(run, round_number, record, intake, input_model, layout, bounds, default_norm, strategy),
            store,
            claim,
            feedback,
            not_enough,
            settings,
            started,
        )
    source = UpdateSource(
        store,
        layout,
        bounds,
        intake.items,
        on_rejected=lambda item, reason: feedback(item.client_id, item.update.sha256, reason),
        default_norm=default_norm,
    )
    state = load_state(store, record, run)
    global_model = GlobalModel(layout.spec, lambda: read_model(store, input_model, layout))
    result = _run_strategy(strategy, run, round_number, global_model, state, source, strategy_needs)
    rejected = intake.rejected + source.rejected
    problem = not_enough(len(source.accepted_items), rejected + declined)
    if problem or result is None:
        raise problem or StrategyFailed(f"strategy {run.strategy!r} returned no model in round {round_number}")
    # every check that can fail comes before the first write
    measurements = _measurements(result, run, round_number)
    accepted = source.accepted_items
    kept = _kept(result, [item.client_id for item, _ in accepted], run, round_number)
    _check_finite(result)
    data = tensors.encode(result.weights, _file_metadata(run, round_number, claim, "global"))
    result.weights.clear()  # only the encoded copy stays in memory
    state_data = result.state.encode(run.strategy) if result.state.tensors or result.state.values else None
    repeated = _count_release(run, round_number, table, claim, previous)
    epsilon, delta, budget_spent = privacy_spent(run, round_number, accepted, settings.accountant, repeated)
    global_ref, state_ref = _write_results(store, run, round_number, claim, data, state_data)
    del data
    now = time.time()
    return RoundSummary(
        run_id=run.run_id,
        round=round_number,
        selected=selected,
        participants=[item.client_id for item, _ in accepted],
        num_examples=sum(n for _, n in accepted),
        rejected=rejected,
        metrics=_weighted_metrics(accepted),
        global_model=global_ref,
        duration_s=seconds_since(record.first_issued_at, now),
        aggregation_s=round(now - started, 3),
        completed_at=utc_now(),
        bytes_aggregated=sum(item.update.bytes for item, _ in accepted),
        clipped=source.clipped,
        attempt=record.attempt,
        measurements=measurements,
        state=state_ref,
        epsilon=epsilon,
        delta=delta,
        declined=intake.declined,
        privacy_budget_spent=budget_spent,
        norm_bound=bounds.max_update_norm,
        repeated_releases=repeated,
        kept=kept,
    )


def _count_release(
    run: RunRecord, round_number: int, table: RoundTable, claim: str, previous: RoundSummary | None
) -> int:
    """Under central DP, count this aggregation's noisy model as a release in the round record before
    it is written (ClaimLost, writing nothing, if the claim no longer holds), so no model that was
    ever readable goes unaccounted: the run's repeated releases so far (`RoundSummary.repeated_releases`).
    0 for other runs."""
    if run.dp is None or not run.dp.central:
        return 0
    releases = table.count_release(run.run_id, round_number, claim)
    if releases is None:
        raise ClaimLost(f"round {round_number} of run {run.run_id} was taken over before its model was written")
    return (previous.repeated_releases if previous else 0) + releases - 1


def _write_results(
    store: ModelStore, run: RunRecord, round_number: int, claim: str, data: bytes, state_data: bytes | None
) -> tuple[ObjectRef, ObjectRef | None]:
    """Write the round's global model and the strategy's state, each once under the claim's keys; if
    the state cannot be written, the model written before it is deleted (best effort)."""
    global_ref = _write_once(store, keys.global_key(run.run_id, round_number, claim), data)
    if state_data is None:
        return global_ref, None
    try:
        return global_ref, _write_once(store, keys.state_key(run.run_id, round_number, claim), state_data)
    except BaseException:
        _discard(store, [global_ref.key])
        raise


def _discard(store: ModelStore, object_keys: list[str]) -> None:
    """Delete what a failed aggregation wrote, so no client can read it; a failure is only logged
    (the object stays behind, unreferenced, and the error that made it an orphan is the one raised)."""
    for key in object_keys:
        try:
            store.delete(key)
        except Exception:  # best effort: never hide the error being handled
            log.warning("could not delete %s, written by an aggregation that failed", key)


def _commit(store: ModelStore, table: RoundTable, summary: RoundSummary, claim: str, status: str) -> bool:
    """Commit the round's summary under the claim. False when the claim no longer holds: another
    invocation took the round over, and this one's model and state are deleted. A write whose answer
    was lost (an error, or a retried write that found its own commit) is judged from the record: only
    objects the record does not name are deleted."""
    try:
        if table.complete_round({**summary_item(summary), "status": status}, claim):
            return True
    except BaseException:
        if not _committed(table, summary):
            _discard(store, _result_keys(summary))
        raise
    if _committed(table, summary):
        return True
    _discard(store, _result_keys(summary))
    return False


def _committed(table: RoundTable, summary: RoundSummary) -> bool:
    """Whether the round record holds `summary`'s model (unknown counts as yes: nothing is deleted)."""
    try:
        record = table.get_round(summary.run_id, summary.round) or {}
    except Exception:
        return True
    model = record.get("global_model")
    return is_completed(record) and isinstance(model, dict) and model.get("key") == summary.global_model.key


def _result_keys(summary: RoundSummary) -> list[str]:
    return [summary.global_model.key] + ([summary.state.key] if summary.state else [])


@dataclass(frozen=True)
class _Planning:
    """What planning a sliced round starts from."""

    run: RunRecord
    round_number: int
    record: RoundRecord
    intake: _Intake
    input_model: ObjectRef
    layout: ModelLayout
    bounds: Bounds
    default_norm: bool
    strategy: strategies.Strategy


def _plan(
    planning: _Planning,
    store: ModelStore,
    claim: str,
    feedback: Callable[[str, str, str], None],
    not_enough: Callable[[int, list[Rejection]], RoundNotAggregated | None],
    settings: AggregationSettings,
    started: float,
) -> ObjectRef:
    """Check the updates and plan the round's slices (`fedstep.core.sliced`); the plan's ref."""
    run, round_number, record, intake = planning.run, planning.round_number, planning.record, planning.intake
    input_model, layout = planning.input_model, planning.layout
    try:
        sliced.check_sliceable(planning.strategy, input_model.bytes, settings.slice_bytes)
    except sliced.NotSliceable as exc:
        raise StrategyFailed(f"run {run.run_id}, round {round_number}: {exc}") from None
    checked = sliced.check_updates(
        store,
        layout,
        planning.bounds,
        intake.items,
        lambda item, reason: feedback(item.client_id, item.update.sha256, reason),
        default_norm=planning.default_norm,
    )
    rejected = intake.rejected + checked.rejected
    declined = [Rejection(d.client_id, f"declined: {d.reason}") for d in intake.declined]
    problem = not_enough(len(checked.accepted), rejected + declined)
    if problem:
        raise problem
    offsets, data_start = sliced.input_offsets(store, input_model, layout)
    output_key = keys.global_key(run.run_id, round_number, claim)
    accepted = [(item, planned.examples) for item, planned in checked.accepted]
    epsilon, delta, budget_spent = privacy_spent(run, round_number, accepted, settings.accountant)
    draft = RoundSummary(
        run_id=run.run_id,
        round=round_number,
        selected=selected_in(record, run, round_number),
        participants=[item.client_id for item, _ in accepted],
        num_examples=sum(n for _, n in accepted),
        rejected=rejected,
        metrics=_weighted_metrics(accepted),
        global_model=ObjectRef(output_key, "0" * 64, 0),
        duration_s=0.0,
        aggregation_s=0.0,
        completed_at="",
        bytes_aggregated=sum(item.update.bytes for item, _ in accepted),
        clipped=checked.clipped,
        attempt=record.attempt,
        epsilon=epsilon,
        delta=delta,
        declined=intake.declined,
        privacy_budget_spent=budget_spent,
        norm_bound=planning.bounds.max_update_norm,
    )
    plan = sliced.SlicePlan(
        run_id=run.run_id,
        round=round_number,
        claim=claim,
        strategy=run.strategy,
        strategy_params=dict(run.strategy_params),
        input_model=input_model,
        input_offsets=offsets,
        input_data_start=data_start,
        output_key=output_key,
        upload_id=cast(MultipartStore, store).start_upload(output_key),
        metadata=_file_metadata(run, round_number, claim, "global"),
        shapes=dict(layout.spec.shapes),
        slice_elements=sliced.slice_elements_for(layout.spec.num_parameters, int(settings.slice_bytes or 0)),
        updates=[planned for _, planned in checked.accepted],
        summary={
            **draft.to_dict(),
            "first_issued_at": record.first_issued_at,
            "aggregation_started": started,  # the plan's checks, the slices and the assembly count
        },
    )
    log.info("round %s/%d: planned %d slices of %d updates", run.run_id, round_number, plan.slice_count, len(accepted))
    return _write_once(store, keys.plan_key(run.run_id, round_number, claim), plan.encode())


def _hold_for_slices(table: RoundTable, run_id: str, round_number: int, claim: str, plan: ObjectRef) -> bool:
    """Keep the round claimed by its plan for `sliced.SLICED_LEASE_S`; False if the claim was lost."""
    return table.hold_round(run_id, round_number, claim, time.time() + sliced.SLICED_LEASE_S, asdict(plan))


def plan_output(store: ModelStore, plan_ref: ObjectRef) -> dict[str, Any]:
    """The round's task output when it is aggregated by slices: the plan and the slices to fan out to
    (at most `sliced.MAX_SLICES` numbers); the state machine's "Aggregate slices" map reads it."""
    plan = sliced.read_plan(store, plan_ref)
    return {"sliced": {"plan": asdict(plan_ref), "slices": list(range(plan.slice_count))}}


def aggregate_slice(plan_ref: ObjectRef, index: int, store: ModelStore) -> dict[str, float]:
    """One slice of a planned round, uploaded as its part; its measurements (the Map's result)."""
    plan = sliced.read_plan(store, plan_ref)
    try:
        return sliced.aggregate_slice(plan, index, store, cast(MultipartStore, store))
    except (ValueError, FedstepError) as exc:
        raise StrategyFailed(
            f"strategy {plan.strategy!r} failed on slice {index} of round {plan.round} of run {plan.run_id}: "
            f"{type(exc).__name__}: {exc}"
        ) from exc


def assemble_round(
    plan_ref: ObjectRef,
    results: Any,
    *,
    store: ModelStore,
    table: RoundTable,
    on_aggregated: Callable[[RoundSummary], None] | None = None,
) -> dict[str, Any]:
    """Join a planned round's slices into its global model, commit its summary under the plan's
    claim and return the round's task output. A repeat (a retried call) returns the same output."""
    plan = sliced.read_plan(store, plan_ref)
    run = table.get_run(plan.run_id)
    if run is None:
        raise FedstepError(f"run {plan.run_id} has no run record")
    record = table.get_round(plan.run_id, plan.round) or {}
    if is_completed(record):
        return task_output(RoundSummary.parse(record), run)
    measurements = sliced.combine_measurements(sliced.check_results(results, plan.slice_count))
    measurements["slices"] = float(plan.slice_count)  # shown with the round: it was aggregated by slices
    cast(MultipartStore, store).complete_upload(plan.output_key, plan.upload_id, plan.slice_count)
    sha256, size = stored_sha256(store, plan.output_key)
    model = ObjectRef(plan.output_key, sha256, size)
    draft = dict(plan.summary)
    first_issued_at = str(draft.pop("first_issued_at", ""))
    started = float(draft.pop("aggregation_started", time.time()))
    now = time.time()
    summary = replace(
        RoundSummary.parse(draft),
        global_model=model,
        measurements=check_measurements(measurements, "measurements"),
        duration_s=seconds_since(first_issued_at, now),
        aggregation_s=round(now - started, 3),
        completed_at=utc_now(),
    )
    try:
        committed = table.complete_round({**summary_item(summary), "status": ROUND_REPORTED}, plan.claim)
    except RunStopped:
        _discard(store, [plan.output_key])
        _release(table, plan.run_id, plan.round, plan.claim)
        raise
    if not committed:
        record = table.get_round(plan.run_id, plan.round) or {}
        if not _committed(table, summary):  # another claim's model, or none: this one is an orphan
            _discard(store, [plan.output_key])
        if is_completed(record):
            return task_output(RoundSummary.parse(record), run)
        raise FedstepError(f"round {plan.round} of run {plan.run_id}: the plan's claim no longer holds the round")
    if on_aggregated is not None:
        on_aggregated(summary)
    return task_output(summary, run)


def _run_strategy(
    strategy: strategies.Strategy,
    run: RunRecord,
    round_number: int,
    global_model: GlobalModel,
    state: strategies.ServerState,
    source: UpdateSource,
    needs: int = 1,
) -> strategies.Aggregate | None:
    """The strategy's result; None when it raised because fewer updates were valid than it `needs`
    (the caller reports the quorum or TooFewParticipants), StrategyFailed when it raised while there
    were enough. UnversionedStore (a deployment fault, not the strategy's) passes as it is."""
    try:
        return strategy.aggregate(round_number, global_model, state, source)
    except UnversionedStore:
        raise
    except Exception as exc:
        source.accepted()  # finish checking the updates: were there enough to aggregate?
        if len(source.accepted_items) < max(1, needs):
            return None
        raise StrategyFailed(
            f"strategy {run.strategy!r} failed in round {round_number} of run {run.run_id}: {type(exc).__name__}: {exc}"
        ) from exc


def _measurements(result: strategies.Aggregate, run: RunRecord, round_number: int) -> dict[str, float]:
    try:
        return check_measurements(result.measurements, "measurements")
    except InvalidMessage as exc:
        raise StrategyFailed(f"strategy {run.strategy!r} in round {round_number}: {exc}") from None


def _kept(result: strategies.Aggregate, participants: list[str], run: RunRecord, round_number: int) -> list[str] | None:
    """The clients the strategy says it kept (`RoundSummary.kept`); StrategyFailed if it names others."""
    try:
        return check_kept(result.kept, participants, "kept")
    except InvalidMessage as exc:
        raise StrategyFailed(f"strategy {run.strategy!r} in round {round_number}: {exc}") from None


def _file_metadata(run: RunRecord, round_number: int, claim: str, kind: str) -> dict[str, object]:
    return {"schema": SCHEMA_VERSION, "kind": kind, "run_id": run.run_id, "round": round_number, "version": claim}


def _write_once(store: ModelStore, key: str, data: bytes) -> ObjectRef:
    """Write a round's result object once; its reference."""
    if not store.put_once(key, data):
        raise FedstepError(f"{key} exists already: a claim id was reused")
    return ObjectRef(key, tensors.sha256_hex(data), len(data))


def load_state(store: ModelStore, record: RoundRecord, run: RunRecord) -> strategies.ServerState:
    """The state the round starts from (recorded when the round was opened): empty for none."""
    ref = record.input_state
    if ref is None:
        return strategies.ServerState()
    data = store.get(ref.key)
    if tensors.sha256_hex(data) != ref.sha256:
        raise FedstepError(f"the strategy state {ref.key} does not match its sha256")
    return strategies.ServerState.decode(data, run.strategy)


def read_state_values(store: ModelStore, ref: ObjectRef, strategy: str) -> dict[str, Any]:
    """The JSON values of a state file, from a ranged read of its header only."""
    metadata = tensors.read_metadata(read_header(store, ref))
    if metadata.get("strategy") != strategy or not isinstance(metadata.get("values", {}), dict):
        raise FedstepError(f"{ref.key} is not a state of strategy {strategy!r}")
    return dict(metadata.get("values", {}))


def _claimed_sha(raw_item: dict[str, Any]) -> str:
    update = raw_item.get("update")
    sha = update.get("sha256") if isinstance(update, dict) else None
    return sha if isinstance(sha, str) and len(sha) == 64 else ""


def summary_item(summary: RoundSummary) -> dict[str, Any]:
    """The round record's fields once the round is aggregated."""
    return {**keys.round_item_key(summary.run_id, summary.round), "kind": "round", **summary.to_dict()}


def task_output(summary: RoundSummary, run: RunRecord) -> dict[str, Any]:
    """What the round's task returns to Step Functions: this round in brief, the new model, and
    whether the run's target is reached. Its size does not grow with the number of rounds."""
    return {
        "summary": summary.brief(),
        "global_model": asdict(summary.global_model),
        "target_reached": bool(run.target and run.target.reached(summary.metrics)),
        "privacy_budget_spent": summary.privacy_budget_spent,
    }


def round_history(table: RoundTable, run_id: str, up_to: int, run: RunRecord | None) -> list[RoundSummary]:
    """Summaries of rounds 1..`up_to`, following `resumed_from` back to the runs this one continues."""
    own = [s for s in (RoundSummary.parse(r) for r in table.list_rounds(run_id)) if s.round <= up_to]
    if run is None or not run.resumed_from:
        return own
    first = min((s.round for s in own), default=up_to + 1)
    earlier = round_history(table, run.resumed_from, first - 1, table.get_run(run.resumed_from))
    return earlier + own
