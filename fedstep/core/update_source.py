"""Reading a round's updates for aggregation: every file checked before it is used, then read in one
pass or by slices (the strategy's choice, `fedstep.core.strategies.base.Updates`).

For each update item, in order (DESIGN invariant 3, checks before use):
1. the size the item claims is at most what an update of this model can be (tensor data plus a
   bounded header), so an oversized file is refused before a byte is downloaded;
2. one ranged read fetches the safetensors header (for a small model, the whole file): its size,
   names, dtypes, shapes and offsets must match the global model, and its metadata the item;
3. the tensor data is read into one buffer (same object version), its sha256 checked, its values
   checked finite, and the tensors used in place as views of that buffer;
4. the run's bounds cap the update's weight and its norm (`fedstep.core.influence`).

Memory: one update's file at a time (plus small chunked temporaries), whatever the number of clients.

Under a run's codec other than float32 (`ModelLayout.codec`, `fedstep.core.codecs`), step 0 refuses
an item whose `encoding` is not the run's codec, steps 1-2 hold the file to the codec's layout (its
size bound, its tensors' names, types and shapes), step 3 checks the codec's tensors (indices
strictly increasing and in range, scales and values finite) and decodes them into ONE float32
buffer of the model's shape, reused for every update (each decoded tensor checked finite), and step
4 bounds the decoded delta. Memory: the float32 buffer plus one coded file (smaller than the model).
A one-pass delta under a codec is therefore valid until the next one is yielded: no strategy keeps a
yielded delta across iterations (they add it into their sums; `tests/test_codec_conformance.py`).

Sliced access (`UpdateSource.slice`) first checks every update as above (a pass that drops each
file), remembering where each tensor lies in each file and the object version that was checked; a
slice is then read with ranged reads of exactly that version (S3 `VersionId`), so a file replaced
after its check cannot mix in. A store that names no version (an unversioned bucket) is refused
(`UnversionedStore`, `require_versions`): slices, read later in this invocation or by other ones (a
slice plan, `fedstep.core.sliced`), could not be pinned to the bytes that were checked. Memory: one
slice of every update, `SLICE_BUDGET_BYTES` together.
"""

from __future__ import annotations

import functools
import hashlib
import math
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from fedstep.core import codecs, influence, limits, tensors
from fedstep.core.errors import FedstepError, InvalidUpdate
from fedstep.core.ports import ModelStore, RangeRead
from fedstep.core.schemas import Adjustment, Bounds, ObjectRef, Rejection, UpdateItem
from fedstep.core.strategies import ClientUpdate, UpdateInfo


@dataclass(frozen=True)
class ModelLayout:
    """What an update file of this model is: the global model's tensor spec, the element type the
    model's tensors (and a float32 update's) are stored as (`element`: float32, the only one
    accepted), the largest header a float32 file may have, and the run's codec (`codec`, default
    float32: under another codec the file holds the codec's tensors, `file`, and decodes into
    float32 tensors of `spec`). Every size and offset an update is checked and read by comes from here."""

    spec: tensors.TensorSpec
    max_header_bytes: int
    element: tensors.ElementType = tensors.F32
    codec: str = codecs.DEFAULT

    def __post_init__(self) -> None:
        if tensors.ELEMENT_TYPES.get(self.element.name) != self.element:
            raise ValueError(f"element type {self.element.name} is not one of {sorted(tensors.ELEMENT_TYPES)}")
        if codecs.canonical(self.codec) != self.codec:
            raise ValueError(f"codec {self.codec!r} is not a canonical codec name ({codecs.canonical(self.codec)!r})")

    @property
    def dense(self) -> bool:
        """Whether updates are float32 files of the model's own tensors (the files are used in place)."""
        return self.codec == codecs.DEFAULT

    @functools.cached_property
    def coder(self) -> codecs.Codec:
        return codecs.get(self.codec)

    @functools.cached_property
    def file(self) -> codecs.CodecLayout:
        """The codec's file for this model: its tensors, their types, its size bound."""
        return self.coder.layout(self.spec)

    @property
    def data_bytes(self) -> int:
        """Bytes of an update's tensor data: every parameter, stored as `element` (float32), or the
        codec's file tensors."""
        return self.spec.data_bytes_as(self.element) if self.dense else self.file.data_bytes

    @property
    def file_header_bytes(self) -> int:
        """The largest header an update file may have."""
        return self.max_header_bytes if self.dense else self.file.max_header_bytes

    @property
    def max_file_bytes(self) -> int:
        return tensors.HEADER_LENGTH_BYTES + self.file_header_bytes + self.data_bytes

    @property
    def min_file_bytes(self) -> int:
        """The smallest file that can hold this model's tensors: the length, the shortest header, the data."""
        return limits.MIN_UPDATE_FILE_BYTES + self.data_bytes


