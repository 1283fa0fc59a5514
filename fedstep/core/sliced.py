"""Sliced aggregation: a model larger than one function's memory, aggregated by a fan-out of slices
(DESIGN "Beyond one machine").

A round whose global model is larger than the deployment's slice size (`AggregationSettings.slice_bytes`)
is aggregated in three steps, each an invocation of the aggregation function:

1. **Plan** (`plan_round`, by the invocation that claimed the round, in place of aggregating): every
   update is checked as the one-pass path checks it - size, header, metadata, sha256, finite values,
   bounds - streaming each file a block at a time (memory: one block), and the object version checked
   is kept with where each tensor lies in the file. It starts the S3 multipart upload of the new global
   model and writes the plan (JSON, once, beside the round's models). The claim is extended to
   `SLICED_LEASE_S`, so no other invocation takes the round: only the plan's steps finish it. The
   round's task output then names the plan and its slices, and the state machine fans out.
2. **Slice** (`aggregate_slice`, one invocation per slice, in parallel: the state machine's Distributed
   Map): elements [start, stop) of the new model's data section, as `tensors.encode` lays it out. It
   reads that range of the global model and of every accepted update (ranged reads of the checked
   versions), runs the strategy on it as on a model of its own, and uploads the result as part
   `index + 1` (the file's header before the first slice). Memory: a few slices, whatever the model's
   size or the number of clients. A retried slice uploads the same bytes again.
3. **Assemble** (`assemble_round`): completes the upload, reads the new model back once to hash it,
   and commits the round summary under the claim; the summary is the round's task output.

Only strategies whose every output weight depends on that weight alone are sliced
(`Strategy.sliceable`: FedAvg, FedProx, median, trimmed mean); for them the slices' bytes are those of
the one-function aggregation. Another strategy on a larger model fails the round with StrategyFailed,
naming the ones that slice; `fedstep start` refuses such a run before it starts.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from fedstep.core import codecs, limits, strategies, tensors
from fedstep.core.errors import FedstepError
from fedstep.core.ports import ModelStore, MultipartStore
from fedstep.core.schemas import Adjustment, Bounds, InvalidMessage, ObjectRef, Rejection, SecAggRound, UpdateItem
from fedstep.core.strategies import ClientUpdate, GlobalModel, UpdateInfo
from fedstep.core.update_source import (
    SLICE_BUDGET_BYTES,
    SLICE_READERS,
    ModelLayout,
    UpdateSource,
    file_reader,
    read_elements,
    read_header,
)
from fedstep.core.version import SCHEMA_VERSION

SLICED_LEASE_S = 6 * 3600.0
"""How long a planned round stays claimed by its plan: the fan-out and the assembly must end within
it (a slice takes at most one function timeout; the Map runs many at once)."""
MAX_SLICES = 1000
"""The most slices a round fans out to: bounds the state machine's payloads (the slice list and the
slices' results) and stays far inside S3's 10,000 parts; a larger model gets larger slices."""
MIN_SLICE_MB = 8
"""The smallest slice a deployment may configure (`slice_mb`): every part of an S3 multipart upload
but the last must be at least 5 MiB."""


class NotSliceable(FedstepError):
    """The strategy cannot aggregate a model by slices."""


def sliceable_strategies() -> list[str]:
    return sorted(name for name, cls in strategies.STRATEGIES.items() if cls.sliceable)


def needs_slices(model_bytes: int, slice_bytes: int | None) -> bool:
    """Whether a global model of `model_bytes` is aggregated by slices of `slice_bytes` (None: never)."""
    return slice_bytes is not None and model_bytes > slice_bytes


def check_sliceable(strategy: strategies.Strategy, model_bytes: int, slice_bytes: int | None) -> None:
    """NotSliceable, naming the strategies that slice, when `strategy` would have to slice and cannot."""
    if needs_slices(model_bytes, slice_bytes) and not strategy.sliceable:
        raise NotSliceable(
            f"strategy {strategy.name!r} cannot aggregate this model of {model_bytes / 2**20:.0f} MiB: models "
            f"over the deployment's slice size ({slice_bytes / 2**20:.0f} MiB, `slice_mb`) are aggregated by "
            f"slices, which only {', '.join(sliceable_strategies())} can do (each weight from that weight alone)"
        )


# -- the plan --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PlannedUpdate:
    """An accepted update as the slices read it: the checked object version, where each tensor's bytes
    lie in the file, the examples it is weighted by and the factor its norm bound scales it by."""

    client_id: str
    key: str
    sha256: str
    """The file's sha256, as checked."""
    version: str | None
    data_start: int
    offsets: dict[str, tuple[int, int]]
    examples: int
    scale: float | None
    element: str = tensors.F32.name
    """The safetensors dtype of the file's tensors, as its header was checked (`tensors.ELEMENT_TYPES`)."""
    encoding: str = codecs.DEFAULT
    """The run's codec the file was checked against: under another than float32 `offsets` name the
    codec's file tensors, and a slice is decoded from ranged reads of them (`Codec.read_slice`)."""


