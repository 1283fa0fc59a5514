"""Model weights on the wire: safetensors files of named float32 tensors.

A client upload is untrusted input, so decoding never executes anything (safetensors is a JSON header
plus raw little-endian buffers) and every file is checked before its tensors are used: size limit,
sha256, parse, dtype float32, finite values, and - when the global model is known - the same tensor
names and shapes as the global model.

The aggregation function reads updates in two steps (`fedstep.core.update_source`): `parse_header`
checks a file's header - its size, names, dtypes, shapes and offsets - against the global model
before a byte of tensor data is downloaded, and `views` then reads the tensors straight out of the
downloaded buffer without copying them.
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load as _st_load
from safetensors.numpy import save as _st_save

from fedstep.core.errors import InvalidUpdate

Tensors = dict[str, np.ndarray]

DTYPE = np.float32


@dataclass(frozen=True)
class ElementType:
    """How one tensor element lies in a file: its safetensors dtype (`name`), the numpy dtype it is
    read as (`numpy`, little-endian), its size in bytes, and how error messages name it (`label`)."""

    name: str
    numpy: str
    size: int
    label: str

    def values(self, data: bytes | bytearray | memoryview) -> np.ndarray:
        """The elements in `data` (whole elements, back to back), as a view: no copy."""
        return np.frombuffer(data, dtype=self.numpy)


F32 = ElementType("F32", "<f4", 4, "float32")
"""A float32: the element type of every model file and, today, of every update file."""
ELEMENT_TYPES: dict[str, ElementType] = {F32.name: F32}
"""The element types a model's tensors (and a float32 update's) hold, by safetensors dtype: float32
only. The update codecs (`fedstep.core.codecs`) store other types in their files (`WIRE_TYPES`), but
always decode into float32 tensors of the model's layout."""
F16 = ElementType("F16", "<f2", 2, "float16")
U8 = ElementType("U8", "u1", 1, "uint8")
U16 = ElementType("U16", "<u2", 2, "uint16")
U32 = ElementType("U32", "<u4", 4, "uint32")
"""A masked input's elements (secure aggregation: values modulo 2^32); never in a codec's file."""
WIRE_TYPES: dict[str, ElementType] = {t.name: t for t in (F32, F16, U8, U16)}
"""The element types an update codec's file tensors may hold (float32 values and scales, float16
values, uint8 quantised values and packed index bits, uint16 - which no codec writes today)."""

DEFAULT_MAX_BYTES = 256 * 1024 * 1024
"""Largest model file accepted where the deployment says nothing else: 256 MiB (see the deployment
config's `max_model_mb`, which also sizes the aggregation function's memory)."""


@dataclass(frozen=True)
class TensorSpec:
    """Names and shapes of a model's tensors (all float32)."""

    shapes: dict[str, tuple[int, ...]]

    @classmethod
    def of(cls, tensors: Tensors) -> TensorSpec:
        return cls({name: tuple(int(d) for d in t.shape) for name, t in tensors.items()})

    @property
    def num_parameters(self) -> int:
        return int(sum(int(np.prod(s, dtype=np.int64)) for s in self.shapes.values()))

    @property
    def data_bytes(self) -> int:
        """Bytes of the model's tensor data (float32)."""
        return self.data_bytes_as(F32)

    def data_bytes_as(self, element: ElementType) -> int:
        """Bytes of the model's tensor data, its elements stored as `element`."""
        return element.size * self.num_parameters


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


METADATA_KEY = "fedstep"
"""fedstep's metadata is one `__metadata__` entry holding canonical JSON: safetensors writes the
metadata map in hash order, so several entries would make equal models encode to different bytes."""


def encode(tensors: Tensors, metadata: dict[str, object] | None = None, element: ElementType | None = F32) -> bytes:
    """Serialize named tensors as a safetensors file (elements of type `element`, default float32;
    None: each tensor keeps its own dtype, one of `WIRE_TYPES`, as a codec's file does; C-contiguous,
    little-endian). Deterministic: equal tensors and metadata give equal bytes, so a repeated
    aggregation rewrites the same object."""
    if element is None:
        prepared = {name: np.ascontiguousarray(t, dtype=wire_type(t.dtype).numpy) for name, t in tensors.items()}
    else:
        prepared = {name: np.ascontiguousarray(t, dtype=element.numpy) for name, t in tensors.items()}
    meta = {METADATA_KEY: json.dumps(metadata or {}, sort_keys=True, separators=(",", ":"))}
    return _st_save(prepared, metadata=meta)