def read_header(store: ModelStore, ref: ObjectRef) -> bytes:
    """The 8-byte length and JSON header of a file the server wrote (a global model, a strategy
    state): one ranged read of its first 64 KiB, a second one only for a longer header."""
    head = store.read_range(ref.key, 0, min(ref.bytes, limits.MAX_HEADER_SLACK_BYTES)).data
    end = tensors.HEADER_LENGTH_BYTES + tensors.header_length(head)
    return head[:end] if len(head) >= end else store.read_range(ref.key, 0, end).data


def read_layout(store: ModelStore, ref: ObjectRef, codec: str = codecs.DEFAULT) -> ModelLayout:
    """The layout of a global model, from its header (`read_header`), whose updates are written with
    the run's `codec` (default float32; ValueError for an unknown one)."""
    head = read_header(store, ref)
    return ModelLayout(
        tensors.spec_of_header(head),
        len(head) - tensors.HEADER_LENGTH_BYTES + limits.MAX_HEADER_SLACK_BYTES,
        codec=codecs.canonical(codec),
    )


STREAM_BLOCK_BYTES = 16 * 2**20
"""Bytes read at a time where a whole file is streamed rather than held (one ranged read each)."""


def stream_blocks(store: ModelStore, key: str, start: int, end: int, version: str | None) -> Iterator[memoryview]:
    """Bytes [start, end) of one version of an object, `STREAM_BLOCK_BYTES` at a time, each block a
    view of one reused buffer (valid until the next is read): memory one block."""
    block = bytearray(min(STREAM_BLOCK_BYTES, max(1, end - start)))
    for offset in range(start, end, len(block)):
        view = memoryview(block)[: min(len(block), end - offset)]
        store.read_into(key, offset, view, version)
        yield view


def stored_sha256(store: ModelStore, key: str) -> tuple[str, int]:
    """(sha256, size) of a stored object, streamed (one version throughout): memory one block,
    whatever the object's size."""
    first = store.read_range(key, 0, STREAM_BLOCK_BYTES)
    digest = hashlib.sha256(first.data)
    for view in stream_blocks(store, key, len(first.data), first.total_bytes, first.version):
        digest.update(view)
    return digest.hexdigest(), first.total_bytes


def model_norm(store: ModelStore, ref: ObjectRef) -> float:
    """The L2 norm of all the weights of a model file the server wrote (e.g. the model a run started
    from), streamed: memory one block, whatever the model's size."""
    data_start = len(read_header(store, ref))
    squares = 0.0
    for view in stream_blocks(store, ref.key, data_start, ref.bytes, None):
        squares += tensors.sum_of_squares(tensors.F32.values(view))  # the server writes float32
    return math.sqrt(squares)


def read_model(store: ModelStore, ref: ObjectRef, layout: ModelLayout) -> tensors.Tensors:
    """A global model (written by the server) whose layout was read, as views into one buffer: one
    copy of its data in memory. The server writes float32 whatever the run's codec."""
    return _read_file(store, ref, replace(layout, codec=codecs.DEFAULT)).tensors


@dataclass(frozen=True)
class CheckedFile:
    """A file whose checks passed: its tensors (views into one buffer), where each tensor's bytes lie
    in the file (`data_start` + the header's offsets), and the object version that was checked."""

    tensors: tensors.Tensors
    header: tensors.Header
    version: str | None
    norm: float | None = None
    """The L2 norm of all its tensors, when asked for."""


def read_update(
    store: ModelStore,
    item: UpdateItem,
    layout: ModelLayout,
    *,
    norm: bool = False,
    keep: bool = True,
    out: tensors.Tensors | None = None,
) -> CheckedFile:
    """A client's update, checked against its item and the model (steps 1-3 above); InvalidUpdate
    with a short reason on any defect. `norm`: also measure its L2 norm (`CheckedFile.norm`).
    `keep=False`: check it streamed, a block at a time, and keep no tensors (a check before slices).
    Under a codec other than float32 the tensors are the decoded delta, in `out` when given (float32
    tensors of the model, reused from one update to the next) - see `_read_coded`."""
    check_encoding(item, layout)
    check_size(item, layout)
    if layout.dense:
        return _read_file(store, item.update, layout, metadata_check(item), norm=norm, keep=keep)
    return _read_coded(store, item.update, layout, metadata_check(item), norm=norm, keep=keep, out=out)


