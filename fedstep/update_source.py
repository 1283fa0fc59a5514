"""Reading a round's updates for aggregation: one pass, every file checked before it is used.

For each update item, in order (DESIGN invariant 3, checks before use):
1. the size the item claims is at most what an update of this model can be (tensor data plus a
   bounded header), so an oversized file is refused before a byte is downloaded;
2. one ranged read fetches the safetensors header (for a small model, the whole file): its size,
   names, dtypes, shapes and offsets must match the global model, and its metadata the item;
3. the tensor data is read into one buffer (same object version), its sha256 checked, its values
   checked finite, and the tensors used in place as views of that buffer;
4. the run's bounds cap the update's weight and its norm (`fedstep.influence`).

Memory: one update's file at a time (plus small chunked temporaries), whatever the number of clients.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from fedstep import influence, limits, tensors
from fedstep.errors import InvalidUpdate
from fedstep.ports import ModelStore
from fedstep.schemas import Adjustment, Bounds, ObjectRef, Rejection, UpdateItem
from fedstep.strategies import ClientUpdate


@dataclass(frozen=True)
class ModelLayout:
    """The global model's tensor spec, and the largest update file and header this model allows."""

    spec: tensors.TensorSpec
    max_header_bytes: int

    @property
    def max_file_bytes(self) -> int:
        return tensors.HEADER_LENGTH_BYTES + self.max_header_bytes + self.spec.data_bytes


def read_layout(store: ModelStore, ref: ObjectRef) -> ModelLayout:
    """The layout of a global model (a file the server wrote), from a ranged read of its header: one
    read of its first 64 KiB, a second one only for a longer header."""
    head = store.read_range(ref.key, 0, min(ref.bytes, limits.MAX_HEADER_SLACK_BYTES)).data
    length = tensors.header_length(head)
    if len(head) < tensors.HEADER_LENGTH_BYTES + length:
        head = store.read_range(ref.key, 0, tensors.HEADER_LENGTH_BYTES + length).data
    return ModelLayout(tensors.spec_of_header(head), length + limits.MAX_HEADER_SLACK_BYTES)


def read_model(store: ModelStore, ref: ObjectRef, layout: ModelLayout) -> tensors.Tensors:
    """A global model (written by the server) whose layout was read, as views into one buffer: one
    copy of its data in memory."""
    return _read_file(store, ref, layout)


def read_update(store: ModelStore, item: UpdateItem, layout: ModelLayout) -> tensors.Tensors:
    """A client's update, checked against its item and the model (steps 1-3 above); InvalidUpdate
    with a short reason on any defect."""
    if item.update.bytes > layout.max_file_bytes:
        raise InvalidUpdate(
            f"file is {item.update.bytes} bytes, over the limit of {layout.max_file_bytes} for this model"
        )
    expected = item.file_metadata()

    def check(metadata: dict[str, object]) -> None:
        differing = sorted(k for k, v in expected.items() if metadata.get(k) != v)
        if differing:
            raise InvalidUpdate(f"update file's metadata differs from the update item in {differing[:8]}")

    return _read_file(store, item.update, layout, check)


def _read_file(
    store: ModelStore,
    ref: ObjectRef,
    layout: ModelLayout,
    check_metadata: Callable[[dict[str, object]], None] | None = None,
) -> tensors.Tensors:
    """The tensors of the file `ref` (`ref.bytes` long, sha256 `ref.sha256`) whose header matches
    `layout`; its metadata is checked before its tensor data is downloaded."""
    first = store.read_range(ref.key, 0, min(ref.bytes, tensors.HEADER_LENGTH_BYTES + layout.max_header_bytes))
    if first.total_bytes != ref.bytes:
        raise InvalidUpdate(f"file is {first.total_bytes} bytes, the item says {ref.bytes}")
    header = tensors.parse_header(first.data, ref.bytes, layout.spec, layout.max_header_bytes)
    if check_metadata is not None:
        check_metadata(header.metadata)
    digest = hashlib.sha256(first.data[: header.data_start])
    data = bytearray(ref.bytes - header.data_start)
    if len(first.data) >= ref.bytes:  # a small file came whole with its header
        data[:] = first.data[header.data_start :]
    else:
        store.read_into(ref.key, header.data_start, memoryview(data), first.version)
    digest.update(data)
    if digest.hexdigest() != ref.sha256:
        raise InvalidUpdate("sha256 does not match the one reported")
    return tensors.views(data, header, layout.spec)


@dataclass
class UpdateSource:
    """The round's usable items as a one-pass iterator of bounded ClientUpdates. Items whose files
    fail a check are recorded in `rejected`, updates clipped to the run's bounds in `clipped`;
    `accepted` lists the items that reached the strategy, in order."""

    store: ModelStore
    layout: ModelLayout
    bounds: Bounds
    items: list[UpdateItem]
    rejected: list[Rejection] = field(default_factory=list)
    clipped: list[Adjustment] = field(default_factory=list)
    accepted: list[tuple[UpdateItem, int]] = field(default_factory=list)
    """(item, the examples it was weighted by)."""
    on_rejected: Callable[[UpdateItem, str], None] | None = None

    def __iter__(self) -> Iterator[ClientUpdate]:
        for item in self.items:
            try:
                examples, capped = influence.bounded_examples(item.client_id, item.num_examples, self.bounds)
                delta = read_update(self.store, item, self.layout)
                clipped_norm = influence.bound_norm(delta, self.bounds)
            except InvalidUpdate as exc:
                self.rejected.append(Rejection(item.client_id, exc.reason))
                if self.on_rejected is not None:
                    self.on_rejected(item, exc.reason)
                continue
            what = "; ".join(w for w in (capped, clipped_norm) if w)
            if what:
                self.clipped.append(Adjustment(item.client_id, what))
            self.accepted.append((item, examples))
            yield ClientUpdate(item.client_id, examples, delta)
            del delta  # the consumer is done with it: free its buffer before the next file is read
