"""What a round starts from and whom it asks: the selection, the strategy, the input state, the
previous summary, the round's bounds; and the rounds a run (and the runs it continues) completed."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from fedstep.core import codecs, influence, strategies, tensors
from fedstep.core.dp import DPAggregation
from fedstep.core.errors import FedstepError
from fedstep.core.ports import ModelStore, RoundTable
from fedstep.core.presence import away
from fedstep.core.round_record import RoundRecord, recorded_selection
from fedstep.core.rounds.errors import StrategyFailed
from fedstep.core.schemas import Bounds, ObjectRef, RoundSummary, RunRecord, is_completed
from fedstep.core.selection import Selection, select_round
from fedstep.core.update_source import ModelLayout, model_norm, read_header, read_layout


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
    client_dp = run.dp is not None and run.dp.client_level  # its epsilon counts on the plain sample
    needs = max(run.quorum, run.min_participants)
    return select_round(
        run.clients, per_round, run.seed, round_number, gone, needs=needs, redraw=not client_dp, sampling=run.selection
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


def codec_instructions(
    run: RunRecord, round_number: int, global_model: ObjectRef, store: ModelStore, table: RoundTable
) -> dict[str, Any]:
    """What the run's codec asks of each client (`fedstep.core.codecs`): its name, and for a codec
    with error feedback the round's update-norm bound (`round_bounds`), which the client clips its
    update plus residual to before it sparsifies, so the residual never pushes an honest update past
    the bound. None of it for float32, whose round messages are as before codecs."""
    if run.codec == codecs.DEFAULT:
        return {}
    codec = codecs.get(run.codec)
    instructions: dict[str, Any] = {codecs.INSTRUCTION: codec.name}
    if codec.error_feedback:
        previous = previous_summary(table, run, round_number)
        bounds, _ = round_bounds(run, previous, store, global_model, read_layout(store, global_model))
        if bounds.max_update_norm is not None:
            instructions[codecs.NORM_BOUND_INSTRUCTION] = float(bounds.max_update_norm)
    return instructions


def expected_participants(run: RunRecord) -> int:
    """The clients each round selects, or under Poisson selection selects on average (q N): DP-FedAvg
    divides the noisy sum by it, not by the number that arrived (the fixed-denominator estimator)."""
    return run.clients_per_round or len(run.clients)


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


def round_history(table: RoundTable, run_id: str, up_to: int, run: RunRecord | None) -> list[RoundSummary]:
    """Summaries of rounds 1..`up_to`, following `resumed_from` back to the runs this one continues."""
    own = [s for s in (RoundSummary.parse(r) for r in table.list_rounds(run_id)) if s.round <= up_to]
    if run is None or not run.resumed_from:
        return own
    first = min((s.round for s in own), default=up_to + 1)
    earlier = round_history(table, run.resumed_from, first - 1, table.get_run(run.resumed_from))
    return earlier + own
