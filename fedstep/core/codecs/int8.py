"""`int8`: affine 8-bit quantisation of the delta, a float32 (min, step) per block of `BLOCK`
elements and one uint8 per element, stochastically rounded (unbiased: E[decoded] = delta).

File tensors per model tensor `N` of n elements: `N:q` (uint8, [n]) and `N:s` (float32,
[ceil(n / BLOCK), 2]: each block's min and step). Decoded: min + q x step, in float32. Element i
lies in block i // BLOCK, so a slice reads its q's and its blocks' scales (range-readable), as
NVFlare's blockwise 8-bit quantisation keeps a per-block absmax.
"""

from __future__ import annotations

import numpy as np

from fedstep.core import tensors
from fedstep.core.codecs.base import Codec, CodecLayout, Reader, make_layout, num_blocks, require_finite, size
from fedstep.core.errors import InvalidUpdate
from fedstep.core.tensors import Tensors, TensorSpec

BLOCK = 1024
"""Elements per scale block: 8 bytes of scales per 1,024 bytes of values (0.8 % on top of 1 byte
an element: 3.97x fewer bytes than float32)."""
LEVELS = 255
"""The largest quantised value (uint8): a block's values span LEVELS steps."""


def scales_shape(n: int) -> tuple[int, int]:
    return (num_blocks(n, BLOCK), 2)


def quantise(values: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(q, scales) of flat float32 `values`: per block of `BLOCK` its min and step
    ((max - min) / LEVELS) as float32, and q = floor((x - min) / step + u), u uniform in [0, 1),
    clipped to [0, LEVELS] (stochastic rounding). ValueError on non-finite values or a range
    float32 cannot hold."""
    n = values.size
    x = values.astype(np.float64)
    if not np.isfinite(x).all():
        raise ValueError("cannot quantise non-finite values")
    scales = np.zeros(scales_shape(n), np.float32)
    q = np.zeros(n, np.uint8)
    if n == 0:
        return q, scales
    starts = np.arange(0, n, BLOCK)
    lo = np.minimum.reduceat(x, starts)
    hi = np.maximum.reduceat(x, starts)
    scales[:, 0] = lo
    scales[:, 1] = (hi - lo) / LEVELS
    if not np.isfinite(scales).all():
        raise ValueError("the delta's range is too large for float32 scales")
    sizes = np.diff(np.append(starts, n))
    lo32 = np.repeat(scales[:, 0].astype(np.float64), sizes)
    step = np.repeat(scales[:, 1].astype(np.float64), sizes)
    noise = rng.random(n)
    with np.errstate(divide="ignore", invalid="ignore"):
        level = np.where(step > 0, np.floor((x - lo32) / np.where(step > 0, step, 1.0) + noise), 0.0)
    q[:] = np.clip(level, 0, LEVELS)
    return q, scales


def dequantise(q: np.ndarray, scales: np.ndarray, first: int, out: np.ndarray) -> None:
    """`out` = min + q x step in float32, for q's elements starting at element `first` of their
    tensor (`scales`: the rows of the blocks from `first // BLOCK` on), `CHUNK_BLOCKS` blocks at a
    time (small temporaries). The client's decoded delta and the server's reading are this one
    function: the same bits."""
    block0 = first // BLOCK
    with np.errstate(over="ignore", invalid="ignore"):  # a client's scales may overflow: the reader checks
        _dequantise(q, scales, first, block0, out)


def _dequantise(q: np.ndarray, scales: np.ndarray, first: int, block0: int, out: np.ndarray) -> None:
    position = 0
    while position < q.size:
        element = first + position
        block = element // BLOCK
        end = min(q.size, (block + CHUNK_BLOCKS) * BLOCK - first)
        counts = np.diff(np.clip(np.arange(block, block + CHUNK_BLOCKS + 1) * BLOCK - first, position, end))
        rows = scales[block - block0 : block - block0 + CHUNK_BLOCKS]
        target = out[position:end]
        np.multiply(q[position:end], np.repeat(rows[:, 1], counts[: len(rows)]), out=target, dtype=np.float32)
        np.add(target, np.repeat(rows[:, 0], counts[: len(rows)]), out=target)
        position = end


CHUNK_BLOCKS = 64
"""Blocks dequantised at a time: temporaries of 64 x `BLOCK` float32 (256 KiB)."""


def check_scales(scales: np.ndarray, what: str) -> None:
    require_finite(scales, what)
    if (scales[:, 1] < 0).any():
        raise InvalidUpdate(f"{what} has a negative step")


def within_quantisation(x: np.ndarray, decoded: np.ndarray, q_scales: np.ndarray) -> bool:
    """|x - decoded| <= its block's step (plus float32 rounding), elementwise."""
    step = np.repeat(q_scales[:, 1].astype(np.float64), BLOCK)[: x.size]
    err = np.abs(x.astype(np.float64) - decoded)
    return bool((err <= step * (1 + 1e-5) + 1e-6 * np.abs(x) + 1e-30).all())


class Int8(Codec):
    name = "int8"
    bound = f"|error| <= its block's step ((max - min) / {LEVELS}, blocks of {BLOCK}); unbiased (stochastic rounding)"
    description = f"affine uint8 per element, float32 min and step per {BLOCK} elements, stochastic rounding: ~4x fewer"

    def layout(self, spec: TensorSpec) -> CodecLayout:
        files = {}
        for name, shape in spec.shapes.items():
            files[f"{name}:q"] = (tensors.U8, (size(shape),))
            files[f"{name}:s"] = (tensors.F32, scales_shape(size(shape)))
        return make_layout(self.name, files)

    def encode(self, delta: Tensors, seed: int) -> tuple[Tensors, Tensors]:
        rng = np.random.default_rng(seed)
        files: Tensors = {}
        decoded: Tensors = {}
        for name in sorted(delta):
            flat = np.asarray(delta[name], np.float32).reshape(-1)
            q, scales = quantise(flat, rng)
            files[f"{name}:q"], files[f"{name}:s"] = q, scales
            out = np.empty(flat.size, np.float32)
            dequantise(q, scales, 0, out)
            decoded[name] = out.reshape(np.shape(delta[name]))
        return files, decoded

    def check(self, files: Tensors, spec: TensorSpec) -> None:
        for name in spec.shapes:
            check_scales(files[f"{name}:s"], f"tensor {name + ':s'!r}")

    def decode_tensor(self, files: Tensors, name: str, shape: tuple[int, ...], out: np.ndarray) -> None:
        dequantise(files[f"{name}:q"], files[f"{name}:s"], 0, out)

    def read_slice(
        self, name: str, shape: tuple[int, ...], start: int, stop: int, read: Reader, out: np.ndarray
    ) -> None:
        if stop <= start:
            return
        q = read(f"{name}:q", start, stop)
        scales = read(f"{name}:s", 2 * (start // BLOCK), 2 * ((stop - 1) // BLOCK + 1)).reshape(-1, 2)
        dequantise(q, scales, start, out)

    def within_bound(self, delta: Tensors, decoded: Tensors) -> bool:
        files, _ = self.encode(delta, 0)  # the blocks' steps do not depend on the seed
        return all(
            within_quantisation(np.asarray(x).reshape(-1), decoded[n].reshape(-1), files[f"{n}:s"])
            for n, x in delta.items()
        )