def check_encoding(item: UpdateItem, layout: ModelLayout) -> None:
    """Step 0: the update is written with the run's codec (its item says so; the header check then
    holds the file to that codec's tensors)."""
    if item.encoding != layout.codec:
        raise InvalidUpdate(f"the run's codec is {layout.codec}, the update says {item.encoding[:40]}")


def check_size(item: UpdateItem, layout: ModelLayout) -> None:
    """Step 1: a file too large, or too small to hold this model's tensors, is refused before a byte
    of it is read (so no read is ever sized by a length the client made up)."""
    if item.update.bytes > layout.max_file_bytes:
        raise InvalidUpdate(
            f"file is {item.update.bytes} bytes, over the limit of {layout.max_file_bytes} for this model"
        )
    if item.update.bytes < layout.min_file_bytes:
        raise InvalidUpdate(
            f"file is {item.update.bytes} bytes, under the {layout.min_file_bytes} this model's tensors take"
        )


def metadata_check(item: UpdateItem) -> Callable[[dict[str, object]], None]:
    """A check that a file's fedstep metadata says what its update item says."""
    expected = item.file_metadata()

    def check(metadata: dict[str, object]) -> None:
        differing = sorted(k for k, v in expected.items() if metadata.get(k) != v)
        if metadata.get("encoding", codecs.DEFAULT) != item.encoding and "encoding" not in differing:
            differing = sorted([*differing, "encoding"])  # a float32 item names none: the file must not either
        if differing:
            raise InvalidUpdate(f"update file's metadata differs from the update item in {differing[:8]}")

    return check


CHECK_BLOCK_BYTES = 1 << 20
"""Bytes of tensor data checked at a time: hashed, then checked finite (and squared) while they are
still in the CPU's cache, so the checks cost one pass over memory."""


@dataclass
class DataCheck:
    """One pass over a file's tensor data, a block at a time: the file's sha256 (continuing the
    header's), whether every value is finite, and (if asked) the sum of their squares. The data of a
    checked header is elements of its `element` type back to back, so any block of whole elements
    (`CHECK_BLOCK_BYTES` is a multiple of every element size) is values."""

    digest: Any
    squares: float | None = None
    finite: bool = True
    element: tensors.ElementType = tensors.F32

    def feed(self, data: memoryview | bytes) -> None:
        """Check the next bytes of the data, `CHECK_BLOCK_BYTES` at a time."""
        view = memoryview(data)
        for start in range(0, len(view), CHECK_BLOCK_BYTES):
            block = view[start : start + CHECK_BLOCK_BYTES]
            self.digest.update(block)
            values = self.element.values(block)
            self.finite = self.finite and bool(np.isfinite(values).all())
            if self.squares is not None:
                self.squares += tensors.sum_of_squares(values)

    def verify(self, ref: ObjectRef, data: Callable[[], tensors.Tensors] | None = None) -> None:
        """InvalidUpdate unless the sha256 is the one reported and every value was finite (`data`:
        the tensors, to name the first non-finite one)."""
        if self.digest.hexdigest() != ref.sha256:
            raise InvalidUpdate("sha256 does not match the one reported")
        if not self.finite:
            for name, tensor in (data() if data else {}).items():
                if not tensors.all_finite(tensor):
                    raise tensors.non_finite(name)
            raise InvalidUpdate("the tensor data has non-finite values (NaN or Inf)")

    @property
    def norm(self) -> float | None:
        return None if self.squares is None else math.sqrt(self.squares)


