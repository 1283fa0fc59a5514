"""Writing a client's update: the one place an update file and its item are made.

An update file is a safetensors file of the update's tensors (the trained weights minus the round's
global weights) whose fedstep metadata repeats the item's facts (`UpdateItem.file_metadata`), so the
file is the record of what was sent; the item names the file by key, sha256 and size. The agent, the
tests and the benches all write updates with `encode_update`, so an update is written one way, byte
for byte, and a new wire format (a codec) changes this module and the layout the server reads it by
(`fedstep.core.update_source.ModelLayout`), nothing else.
"""

from __future__ import annotations

from dataclasses import replace
from typing import NamedTuple

from fedstep.core import keys, tensors
from fedstep.core.schemas import ObjectRef, UpdateItem

UNSENT = "0" * 64
"""The sha256 an item names before its file is written (the file's metadata does not include it)."""


class EncodedUpdate(NamedTuple):
    """An update file's bytes and the item that names them (`data, item = encode_update(...)`)."""

    data: bytes
    item: UpdateItem


def encode_update(
    update: tensors.Tensors,
    *,
    run_id: str,
    round_number: int,
    client_id: str,
    num_examples: int,
    metrics: dict[str, float],
    created_at: str,
    privacy: dict[str, float] | None = None,
    element: tensors.ElementType = tensors.F32,
) -> EncodedUpdate:
    """The update file of `client_id` for round `round_number` of `run_id` (its tensors stored as
    `element`, float32 by default and today the only type accepted) and its update item: the file's
    key (`keys.update_key`), sha256 and size, the examples, metrics and privacy figures it reports.
    Deterministic: the same arguments give the same bytes."""
    key = keys.update_key(run_id, round_number, client_id)
    item = UpdateItem(
        run_id=run_id,
        round=round_number,
        client_id=client_id,
        num_examples=num_examples,
        update=ObjectRef(key, UNSENT, 0),
        metrics=metrics,
        created_at=created_at,
        privacy=dict(privacy or {}),
    )
    data = tensors.encode(update, item.file_metadata(), element)
    return EncodedUpdate(data, replace(item, update=ObjectRef(key, tensors.sha256_hex(data), len(data))))
