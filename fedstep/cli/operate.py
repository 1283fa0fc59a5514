"""`fedstep stop <run>` and `fedstep download <run> [--round r]`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fedstep.aws.adapters import DynamoRoundTable, S3ModelStore, SnsPublisher
from fedstep.aws.stack import StackOutputs
from fedstep.cli.run_view import RunView, execution_arn
from fedstep.cli.start import model_of_round
from fedstep.core import keys, tensors
from fedstep.core.errors import FedstepError
from fedstep.core.schemas import RunEndedMessage

STOP_ERROR = "StoppedByOperator"


def stop_run(view: RunView, outputs: StackOutputs, sfn: Any, sns: Any, reason: str) -> None:
    """Stop the run's execution, then tell its clients the run ended (reason "stopped"), so agents
    serving it stop waiting for its rounds. Refuses a run that is not running."""
    if view.status != "RUNNING":
        raise FedstepError(f"run {view.run_id} is not running (it is {view.status}); nothing to stop")
    sfn.stop_execution(executionArn=execution_arn(outputs, view.run_id), error=STOP_ERROR, cause=reason[:32000])
    ended = RunEndedMessage(view.run_id, "stopped", view.last_round)
    SnsPublisher(outputs.topic_arn, sns).publish(ended.to_dict(), view.record.clients)


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
