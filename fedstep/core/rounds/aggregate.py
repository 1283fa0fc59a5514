"""Steps 2-3 of a round, for the claim's holder: validate, bound and aggregate the updates, run every
check that can fail, then write the new global model (and the strategy's state) once under the claim."""

from __future__ import annotations

import math
import time
from typing import Any

from fedstep.core import sliced, strategies, tensors
from fedstep.core.manifest import ManifestEntry, UpdateManifest
from fedstep.core.ports import ModelStore, RoundTable
from fedstep.core.round_record import RoundRecord
from fedstep.core.rounds.errors import (
    InvalidAggregate,
    QuorumNotMet,
    RoundNotAggregated,
    StrategyFailed,
    TooFewParticipants,
)
from fedstep.core.rounds.inputs import build_strategy, load_state, previous_summary, round_bounds, selected_in
from fedstep.core.rounds.intake import claimed_sha, missing_clients, sort_items
from fedstep.core.rounds.privacy import count_release, privacy_spent
from fedstep.core.rounds.results import file_metadata, send_feedback, write_results
from fedstep.core.rounds.settings import DEFAULT_SETTINGS, AggregationSettings
from fedstep.core.rounds.slices import Planning, plan_round
from fedstep.core.rounds.summary import Tally, build_summary, finished
from fedstep.core.schemas import (
    InvalidMessage,
    ObjectRef,
    Rejection,
    RoundSummary,
    RunRecord,
    check_kept,
    check_measurements,
)
from fedstep.core.strategies import GlobalModel
from fedstep.core.update_source import UnversionedStore, UpdateSource, read_layout, read_model


def aggregate_round(
    run: RunRecord,
    round_number: int,
    record: RoundRecord,
    raw: dict[str, dict[str, Any]],
    store: ModelStore,
    table: RoundTable,
    claim: str,
    at_deadline: bool,
    settings: AggregationSettings = DEFAULT_SETTINGS,
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
        send_feedback(table, run.run_id, round_number, client, sha256, reason)

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

    intake = sort_items(raw, selected, lambda client, item, reason: feedback(client, claimed_sha(item), reason))
    declined = [Rejection(d.client_id, f"declined: {d.reason}") for d in intake.declined]
    problem = not_enough(len(intake.items), intake.rejected + declined)
    if problem:
        raise problem
    started = time.time()
    input_model = record.require_input_model()
    layout = read_layout(store, input_model, run.codec)
    previous = previous_summary(table, run, round_number)
    bounds, default_norm = round_bounds(run, previous, store, input_model, layout)
    if sliced.needs_slices(input_model.bytes, settings.slice_bytes):
        return plan_round(
            Planning(run, round_number, record, intake, input_model, layout, bounds, default_norm, strategy),
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
    measurements = strategy_measurements(result, run, round_number)
    accepted = source.accepted_items
    kept = kept_by_strategy(result, [item.client_id for item, _ in accepted], run, round_number)
    check_finite(result)
    data = tensors.encode(result.weights, file_metadata(run, round_number, claim, "global"))
    result.weights.clear()  # only the encoded copy stays in memory
    state_data = result.state.encode(run.strategy) if result.state.tensors or result.state.values else None
    repeated = count_release(run, round_number, table, claim, previous)
    privacy = privacy_spent(run, round_number, accepted, settings.accountant, repeated)
    manifest = UpdateManifest(
        run.run_id,
        round_number,
        claim,
        [ManifestEntry.of(c.item, c.version, c.examples, c.scale) for c in source.admitted],
    )
    global_ref, state_ref, manifest_ref = write_results(store, run, round_number, claim, data, state_data, manifest)
    del data
    return build_summary(
        run,
        round_number,
        record,
        selected,
        Tally(accepted, rejected, intake.declined, source.clipped),
        global_ref,
        finished(record.first_issued_at, started),
        privacy,
        bounds.max_update_norm,
        measurements=measurements,
        state=state_ref,
        repeated_releases=repeated,
        kept=kept,
        manifest=manifest_ref,
    )


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


def strategy_measurements(result: strategies.Aggregate, run: RunRecord, round_number: int) -> dict[str, float]:
    try:
        return check_measurements(result.measurements, "measurements")
    except InvalidMessage as exc:
        raise StrategyFailed(f"strategy {run.strategy!r} in round {round_number}: {exc}") from None


def kept_by_strategy(
    result: strategies.Aggregate, participants: list[str], run: RunRecord, round_number: int
) -> list[str] | None:
    """The clients the strategy says it kept (`RoundSummary.kept`); StrategyFailed if it names others."""
    try:
        return check_kept(result.kept, participants, "kept")
    except InvalidMessage as exc:
        raise StrategyFailed(f"strategy {run.strategy!r} in round {round_number}: {exc}") from None


def check_finite(result: strategies.Aggregate) -> None:
    """InvalidAggregate unless the new weights and the strategy's state (tensors and numbers) are
    finite: checked before anything is written, so a failed round leaves no model and no state."""
    for what, named in (("aggregate", result.weights), ("strategy's state", result.state.tensors)):
        for name, tensor in named.items():
            if not tensors.all_finite(tensor):
                raise InvalidAggregate(f"the {what} tensor {name!r} is not finite; nothing was published")
    for name, value in result.state.values.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise InvalidAggregate(f"the strategy's state value {name!r} is {value}; nothing was published")
