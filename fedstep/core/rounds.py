"""A round, from publication to report: publish it, claim it, aggregate its updates once, report once.

This is the logic behind the aggregation function, written against the ports in `fedstep.core.ports` so
it runs without AWS. Exactly once, by construction (DESIGN invariant 1):

1. **Open.** When the state machine publishes a round, `publish_round` records the attempt's task
   token in the round record (a server record: no client ever sees a token) and sends the round
   message to the selected clients.
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

A round that cannot be aggregated (too few valid updates) is given back (the claim released) and
fails by name: QuorumNotMet or TooFewParticipants; the state machine retries it or fails the run.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any, cast

from fedstep import SCHEMA_VERSION
from fedstep.core import keys, limits, sliced, strategies, tensors
from fedstep.core.clock import seconds_since, utc_now
from fedstep.core.dp import Accountant, DPAggregation, round_epsilon
from fedstep.core.errors import FedstepError
from fedstep.core.ports import ModelStore, MultipartStore, Publisher, Reporter, RoundTable
from fedstep.core.schemas import (
    ROUND_AGGREGATED,
    ROUND_CLAIMED,
    ROUND_REPORTED,
    DeclineItem,
    Feedback,
    InvalidMessage,
    ObjectRef,
    Rejection,
    RoundMessage,
    RoundSummary,
    RunRecord,
    UpdateItem,
    check_measurements,
    check_scalars,
    is_completed,
    parse_client_item,
)
from fedstep.core.strategies import GlobalModel
from fedstep.core.update_source import (
    ModelLayout,
    UpdateSource,
    read_header,
    read_layout,
    read_model,
    stored_sha256,
)

log = logging.getLogger(__name__)


class RoundNotAggregated(FedstepError):
    """A round that cannot be aggregated; its class name is the Step Functions error name."""


class QuorumNotMet(RoundNotAggregated):
    """Fewer valid updates than the run's quorum."""


class TooFewParticipants(RoundNotAggregated):
    """Fewer valid updates than the run's `min_participants`: the aggregate would expose them."""


class InvalidAggregate(FedstepError):
    """The strategy produced non-finite weights; nothing was written."""


class StrategyFailed(FedstepError):
    """The run's strategy raised, or returned something unusable: reported as what it is (the
    strategy, the round, the exception), never as a quorum problem. Not retried: it would fail again."""


class RoundBusy(FedstepError):
    """Another invocation holds the round's claim and has not finished; the state machine retries."""


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
    state = input_state(table, run, round_number)
    instructions = _instructions(run, round_number, state, store)
    if not table.open_round(run_id, round_number, attempt, task_token, issued_at, global_model, state):
        existing = table.get_round(run_id, round_number) or {}
        if not is_completed(existing):
            raise RoundBusy(f"round {round_number} of run {run_id} is being aggregated; it cannot be published")
        reporter.succeed(task_token, task_output(RoundSummary.parse(existing), run))
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
    publisher.publish(message.to_dict(), run.selected(round_number))
    return message


def build_strategy(run: RunRecord) -> strategies.Strategy:
    """The run's strategy with its parameters, wrapped in client-level DP when the run has it
    (checked by `fedstep start`; StrategyFailed if not)."""
    try:
        strategy = strategies.build(run.strategy, run.strategy_params)
        if run.dp is not None and run.dp.central:
            return DPAggregation(strategy, run.dp, expected_participants(run))
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
    """The clients each round selects (DP-FedAvg divides the noisy sum by it)."""
    return run.clients_per_round or len(run.clients)


def privacy_spent(
    run: RunRecord, round_number: int, accepted: list[tuple[UpdateItem, int]], accountant: Accountant | None
) -> tuple[float | None, float | None, bool]:
    """(epsilon, delta, budget spent) after `round_number` rounds: client-level from the accountant
    (central modes; spent when one more round would pass the budget), or the largest record-level
    epsilon a participant reported (dp-sgd); (None, None, False) without DP."""
    dp = run.dp
    if dp is None:
        return None, None, False
    if not dp.central:
        reported = [item.privacy["epsilon"] for item, _ in accepted if "epsilon" in item.privacy]
        return (max(reported) if reported else None), dp.delta, False
    if accountant is None:
        raise FedstepError(f"run {run.run_id} has differential privacy but the function has no accountant")
    expected, population = expected_participants(run), len(run.clients)
    epsilon = round_epsilon(dp, accountant, expected, population, round_number)
    budget = dp.epsilon_budget
    spent = budget is not None and round_epsilon(dp, accountant, expected, population, round_number + 1) > budget
    return round(epsilon, 6), dp.delta, spent