@dataclass(frozen=True)
class SlicePlan:
    """What the slices and the assembly of a round need; written once by the planning invocation."""

    run_id: str
    round: int
    claim: str
    strategy: str
    strategy_params: dict[str, Any]
    input_model: ObjectRef
    input_offsets: dict[str, tuple[int, int]]
    """Where each tensor lies in the global model's data section (its own header's order)."""
    input_data_start: int
    output_key: str
    upload_id: str
    metadata: dict[str, object]
    """The new model's fedstep metadata (its header is `tensors.encoded_header(spec, metadata)`)."""
    shapes: dict[str, tuple[int, ...]]
    slice_elements: int
    updates: list[PlannedUpdate]
    summary: dict[str, Any]
    """The round summary's fields known at planning (`RoundSummary` without the model, timings, measurements)."""
    secure: dict[str, Any] | None = None
    """A secure round's (`fedstep.core.rounds.secure`): `updates` are the survivors' masked files, and
    this holds what unmasks any range of their sum: the masks' seeds and signs (hex), the survivors'
    count and summed weight, the round's `SecAggRound` and the tensors' masked order."""

    @property
    def spec(self) -> tensors.TensorSpec:
        return tensors.TensorSpec(self.shapes)

    @property
    def slice_count(self) -> int:
        return max(1, math.ceil(self.spec.num_parameters / self.slice_elements))

    def pieces(self, index: int) -> list[tuple[str, int, int]]:
        """The tensor pieces of slice `index`: (name, start, stop), elements of the flattened tensor,
        in the new model's file order."""
        if not 0 <= index < self.slice_count:
            raise ValueError(f"slice {index} is outside the plan's {self.slice_count} slices")
        first, last = index * self.slice_elements, (index + 1) * self.slice_elements
        _, offsets = tensors.encoded_header(self.spec, self.metadata)
        out = []
        for name, (begin, end) in offsets.items():
            t0, t1 = begin // 4, end // 4
            if t1 > first and t0 < last and t1 > t0:
                out.append((name, max(first, t0) - t0, min(last, t1) - t0))
        return out

    def encode(self) -> bytes:
        return json.dumps({"schema": SCHEMA_VERSION, **asdict(self)}, sort_keys=True).encode()

    @classmethod
    def decode(cls, data: bytes) -> SlicePlan:
        raw = json.loads(data)
        raw.pop("schema", None)
        raw["input_model"] = ObjectRef(**raw["input_model"])
        raw["input_offsets"] = {k: tuple(v) for k, v in raw["input_offsets"].items()}
        raw["shapes"] = {k: tuple(v) for k, v in raw["shapes"].items()}
        raw["updates"] = [
            PlannedUpdate(**{**u, "offsets": {k: tuple(v) for k, v in u["offsets"].items()}}) for u in raw["updates"]
        ]
        return cls(**raw)


def read_plan(store: ModelStore, ref: ObjectRef) -> SlicePlan:
    """The plan `ref` names (the state machine carries the ref), checked against its sha256."""
    data = store.get(ref.key)
    if tensors.sha256_hex(data) != ref.sha256:
        raise FedstepError(f"the slice plan {ref.key} does not match its sha256")
    return SlicePlan.decode(data)


