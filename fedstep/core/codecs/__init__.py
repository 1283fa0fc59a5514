"""Update codecs: how a client's delta is written to its update file, and read back by the server.

`get(name)` makes one from its name (`float32`, `float16`, `int8`, `topk:FRACTION`,
`topk:FRACTION+int8`); `names()` lists the families and `describe()` their properties (`fedstep
codecs`). A run has one codec: the round instructions carry it (`INSTRUCTION`), the client encodes
with it (`client_agent.steps.encode`), the update item names it (`UpdateItem.encoding`) and the
aggregation function reads the files by its layout (`fedstep.core.update_source.ModelLayout.codec`).
docs/codecs.md describes the file formats. To add one: a module with a `Codec` subclass, a case in
`get` and `FAMILIES`; `tests/test_codec_conformance.py` runs over them all.
"""

from __future__ import annotations

import math
import re

from fedstep.core.codecs.base import Codec, CodecLayout, Reader, seed_for
from fedstep.core.codecs.dense import Float16, Float32
from fedstep.core.codecs.int8 import Int8
from fedstep.core.codecs.topk import TopK

DEFAULT = "float32"
"""The codec of a run that names none: the file agents have always written."""
INSTRUCTION = "fedstep_codec"
"""The round-instructions key carrying the run's codec (strategies may not use names starting `fedstep_`)."""
NORM_BOUND_INSTRUCTION = "fedstep_norm_bound"
"""The round-instructions key carrying the run's update-norm bound, when it has one: a client with
error feedback clips delta + residual to it before encoding."""
MAX_NAME_CHARS = 40
"""The longest codec name accepted (an update item's `encoding` is client input)."""

_TOPK = re.compile(r"topk:([0-9.eE+-]{1,20})(\+int8)?")

FAMILIES: dict[str, str] = {
    "float32": "float32",
    "float16": "float16",
    "int8": "int8",
    "topk": "topk:FRACTION",
    "topk+int8": "topk:FRACTION+int8",
}
"""Family -> the pattern of its names."""


def names() -> list[str]:
    """The codec families' name patterns, for listing (`topk:FRACTION` stands for every fraction)."""
    return list(FAMILIES.values())


def known() -> str:
    return ", ".join(names())


def get(name: str) -> Codec:
    """The codec called `name` (canonical name in `.name`: `topk:0.10` becomes `topk:0.1`).
    ValueError naming the known codecs for an unknown name or a fraction outside (0, 1]."""
    if not isinstance(name, str) or len(name) > MAX_NAME_CHARS:
        raise ValueError(f"codec name must be text of at most {MAX_NAME_CHARS} characters; known: {known()}")
    if name == "float32":
        return Float32()
    if name == "float16":
        return Float16()
    if name == "int8":
        return Int8()
    match = _TOPK.fullmatch(name)
    if match:
        try:
            fraction = float(match.group(1))
        except ValueError:
            fraction = math.nan
        if not (math.isfinite(fraction) and 0 < fraction <= 1):
            raise ValueError(f"codec {name!r}: the top-k fraction must be a number in (0, 1], e.g. topk:0.1")
        fraction = float(f"{fraction:g}")  # the canonical name's value: client and server use the same k
        return TopK(fraction, quantised=match.group(2) is not None)
    raise ValueError(f"unknown codec {name[:MAX_NAME_CHARS]!r}; known: {known()}")


def describe() -> list[dict[str, object]]:
    """Each family's properties (`fedstep codecs --json`): name pattern, sparse, error_feedback,
    sliceable, its error bound and a one-line description (top-k shown at fraction 0.1)."""
    examples = {"topk": "topk:0.1", "topk+int8": "topk:0.1+int8"}
    out = []
    for family, pattern in FAMILIES.items():
        entry = get(examples.get(family, pattern)).describe()
        out.append({**entry, "name": pattern})
    return out


def canonical(name: str) -> str:
    """The canonical spelling of a codec name (ValueError as `get`)."""
    return get(name).name


__all__ = [
    "DEFAULT",
    "INSTRUCTION",
    "NORM_BOUND_INSTRUCTION",
    "Codec",
    "CodecLayout",
    "Reader",
    "canonical",
    "describe",
    "get",
    "names",
    "seed_for",
]