def input_state(table: RoundTable, run: RunRecord, round_number: int) -> ObjectRef | None:
    """The strategy's state a round starts from: the state after the previous round of this run, or
    for the run's first round the state it was started with (a resumed run's `initial_state`)."""
    previous = table.get_round(run.run_id, round_number - 1) if round_number > 1 else None
    if previous is not None and is_completed(previous):
        return RoundSummary.parse(previous).state
    return run.initial_state


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


def _lease_active(record: dict[str, Any], now: float) -> bool:
    return record.get("status") == ROUND_CLAIMED and float(record.get("lease_until", 0)) > now


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
    record = table.get_round(run_id, round_number)
    if record is None or record.get("status") == ROUND_REPORTED or _lease_active(record, time.time()):
        return None
    run = table.get_run(run_id)
    if run is None:
        return None
    if record.get("status") == ROUND_AGGREGATED:  # the writer crashed before reporting: report for it
        reporter.succeed(record["task_token"], task_output(RoundSummary.parse(record), run))
        table.mark_reported(run_id, round_number)
        return None
    selected = run.selected(round_number)
    raw = table.get_updates(run_id, round_number, selected)
    if set(selected) - set(raw):
        log.info("round %s/%d: %d of %d updates in", run_id, round_number, len(raw), len(selected))
        return None
    claim = new_claim_id()
    now = time.time()
    record = table.claim_round(run_id, round_number, claim, now, now + settings.lease_s)
    if record is None:
        return None
    token = str(record.get("task_token", ""))  # as of the claim: a retry may have replaced it
    try:
        summary = _aggregate(run, round_number, record, raw, store, table, claim, False, settings)
    except (RoundNotAggregated, StrategyFailed) as exc:
        _release(table, run_id, round_number, claim)
        reporter.fail(token, type(exc).__name__, str(exc)[: limits.MAX_FAILURE_CAUSE_CHARS])
        return None
    except BaseException:
        _release(table, run_id, round_number, claim)
        raise
    if isinstance(summary, ObjectRef):  # planned for slices: the state machine fans out
        if _hold_for_slices(table, run_id, round_number, claim, summary):
            reporter.succeed(token, plan_output(store, summary))
        return None
    if not table.complete_round({**summary_item(summary), "status": ROUND_AGGREGATED}, claim):
        return None  # the lease ran out and another invocation took the round over: it reports
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
    give_up = time.monotonic() + settings.wait_s
    while True:
        record = table.get_round(run_id, round_number)
        if record is None:
            raise FedstepError(f"round {round_number} of run {run_id} was never published")
        if is_completed(record):
            return task_output(RoundSummary.parse(record), run)
        if record.get("plan"):  # planned for slices (its report may have been lost): fan out again
            return plan_output(store, ObjectRef.parse(record["plan"], "round record plan"))
        now = time.time()
        if _lease_active(record, now):
            if time.monotonic() > give_up:
                raise RoundBusy(f"round {round_number} of run {run_id} is still being aggregated by another invocation")
            sleep(1.0)
            continue
        claim = new_claim_id()
        record = table.claim_round(run_id, round_number, claim, now, now + settings.lease_s)
        if record is None:
            continue
        raw = table.get_updates(run_id, round_number, run.selected(round_number))
        try:
            summary = _aggregate(run, round_number, record, raw, store, table, claim, True, settings)
        except BaseException:
            _release(table, run_id, round_number, claim)
            raise
        if isinstance(summary, ObjectRef):
            if _hold_for_slices(table, run_id, round_number, claim, summary):
                return plan_output(store, summary)
            continue
        if table.complete_round({**summary_item(summary), "status": ROUND_REPORTED}, claim):
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


