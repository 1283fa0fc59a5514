"""`topk:FRACTION` and `topk:FRACTION+int8`: block-wise top-k of the delta by magnitude, with error
feedback on the client (what a round does not send is added to the next round's delta).

Each model tensor (flattened) is cut into blocks of `BLOCK` elements; each block keeps its
k = ceil(FRACTION x BLOCK) largest-magnitude elements (the last, partial block min(k, its length)),
so the file's size is a function of the model alone. File tensors per model tensor `N`:
- `N:i` (uint8, [ceil(bits / 8)]): each block's kept indices, Elias-Fano coded
  (`fedstep.core.codecs.eliasfano`), the blocks' bits back to back and the last byte padded with
  zero bits. Every full block takes the same number of bits (a function of k alone) and the last
  one a number fixed by its length, so block b's bits start at b x (bits of a full block);
- `N:v` (float32, [K]) - or, with `+int8`, uint8 values quantised as `fedstep.core.codecs.int8`
  does, in blocks of `int8.BLOCK` kept values, with `N:s` (float32, [ceil(K / int8.BLOCK), 2]).
Block b's kept elements are entries [b x k, b x k + k_b) of `N:v`: a slice reads only its blocks'
index bytes and values.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np

from fedstep.core import tensors
from fedstep.core.codecs import eliasfano, int8
from fedstep.core.codecs.base import Codec, CodecLayout, Reader, make_layout, num_blocks, require_finite, size
from fedstep.core.codecs.eliasfano import BlockCode
from fedstep.core.errors import InvalidUpdate
from fedstep.core.tensors import Tensors, TensorSpec

BLOCK = 1024
"""Elements per top-k block."""
CHUNK_BLOCKS = 64
"""Blocks decoded, checked and scattered at a time (temporaries of about 64 x k x 40 bytes: 260 KiB at
k = 103; larger chunks decode faster but show in the one-pass memory bound on small models)."""
ENCODE_CHUNK_BLOCKS = 1024
"""Blocks selected and coded at a time on the client (a multiple of 8: each chunk's bits fill whole
bytes; temporaries of about 1,024 x `BLOCK` x 12 bytes)."""


def kept_per_block(fraction: float) -> int:
    """k of a full block: ceil(fraction x BLOCK), at least 1."""
    return max(1, min(BLOCK, math.ceil(round(fraction * BLOCK, 9))))


def select(blocks: np.ndarray, kept: int) -> np.ndarray:
    """The block-local indices of each row's `kept` largest-magnitude elements, increasing."""
    if kept >= blocks.shape[1]:
        return np.broadcast_to(np.arange(blocks.shape[1]), blocks.shape)
    chosen = np.argpartition(-np.abs(blocks), kept - 1, axis=1)[:, :kept]
    chosen.sort(axis=1)
    return chosen


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
        bits = self.full_code.bits / self.k
        self.description = (
            f"the largest {fraction:g} of each {BLOCK}-element block by magnitude, Elias-Fano-coded indices "
            f"({bits:.1f} bits each), "
            + ("uint8 values (int8 blocks)" if quantised else "float32 values")
            + "; error feedback on the client"
        )

    @property
    def full_code(self) -> BlockCode:
        """The index code of a full block."""
        return eliasfano.block_code(BLOCK, self.k)

    def kept(self, n: int) -> int:
        """Kept elements of a tensor of n elements."""
        full, rest = divmod(n, BLOCK)
        return full * self.k + min(self.k, rest)

    def last_code(self, n: int) -> BlockCode | None:
        """The index code of a tensor's last, partial block (None if it has none)."""
        rest = n % BLOCK
        return eliasfano.block_code(rest, min(self.k, rest)) if rest else None

    def bit_offset(self, n: int, block: int) -> int:
        """Where block `block` (0 .. number of blocks) of a tensor of n elements starts in its index
        bits: a function of n and k alone."""
        full = n // BLOCK
        last = self.last_code(n)
        return min(block, full) * self.full_code.bits + (last.bits if last and block > full else 0)

    def index_bytes(self, n: int) -> int:
        """Bytes of the index tensor `N:i` of a tensor of n elements."""
        return -(-self.bit_offset(n, num_blocks(n, BLOCK)) // 8)

    def layout(self, spec: TensorSpec) -> CodecLayout:
        files = {}
        for name, shape in spec.shapes.items():
            n = size(shape)
            kept = self.kept(n)
            files[f"{name}:i"] = (tensors.U8, (self.index_bytes(n),))
            files[f"{name}:v"] = (tensors.U8 if self.quantised else tensors.F32, (kept,))
            if self.quantised:
                files[f"{name}:s"] = (tensors.F32, int8.scales_shape(kept))
        return make_layout(self.name, files)

    # -- the client ------------------------------------------------------------------------------

    def encode(self, delta: Tensors, seed: int) -> tuple[Tensors, Tensors]:
        rng = np.random.default_rng(seed)
        files: Tensors = {}
        decoded: Tensors = {}
        for name in sorted(delta):
            flat = np.asarray(delta[name], np.float32).reshape(-1)
            packed, values = self.select_and_pack(flat)
            files[f"{name}:i"] = packed
            if self.quantised:
                q, scales = int8.quantise(values, rng)
                files[f"{name}:v"], files[f"{name}:s"] = q, scales
                int8.dequantise(q, scales, 0, values)
            else:
                files[f"{name}:v"] = values
            out = np.zeros(flat.size, np.float32)  # what the server will decode, by the server's code
            self._scatter(packed, 0, flat.size, 0, num_blocks(flat.size, BLOCK), values, 0, out, 0)
            decoded[name] = out.reshape(np.shape(delta[name]))
        return files, decoded

    def select_and_pack(self, flat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(the index tensor, the kept values in block order) of a flat float32 tensor: each block's k
        largest-magnitude elements, `ENCODE_CHUNK_BLOCKS` blocks at a time."""
        n = flat.size
        full = n // BLOCK
        packed = np.zeros(self.index_bytes(n), np.uint8)
        values = np.empty(self.kept(n), np.float32)
        code = self.full_code
        for first in range(0, full, ENCODE_CHUNK_BLOCKS):
            stop = min(full, first + ENCODE_CHUNK_BLOCKS)
            blocks = flat[first * BLOCK : stop * BLOCK].reshape(-1, BLOCK)
            chosen = select(blocks, self.k)
            values[first * self.k : stop * self.k] = np.take_along_axis(blocks, chosen, axis=1).reshape(-1)
            bits = eliasfano.pack(chosen, code)
            if stop == full:  # the last chunk: the partial block's bits follow, then the padding
                bits = np.concatenate([bits, self._pack_last(flat, values)])
            chunk = np.packbits(bits)  # whole bytes but for the last chunk: `first` is a multiple of 8
            start = first * code.bits // 8
            packed[start : start + chunk.size] = chunk
        if full == 0:
            chunk = np.packbits(self._pack_last(flat, values))
            packed[: chunk.size] = chunk
        return packed, values

    def _pack_last(self, flat: np.ndarray, values: np.ndarray) -> np.ndarray:
        """The bits of the last, partial block (its values written into `values`)."""
        n = flat.size
        last = self.last_code(n)
        if last is None:
            return np.zeros(0, np.uint8)
        rest = flat[n - last.length :].reshape(1, -1)
        chosen = select(rest, last.kept)
        values[values.size - last.kept :] = rest[0, chosen[0]]
        return eliasfano.pack(chosen, last)

    # -- the server ------------------------------------------------------------------------------

    def blocks(
        self, packed: np.ndarray, base: int, n: int, first: int, stop: int, where: str
    ) -> Iterator[tuple[int, np.ndarray]]:
        """(block, indices: blocks x kept) of blocks [first, stop) of a tensor of n elements, from
        `packed`: its index bytes from byte `base` on, covering those blocks. `CHUNK_BLOCKS` blocks
        at a time; each checked (`eliasfano.unpack`: InvalidUpdate naming `where`)."""
        full = n // BLOCK
        code = self.full_code
        for begin in range(first, min(stop, full), CHUNK_BLOCKS):
            end = min(begin + CHUNK_BLOCKS, stop, full)
            bits = self._bits(packed, base, begin * code.bits, (end - begin) * code.bits)
            yield begin, eliasfano.unpack(bits, end - begin, code, where)
        last = self.last_code(n)
        if last is not None and first <= full < stop:
            bits = self._bits(packed, base, full * code.bits, last.bits)
            yield full, eliasfano.unpack(bits, 1, last, where)

    @staticmethod
    def _bits(packed: np.ndarray, base: int, start: int, count: int) -> np.ndarray:
        """Bits [start, start + count) of a tensor's index bits, from its bytes [base, ...) in `packed`."""
        if count == 0:
            return np.zeros(0, np.uint8)
        skip = start % 8
        lo = start // 8 - base
        hi = -(-(start + count) // 8) - base
        return np.unpackbits(packed[lo:hi])[skip : skip + count]

    def _scatter(
        self,
        packed: np.ndarray,
        base: int,
        n: int,
        first: int,
        stop: int,
        values: np.ndarray,
        entry: int,
        out: np.ndarray,
        offset: int,
    ) -> None:
        """Write the kept elements of blocks [first, stop) - `values` holds their entries from entry
        `entry` on - into `out`, whose first element is element `offset` of the tensor; elements
        outside `out` are skipped."""
        for block, indices in self.blocks(packed, base, n, first, stop, "index tensor"):
            count, kept = indices.shape
            positions = (np.arange(block, block + count, dtype=np.int64)[:, None] * BLOCK + indices).reshape(-1)
            positions -= offset
            begin = block * self.k - entry
            chunk = values[begin : begin + count * kept]
            if offset == 0 and positions.size and positions[-1] < out.size:
                out[positions] = chunk
            else:
                inside = (positions >= 0) & (positions < out.size)
                out[positions[inside]] = chunk[inside]

    def check(self, files: Tensors, spec: TensorSpec) -> None:
        for name, shape in spec.shapes.items():
            n = size(shape)
            packed = files[f"{name}:i"]
            where = f"tensor {name + ':i'!r}"
            for _ in self.blocks(packed, 0, n, 0, num_blocks(n, BLOCK), where):
                pass
            bits = self.bit_offset(n, num_blocks(n, BLOCK))
            if bits % 8 and int(packed[-1]) & ((1 << (8 - bits % 8)) - 1):
                raise InvalidUpdate(f"{where}: the padding after the last block's index bits is not zero")
            if self.quantised:
                int8.check_scales(files[f"{name}:s"], f"tensor {name + ':s'!r}")
            else:
                require_finite(files[f"{name}:v"], f"tensor {name + ':v'!r}")

    def _values(self, files: Tensors, name: str) -> np.ndarray:
        if not self.quantised:
            return files[f"{name}:v"]
        q = files[f"{name}:v"]
        values = np.empty(q.size, np.float32)
        int8.dequantise(q, files[f"{name}:s"], 0, values)
        return values

    def decode_tensor(self, files: Tensors, name: str, shape: tuple[int, ...], out: np.ndarray) -> None:
        out[:] = 0
        n = size(shape)
        self._scatter(files[f"{name}:i"], 0, n, 0, num_blocks(n, BLOCK), self._values(files, name), 0, out, 0)

    def read_slice(
        self, name: str, shape: tuple[int, ...], start: int, stop: int, read: Reader, out: np.ndarray
    ) -> None:
        out[:] = 0
        if stop <= start:
            return
        n = size(shape)
        first_block, stop_block = start // BLOCK, (stop - 1) // BLOCK + 1
        first = first_block * self.k
        last = min(self.kept(n), stop_block * self.k)
        if last <= first:
            return
        base = self.bit_offset(n, first_block) // 8
        packed = read(f"{name}:i", base, -(-self.bit_offset(n, stop_block) // 8))
        if self.quantised:
            q = read(f"{name}:v", first, last)
            rows = read(f"{name}:s", 2 * (first // int8.BLOCK), 2 * ((last - 1) // int8.BLOCK + 1)).reshape(-1, 2)
            values = np.empty(q.size, np.float32)
            int8.dequantise(q, rows, first, values)
        else:
            values = read(f"{name}:v", first, last)
        self._scatter(packed, base, n, first_block, stop_block, values, first, out, start)

    def indices(self, packed: np.ndarray, n: int) -> np.ndarray:
        """Every kept element's position in a tensor of n elements (int64, in entry order), from its
        index tensor (checked)."""
        parts = [
            (np.arange(block, block + idx.shape[0], dtype=np.int64)[:, None] * BLOCK + idx).reshape(-1)
            for block, idx in self.blocks(packed, 0, n, 0, num_blocks(n, BLOCK), "index tensor")
        ]
        return np.concatenate(parts) if parts else np.zeros(0, np.int64)

    def within_bound(self, delta: Tensors, decoded: Tensors) -> bool:
        files, _ = self.encode(delta, 0)
        for name, x in delta.items():
            flat = np.asarray(x, np.float64).reshape(-1)
            got = np.asarray(decoded[name], np.float64).reshape(-1)
            positions = self.indices(files[f"{name}:i"], flat.size)
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
