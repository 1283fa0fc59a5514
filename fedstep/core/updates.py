"""Writing a client's update: the one place an update file and its item are made.

An update file is a safetensors file of the update's tensors (the trained weights minus the round's
global weights) as the run's codec writes them (`fedstep.core.codecs`; float32 by default: the model's
own tensors, byte for byte the file agents have always written), whose fedstep metadata repeats the
item's facts (`UpdateItem.file_metadata`), so the file is the record of what was sent; the item names
the file by key, sha256 and size, and its codec (`encoding`). The agent, the tests and the benches
all write updates with `encode_update` (or, holding the codec's output already, `update_file`), so
an update is written one way, byte for byte.
"""

from __future__ import annotations

from dataclasses import replace
from typing import NamedTuple

import numpy as np

from fedstep.core import codecs, keys, tensors
from fedstep.core.schemas import MASKED_ENCODING, MASKED_TENSOR, ObjectRef, UpdateItem

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
    codec: str = codecs.DEFAULT,
    seed: int | None = None,
) -> EncodedUpdate:
    """The update file of `client_id` for round `round_number` of `run_id`, written with `codec`
    (default float32, its tensors stored as `element`; other codecs fix their own types), and its
    update item: the file's key (`keys.update_key`), sha256 and size, the examples, metrics and
    privacy figures it reports, its encoding. `seed`: the codec's stochastic-rounding seed (default
    `codecs.seed_for(run, round, client)`). Deterministic: the same arguments give the same bytes."""
    chosen = codecs.get(codec)
    if chosen.name == codecs.DEFAULT:
        files: tensors.Tensors = update
    else:
        files, _ = chosen.encode(update, codecs.seed_for(run_id, round_number, client_id) if seed is None else seed)
    return update_file(
        files,
        run_id=run_id,
        round_number=round_number,
        client_id=client_id,
        num_examples=num_examples,
        metrics=metrics,
        created_at=created_at,
        privacy=privacy,
        element=element,
        codec=chosen.name,
    )


def update_file(
    files: tensors.Tensors,
    *,
    run_id: str,
    round_number: int,
    client_id: str,
    num_examples: int,
    metrics: dict[str, float],
    created_at: str,
    privacy: dict[str, float] | None = None,
    element: tensors.ElementType = tensors.F32,
    codec: str = codecs.DEFAULT,
) -> EncodedUpdate:
    """As `encode_update`, from the file tensors `codec` made already (`Codec.encode`: a client with
    error feedback needs its decoded delta too). float32 files are written as `element` (default
    float32), a codec's file tensors keep their own types."""
    name = codecs.canonical(codec)
    item = _unsent(run_id, round_number, client_id, num_examples, metrics, created_at, privacy, name)
    return _written(files, item, element if name == codecs.DEFAULT else None)


def _unsent(
    run_id: str,
    round_number: int,
    client_id: str,
    num_examples: int,
    metrics: dict[str, float],
    created_at: str,
    privacy: dict[str, float] | None,
    encoding: str,
    attempt: int = 0,
) -> UpdateItem:
    """The item of an update not yet written (its ref names the key, not yet the file's sha256)."""
    return UpdateItem(
        run_id=run_id,
        round=round_number,
        client_id=client_id,
        num_examples=num_examples,
        update=ObjectRef(keys.update_key(run_id, round_number, client_id), UNSENT, 0),
        metrics=metrics,
        created_at=created_at,
        privacy=dict(privacy or {}),
        encoding=encoding,
        attempt=attempt,
    )


def _written(files: tensors.Tensors, item: UpdateItem, element: tensors.ElementType | None) -> EncodedUpdate:
    """The file of `files` with `item`'s metadata, and the item naming it (sha256, size)."""
    data = tensors.encode(files, item.file_metadata(), element)
    return EncodedUpdate(data, replace(item, update=ObjectRef(item.update.key, tensors.sha256_hex(data), len(data))))


def masked_input_file(
    masked: np.ndarray,
    *,
    run_id: str,
    round_number: int,
    attempt: int,
    client_id: str,
    num_examples: int,
    metrics: dict[str, float],
    created_at: str,
    privacy: dict[str, float] | None = None,
) -> EncodedUpdate:
    """A secure round's masked input (`fedstep.core.schemas.secagg`): one uint32 tensor `masked`,
    written under the client's update key for the round, and its item (encoding `secagg-u32`, the
    attempt it belongs to)."""
    item = _unsent(
        run_id, round_number, client_id, num_examples, metrics, created_at, privacy, MASKED_ENCODING, attempt
    )
    return _written({MASKED_TENSOR: np.asarray(masked, dtype=np.uint32)}, item, tensors.U32)
