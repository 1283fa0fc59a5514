"""The aggregation function's two ways into a round, whatever kind it is: the stream path (a client
item arrived) and the deadline path (the round's first task timed out). A plain round completes once
every selected client's update is in (`complete`); a secure round closes its current phase once every
member answered it (`secure`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fedstep.core.errors import FedstepError
from fedstep.core.ports import ModelStore, Reporter, SecureTable
from fedstep.core.rounds.complete import complete_round_at_deadline, try_complete_round
from fedstep.core.rounds.secure import advance_secure_round, close_at_deadline
from fedstep.core.rounds.settings import DEFAULT_SETTINGS, AggregationSettings
from fedstep.core.schemas import PHASE_ADVERTISE, RoundSummary


def on_client_item(
    run_id: str,
    round_number: int,
    *,
    store: ModelStore,
    table: SecureTable,
    reporter: Reporter,
    settings: AggregationSettings = DEFAULT_SETTINGS,
    on_aggregated: Callable[[RoundSummary], None] | None = None,
) -> None:
    """A client wrote an item of this round (an update, a refusal, a secure phase's item): complete
    the round, or close its phase, if it is ready; report to the waiting task."""
    run = table.get_run(run_id)
    if run is None:
        return
    if run.secagg is None:
        try_complete_round(
            run_id, round_number, store=store, table=table, reporter=reporter, settings=settings,
            on_aggregated=on_aggregated, run=run,
        )  # fmt: skip
        return
    advance_secure_round(
        run, round_number, store=store, table=table, reporter=reporter, settings=settings, on_aggregated=on_aggregated
    )


def at_round_deadline(
    run_id: str,
    round_number: int,
    *,
    store: ModelStore,
    table: SecureTable,
    settings: AggregationSettings = DEFAULT_SETTINGS,
    on_aggregated: Callable[[RoundSummary], None] | None = None,
) -> dict[str, Any]:
    """The round's task timed out: aggregate what arrived (a secure round: close its first phase)."""
    run = table.get_run(run_id)
    if run is None:
        raise FedstepError(f"run {run_id} has no run record")
    if run.secagg is None:
        return complete_round_at_deadline(
            run_id, round_number, store=store, table=table, settings=settings, on_aggregated=on_aggregated
        )
    return close_at_deadline(
        run_id, round_number, PHASE_ADVERTISE, store=store, table=table, settings=settings, on_aggregated=on_aggregated
    )
