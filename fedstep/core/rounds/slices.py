"""A round too large for one function: planned (its updates checked, its slices laid out), held for
the slices under the claim, each slice aggregated as a part, then assembled and committed."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import Any, cast

from fedstep.core import keys, sliced, strategies
from fedstep.core.errors import FedstepError, RunStopped
from fedstep.core.manifest import ManifestEntry, UpdateManifest
from fedstep.core.ports import ModelStore, MultipartStore, RoundTable, SecureAggregation
from fedstep.core.round_record import RoundRecord
from fedstep.core.rounds.errors import RoundNotAggregated, StrategyFailed
from fedstep.core.rounds.inputs import selected_in
from fedstep.core.rounds.intake import Intake
from fedstep.core.rounds.privacy import privacy_spent
from fedstep.core.rounds.results import discard, file_metadata, is_committed, release, write_once
from fedstep.core.rounds.settings import AggregationSettings
from fedstep.core.rounds.summary import DRAFT_TIMING, Tally, build_summary, finished, summary_item, task_output
from fedstep.core.schemas import (
    ROUND_REPORTED,
    Bounds,
    ObjectRef,
    Rejection,
    RoundSummary,
    RunRecord,
    check_measurements,
    is_completed,
)
from fedstep.core.update_source import ModelLayout, stored_sha256

log = logging.getLogger(__package__)


@dataclass(frozen=True)
class Planning:
    """What planning a sliced round starts from."""

    run: RunRecord
    round_number: int
    record: RoundRecord
    intake: Intake
    input_model: ObjectRef
    layout: ModelLayout
    bounds: Bounds
    default_norm: bool
    strategy: strategies.Strategy


def plan_round(
    planning: Planning,
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
    output_key = keys.global_key(run.run_id, round_number, claim)
    accepted = [(item, planned.examples) for item, planned in checked.accepted]
    manifest = UpdateManifest(
        run.run_id,
        round_number,
        claim,
        [ManifestEntry.of(item, p.version, p.examples, p.scale) for item, p in checked.accepted],
    )
    manifest_ref = write_once(store, keys.manifest_key(run.run_id, round_number, claim), manifest.encode())
    draft = build_summary(
        run,
        round_number,
        record,
        selected_in(record, run, round_number),
        Tally(accepted, rejected, intake.declined, checked.clipped),
        ObjectRef(output_key, "0" * 64, 0),
        DRAFT_TIMING,
        privacy_spent(run, round_number, accepted, settings.accountant),
        planning.bounds.max_update_norm,
        manifest=manifest_ref,
    )
    plan = new_plan(
        Planned(run, round_number, record, claim, input_model, layout, started),
        store,
        settings,
        [planned for _, planned in checked.accepted],
        draft,
    )
    log.info("round %s/%d: planned %d slices of %d updates", run.run_id, round_number, plan.slice_count, len(accepted))
    return write_once(store, keys.plan_key(run.run_id, round_number, claim), plan.encode())


@dataclass(frozen=True)
class Planned:
    """A claimed round being planned for slices: its run, record and claim, its input model (and that
    model's layout), and when its aggregation started (time.time())."""

    run: RunRecord
    round_number: int
    record: RoundRecord
    claim: str
    input_model: ObjectRef
    layout: ModelLayout
    started: float


def new_plan(
    planned: Planned,
    store: ModelStore,
    settings: AggregationSettings,
    updates: list[sliced.PlannedUpdate],
    draft: RoundSummary,
    secure: dict[str, Any] | None = None,
) -> sliced.SlicePlan:
    """The round's slice plan: where the input model's tensors lie, the new model's multipart upload
    (started here), the slices' size, the updates the slices read, the summary's draft (`secure`: a
    secure round's unmasking, `sliced.SlicePlan.secure`)."""
    run, layout = planned.run, planned.layout
    offsets, data_start = sliced.input_offsets(store, planned.input_model, layout)
    output_key = keys.global_key(run.run_id, planned.round_number, planned.claim)
    return sliced.SlicePlan(
        run_id=run.run_id,
        round=planned.round_number,
        claim=planned.claim,
        strategy=run.strategy,
        strategy_params=dict(run.strategy_params),
        input_model=planned.input_model,
        input_offsets=offsets,
        input_data_start=data_start,
        output_key=output_key,
        upload_id=cast(MultipartStore, store).start_upload(output_key),
        metadata=file_metadata(run, planned.round_number, planned.claim, "global"),
        shapes=dict(layout.spec.shapes),
        slice_elements=sliced.slice_elements_for(layout.spec.num_parameters, int(settings.slice_bytes or 0)),
        updates=updates,
        summary={
            **draft.to_dict(),
            "first_issued_at": planned.record.first_issued_at,
            "aggregation_started": planned.started,  # the plan's checks, the slices and the assembly count
        },
        secure=secure,
    )


def hold_for_slices(table: RoundTable, run_id: str, round_number: int, claim: str, plan: ObjectRef) -> bool:
    """Keep the round claimed by its plan for `sliced.SLICED_LEASE_S`; False if the claim was lost."""
    return table.hold_round(run_id, round_number, claim, time.time() + sliced.SLICED_LEASE_S, asdict(plan))


def plan_output(store: ModelStore, plan_ref: ObjectRef) -> dict[str, Any]:
    """The round's task output when it is aggregated by slices: the plan and the slices to fan out to
    (at most `sliced.MAX_SLICES` numbers); the state machine's "Aggregate slices" map reads it."""
    plan = sliced.read_plan(store, plan_ref)
    return {"sliced": {"plan": asdict(plan_ref), "slices": list(range(plan.slice_count))}}


def aggregate_slice(
    plan_ref: ObjectRef, index: int, store: ModelStore, secure: SecureAggregation | None = None
) -> dict[str, float]:
    """One slice of a planned round, uploaded as its part; its measurements (the Map's result). A
    secure round's slice needs `secure` (it unmasks its range of the sum)."""
    plan = sliced.read_plan(store, plan_ref)
    try:
        return sliced.aggregate_slice(plan, index, store, cast(MultipartStore, store), secure)
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
    summary = replace(
        RoundSummary.parse(draft),
        global_model=model,
        measurements=check_measurements(measurements, "measurements"),
        **finished(first_issued_at, started),
    )
    try:
        committed = table.complete_round({**summary_item(summary), "status": ROUND_REPORTED}, plan.claim)
    except RunStopped:
        discard(store, [plan.output_key])
        release(table, plan.run_id, plan.round, plan.claim)
        raise
    if not committed:
        record = table.get_round(plan.run_id, plan.round) or {}
        if not is_committed(table, summary):  # another claim's model, or none: this one is an orphan
            discard(store, [plan.output_key])
        if is_completed(record):
            return task_output(RoundSummary.parse(record), run)
        raise FedstepError(f"round {plan.round} of run {plan.run_id}: the plan's claim no longer holds the round")
    if on_aggregated is not None:
        on_aggregated(summary)
    return task_output(summary, run)
