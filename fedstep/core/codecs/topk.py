"""`topk:FRACTION` and `topk:FRACTION+int8`: block-wise top-k of the delta by magnitude, with error
feedback on the client (what a round does not send is added to the next round's delta).

Each model tensor (flattened) is cut into blocks of `BLOCK` elements; each block keeps its
k = ceil(FRACTION x BLOCK) largest-magnitude elements (the last, partial block min(k, its length)),
so the file's size is a function of the model alone. File tensors per model tensor `N`:
- `N:i` (uint16, [K]): each kept element's index within its block, strictly increasing per block;
- `N:v` (float32, [K]) - or, with `+int8`, uint8 values quantised as `fedstep.core.codecs.int8`
  does, in blocks of `int8.BLOCK` kept values, with `N:s` (float32, [ceil(K / int8.BLOCK), 2]).
Block b's kept elements are entries [b x k, b x k + k_b) of both: a slice reads only its blocks'.
"""

from __future__ import annotations

import math

import numpy as np

from fedstep.core import tensors
from fedstep.core.codecs import int8
from fedstep.core.codecs.base import Codec, CodecLayout, Reader, make_layout, num_blocks, require_finite, size
from fedstep.core.errors import InvalidUpdate
from fedstep.core.tensors import Tensors, TensorSpec

BLOCK = 1024
"""Elements per top-k block (at most 65,536, so indices within a block fit uint16)."""


CHUNK_BLOCKS = 64
"""Blocks checked and scattered at a time (temporaries of 64 x k entries)."""


def kept_per_block(fraction: float) -> int:
    """k of a full block: ceil(fraction x BLOCK), at least 1."""
    return max(1, min(BLOCK, math.ceil(round(fraction * BLOCK, 9))))