def _weighted_metrics(accepted: list[tuple[UpdateItem, int]]) -> dict[str, float]:
    """Each metric averaged over the clients reporting it, weighted by their bounded examples."""
    names = sorted(set().union(*(item.metrics for item, _ in accepted))) if accepted else []
    out: dict[str, float] = {}
    for name in names:
        having = [(item.metrics[name], n) for item, n in accepted if name in item.metrics]
        total = sum(n for _, n in having)
        out[name] = round(sum(v * n for v, n in having) / total, 6)
    return out


def _check_finite(weights: tensors.Tensors) -> None:
    for name, tensor in weights.items():
        if not tensors.all_finite(tensor):
            raise InvalidAggregate(f"the aggregate's tensor {name!r} is not finite; nothing was published")


def _aggregate(
    run: RunRecord,
    round_number: int,
    record: dict[str, Any],
    raw: dict[str, dict[str, Any]],
    store: ModelStore,
    table: RoundTable,
    claim: str,
    at_deadline: bool,
    settings: AggregationSettings = AggregationSettings(),
) -> RoundSummary | ObjectRef:
    """Validate, bound and aggregate the updates; write the new global model (once, under the
    claim's key). Raises QuorumNotMet / TooFewParticipants when too few valid updates remain. A
    model larger than `settings.slice_bytes` is planned for slices instead: the plan's ref."""
    selected = run.selected(round_number)
    when = f"by the deadline of round {round_number}" if at_deadline else f"in round {round_number}"

    def feedback(client: str, sha256: str, reason: str) -> None:
        for item in Feedback(client, run.run_id, round_number, sha256, reason, utc_now()).to_items():
            table.put_feedback(item)

    def not_enough(valid: int, rejected: list[Rejection]) -> RoundNotAggregated | None:
        reasons = "".join(f"; {r.client_id}: {r.reason}" for r in rejected[:10])
        counts = f"{valid} of {len(selected)} updates {when}"
        if valid < run.quorum:
            return QuorumNotMet(f"{counts} (quorum {run.quorum}) in run {run.run_id}{reasons}")
        if valid < run.min_participants:
            return TooFewParticipants(
                f"{counts} (min_participants {run.min_participants}: fewer would publish a client's update) "
                f"in run {run.run_id}{reasons}"
            )
        return None

    intake = _intake(raw, selected, lambda client, item, reason: feedback(client, _claimed_sha(item), reason))
    declined = [Rejection(d.client_id, f"declined: {d.reason}") for d in intake.declined]
    problem = not_enough(len(intake.items), intake.rejected + declined)
    if problem:
        raise problem
    started = time.time()
    input_model = ObjectRef.parse(record["input_model"], "round record input_model")
    layout = read_layout(store, input_model)
    if sliced.needs_slices(input_model.bytes, settings.slice_bytes):
        return _plan(
            run,
            round_number,
            record,
            intake,
            input_model,
            layout,
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
        run.bounds,
        intake.items,
        on_rejected=lambda item, reason: feedback(item.client_id, item.update.sha256, reason),
    )
    strategy = build_strategy(run)
    state = load_state(store, record, run)
    global_model = GlobalModel(layout.spec, lambda: read_model(store, input_model, layout))
    result = _run_strategy(strategy, run, round_number, global_model, state, source)
    rejected = intake.rejected + source.rejected
    problem = not_enough(len(source.accepted_items), rejected + declined)
    if problem or result is None:
        raise problem or StrategyFailed(f"strategy {run.strategy!r} returned no model in round {round_number}")
    _check_finite(result.weights)
    measurements = _measurements(result, run, round_number)
    data = tensors.encode(result.weights, _file_metadata(run, round_number, claim, "global"))
    result.weights.clear()  # only the encoded copy stays in memory
    global_ref = _write_once(store, keys.global_key(run.run_id, round_number, claim), data)
    del data
    state_ref = _save_state(store, result.state, run, round_number, claim)
    now = time.time()
    accepted = source.accepted_items
    epsilon, delta, budget_spent = privacy_spent(run, round_number, accepted, settings.accountant)
    return RoundSummary(
        run_id=run.run_id,
        round=round_number,
        selected=selected,
        participants=[item.client_id for item, _ in accepted],
        num_examples=sum(n for _, n in accepted),
        rejected=rejected,
        metrics=_weighted_metrics(accepted),
        global_model=global_ref,
        duration_s=seconds_since(str(record.get("first_issued_at", "")), now),
        aggregation_s=round(now - started, 3),
        completed_at=utc_now(),
        bytes_aggregated=sum(item.update.bytes for item, _ in accepted),
        clipped=source.clipped,
        attempt=int(record.get("attempt", 0)),
        measurements=measurements,
        state=state_ref,
        epsilon=epsilon,
        delta=delta,
        declined=intake.declined,
        privacy_budget_spent=budget_spent,
    )


