"""`fedstep stop <run> [--reason text]` and `fedstep download <run> [--round r]`."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from fedstep.aws.adapters import DynamoRoundTable, S3ModelStore, SnsPublisher
from fedstep.aws.stack import StackOutputs
from fedstep.core import keys, tensors
from fedstep.core.clock import utc_now
from fedstep.core.errors import FedstepError
from fedstep.core.rounds import selected_in
from fedstep.core.schemas import (
    DECLINED_KIND,
    ROUND_CLAIMED,
    ROUND_OPEN,
    UPDATE_ITEM_KIND,
    RunEndedMessage,
    RunRecord,
    RunStop,
    is_completed,
)
from fedstep.operator.start import model_of_round
from fedstep.operator.views import RunView, execution_arn

STOP_ERROR = "StoppedByOperator"


@dataclass(frozen=True)
class StopReport:
    """What a stop found, read after the stop marker was written (so nothing changes it any more):
    the rounds completed, and the round in flight (None: none was open) with its selected clients,
    the clients whose update had arrived and those that had declined it."""

    run_id: str
    rounds_completed: int
    rounds_planned: int
    in_flight: int | None = None
    being_aggregated: bool = False
    selected: list[str] = field(default_factory=list)
    received: list[str] = field(default_factory=list)
    declined: list[str] = field(default_factory=list)

    def text(self) -> str:
        """`stopped run r; 3 of 10 rounds completed; round 4 was open with 1 of 2 updates received
        (client-1): it is not aggregated; its clients were told`."""
        done = f"{self.rounds_completed} of {self.rounds_planned} rounds completed"
        return f"stopped run {self.run_id}; {done}; {self.in_flight_text()}; its clients were told"

    def in_flight_text(self) -> str:
        if self.in_flight is None:
            return "no round was open"
        names = f" ({', '.join(self.received)})" if self.received else ""
        received = f"{len(self.received)} of {len(self.selected)} updates received{names}"
        declined = f", {len(self.declined)} declined ({', '.join(self.declined)})" if self.declined else ""
        if self.being_aggregated:
            return f"round {self.in_flight} was being aggregated from {received}{declined}: it is not committed"
        return f"round {self.in_flight} was open with {received}{declined}: it is not aggregated"


def stop_run(
    view: RunView, outputs: StackOutputs, sfn: Any, sns: Any, table: DynamoRoundTable, reason: str
) -> StopReport:
    """Stop a running run: write its stop marker first (from then on no round of it is published,
    aggregated or committed, and no agent trains or uploads for it), stop its execution, read what
    was in flight, and tell its clients the run ended (reason "stopped"). Refuses a run that is not
    running."""
    if view.status != "RUNNING":
        raise FedstepError(f"run {view.run_id} is not running (it is {view.status}); nothing to stop")
    table.put_stop(RunStop(view.run_id, reason, utc_now()))  # a marker left by an earlier try stays
    sfn.stop_execution(executionArn=execution_arn(outputs, view.run_id), error=STOP_ERROR, cause=reason[:32000])
    report = in_flight(view.run_id, view.record, table)
    ended = RunEndedMessage(view.run_id, "stopped", report.rounds_completed)
    SnsPublisher(outputs.topic_arn, sns).publish(ended.to_dict(), view.record.clients)
    return report


def in_flight(run_id: str, record: RunRecord, table: DynamoRoundTable) -> StopReport:
    """The run's rounds completed and the round in flight, from its round records and update items."""
    rounds = table.list_round_records(run_id)
    completed = [int(r["round"]) for r in rounds if is_completed(r)]
    report = StopReport(run_id, max(completed, default=0), record.rounds)
    pending = [r for r in rounds if not is_completed(r) and r.get("status") in (ROUND_OPEN, ROUND_CLAIMED)]
    if not pending:
        return report
    current = max(pending, key=lambda r: int(r["round"]))
    number = int(current["round"])
    selected = selected_in(current, record, number)  # as the round was sent (offline clients left out)
    items = table.get_updates(run_id, number, selected)
    return replace(
        report,
        in_flight=number,
        being_aggregated=current.get("status") == ROUND_CLAIMED,
        selected=selected,
        received=[c for c in selected if items.get(c, {}).get("kind") == UPDATE_ITEM_KIND],
        declined=[c for c in selected if items.get(c, {}).get("kind") == DECLINED_KIND],
    )


def download_model(
    view: RunView, outputs: StackOutputs, s3: Any, table: DynamoRoundTable, round_number: int | None, out: Path
) -> Path:
    """The global model after `round_number` (default: the last completed round; 0: the initial
    weights) as a `.keras` file: the run's architecture with those weights, ready for `model.predict`."""
    done = {s.round: s for s in view.rounds}
    if round_number is None:
        if not done:
            raise FedstepError(f"run {view.run_id} has no completed round yet; --round 0 gives the initial model")
        round_number = max(done)
    if round_number != 0 and round_number not in done:
        known = ", ".join(str(r) for r in sorted(done)) or "none"
        raise FedstepError(f"run {view.run_id} has no completed round {round_number} (completed: {known})")
    store = S3ModelStore(outputs.bucket, s3)
    architecture = store.get(keys.model_key(view.run_id))
    if round_number == 0:
        weights = tensors.decode(store.get(model_of_round(table, view.record, 0)))
    else:
        ref = done[round_number].global_model
        data = store.get(ref.key)
        if tensors.sha256_hex(data) != ref.sha256:
            raise FedstepError(f"s3://{outputs.bucket}/{ref.key} does not match the sha256 of round {round_number}")
        weights = tensors.decode(data)
    return save_keras(architecture, weights, out)


def save_keras(architecture: bytes, weights: tensors.Tensors, out: Path) -> Path:
    """The architecture file with `weights` set, written to `out` as a `.keras` file."""
    from client_agent.keras_model import model_from_bytes, model_to_bytes, set_tensors

    model = model_from_bytes(architecture)
    set_tensors(model, weights)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(model_to_bytes(model))
    return out
