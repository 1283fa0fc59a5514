"""Model weights on the wire: safetensors files of named float32 tensors.

A client upload is untrusted input, so decoding never executes anything (safetensors is a JSON header
plus raw little-endian buffers) and every file is checked before its tensors are used: size limit,
sha256, parse, dtype float32, finite values, and - when the global model is known - the same tensor
names and shapes as the global model.
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load as _st_load
from safetensors.numpy import save as _st_save

from fedstep.errors import InvalidUpdate

Tensors = dict[str, np.ndarray]

DTYPE = np.float32
DEFAULT_MAX_BYTES = 512 * 1024 * 1024
"""Largest model file accepted by default: 512 MiB."""


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


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


METADATA_KEY = "fedstep"
"""fedstep's metadata is one `__metadata__` entry holding canonical JSON: safetensors writes the
metadata map in hash order, so several entries would make equal models encode to different bytes."""


def encode(tensors: Tensors, metadata: dict[str, object] | None = None) -> bytes:
    """Serialize named tensors as a safetensors file (float32, C-contiguous). Deterministic: equal
    tensors and metadata give equal bytes, so a repeated aggregation rewrites the same object."""
    prepared = {name: np.ascontiguousarray(t, dtype=DTYPE) for name, t in tensors.items()}
    meta = {METADATA_KEY: json.dumps(metadata or {}, sort_keys=True, separators=(",", ":"))}
    return _st_save(prepared, metadata=meta)


def read_metadata(data: bytes) -> dict[str, object]:
    """fedstep's metadata in a safetensors file, or {} (raises InvalidUpdate on a malformed header)."""
    if len(data) < 8:
        raise InvalidUpdate("not a safetensors file: shorter than its 8-byte header length")
    (header_len,) = struct.unpack("<Q", data[:8])
    if header_len > len(data) - 8:
        raise InvalidUpdate("not a safetensors file: header length exceeds the file size")
    try:
        header = json.loads(data[8 : 8 + header_len])
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidUpdate(f"not a safetensors file: header is not JSON ({exc})") from exc
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    if not isinstance(meta, dict) or METADATA_KEY not in meta:
        return {}
    try:
        parsed = json.loads(meta[METADATA_KEY])
    except (TypeError, json.JSONDecodeError) as exc:
        raise InvalidUpdate(f"fedstep metadata is not JSON ({exc})") from exc
    return parsed if isinstance(parsed, dict) else {}


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
            raise InvalidUpdate(f"tensor {name!r} has non-finite values (NaN or Inf)")
    if expected is not None:
        check_matches(tensors, expected)
    return tensors


def check_matches(tensors: Tensors, expected: TensorSpec) -> None:
    """Raise InvalidUpdate unless `tensors` has exactly the expected names and shapes."""
    missing = sorted(set(expected.shapes) - set(tensors))
    extra = sorted(set(tensors) - set(expected.shapes))
    if missing or extra:
        raise InvalidUpdate(f"tensor names differ from the global model: missing {missing}, unexpected {extra}")
    for name, shape in expected.shapes.items():
        if tuple(tensors[name].shape) != shape:
            raise InvalidUpdate(f"tensor {name!r} has shape {tuple(tensors[name].shape)}, expected {shape}")
