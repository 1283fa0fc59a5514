"""Elias-Fano coding of one top-k block's kept indices: a strictly increasing sequence of `kept`
indices below `length` in a number of bits that depends on (length, kept) alone, so every block of
a tensor has a known size and a block's bits lie at an offset computed from the model alone
(range-readable), while an index costs about 2 + log2(length / kept) bits (5.2 at 10 % of 1,024)
instead of 16.

A block's bits (`BlockCode.bits` of them, most significant bit first within an index):
- the low part: each index's `low` least significant bits, index after index (kept x low bits);
- the upper part (`BlockCode.upper` bits): for the i-th index (from 0) a 1 at position
  (index >> low) + i, every other bit 0, so it holds exactly `kept` ones.
A block that keeps every element (kept == length) has no bits: its indices are 0 .. length - 1.
Decoding is vectorised over many blocks (np.unpackbits, np.nonzero, shifts); no per-element loop.
One index set has exactly one encoding, and a bit pattern that is not one (a wrong number of ones,
a duplicate or unsorted index, an index past the block) is refused by `unpack`.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from fedstep.core.errors import InvalidUpdate


@dataclass(frozen=True)
class BlockCode:
    """The code of a block of `length` elements keeping `kept` (1 <= kept <= length) of them, with
    `low` low bits per index."""

    length: int
    kept: int
    low: int

    @property
    def implied(self) -> bool:
        """Whether the block keeps every element: no bits, the indices are 0 .. length - 1."""
        return self.kept == self.length

    @property
    def upper(self) -> int:
        """Bits of the upper part: one per index plus one per value of index >> low."""
        return self.kept + ((self.length - 1) >> self.low) + 1

    @property
    def bits(self) -> int:
        return 0 if self.implied else self.kept * self.low + self.upper


@functools.lru_cache(maxsize=256)
def block_code(length: int, kept: int) -> BlockCode:
    """The code of a block of `length` elements keeping `kept`: the number of low bits that makes it
    shortest (the smaller on a tie; about log2(length / kept))."""
    if not 1 <= kept <= length:
        raise ValueError(f"a block of {length} elements cannot keep {kept}")
    codes = [BlockCode(length, kept, low) for low in range((length - 1).bit_length() + 1)]
    return min(codes, key=lambda c: (c.bits, c.low))


def pack(indices: np.ndarray, code: BlockCode) -> np.ndarray:
    """The bits (uint8 0/1, blocks x `code.bits`, flattened) of `indices` (blocks x kept, each row
    non-decreasing and below 2^low x (upper - kept + 1); the encoder's rows are strictly increasing
    and below `length`)."""
    blocks = indices.shape[0]
    if code.implied:
        return np.zeros(0, np.uint8)
    idx = indices.astype(np.int64)
    bits = np.zeros((blocks, code.bits), np.uint8)
    low_end = code.kept * code.low
    if code.low:
        shifts = np.arange(code.low - 1, -1, -1, dtype=np.int64)
        bits[:, :low_end] = ((idx[:, :, None] >> shifts) & 1).reshape(blocks, low_end)
    ones = low_end + (idx >> code.low) + np.arange(code.kept)
    bits[np.arange(blocks)[:, None], ones] = 1
    return bits.reshape(-1)


def unpack(bits: np.ndarray, blocks: int, code: BlockCode, where: str) -> np.ndarray:
    """The indices (int32, blocks x kept) coded in `bits` (uint8 0/1, blocks x `code.bits`); each
    row checked: exactly `kept` ones in its upper part, strictly increasing, below `length`.
    InvalidUpdate naming `where` otherwise."""
    if code.implied:
        return np.broadcast_to(np.arange(code.length, dtype=np.int32), (blocks, code.length))
    rows = bits.reshape(blocks, code.bits)
    low_end = code.kept * code.low
    upper = np.ascontiguousarray(rows[:, low_end:]).view(bool)
    ones = np.flatnonzero(upper)  # increasing: the i-th one of a row is its i-th index
    start = _row_starts(blocks, code.upper)
    if ones.size == blocks * code.kept:
        ones = ones.reshape(blocks, code.kept)
    if ones.ndim != 2 or (ones[:, 0] < start).any() or (ones[:, -1] >= start + code.upper).any():
        counts = np.count_nonzero(upper, axis=1)
        bad = int(counts[counts != code.kept][0])
        raise InvalidUpdate(f"{where}: a block's index bits hold {bad} indices, not {code.kept}")
    idx = (ones - _offsets(blocks, code.upper, code.kept)).astype(np.int32) << code.low
    if code.low:  # each index's low bits, most significant first
        lows = rows[:, :low_end].reshape(blocks, code.kept, code.low)
        value = lows[:, :, 0].astype(np.int32)
        for bit in range(1, code.low):
            value = (value << 1) | lows[:, :, bit]
        idx |= value
    if (idx[:, 1:] <= idx[:, :-1]).any():
        raise InvalidUpdate(f"{where}: indices not strictly increasing within a block (duplicate or unsorted)")
    if (idx[:, -1] >= code.length).any():
        raise InvalidUpdate(f"{where}: index out of range (a block of {code.length})")
    return idx


@functools.lru_cache(maxsize=64)
def _row_starts(blocks: int, upper: int) -> np.ndarray:
    """Where each of `blocks` rows' upper part starts in their upper parts back to back."""
    starts = np.arange(blocks, dtype=np.int64) * upper
    starts.flags.writeable = False
    return starts


@functools.lru_cache(maxsize=64)
def _offsets(blocks: int, upper: int, kept: int) -> np.ndarray:
    """What the i-th one of a row adds to its index's upper bits: the row's start, plus i."""
    offsets = _row_starts(blocks, upper)[:, None] + np.arange(kept)
    offsets.flags.writeable = False
    return offsets