def _plan(
    run: RunRecord,
    round_number: int,
    record: dict[str, Any],
    intake: _Intake,
    input_model: ObjectRef,
    layout: ModelLayout,
    store: ModelStore,
    claim: str,
    feedback: Callable[[str, str, str], None],
    not_enough: Callable[[int, list[Rejection]], RoundNotAggregated | None],
    settings: AggregationSettings,
    started: float,
) -> ObjectRef:
    """Check the updates and plan the round's slices (`fedstep.core.sliced`); the plan's ref."""
    strategy = build_strategy(run)
    try:
        sliced.check_sliceable(strategy, input_model.bytes, settings.slice_bytes)
    except sliced.NotSliceable as exc:
        raise StrategyFailed(f"run {run.run_id}, round {round_number}: {exc}") from None
    checked = sliced.check_updates(
        store,
        layout,
        run.bounds,
        intake.items,
        lambda item, reason: feedback(item.client_id, item.update.sha256, reason),
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
        selected=run.selected(round_number),
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
        attempt=int(record.get("attempt", 0)),
        epsilon=epsilon,
        delta=delta,
        declined=intake.declined,
        privacy_budget_spent=budget_spent,
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
            "first_issued_at": str(record.get("first_issued_at", "")),
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
    if not table.complete_round({**summary_item(summary), "status": ROUND_REPORTED}, plan.claim):
        record = table.get_round(plan.run_id, plan.round) or {}
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
) -> strategies.Aggregate | None:
    """The strategy's result; None when it raised because no update was valid (the caller reports
    the quorum), StrategyFailed when it raised while there were valid updates."""
    try:
        return strategy.aggregate(round_number, global_model, state, source)
    except Exception as exc:
        source.accepted()  # finish checking the updates: were there any to aggregate?
        if not source.accepted_items:
            return None
        raise StrategyFailed(
            f"strategy {run.strategy!r} failed in round {round_number} of run {run.run_id}: {type(exc).__name__}: {exc}"
        ) from exc


def _measurements(result: strategies.Aggregate, run: RunRecord, round_number: int) -> dict[str, float]:
    try:
        return check_measurements(result.measurements, "measurements")
    except InvalidMessage as exc:
        raise StrategyFailed(f"strategy {run.strategy!r} in round {round_number}: {exc}") from None


def _file_metadata(run: RunRecord, round_number: int, claim: str, kind: str) -> dict[str, object]:
    return {"schema": SCHEMA_VERSION, "kind": kind, "run_id": run.run_id, "round": round_number, "version": claim}


def _write_once(store: ModelStore, key: str, data: bytes) -> ObjectRef:
    """Write a round's result object once; its reference."""
    if not store.put_once(key, data):
        raise FedstepError(f"{key} exists already: a claim id was reused")
    return ObjectRef(key, tensors.sha256_hex(data), len(data))


def _save_state(
    store: ModelStore, state: strategies.ServerState, run: RunRecord, round_number: int, claim: str
) -> ObjectRef | None:
    """Write the strategy's state after the round (once); None for an empty state."""
    if not state.tensors and not state.values:
        return None
    for name, tensor in state.tensors.items():
        if not tensors.all_finite(tensor):
            raise InvalidAggregate(f"the strategy's state tensor {name!r} is not finite; nothing was published")
    return _write_once(store, keys.state_key(run.run_id, round_number, claim), state.encode(run.strategy))


def load_state(store: ModelStore, record: dict[str, Any], run: RunRecord) -> strategies.ServerState:
    """The state the round starts from (recorded when the round was opened): empty for none."""
    raw = record.get("input_state")
    if not raw:
        return strategies.ServerState()
    ref = ObjectRef.parse(raw, "round record input_state")
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