def _read_file(
    store: ModelStore,
    ref: ObjectRef,
    layout: ModelLayout,
    check_metadata: Callable[[dict[str, object]], None] | None = None,
    *,
    norm: bool = False,
    keep: bool = True,
) -> CheckedFile:
    """The tensors of the file `ref` (`ref.bytes` long, sha256 `ref.sha256`) whose header matches
    `layout`; its metadata is checked before its tensor data is downloaded. `keep=False`: the data
    streamed through the checks and dropped (no tensors kept)."""
    header, first = read_checked_header(store, ref, layout, check_metadata)
    check = DataCheck(hashlib.sha256(first.data[: header.data_start]), 0.0 if norm else None, element=header.element)
    if not keep:
        whole = len(first.data) >= ref.bytes
        blocks = (
            [memoryview(first.data)[header.data_start :]]
            if whole
            else stream_blocks(store, ref.key, header.data_start, ref.bytes, first.version)
        )
        for block in blocks:
            check.feed(block)
        check.verify(ref)
        return CheckedFile({}, header, first.version, check.norm)
    data = bytearray(ref.bytes - header.data_start)
    if len(first.data) >= ref.bytes:  # a small file came whole with its header
        data[:] = first.data[header.data_start :]
    else:
        store.read_into(ref.key, header.data_start, memoryview(data), first.version)
    check.feed(data)
    check.verify(ref, lambda: tensors.views(data, header, layout.spec, check_finite=False))
    return CheckedFile(tensors.views(data, header, layout.spec, check_finite=False), header, first.version, check.norm)


def _read_coded(
    store: ModelStore,
    ref: ObjectRef,
    layout: ModelLayout,
    check_metadata: Callable[[dict[str, object]], None],
    *,
    norm: bool,
    keep: bool,
    out: tensors.Tensors | None,
) -> CheckedFile:
    """A file of the run's codec (not float32), steps 2-3: its header checked against the codec's
    layout, its data read whole (the coded file: smaller than the model's float32 data), its sha256
    checked, its tensors checked by the codec (indices strictly increasing and in range, scales and
    values finite), then decoded a model tensor at a time - into `out` (float32 tensors of the
    model, reused between updates; new ones if None) when `keep`, else into a temporary of one
    tensor - each decoded tensor checked finite and (if asked) squared for the norm."""
    header, first = read_checked_header(store, ref, layout, check_metadata)
    digest = hashlib.sha256(first.data[: header.data_start])
    data = bytearray(ref.bytes - header.data_start)
    if len(first.data) >= ref.bytes:
        data[:] = first.data[header.data_start :]
    else:
        store.read_into(ref.key, header.data_start, memoryview(data), first.version)
    digest.update(data)
    if digest.hexdigest() != ref.sha256:
        raise InvalidUpdate("sha256 does not match the one reported")
    files = tensors.views(data, header, layout.file.spec, check_finite=False)
    coder = layout.coder
    coder.check(files, layout.spec)
    if keep and out is None:
        out = {name: np.empty(shape, np.float32) for name, shape in layout.spec.shapes.items()}
    squares = 0.0
    for name, shape in layout.spec.shapes.items():
        flat = out[name].reshape(-1) if keep and out is not None else np.empty(int(np.prod(shape)), np.float32)
        coder.decode_tensor(files, name, shape, flat)
        part = tensors.sum_of_squares(flat)  # non-finite iff a decoded value is
        if not math.isfinite(part):
            raise InvalidUpdate(f"tensor {name!r} decodes to non-finite values (NaN or Inf)")
        squares += part
    return CheckedFile(
        out if keep and out is not None else {}, header, first.version, math.sqrt(squares) if norm else None
    )


def read_checked_header(
    store: ModelStore,
    ref: ObjectRef,
    layout: ModelLayout,
    check_metadata: Callable[[dict[str, object]], None] | None,
) -> tuple[tensors.Header, RangeRead]:
    """Step 2: one ranged read of the file's start (for a small file, all of it), its size and
    header checked against `ref` and the model."""
    first = store.read_range(ref.key, 0, min(ref.bytes, tensors.HEADER_LENGTH_BYTES + layout.file_header_bytes))
    if first.total_bytes != ref.bytes:
        raise InvalidUpdate(f"file is {first.total_bytes} bytes, the item says {ref.bytes}")
    if layout.dense:
        header = tensors.parse_header(first.data, ref.bytes, layout.spec, layout.max_header_bytes, layout.element)
    else:
        file = layout.file
        header = tensors.parse_header(
            first.data, ref.bytes, file.spec, file.max_header_bytes, tensors.F32, file.elements
        )
    if check_metadata is not None:
        check_metadata(header.metadata)
    return header, first


SLICE_BUDGET_BYTES = 32 * 2**20
"""Bytes of one slice of every update together (the rows a strategy combines at a time); the
strategy's own temporaries come on top (a median sorts a float64 copy: about 3x this)."""
MIN_SLICE_ELEMENTS = 1024
SLICE_READERS = 8
"""Ranged reads in flight at once when a slice is read from every update."""


