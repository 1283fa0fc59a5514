"""What an update codec is: how a client's delta (named float32 tensors of the model's layout) is
written as the tensors of a safetensors file, how the server checks and decodes that file, and how
it reads elements [start, stop) of one model tensor from ranged reads of the file's tensors.

Every codec decodes into float32 tensors of the model's layout (the aggregation function's one
reused buffer), and its file's size is a function of the model alone (`CodecLayout.data_bytes`), so
an oversized file is refused before a byte of it is read.
"""

from __future__ import annotations

import hashlib
import json
import struct
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from fedstep.core import limits, tensors
from fedstep.core.errors import InvalidUpdate
from fedstep.core.tensors import ElementType, Tensors, TensorSpec

Reader = Callable[[str, int, int], np.ndarray]
"""`read(file_tensor, first, stop)`: elements [first, stop) of one of the file's tensors (flattened),
as an array of its element type: one ranged read of the checked object version."""


@dataclass(frozen=True)
class CodecLayout:
    """An update file of one codec for one model: its tensors (`spec`: names and shapes; `elements`:
    their element types), the largest header it may have (the header of these tensors plus
    `limits.MAX_HEADER_SLACK_BYTES` for the metadata) and the bytes of its tensor data (exact: every
    codec's data size is a function of the model alone)."""

    codec: str
    spec: TensorSpec
    elements: dict[str, ElementType]
    max_header_bytes: int
    data_bytes: int

    @property
    def max_file_bytes(self) -> int:
        """The codec's size bound for this model: the 8-byte length, the largest header, the data."""
        return tensors.HEADER_LENGTH_BYTES + self.max_header_bytes + self.data_bytes

    @property
    def min_file_bytes(self) -> int:
        return limits.MIN_UPDATE_FILE_BYTES + self.data_bytes


def make_layout(codec: str, file_tensors: dict[str, tuple[ElementType, tuple[int, ...]]]) -> CodecLayout:
    """The layout of a file of these tensors (name -> element type, shape)."""
    spec = TensorSpec({name: shape for name, (_, shape) in sorted(file_tensors.items())})
    elements = {name: element for name, (element, _) in file_tensors.items()}
    data = sum(e.size * int(np.prod(s, dtype=np.int64)) for e, s in file_tensors.values())
    entries = {
        name: {"dtype": e.name, "shape": list(s), "data_offsets": [0, data]} for name, (e, s) in file_tensors.items()
    }
    header = len(json.dumps(entries, separators=(",", ":"), ensure_ascii=False).encode())
    return CodecLayout(codec, spec, elements, header + limits.MAX_HEADER_SLACK_BYTES, data)


def size(shape: tuple[int, ...]) -> int:
    return int(np.prod(shape, dtype=np.int64))


def num_blocks(n: int, block: int) -> int:
    return -(-n // block)


class Codec(ABC):
    """One wire format of an update. Subclasses set the class attributes and implement the methods;
    `fedstep.core.codecs.get` makes one from its name."""

    name: str
    """The canonical name, as the run settings, the round instructions and the update item say it."""
    sparse: bool = False
    """Whether it sends some of the elements only (the top-k family)."""
    error_feedback: bool = False
    """Whether the client keeps what it did not send (delta + residual - decoded) for its next round."""
    sliceable: bool = True
    """Whether elements [start, stop) of a model tensor can be read by ranged reads alone."""
    bound: str = ""
    """The error bound it keeps (decoded vs delta), in words; `within_bound` checks it."""
    description: str = ""
    """One line for `fedstep codecs`."""

    def __repr__(self) -> str:
        return f"codec {self.name}"

    @abstractmethod
    def layout(self, spec: TensorSpec) -> CodecLayout:
        """The file's tensors for a model of `spec`, and its size bound."""

    @abstractmethod
    def encode(self, delta: Tensors, seed: int) -> tuple[Tensors, Tensors]:
        """(the file's tensors, the decoded delta: what the server will reconstruct, bit for bit).
        `seed` drives stochastic rounding (`fedstep.core.codecs.seed_for`): the same delta and seed
        give the same bytes. `delta` must be finite; it is not changed."""

    @abstractmethod
    def check(self, files: Tensors, spec: TensorSpec) -> None:
        """InvalidUpdate with a reason unless the file's tensors (their names, types and shapes are
        checked already) are well formed: indices strictly increasing and in range, scales and
        values finite. Decoded values are checked finite by the reader."""

    @abstractmethod
    def decode_tensor(self, files: Tensors, name: str, shape: tuple[int, ...], out: np.ndarray) -> None:
        """Model tensor `name` (of `shape`) decoded from the checked file tensors into `out`: a flat
        float32 array of its elements (every element written)."""

    @abstractmethod
    def read_slice(
        self, name: str, shape: tuple[int, ...], start: int, stop: int, read: Reader, out: np.ndarray
    ) -> None:
        """Elements [start, stop) of model tensor `name` (flattened) into `out` (float32, stop - start
        elements), from ranged reads (`read`) of the checked file's tensors."""

    def within_bound(self, delta: Tensors, decoded: Tensors) -> bool:
        """Whether `decoded` keeps the codec's stated error bound for `delta`."""
        return all(np.array_equal(delta[n], decoded[n]) for n in delta)

    def decode_into(self, files: Tensors, spec: TensorSpec, out: Tensors) -> None:
        """Every model tensor decoded into `out` (float32 tensors of `spec`, reused between files)."""
        for name, shape in spec.shapes.items():
            self.decode_tensor(files, name, shape, out[name].reshape(-1))

    def decode(self, files: Tensors, spec: TensorSpec) -> Tensors:
        """The decoded delta, in new float32 tensors."""
        out = {name: np.empty(shape, np.float32) for name, shape in spec.shapes.items()}
        self.decode_into(files, spec, out)
        return out

    def describe(self) -> dict[str, object]:
        return {
            "name": self.name,
            "sparse": self.sparse,
            "error_feedback": self.error_feedback,
            "sliceable": self.sliceable,
            "bound": self.bound,
            "description": self.description,
        }


def require_finite(array: np.ndarray, what: str) -> None:
    if not tensors.all_finite(array):
        raise InvalidUpdate(f"{what} has non-finite values (NaN or Inf)")


def seed_for(run_id: str, round_number: int, client_id: str) -> int:
    """The stochastic-rounding seed of one client's update of one round: the first 8 bytes of the
    sha256 of run, round and client (a re-encoded round gives the same bytes)."""
    text = f"{run_id}\0{round_number}\0{client_id}".encode()
    return struct.unpack("<Q", hashlib.sha256(text).digest()[:8])[0]
