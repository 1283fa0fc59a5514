"""The dense codecs: every element sent as a float. `float32` is the file agents have always written
(the model's own tensor names, float32, byte for byte), `float16` the same tensors in half the bytes."""

from __future__ import annotations

import numpy as np

from fedstep.core import tensors
from fedstep.core.codecs.base import Codec, CodecLayout, Reader, make_layout, require_finite
from fedstep.core.tensors import ElementType, Tensors, TensorSpec


class Dense(Codec):
    """Each model tensor under its own name, its elements stored as `element`."""

    element: ElementType = tensors.F32

    def layout(self, spec: TensorSpec) -> CodecLayout:
        return make_layout(self.name, {name: (self.element, shape) for name, shape in spec.shapes.items()})

    def encode(self, delta: Tensors, seed: int) -> tuple[Tensors, Tensors]:
        files = {name: self._stored(np.asarray(t, np.float32)) for name, t in delta.items()}
        return files, {name: t.astype(np.float32) for name, t in files.items()}

    def _stored(self, values: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(values, dtype=self.element.numpy)

    def check(self, files: Tensors, spec: TensorSpec) -> None:
        for name in spec.shapes:
            require_finite(files[name], f"tensor {name!r}")

    def decode_tensor(self, files: Tensors, name: str, shape: tuple[int, ...], out: np.ndarray) -> None:
        out[:] = files[name].reshape(-1)

    def read_slice(
        self, name: str, shape: tuple[int, ...], start: int, stop: int, read: Reader, out: np.ndarray
    ) -> None:
        if stop > start:
            out[:] = read(name, start, stop)


class Float32(Dense):
    name = "float32"
    bound = "exact (the delta's float32 values)"
    description = "every element as float32: the default, the file agents have always written"


FLOAT16_MAX = float(np.finfo(np.float16).max)


class Float16(Dense):
    name = "float16"
    element = tensors.F16
    bound = f"|error| <= 2^-11 |x| + 2^-25 (round to nearest half); values beyond +-{FLOAT16_MAX:g} clipped to it"
    description = "every element as float16 (IEEE half): 2x fewer bytes"

    def _stored(self, values: np.ndarray) -> np.ndarray:
        return np.clip(values, -FLOAT16_MAX, FLOAT16_MAX).astype("<f2")

    def within_bound(self, delta: Tensors, decoded: Tensors) -> bool:
        for name, x in delta.items():
            x = np.clip(np.asarray(x, np.float64), -FLOAT16_MAX, FLOAT16_MAX)
            if not (np.abs(x - decoded[name]) <= 2.0**-11 * np.abs(x) + 2.0**-25).all():
                return False
        return True