@dataclass(frozen=True)
class _Checked:
    """An accepted update, as sliced access needs it: where its tensors lie, which version was
    checked, and the factor its norm bound scaled it by."""

    item: UpdateItem
    examples: int
    header: tensors.Header
    version: str | None
    scale: np.float32 | None


class UnversionedStore(FedstepError):
    """The store read an update without naming its object version: later ranged reads (slices) could
    not be pinned to the bytes that were checked. The bucket must be versioned (the stack's is)."""


@dataclass
class UpdateSource:
    """The round's usable items as validated, bounded updates (the strategies' `Updates`): a one-pass
    iterator of ClientUpdates, or slices of every accepted update. Items whose files fail a check are
    recorded in `rejected`, updates clipped to the run's bounds in `clipped`; `accepted_items` lists
    the items that reached the strategy, in order, with the examples they were weighted by."""

    store: ModelStore
    layout: ModelLayout
    bounds: Bounds
    items: list[UpdateItem]
    sliced: bool = False
    """Whether averaging strategies read by slices too (a model too large for one function)."""
    fixed_slice_elements: int | None = None
    """Elements per slice; None: as many as `SLICE_BUDGET_BYTES` allows for this many updates."""
    rejected: list[Rejection] = field(default_factory=list)
    clipped: list[Adjustment] = field(default_factory=list)
    accepted_items: list[tuple[UpdateItem, int]] = field(default_factory=list)
    on_rejected: Callable[[UpdateItem, str], None] | None = None
    default_norm: bool = False
    """Whether `bounds.max_update_norm` is the run's default bound (`influence.default_norm_bound`),
    as the reasons and adjustments say."""
    require_versions: bool = True
    """Refuse (`UnversionedStore`) to hand out the checked updates for slices when the store named no
    object version for one: a file replaced between the check and the slices would mix in. The model
    registry is versioned, on AWS and in the local cloud (`fedstep.local.gaps.s3_versioning`)."""
    _checked: list[_Checked] = field(default_factory=list)
    _passed: bool = False
    _decoded: tensors.Tensors | None = None
    """Under a codec: the one float32 buffer every update is decoded into (reused)."""

    @property
    def spec(self) -> tensors.TensorSpec:
        return self.layout.spec

    @property
    def slice_elements(self) -> int:
        """Elements per slice a strategy should ask for: the budget shared by the round's updates."""
        if self.fixed_slice_elements is not None:
            return self.fixed_slice_elements
        return max(MIN_SLICE_ELEMENTS, SLICE_BUDGET_BYTES // (tensors.F32.size * max(1, len(self.items))))

    def __iter__(self) -> Iterator[ClientUpdate]:
        if self._passed:
            raise RuntimeError("the updates were read once already: read them by slices instead")
        self._passed = True
        for item in self.items:
            admitted = self._admit(item, keep=True)
            if admitted is None:
                continue
            delta = admitted.tensors
            influence.scale_in_place(delta, self._checked[-1].scale)
            del admitted
            yield ClientUpdate(item.client_id, self._checked[-1].examples, delta, dict(item.privacy))
            del delta  # the consumer is done with it: free its buffer before the next file is read

    def _admit(self, item: UpdateItem, *, keep: bool) -> CheckedFile | None:
        """Check one update and bound it, recording the outcome (accepted, clipped or rejected); the
        checked file (with its tensors when `keep`), or None when it was rejected."""
        try:
            examples, capped = influence.bounded_examples(item.client_id, item.num_examples, self.bounds)
            norm = self.bounds.max_update_norm is not None
            out = self._buffer() if keep else None
            checked = read_update(self.store, item, self.layout, norm=norm, keep=keep, out=out)
            scale, clipped_norm = influence.norm_bound(
                checked.tensors, self.bounds, checked.norm, default=self.default_norm
            )
        except InvalidUpdate as exc:
            self.rejected.append(Rejection(item.client_id, exc.reason))
            if self.on_rejected is not None:
                self.on_rejected(item, exc.reason)
            return None
        what = "; ".join(w for w in (capped, clipped_norm) if w)
        if what:
            self.clipped.append(Adjustment(item.client_id, what))
        self.accepted_items.append((item, examples))
        self._checked.append(_Checked(item, examples, checked.header, checked.version, scale))
        return checked

    def _buffer(self) -> tensors.Tensors | None:
        """The decode buffer (under a codec other than float32), allocated on first use."""
        if self.layout.dense:
            return None
        if self._decoded is None:
            self._decoded = {name: np.empty(shape, np.float32) for name, shape in self.spec.shapes.items()}
        return self._decoded

    def accepted(self) -> list[UpdateInfo]:
        """The accepted updates in order; checks them all first if no pass was made yet (streamed, a
        block at a time, keeping no file: memory one block)."""
        if not self._passed:
            self._passed = True
            for item in self.items:
                self._admit(item, keep=False)
        return [UpdateInfo(c.item.client_id, c.examples) for c in self._checked]

    @property
    def admitted(self) -> list[_Checked]:
        """The accepted updates as checked so far, in order (item, weight, object version, norm-bound
        scale), whether or not the store named versions: what the round's update manifest records."""
        return list(self._checked)

    @property
    def checked(self) -> list[_Checked]:
        """The accepted updates as slices read them (after `accepted()`): where each tensor lies in
        its file, the object version checked, the factor its norm bound scales it by. With
        `require_versions`, UnversionedStore if the store named no version for one: slices could not
        be pinned to the bytes checked."""
        for c in self._checked:
            if self.require_versions and c.version is None:
                raise UnversionedStore(
                    f"the store named no object version for {c.item.update.key}: slices read later could not be "
                    "pinned to the checked bytes, so a file replaced meanwhile would mix in; "
                    "the bucket must be versioned"
                )
        return list(self._checked)

    def slice(self, name: str, start: int, stop: int) -> np.ndarray:
        """Elements [start, stop) of tensor `name` (flattened) of every accepted update, as float32
        (clients x elements), scaled by its norm bound like the pass's deltas; ranged reads of the
        checked object versions, `SLICE_READERS` at a time."""
        if not self._passed:
            self.accepted()
        checked = self.checked
        size = int(np.prod(self.spec.shapes[name], dtype=np.int64))
        if not 0 <= start <= stop <= size:
            raise ValueError(f"slice [{start}, {stop}) is outside tensor {name!r} of {size} elements")
        rows = np.empty((len(checked), stop - start), dtype=self.layout.element.numpy)

        def read(i: int) -> None:
            c = checked[i]
            if self.layout.dense:
                tensor_start = c.header.data_start + c.header.offsets[name][0]
                read_elements(self.store, c.item.update.key, tensor_start, start, rows[i], c.header.element, c.version)
            else:
                shape = self.spec.shapes[name]
                self.layout.coder.read_slice(name, shape, start, stop, self.file_reader(c), rows[i])
            if c.scale is not None:
                rows[i] *= c.scale

        if stop > start and checked:
            with ThreadPoolExecutor(max_workers=min(SLICE_READERS, len(checked))) as pool:
                list(pool.map(read, range(len(checked))))
        return rows

    def file_reader(self, c: _Checked) -> codecs.Reader:
        """Ranged reads of one checked update's codec tensors (its checked object version)."""
        return file_reader(self.store, c.item.update.key, c.header, self.layout.file.spec, c.version)


def file_reader(
    store: ModelStore, key: str, header: tensors.Header, spec: tensors.TensorSpec, version: str | None
) -> codecs.Reader:
    """`read(file_tensor, first, stop)`: elements [first, stop) of one tensor of a checked codec file
    (`header`, `spec`: its tensors), one ranged read of object version `version`."""

    def read(file_tensor: str, first: int, stop: int) -> np.ndarray:
        element = header.element_of(file_tensor)
        count = int(np.prod(spec.shapes[file_tensor], dtype=np.int64))
        if not 0 <= first <= stop <= count:
            raise ValueError(f"elements [{first}, {stop}) are outside file tensor {file_tensor!r} of {count}")
        out = np.empty(stop - first, dtype=element.numpy)
        if stop > first:
            tensor_start = header.data_start + header.offsets[file_tensor][0]
            read_elements(store, key, tensor_start, first, out, element, version)
        return out

    return read


def read_elements(
    store: ModelStore,
    key: str,
    tensor_start: int,
    start: int,
    out: np.ndarray,
    element: tensors.ElementType,
    version: str | None,
) -> None:
    """Elements [start, start + out.size) of the tensor whose data begins at byte `tensor_start` of
    one object version, read into `out` (an array of `element`'s numpy type): one ranged read."""
    if out.dtype != np.dtype(element.numpy):
        raise ValueError(f"reading {element.label} elements into an array of {out.dtype}")
    store.read_into(key, tensor_start + element.size * start, memoryview(out.view(np.uint8)), version)
