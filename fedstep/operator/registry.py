"""`fedstep promote <run> --round r` and `fedstep download --approved`: the approved model of a stack.

A promotion re-verifies the round's global model and architecture against their recorded sha256
(writing the round's model card if the server has not: `fedstep.core.model_card`), writes the
promotion to the history once, then points `registry/<name>/approved.json` at the card. A download
of the approved model checks the card against the pointer and both model files against the card.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from botocore.exceptions import ClientError

from fedstep.aws.adapters import DynamoRoundTable, S3ModelStore
from fedstep.aws.errors import error_code
from fedstep.aws.stack import StackOutputs
from fedstep.core import keys, model_card, tensors
from fedstep.core.clock import utc_now
from fedstep.core.errors import FedstepError
from fedstep.core.schemas import ObjectRef
from fedstep.operator.operate import save_keras
from fedstep.operator.paths import model_file
from fedstep.operator.views import RunView

_MISSING = {"NoSuchKey", "404", "NotFound"}


def _get_or_none(store: S3ModelStore, key: str) -> bytes | None:
    try:
        return store.get(key)
    except ClientError as exc:
        if error_code(exc) in _MISSING:
            return None
        raise


def _get(store: S3ModelStore, key: str, what: str) -> bytes:
    data = _get_or_none(store, key)
    if data is None:
        raise model_card.ModelTampered(f"s3://{store.bucket}/{key} ({what}) is missing from the registry")
    return data


@dataclass(frozen=True)
class Promotion:
    pointer: dict[str, Any]
    card_ref: ObjectRef
    previous: dict[str, Any] | None


def promote(
    view: RunView,
    round_number: int,
    note: str,
    name: str,
    outputs: StackOutputs,
    s3: Any,
    table: DynamoRoundTable,
) -> Promotion:
    """Approve the global model after `round_number` of the run of `view` as the model `name`."""
    _check_name(name)
    if view.status == "FAILED":
        raise FedstepError(
            f"run {view.run_id} failed; its models are not promoted (`fedstep status {view.run_id}` says why)"
        )
    done = sorted(s.round for s in view.rounds)
    if round_number not in done:
        known = ", ".join(map(str, done)) or "none"
        extra = " (round 0 is the untrained initial model)" if round_number == 0 else ""
        raise FedstepError(f"run {view.run_id} has no aggregated round {round_number}{extra}; aggregated: {known}")
    store = S3ModelStore(outputs.bucket, s3)
    card_ref = model_card.write_card(view.run_id, round_number, store, table)  # verifies both sha256s
    card = model_card.parse_card(model_card.verify(card_ref, store.get(card_ref.key), "model card"), card_ref.key)
    [summary] = [s for s in view.rounds if s.round == round_number]
    global_ref, architecture_ref = model_card.card_refs(card)
    if global_ref != summary.global_model:
        raise model_card.ModelTampered(f"{card_ref.key} describes another global model than round {round_number}'s")
    model_card.verify(global_ref, _get(store, global_ref.key, "global model"), "global model")
    model_card.verify(architecture_ref, _get(store, architecture_ref.key, "architecture"), "architecture")
    previous_data = _get_or_none(store, keys.approved_key(name))
    previous = model_card.parse_approval(previous_data, keys.approved_key(name)) if previous_data else None
    pointer = model_card.approval(card, card_ref, name, utc_now(), note, previous)
    if not store.put_once(pointer["history_key"], _json(pointer)):
        raise FedstepError(f"{pointer['history_key']} exists already: promote again")
    store.put(keys.approved_key(name), _json(pointer))
    return Promotion(pointer, card_ref, previous)


def _check_name(name: str) -> str:
    """`name` if it is a valid model name, else a FedstepError."""
    try:
        return keys.check_id("model name", name)
    except ValueError as exc:
        raise FedstepError(str(exc)) from None


def _json(data: dict[str, Any]) -> bytes:
    return (json.dumps(data, sort_keys=True, indent=2) + "\n").encode()


def approved_pointer(store: S3ModelStore, name: str) -> dict[str, Any]:
    """The approved pointer of `name`, or a FedstepError saying how to approve one."""
    key = keys.approved_key(_check_name(name))
    data = _get_or_none(store, key)
    if data is None:
        raise FedstepError(
            f"no approved model {name!r} in this stack (s3://{store.bucket}/{key}); "
            "approve one with `fedstep promote <run> --round <r>`"
        )
    return model_card.parse_approval(data, key)


def download_approved(outputs: StackOutputs, s3: Any, name: str, out: Path | None) -> tuple[dict[str, Any], Path]:
    """The approved model as a `.keras` file (default `<run>-round<r>.keras`), after checking the
    card against the pointer and the global model and architecture against the card."""
    store = S3ModelStore(outputs.bucket, s3)
    pointer = approved_pointer(store, name)
    card_ref = ObjectRef(**pointer["card"])
    card = model_card.parse_card(
        model_card.verify(card_ref, _get(store, card_ref.key, "model card"), "model card"), card_ref.key
    )
    global_ref, architecture_ref = model_card.card_refs(card)
    weights = model_card.verify(global_ref, _get(store, global_ref.key, "global model"), "global model")
    architecture = model_card.verify(
        architecture_ref, _get(store, architecture_ref.key, "architecture"), "architecture"
    )
    out = out or model_file(pointer["run_id"], pointer["round"])
    return pointer, save_keras(architecture, tensors.decode(weights), out)


def card_of_round(view: RunView, round_number: int, outputs: StackOutputs, s3: Any) -> dict[str, Any] | None:
    """The stored model card of a round's global model, or None if none was written (yet)."""
    summaries = [s for s in view.rounds if s.round == round_number]
    if not summaries:
        return None
    key = keys.card_key(view.run_id, round_number, keys.version_of_global(summaries[0].global_model.key))
    data = _get_or_none(S3ModelStore(outputs.bucket, s3), key)
    return model_card.parse_card(data, key) if data is not None else None
