"""Step 1 of a round: open it (its selection and task token in the round record) and send its
message, with the strategy's instructions, to the selected clients."""

from __future__ import annotations

import logging
from typing import Any

from fedstep.core import limits
from fedstep.core.errors import FedstepError, RunStopped
from fedstep.core.ports import ModelStore, Publisher, Reporter, RoundTable
from fedstep.core.round_record import RoundRecord
from fedstep.core.rounds.errors import RoundBusy, StrategyFailed
from fedstep.core.rounds.inputs import (
    build_strategy,
    choose_clients,
    codec_instructions,
    dp_sgd_instructions,
    input_state,
    read_state_values,
)
from fedstep.core.rounds.secure import round_spec
from fedstep.core.rounds.summary import task_output
from fedstep.core.schemas import ObjectRef, RoundMessage, RunRecord, check_scalars

log = logging.getLogger(__package__)


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
    instructions = {
        **_instructions(run, round_number, state, store),
        **codec_instructions(run, round_number, global_model, store, table),
    }
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
        secagg=round_spec(run, chosen.selected) if run.secagg is not None else None,
    )
    publisher.publish(message.to_dict(), chosen.selected)
    return message


def _instructions(run: RunRecord, round_number: int, state: ObjectRef | None, store: ModelStore) -> dict[str, Any]:
    strategy = build_strategy(run)
    values = read_state_values(store, state, run.strategy) if state is not None else {}
    try:
        instructions = {**strategy.configure_round(round_number, values), **dp_sgd_instructions(run)}
        reserved = sorted(name for name in instructions if name.startswith(limits.RESERVED_INSTRUCTION_PREFIX))
        if reserved:
            raise ValueError(
                f"instruction names starting {limits.RESERVED_INSTRUCTION_PREFIX!r} are fedstep's: {reserved}"
            )
        return check_scalars(instructions, "instructions", limits.MAX_INSTRUCTIONS)
    except Exception as exc:
        raise StrategyFailed(
            f"strategy {run.strategy!r} could not configure round {round_number} of run {run.run_id}: "
            f"{type(exc).__name__}: {exc}"
        ) from exc