def wire_type(dtype: np.dtype) -> ElementType:
    """The element type of `WIRE_TYPES` that stores numpy `dtype` (ValueError for any other)."""
    for element in WIRE_TYPES.values():
        if np.dtype(element.numpy) == np.dtype(dtype).newbyteorder("<"):
            return element
    raise ValueError(f"dtype {dtype} is not one of the wire types {sorted(WIRE_TYPES)}")


def encoded_header(
    spec: TensorSpec, metadata: dict[str, object] | None = None, element: ElementType = F32
) -> tuple[bytes, dict[str, tuple[int, int]]]:
    """The first bytes `encode` writes for tensors of `spec` with `metadata` (the 8-byte length and
    the JSON header, padded with spaces to a multiple of 8 as safetensors pads it), and where each
    tensor's bytes lie in the data section, in file order (by name). Lets a model be written in
    parts - a sliced aggregation's multipart upload - byte for byte as `encode` writes it whole
    (tested against safetensors)."""
    meta = {METADATA_KEY: json.dumps(metadata or {}, sort_keys=True, separators=(",", ":"))}
    entries: dict[str, object] = {"__metadata__": meta}
    offsets: dict[str, tuple[int, int]] = {}
    position = 0
    for name in sorted(spec.shapes):
        shape = spec.shapes[name]
        size = element.size * int(np.prod(shape, dtype=np.int64))
        offsets[name] = (position, position + size)
        entries[name] = {"dtype": element.name, "shape": list(shape), "data_offsets": [position, position + size]}
        position += size
    text = json.dumps(entries, separators=(",", ":"), ensure_ascii=False).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text, offsets


def read_metadata(data: bytes) -> dict[str, object]:
    """fedstep's metadata in a safetensors file, or {} (raises InvalidUpdate on a malformed header)."""
    _, header = _header_json(data)
    return _fedstep_metadata(header.get("__metadata__") if isinstance(header, dict) else None)