class TopK(Codec):
    sparse = True
    error_feedback = True

    def __init__(self, fraction: float, quantised: bool = False) -> None:
        self.fraction = fraction
        self.quantised = quantised
        self.k = kept_per_block(fraction)
        self.name = f"topk:{fraction:g}" + ("+int8" if quantised else "")
        self.bound = (
            f"per block of {BLOCK}: its k = ceil(f x {BLOCK}) largest-magnitude elements kept"
            + (" (each within its int8 block's step)" if quantised else " exactly")
            + ", the rest 0, so ||error||^2 <= (1 - k / block) ||delta||^2"
            + (" plus the quantisation's" if quantised else "")
        )
        self.description = (
            f"the largest {fraction:g} of each {BLOCK}-element block by magnitude, uint16 indices, "
            + ("uint8 values (int8 blocks)" if quantised else "float32 values")
            + "; error feedback on the client"
        )

    def kept(self, n: int) -> int:
        """Kept elements of a tensor of n elements."""
        full, rest = divmod(n, BLOCK)
        return full * self.k + min(self.k, rest)

    def layout(self, spec: TensorSpec) -> CodecLayout:
        files = {}
        for name, shape in spec.shapes.items():
            kept = self.kept(size(shape))
            files[f"{name}:i"] = (tensors.U16, (kept,))
            files[f"{name}:v"] = (tensors.U8 if self.quantised else tensors.F32, (kept,))
            if self.quantised:
                files[f"{name}:s"] = (tensors.F32, int8.scales_shape(kept))
        return make_layout(self.name, files)

    def select(self, flat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(block-local indices, values) of each block's k largest-magnitude elements, in block
        order, indices increasing within a block."""
        n = flat.size
        full = n // BLOCK
        k = self.k
        parts_i, parts_v = [], []
        if full:
            blocks = flat[: full * BLOCK].reshape(full, BLOCK)
            if k < BLOCK:
                chosen = np.argpartition(-np.abs(blocks), k - 1, axis=1)[:, :k]
                chosen.sort(axis=1)
            else:
                chosen = np.broadcast_to(np.arange(BLOCK), (full, BLOCK))
            parts_i.append(chosen.reshape(-1))
            parts_v.append(np.take_along_axis(blocks, chosen, axis=1).reshape(-1))
        rest = flat[full * BLOCK :]
        if rest.size:
            kr = min(k, rest.size)
            chosen = np.sort(np.argpartition(-np.abs(rest), kr - 1)[:kr]) if kr < rest.size else np.arange(rest.size)
            parts_i.append(chosen)
            parts_v.append(rest[chosen])
        indices = np.concatenate(parts_i).astype(np.uint16) if parts_i else np.zeros(0, np.uint16)
        values = np.concatenate(parts_v).astype(np.float32) if parts_v else np.zeros(0, np.float32)
        return indices, values

    def encode(self, delta: Tensors, seed: int) -> tuple[Tensors, Tensors]:
        rng = np.random.default_rng(seed)
        files: Tensors = {}
        decoded: Tensors = {}
        for name in sorted(delta):
            flat = np.asarray(delta[name], np.float32).reshape(-1)
            indices, values = self.select(flat)
            files[f"{name}:i"] = indices
            if self.quantised:
                q, scales = int8.quantise(values, rng)
                files[f"{name}:v"], files[f"{name}:s"] = q, scales
                int8.dequantise(q, scales, 0, values)
            else:
                files[f"{name}:v"] = values
            out = np.zeros(flat.size, np.float32)
            self._scatter(indices, values, 0, out, 0)
            decoded[name] = out.reshape(np.shape(delta[name]))
        return files, decoded

    def _scatter(self, indices: np.ndarray, values: np.ndarray, entry: int, out: np.ndarray, offset: int) -> None:
        """Write kept elements - entries [entry, entry + len) of the tensor's - into `out`, whose
        first element is element `offset` of the tensor; elements outside `out` are skipped. A
        chunk of `CHUNK_BLOCKS` blocks' entries at a time (small temporaries)."""
        step = CHUNK_BLOCKS * self.k
        for begin in range(0, indices.size, step):
            positions = self.positions(indices[begin : begin + step], entry + begin)
            positions -= offset
            inside = (positions >= 0) & (positions < out.size)
            out[positions[inside]] = values[begin : begin + step][inside]

    def positions(self, indices: np.ndarray, entry: int) -> np.ndarray:
        """Element positions in the tensor of kept entries [entry, entry + len(indices))."""
        blocks = np.arange(entry, entry + indices.size, dtype=np.int64) // self.k
        return blocks * BLOCK + indices.astype(np.int64)

    def check(self, files: Tensors, spec: TensorSpec) -> None:
        for name, shape in spec.shapes.items():
            n = size(shape)
            full = n // BLOCK
            indices = files[f"{name}:i"]
            for first in range(0, full, CHUNK_BLOCKS):
                blocks = min(CHUNK_BLOCKS, full - first)
                head = indices[first * self.k : (first + blocks) * self.k].reshape(blocks, self.k)
                self._check_block_indices(head, BLOCK, name)
            tail = indices[full * self.k :]
            if tail.size:
                self._check_block_indices(tail.reshape(1, -1), n - full * BLOCK, name)
            if self.quantised:
                int8.check_scales(files[f"{name}:s"], f"tensor {name + ':s'!r}")
            else:
                require_finite(files[f"{name}:v"], f"tensor {name + ':v'!r}")

    @staticmethod
    def _check_block_indices(rows: np.ndarray, length: int, name: str) -> None:
        """Each row (one block's kept indices) strictly increasing and below the block's `length`."""
        where = f"tensor {name + ':i'!r}"
        wide = rows.astype(np.int32)
        if rows.shape[1] > 1 and (np.diff(wide, axis=1) <= 0).any():
            raise InvalidUpdate(f"{where}: indices not strictly increasing within a block (duplicate or unsorted)")
        if (wide >= length).any():
            raise InvalidUpdate(f"{where}: index out of range (a block of {length})")

    def _values(self, files: Tensors, name: str) -> np.ndarray:
        if not self.quantised:
            return files[f"{name}:v"]
        q = files[f"{name}:v"]
        values = np.empty(q.size, np.float32)
        int8.dequantise(q, files[f"{name}:s"], 0, values)
        return values

    def decode_tensor(self, files: Tensors, name: str, shape: tuple[int, ...], out: np.ndarray) -> None:
        out[:] = 0
        self._scatter(files[f"{name}:i"], self._values(files, name), 0, out, 0)

    def read_slice(
        self, name: str, shape: tuple[int, ...], start: int, stop: int, read: Reader, out: np.ndarray
    ) -> None:
        out[:] = 0
        if stop <= start:
            return
        kept = self.kept(size(shape))
        first = (start // BLOCK) * self.k
        last = min(kept, ((stop - 1) // BLOCK + 1) * self.k)
        if last <= first:
            return
        indices = read(f"{name}:i", first, last)
        if self.quantised:
            q = read(f"{name}:v", first, last)
            rows = read(f"{name}:s", 2 * (first // int8.BLOCK), 2 * ((last - 1) // int8.BLOCK + 1)).reshape(-1, 2)
            values = np.empty(q.size, np.float32)
            int8.dequantise(q, rows, first, values)
        else:
            values = read(f"{name}:v", first, last)
        self._scatter(indices, values, first, out, start)

    def within_bound(self, delta: Tensors, decoded: Tensors) -> bool:
        files, _ = self.encode(delta, 0)
        for name, x in delta.items():
            flat = np.asarray(x, np.float64).reshape(-1)
            got = np.asarray(decoded[name], np.float64).reshape(-1)
            positions = self.positions(files[f"{name}:i"], 0)
            sent = np.zeros(flat.size, bool)
            sent[positions] = True
            if (got[~sent] != 0).any():
                return False
            if self.quantised:
                if not int8.within_quantisation(flat[positions], got[positions], files[f"{name}:s"]):
                    return False
            elif not np.array_equal(flat[positions], got[positions]):
                return False
            for b in range(num_blocks(flat.size, BLOCK)):  # the energy kept: at least k / block of it
                part, mask = flat[b * BLOCK : (b + 1) * BLOCK], sent[b * BLOCK : (b + 1) * BLOCK]
                dropped = float(np.sum(part[~mask] ** 2))
                if dropped > (1 - mask.sum() / part.size) * float(np.sum(part**2)) * (1 + 1e-9) + 1e-30:
                    return False
        return True