def slice_elements_for(model_elements: int, slice_bytes: int) -> int:
    """Elements per slice: the deployment's slice size, larger if the model would need over `MAX_SLICES`."""
    return max(1, slice_bytes // 4, math.ceil(model_elements / MAX_SLICES))


@dataclass
class CheckedUpdates:
    """The outcome of checking a round's updates for a plan."""

    accepted: list[tuple[UpdateItem, PlannedUpdate]]
    rejected: list[Rejection]
    clipped: list[Adjustment]


def check_updates(
    store: ModelStore,
    layout: ModelLayout,
    bounds: Bounds,
    items: list[UpdateItem],
    on_rejected: Any,
    *,
    default_norm: bool = False,
) -> CheckedUpdates:
    """Every update checked and bounded as the one-pass path does it (`UpdateSource`), each file
    streamed a block at a time: memory one block, whatever the model's size. The object version
    each check read is what the slices read; a store that names none is refused (`UnversionedStore`),
    as an update replaced after its check would otherwise mix in."""
    source = UpdateSource(store, layout, bounds, items, on_rejected=on_rejected, default_norm=default_norm)
    source.accepted()
    accepted = [
        (
            c.item,
            PlannedUpdate(
                c.item.client_id,
                c.item.update.key,
                c.item.update.sha256,
                c.version,
                c.header.data_start,
                c.header.offsets,
                c.examples,
                None if c.scale is None else float(c.scale),
                c.header.element.name,
                layout.codec,
            ),
        )
        for c in source.checked
    ]
    return CheckedUpdates(accepted, source.rejected, source.clipped)


def input_offsets(store: ModelStore, ref: ObjectRef, layout: ModelLayout) -> tuple[dict[str, tuple[int, int]], int]:
    """Where each tensor lies in the global model file (the server wrote it; its header is checked
    against the model's own spec), and where its data section starts."""
    head = read_header(store, ref)
    header = tensors.parse_header(head, ref.bytes, layout.spec, layout.max_header_bytes, tensors.F32)  # the server's
    return header.offsets, header.data_start


# -- one slice -------------------------------------------------------------------------------------


@dataclass
class PlannedSlice:
    """The `Updates` of one slice: every accepted update's pieces of the slice's tensors, read with
    ranged reads of the checked versions and scaled by their norm bounds as the one-pass path scales
    them. Its spec names each piece by its tensor's name, flattened."""

    store: ModelStore
    plan: SlicePlan
    pieces: list[tuple[str, int, int]]
    sliced: bool = False

    @property
    def spec(self) -> tensors.TensorSpec:
        return tensors.TensorSpec({name: (stop - start,) for name, start, stop in self.pieces})

    @property
    def slice_elements(self) -> int:
        return max(1024, SLICE_BUDGET_BYTES // (4 * max(1, len(self.plan.updates))))

    def accepted(self) -> list[UpdateInfo]:
        return [UpdateInfo(u.client_id, u.examples) for u in self.plan.updates]

    def _read(self, update: PlannedUpdate, name: str, start: int, out: np.ndarray) -> None:
        if update.encoding == codecs.DEFAULT:
            tensor_start = update.data_start + update.offsets[name][0]
            element = tensors.ELEMENT_TYPES[update.element]
            read_elements(self.store, update.key, tensor_start, start, out, element, update.version)
        else:
            codec = codecs.get(update.encoding)
            shape = tuple(self.plan.shapes[name])
            file = codec.layout(tensors.TensorSpec({name: shape}))  # this tensor's file tensors
            header = tensors.Header(
                update.data_start - tensors.HEADER_LENGTH_BYTES, update.offsets, {}, tensors.F32, file.elements
            )
            reader = file_reader(self.store, update.key, header, file.spec, update.version)
            codec.read_slice(name, shape, start, start + out.size, reader, out)
        if update.scale is not None:
            out *= np.float32(update.scale)

    def __iter__(self) -> Iterator[ClientUpdate]:
        for update in self.plan.updates:
            delta = {}
            for name, start, stop in self.pieces:
                delta[name] = np.empty(stop - start, dtype=tensors.ELEMENT_TYPES[update.element].numpy)
                self._read(update, name, start, delta[name])
            yield ClientUpdate(update.client_id, update.examples, delta)
            del delta

    def slice(self, name: str, start: int, stop: int) -> np.ndarray:
        [(_, begin, end)] = [p for p in self.pieces if p[0] == name]
        if not 0 <= start <= stop <= end - begin:
            raise ValueError(f"slice [{start}, {stop}) is outside piece {name!r} of {end - begin} elements")
        rows = np.empty((len(self.plan.updates), stop - start), dtype="<f4")

        def read(i: int) -> None:
            self._read(self.plan.updates[i], name, begin + start, rows[i])

        if stop > start and self.plan.updates:
            with ThreadPoolExecutor(max_workers=min(SLICE_READERS, len(self.plan.updates))) as pool:
                list(pool.map(read, range(len(self.plan.updates))))
        return rows


def _global_pieces(store: ModelStore, plan: SlicePlan, pieces: list[tuple[str, int, int]]) -> tensors.Tensors:
    out: tensors.Tensors = {}
    for name, start, stop in pieces:
        out[name] = np.empty(stop - start, dtype=tensors.F32.numpy)  # the server's model file: float32
        tensor_start = plan.input_data_start + plan.input_offsets[name][0]
        read_elements(store, plan.input_model.key, tensor_start, start, out[name], tensors.F32, None)
    return out


@dataclass
class UnmaskedSlice:
    """The `Updates` of one slice of a secure round: one update, the survivors' weighted mean delta over
    the slice's pieces, from the same range of every masked file (ranged reads of the pinned versions)
    summed modulo 2^32, its masks removed and only that sum decoded (`secure`: the cryptography)."""

    store: ModelStore
    plan: SlicePlan
    pieces: list[tuple[str, int, int]]
    secure: Any
    sliced: bool = False
    slice_elements: int = 0

    @property
    def spec(self) -> tensors.TensorSpec:
        return tensors.TensorSpec({name: (stop - start,) for name, start, stop in self.pieces})

    def accepted(self) -> list[UpdateInfo]:
        return [UpdateInfo("secure-sum", int(self.plan.secure["examples"]))]  # type: ignore[index]

    def __iter__(self) -> Iterator[ClientUpdate]:
        info = self.plan.secure or {}
        seeds = [(bytes.fromhex(seed), int(sign)) for seed, sign in info["seeds"]]
        spec = SecAggRound.parse(info["spec"], "a secure slice plan's round")
        base, position = {}, 1  # element 0 of a masked input is its weight
        for name in info["order"]:
            base[name] = position
            position += int(np.prod(self.plan.shapes[name], dtype=np.int64))
        delta = {}
        for name, start, stop in self.pieces:
            offset, total = base[name] + start, np.zeros(stop - start, dtype=np.uint32)
            for update in self.plan.updates:
                part = np.empty(stop - start, dtype=np.uint32)
                read_elements(self.store, update.key, update.data_start, offset, part, tensors.U32, update.version)
                total += part
            unmasked = self.secure.unmask_range(total, seeds, offset)
            values = self.secure.decode_values(spec, unmasked, int(info["count"]))
            delta[name] = (values / float(info["weight"])).astype(np.float32)
        yield ClientUpdate("secure-sum", int(info["examples"]), delta)

    def slice(self, name: str, start: int, stop: int) -> np.ndarray:
        raise ValueError("secure aggregation gives a strategy the sum of the updates, never one update's slice")


def aggregate_slice(
    plan: SlicePlan, index: int, store: ModelStore, parts: MultipartStore, secure: Any = None
) -> dict[str, float]:
    """Aggregate slice `index` of the plan and upload it as part `index + 1`; the strategy's
    measurements of the slice (`step_norm` as its square, `step_norm_squared`, so slices add up).
    A secure round's plan needs `secure` (`fedstep.core.ports.SecureAggregation`)."""
    pieces = plan.pieces(index)
    if plan.secure is not None and secure is None:
        raise FedstepError("a secure round's slice needs the secure-aggregation engine (settings.secure)")
    updates = PlannedSlice(store, plan, pieces) if plan.secure is None else UnmaskedSlice(store, plan, pieces, secure)
    strategy = strategies.build(plan.strategy, plan.strategy_params)
    global_model = GlobalModel(updates.spec, lambda: _global_pieces(store, plan, pieces))
    result = strategy.aggregate(plan.round, global_model, strategies.ServerState(), updates)
    data = bytearray(tensors.encoded_header(plan.spec, plan.metadata)[0] if index == 0 else b"")
    for name, _, _ in pieces:
        weights = np.ascontiguousarray(result.weights.pop(name), dtype="<f4")
        if not tensors.all_finite(weights):
            raise FedstepError(f"slice {index}: the aggregate's tensor {name!r} is not finite; nothing was published")
        data += weights.tobytes()
        del weights
    parts.upload_part(plan.output_key, plan.upload_id, index + 1, bytes(data))
    measurements = {k: float(v) for k, v in result.measurements.items() if k != "step_norm"}
    if "step_norm" in result.measurements:
        measurements["step_norm_squared"] = float(result.measurements["step_norm"]) ** 2
    return measurements


def combine_measurements(results: list[dict[str, float]]) -> dict[str, float]:
    """The round's measurements from its slices': `step_norm` from the squares' sum, any other the
    first slice's (those of the sliceable strategies are the same in every slice)."""
    out = {k: v for k, v in (results[0] if results else {}).items() if k != "step_norm_squared"}
    if any("step_norm_squared" in r for r in results):
        out["step_norm"] = math.sqrt(sum(r.get("step_norm_squared", 0.0) for r in results))
    return out


def check_results(results: Any, count: int) -> list[dict[str, float]]:
    """The slices' results as the state machine passes them on: one dict of numbers per slice."""
    if not isinstance(results, list) or len(results) != count:
        raise InvalidMessage(f"expected the results of {count} slices, got {type(results).__name__}")
    out = []
    for r in results:
        if not isinstance(r, dict) or len(r) > limits.MAX_MEASUREMENTS:
            raise InvalidMessage("a slice's result is not a small object of numbers")
        out.append({str(k): float(v) for k, v in r.items()})
    return out