def decode(
    data: bytes,
    *,
    expected: TensorSpec | None = None,
    sha256: str | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> Tensors:
    """Parse and validate a safetensors file; raise InvalidUpdate with a specific reason on any defect."""
    if len(data) > max_bytes:
        raise InvalidUpdate(f"file is {len(data)} bytes, over the limit of {max_bytes}")
    if sha256 is not None and sha256_hex(data) != sha256:
        raise InvalidUpdate("sha256 does not match the one reported")
    try:
        tensors = _st_load(data)
    except (SafetensorError, ValueError, TypeError) as exc:
        raise InvalidUpdate(f"not a safetensors file: {exc}") from exc
    for name, tensor in tensors.items():
        if tensor.dtype != DTYPE:
            raise InvalidUpdate(f"tensor {name!r} has dtype {tensor.dtype}, expected float32")
        if not np.isfinite(tensor).all():
            raise non_finite(name)
    if expected is not None:
        check_matches(tensors, expected)
    return tensors


HEADER_LENGTH_BYTES = 8
"""A safetensors file starts with the length of its JSON header, a little-endian u64."""
CHUNK_ELEMENTS = 1 << 16
"""Elements worked on at a time (checked, multiplied, squared), so temporaries stay small (at most
512 KiB in float64) whatever the tensor's size."""


def chunks(array: np.ndarray) -> Iterator[np.ndarray]:
    """The array's elements, flat, `CHUNK_ELEMENTS` at a time (views, no copy)."""
    flat = array.reshape(-1)
    for start in range(0, flat.size, CHUNK_ELEMENTS):
        yield flat[start : start + CHUNK_ELEMENTS]


def sum_of_squares(values: np.ndarray) -> float:
    """The sum of the squares of `values` (float32 or float64), in float64 and numpy's pairwise sum,
    `CHUNK_ELEMENTS` at a time. Not BLAS: its threads stalled on a busy machine, and the result
    must not depend on how many there are. Non-finite iff a value is (a float32 squared cannot
    overflow float64), so it doubles as the finiteness check."""
    total = 0.0
    wide = np.empty(min(CHUNK_ELEMENTS, values.size), dtype=np.float64)
    for part in chunks(values):
        square = wide[: part.size]
        np.multiply(part, part, out=square, dtype=np.float64)
        total += float(square.sum())
    return total


def l2_norm(delta: Tensors) -> float:
    """The L2 norm of all tensors together, summed in float64 (chunked: small temporaries)."""
    return math.sqrt(sum(sum_of_squares(tensor) for tensor in delta.values()))


def all_finite(array: np.ndarray) -> bool:
    """No NaN or Inf in `array`, checked a chunk at a time."""
    return all(np.isfinite(part).all() for part in chunks(array))


@dataclass(frozen=True)
class Header:
    """A safetensors header checked against a model: where each tensor's bytes lie in the data
    section (`offsets[name] = (start, end)`), and fedstep's metadata."""

    length: int
    """Bytes of JSON after the 8-byte length; the data section starts at 8 + length."""
    offsets: dict[str, tuple[int, int]]
    metadata: dict[str, object]
    element: ElementType = F32
    """The element type of every tensor in the file (the one the header was checked against), unless
    `elements` names another for a tensor (a codec's file)."""
    elements: dict[str, ElementType] = field(default_factory=dict)
    """Tensors whose element type is not `element`, by name (a codec's file tensors)."""

    @property
    def data_start(self) -> int:
        return HEADER_LENGTH_BYTES + self.length

    def element_of(self, name: str) -> ElementType:
        """The element type tensor `name` was checked to hold."""
        return self.elements.get(name, self.element)


def header_length(prefix: bytes) -> int:
    """The JSON header's length, from a file's first 8 bytes."""
    if len(prefix) < HEADER_LENGTH_BYTES:
        raise InvalidUpdate("not a safetensors file: shorter than its 8-byte header length")
    return int(struct.unpack("<Q", prefix[:HEADER_LENGTH_BYTES])[0])


def _header_json(prefix: bytes, max_header_bytes: int | None = None) -> tuple[int, object]:
    """(length, parsed JSON) of the header at the start of `prefix`; InvalidUpdate if it is longer
    than `max_header_bytes`, than `prefix`, or not JSON."""
    length = header_length(prefix)
    if max_header_bytes is not None and length > max_header_bytes:
        raise InvalidUpdate(f"not a safetensors file of this model: header of {length} bytes, over {max_header_bytes}")
    if len(prefix) < HEADER_LENGTH_BYTES + length:
        raise InvalidUpdate("not a safetensors file: header length exceeds the file size")
    try:
        return length, json.loads(prefix[HEADER_LENGTH_BYTES : HEADER_LENGTH_BYTES + length])
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidUpdate(f"not a safetensors file: header is not JSON ({exc})") from None


def spec_of_header(prefix: bytes) -> TensorSpec:
    """The names and shapes in the header of a file the server wrote (`prefix`: its first 8 +
    header-length bytes)."""
    _, header = _header_json(prefix)
    if not isinstance(header, dict):
        raise InvalidUpdate("not a safetensors file: header is not an object")
    header.pop("__metadata__", None)
    return TensorSpec({name: tuple(int(d) for d in entry["shape"]) for name, entry in sorted(header.items())})


def parse_header(
    prefix: bytes,
    file_bytes: int,
    expected: TensorSpec,
    max_header_bytes: int,
    element: ElementType = F32,
    elements: dict[str, ElementType] | None = None,
) -> Header:
    """Check a file's header (`prefix` holds at least its first 8 + header-length bytes) against the
    model `expected`: the header is at most `max_header_bytes`, names the same tensors (of type
    `element`, default float32, or the type `elements` names for a tensor - a codec's file - and the
    same shapes), whose data lie back to back and fill the file's `file_bytes` exactly. Raises
    InvalidUpdate with a short reason; never lists more than a few names."""
    elements = elements or {}
    length, header = _header_json(prefix, max_header_bytes)
    if not isinstance(header, dict):
        raise InvalidUpdate("not a safetensors file: header is not an object")
    raw_meta = header.pop("__metadata__", None)
    if len(header) != len(expected.shapes):
        raise InvalidUpdate(f"file has {len(header)} tensors, the global model {len(expected.shapes)}")
    unknown = [name for name in header if name not in expected.shapes]
    if unknown:
        raise InvalidUpdate(f"tensor names differ from the global model: {len(unknown)} unexpected, e.g. {unknown[:3]}")
    offsets: dict[str, tuple[int, int]] = {}
    for name, shape in expected.shapes.items():
        entry = header[name]
        if not isinstance(entry, dict):
            raise InvalidUpdate(f"tensor {name!r} has a malformed header entry (not an object)")
        kind = elements.get(name, element)
        if entry.get("dtype") != kind.name:
            raise InvalidUpdate(f"tensor {name!r} has dtype {str(entry.get('dtype'))[:10]}, expected {kind.label}")
        got = entry.get("shape")
        if got != list(shape):
            shown = tuple(got) if isinstance(got, list) and len(got) <= 8 else str(got)[:60]
            raise InvalidUpdate(f"tensor {name!r} has shape {shown}, expected {shape}")
        bounds = entry.get("data_offsets")
        if not (isinstance(bounds, list) and len(bounds) == 2 and all(type(b) is int for b in bounds)):
            raise InvalidUpdate(f"tensor {name!r} has malformed data offsets")
        start, end = bounds
        if end - start != kind.size * int(np.prod(shape, dtype=np.int64)):
            raise InvalidUpdate(f"tensor {name!r}: its data offsets do not fit its shape")
        offsets[name] = (start, end)
    position = 0
    for name, (start, end) in sorted(offsets.items(), key=lambda kv: kv[1]):
        if start != position:
            raise InvalidUpdate(f"tensor {name!r}: data offsets overlap or leave a gap")
        position = end
    described = HEADER_LENGTH_BYTES + length + position
    if described != file_bytes:
        raise InvalidUpdate(f"file is {file_bytes} bytes, its header describes {described}")
    return Header(
        length, offsets, _fedstep_metadata(raw_meta), element, {n: t for n, t in elements.items() if t != element}
    )


def _fedstep_metadata(raw: object) -> dict[str, object]:
    if not isinstance(raw, dict) or METADATA_KEY not in raw:
        return {}
    try:
        parsed = json.loads(raw[METADATA_KEY])
    except (TypeError, json.JSONDecodeError) as exc:
        raise InvalidUpdate(f"fedstep metadata is not JSON ({exc})") from None
    return parsed if isinstance(parsed, dict) else {}


def views(
    data: bytes | bytearray | memoryview, header: Header, expected: TensorSpec, *, check_finite: bool = True
) -> Tensors:
    """The tensors of a file whose `header` was checked, as views into its data section `data` (no
    copy; writable when `data` is a bytearray). Raises InvalidUpdate on a non-finite value, unless
    the caller checked that already (`check_finite=False`)."""
    out: Tensors = {}
    for name, (start, end) in header.offsets.items():
        element = header.element_of(name)
        flat = np.frombuffer(data, dtype=element.numpy, count=(end - start) // element.size, offset=start)
        if check_finite and not all_finite(flat):
            raise non_finite(name)
        out[name] = flat.reshape(expected.shapes[name])
    return out


def non_finite(name: str) -> InvalidUpdate:
    return InvalidUpdate(f"tensor {name!r} has non-finite values (NaN or Inf)")


def check_matches(tensors: Tensors, expected: TensorSpec) -> None:
    """Raise InvalidUpdate unless `tensors` has exactly the expected names and shapes."""
    missing = sorted(set(expected.shapes) - set(tensors))
    extra = sorted(set(tensors) - set(expected.shapes))
    if missing or extra:
        raise InvalidUpdate(
            f"tensor names differ from the global model: {len(missing)} missing, e.g. {missing[:3]}, "
            f"{len(extra)} unexpected, e.g. {extra[:3]}"
        )
    for name, shape in expected.shapes.items():
        if tuple(tensors[name].shape) != shape:
            raise InvalidUpdate(f"tensor {name!r} has shape {tuple(tensors[name].shape)}, expected {shape}")
