"""Every update codec (`fedstep.core.codecs`) against the same specification, on the in-memory store:
its round trip keeps its stated error bound, every kind of malformed file is refused with a reason
before it is used, one pass and slices read the same values, and a client's error feedback carries
what top-k dropped into its next round, within the round's norm bound, across a restart."""

from __future__ import annotations

import dataclasses
import math
import tracemalloc

import numpy as np
import pytest

from client_agent import steps
from client_agent.residuals import ResidualStore
from fedstep.core import codecs, keys, sliced, tensors
from fedstep.core.codecs import eliasfano, int8, topk
from fedstep.core.schemas import Bounds, InvalidMessage, ObjectRef, RoundMessage, TrainingConfig, UpdateItem
from fedstep.core.strategies import aggregation
from fedstep.core.update_source import ModelLayout, UpdateSource, read_layout, read_update
from fedstep.core.updates import encode_update, update_file
from fedstep.memory import MemoryStore

EXAMPLES = {"topk:FRACTION": "topk:0.1", "topk:FRACTION+int8": "topk:0.1+int8"}
CODECS = [EXAMPLES.get(pattern, pattern) for pattern in codecs.names()]
"""One codec of every family in the registry."""
SPARSE = [c for c in CODECS if codecs.get(c).sparse]
QUANTISED = [c for c in CODECS if c in ("int8", "topk:0.1+int8")]
GLOBAL = {"000/d/kernel": np.zeros((40, 60), np.float32), "001/d/bias": np.zeros(60, np.float32)}
"""A small model: 2,400 + 60 elements, so blocks of 1,024 end in a partial one."""
SPEC = tensors.TensorSpec.of(GLOBAL)
RUN = "run-1"


def delta_of(seed: int, scale: float = 0.01) -> tensors.Tensors:
    rng = np.random.default_rng(seed)
    return {name: (rng.standard_normal(t.shape) * scale).astype(np.float32) for name, t in GLOBAL.items()}


def world(codec: str, model: tensors.Tensors = GLOBAL) -> tuple[MemoryStore, ModelLayout]:
    """A store holding the round's global model, and the layout its updates are read by."""
    store = MemoryStore()
    data = tensors.encode(model)
    ref = keys.global_key(RUN, 0, keys.INITIAL_VERSION)
    store.put(ref, data)
    return store, read_layout(store, ObjectRef(ref, tensors.sha256_hex(data), len(data)), codec)


def report(store: MemoryStore, codec: str, delta: tensors.Tensors, client: str = "site-a") -> UpdateItem:
    data, item = encode_update(
        delta,
        run_id=RUN,
        round_number=1,
        client_id=client,
        num_examples=10,
        metrics={},
        created_at="2026-12-07T00:00:00Z",
        codec=codec,
    )
    store.put(item.update.key, data)
    return item


def put_files(
    store: MemoryStore, item: UpdateItem, files: tensors.Tensors, *, metadata=None, pad_to: int = 0
) -> UpdateItem:
    """A client's own file of these tensors under `item` (its sha256 and size made to match),
    padded with zeros to `pad_to` bytes (past the size check, to the header's)."""
    data = tensors.encode(files, item.file_metadata() if metadata is None else metadata, None)
    data += bytes(max(0, pad_to - len(data)))
    store.put(item.update.key, data)
    return dataclasses.replace(
        item, update=dataclasses.replace(item.update, sha256=tensors.sha256_hex(data), bytes=len(data))
    )


def files_of(codec: str, delta: tensors.Tensors) -> tensors.Tensors:
    files, _ = codecs.get(codec).encode(delta, codecs.seed_for(RUN, 1, "site-a"))
    return {name: np.array(t) for name, t in files.items()}


def block_indices(codec: str, packed: np.ndarray, n: int) -> list[np.ndarray]:
    """Each top-k block's kept indices (block-local), decoded from a tensor's index bits."""
    coder = codecs.get(codec)
    return [row.copy() for _, rows in coder.blocks(packed, 0, n, 0, -(-n // topk.BLOCK), "test") for row in rows]


def packed_indices(codec: str, blocks: list[np.ndarray], n: int) -> np.ndarray:
    """A tensor's index bits for these blocks' indices, packed as the encoder packs them but without
    its checks (so a test can write what an honest client never would)."""
    coder = codecs.get(codec)
    codes = [coder.full_code if i < n // topk.BLOCK else coder.last_code(n) for i in range(len(blocks))]
    bits = [eliasfano.pack(np.asarray(row).reshape(1, -1), code) for row, code in zip(blocks, codes, strict=True)]
    return np.packbits(np.concatenate(bits)) if bits else np.zeros(0, np.uint8)


# -- the registry --------------------------------------------------------------------------------


def test_the_registry_names_every_family_and_describes_it():
    assert codecs.names() == ["float32", "float16", "int8", "topk:FRACTION", "topk:FRACTION+int8"]
    described = codecs.describe()
    assert [d["name"] for d in described] == codecs.names()
    for entry in described:
        assert set(entry) == {"name", "sparse", "error_feedback", "sliceable", "bound", "description"}
        assert entry["sliceable"] is True and entry["bound"] and entry["description"]
    assert [d["name"] for d in described if d["error_feedback"]] == ["topk:FRACTION", "topk:FRACTION+int8"]
    assert (codecs.DEFAULT, codecs.INSTRUCTION, codecs.NORM_BOUND_INSTRUCTION) == (
        "float32",
        "fedstep_codec",
        "fedstep_norm_bound",
    )


@pytest.mark.parametrize(
    "name, canonical", [("topk:0.10", "topk:0.1"), ("topk:1", "topk:1"), ("topk:.05+int8", "topk:0.05+int8")]
)
def test_a_codec_name_is_parsed_to_its_canonical_spelling(name, canonical):
    assert codecs.get(name).name == canonical == codecs.canonical(canonical)


@pytest.mark.parametrize(
    "name", ["int4", "topk:0", "topk:1.5", "topk:nan", "topk:-0.1", "topk:0.1+int4", "x" * 200, ""]
)
def test_an_unknown_codec_name_is_refused_naming_the_known_ones(name):
    with pytest.raises(ValueError, match=r"known: float32, float16, int8|fraction must be a number in \(0, 1\]"):
        codecs.get(name)


def test_an_item_naming_an_unknown_encoding_is_refused_when_parsed():
    item = report(MemoryStore(), "int8", delta_of(0)).to_item()
    assert item["encoding"] == "int8" and UpdateItem.parse(item).encoding == "int8"
    with pytest.raises(InvalidMessage, match=r"update item: encoding: unknown codec 'gzip'"):
        UpdateItem.parse({**item, "encoding": "gzip"})
    plain = report(MemoryStore(), "float32", delta_of(0))
    assert "encoding" not in plain.to_item() and "encoding" not in plain.file_metadata()
    assert UpdateItem.parse(plain.to_item()).encoding == "float32"


@pytest.mark.parametrize("encoding", ["topk:" + "1" * 100_000, "x" * 300_000, {"name": "int8"}, ["int8"], 8, None])
def test_an_item_with_an_oversized_or_non_text_encoding_is_refused_with_a_short_reason(encoding):
    """The attack: a client writes an item whose encoding is huge or not text; it is refused by name, and the
    reason (which reaches the round record and the client's feedback) stays short."""
    item = report(MemoryStore(), "int8", delta_of(0)).to_item()
    with pytest.raises(InvalidMessage) as refused:
        UpdateItem.parse({**item, "encoding": encoding})
    assert str(refused.value).startswith("update item: encoding: ") and len(str(refused.value)) < 300


# -- round trip, one pass and slices -------------------------------------------------------------


@pytest.mark.parametrize("codec", CODECS)
def test_the_round_trip_keeps_the_codecs_stated_error_bound(codec):
    delta = delta_of(1)
    store, layout = world(codec)
    item = report(store, codec, delta)
    checked = read_update(store, item, layout, norm=True)
    _, decoded = codecs.get(codec).encode(delta, codecs.seed_for(RUN, 1, "site-a"))
    for name in delta:  # the server reconstructs, bit for bit, what the client decoded
        np.testing.assert_array_equal(checked.tensors[name], decoded[name])
    assert codecs.get(codec).within_bound(delta, checked.tensors)
    assert checked.norm == pytest.approx(tensors.l2_norm(decoded), rel=1e-6)
    assert len(store.objects[item.update.key][-1]) <= layout.max_file_bytes
    wrong = {name: t + 0.05 for name, t in checked.tensors.items()}  # the bound is not vacuous
    assert not codecs.get(codec).within_bound(delta, wrong)


@pytest.mark.parametrize("codec", CODECS)
def test_one_pass_and_slices_read_the_same_values(codec):
    store, layout = world(codec)
    items = [report(store, codec, delta_of(seed), client=f"site-{seed}") for seed in (2, 3, 4)]
    one_pass = [{n: t.copy() for n, t in u.delta.items()} for u in UpdateSource(store, layout, Bounds(), items)]
    sliced = UpdateSource(store, layout, Bounds(), items)
    for name, shape in SPEC.shapes.items():
        size = math.prod(shape)
        for start, stop in [(0, size), (0, 1), (1000, 1030), (1023, 2049), (size - 7, size), (5, 5)]:
            start, stop = min(start, size), min(stop, size)
            rows = sliced.slice(name, start, stop)
            for i, update in enumerate(one_pass):
                np.testing.assert_array_equal(rows[i], update[name].reshape(-1)[start:stop])


@pytest.mark.parametrize("codec", [c for c in CODECS if c != "float32"])
def test_every_update_is_decoded_into_one_reused_buffer(codec):
    store, layout = world(codec)
    items = [report(store, codec, delta_of(seed), client=f"site-{seed}") for seed in (5, 6)]
    buffers = {id(u.delta["000/d/kernel"]) for u in UpdateSource(store, layout, Bounds(), items)}
    assert len(buffers) == 1  # strategies add each delta into their sums and keep none across updates


@pytest.mark.parametrize("codec", CODECS)
def test_the_runs_norm_bound_applies_to_the_decoded_delta(codec):
    store, layout = world(codec)
    item = report(store, codec, delta_of(7, scale=1.0))
    source = UpdateSource(store, layout, Bounds(max_update_norm=2.0), [item])
    (update,) = list(source)
    assert tensors.l2_norm(update.delta) == pytest.approx(2.0, rel=1e-4)
    assert source.clipped and "-> 2" in source.clipped[0].what


# -- malformed files -----------------------------------------------------------------------------


def rejected(store: MemoryStore, layout: ModelLayout, item: UpdateItem) -> str:
    source = UpdateSource(store, layout, Bounds(), [item])
    assert list(source) == []
    return source.rejected[0].reason


@pytest.mark.parametrize("codec", CODECS)
def test_an_oversized_file_is_refused_before_a_byte_is_read(codec):
    store, layout = world(codec)
    item = report(store, codec, delta_of(8))
    big = dataclasses.replace(item, update=dataclasses.replace(item.update, bytes=layout.max_file_bytes + 1))
    store.objects[item.update.key] = []  # nothing to read: the size alone refuses it
    assert (
        rejected(store, layout, big)
        == f"file is {layout.max_file_bytes + 1} bytes, over the limit of {layout.max_file_bytes} for this model"
    )


@pytest.mark.parametrize("codec", CODECS)
def test_a_file_with_another_tensor_name_is_refused(codec):
    store, layout = world(codec)
    item = report(store, codec, delta_of(9))
    files = files_of(codec, delta_of(9))
    first = sorted(files)[0]
    files["999/planted"] = files.pop(first)
    assert "tensor names differ" in rejected(store, layout, put_files(store, item, files))


@pytest.mark.parametrize("codec", CODECS)
def test_a_file_tensor_of_another_dtype_is_refused(codec):
    store, layout = world(codec)
    item = report(store, codec, delta_of(10))
    files = files_of(codec, delta_of(10))
    name = sorted(files)[0]
    other = {"float32": np.float16, "float16": np.float32, "uint8": np.uint16, "uint16": np.uint8}[
        str(files[name].dtype)
    ]
    files[name] = files[name].astype(other)
    wrong = put_files(store, item, files, pad_to=layout.min_file_bytes)
    assert f"tensor {name!r} has dtype" in rejected(store, layout, wrong)


@pytest.mark.parametrize("codec", CODECS)
def test_a_file_tensor_of_another_shape_is_refused(codec):
    store, layout = world(codec)
    item = report(store, codec, delta_of(11))
    files = files_of(codec, delta_of(11))
    name = sorted(files)[-1]
    files[name] = files[name].reshape(-1)[:-1]
    assert f"tensor {name!r} has shape" in rejected(store, layout, put_files(store, item, files))


@pytest.mark.parametrize("codec", SPARSE)
@pytest.mark.parametrize(
    "attack, reason",
    [
        ("duplicate", "not strictly increasing within a block"),
        ("unsorted", "not strictly increasing within a block"),
        ("beyond_block", "index out of range"),
        ("beyond_tensor", "index out of range"),
    ],
)
def test_top_k_indices_that_could_amplify_a_client_are_refused(codec, attack, reason):
    """A duplicate index would add its value twice (a client counted k times on one weight)."""
    store, layout = world(codec)
    item = report(store, codec, delta_of(12))
    files = files_of(codec, delta_of(12))
    blocks = block_indices(codec, files["000/d/kernel:i"], 2400)  # the Elias-Fano index bits, decoded
    k = codecs.get(codec).k
    if attack == "duplicate":
        blocks[0][1] = blocks[0][0]
    elif attack == "unsorted":  # indices 1, 0 share their upper bits: only their low bits are out of order
        blocks[0][:] = [1, 0, *range(2, k)]
    elif attack == "beyond_block":
        blocks[0][k - 1] = topk.BLOCK + 5
    else:  # the last block of 2,400 elements has 352
        blocks[-1][-1] = 2400 - 2 * topk.BLOCK
    files["000/d/kernel:i"] = packed_indices(codec, blocks, 2400)
    assert reason in rejected(store, layout, put_files(store, item, files))


@pytest.mark.parametrize("codec", CODECS)
def test_a_non_finite_scale_or_value_is_refused(codec):
    store, layout = world(codec)
    item = report(store, codec, delta_of(13))
    files = files_of(codec, delta_of(13))
    name = {"float32": "001/d/bias", "float16": "001/d/bias", "int8": "001/d/bias:s"}.get(codec, "001/d/bias:v")
    if codec == "topk:0.1+int8":
        name = "001/d/bias:s"
    files[name].reshape(-1)[0] = np.nan
    assert "non-finite" in rejected(store, layout, put_files(store, item, files))


@pytest.mark.parametrize("codec", QUANTISED)
def test_scales_that_decode_beyond_float32_or_step_backwards_are_refused(codec):
    store, layout = world(codec)
    item = report(store, codec, delta_of(14))
    files = files_of(codec, delta_of(14))
    scales = "000/d/kernel:s"
    q = "000/d/kernel:q" if codec == "int8" else "000/d/kernel:v"
    files[scales][0] = (3e38, 3e38)
    files[q][0] = 255
    assert "decodes to non-finite values" in rejected(store, layout, put_files(store, item, files))
    files[scales][0] = (0.0, -1.0)
    assert "negative step" in rejected(store, layout, put_files(store, item, files))


@pytest.mark.parametrize("codec", CODECS)
def test_an_update_in_another_codec_than_the_runs_is_refused(codec):
    other = "int8" if codec != "int8" else "float16"
    store, layout = world(codec)
    item = report(store, other, delta_of(15))
    assert rejected(store, layout, item) == f"the run's codec is {codec}, the update says {other}"


@pytest.mark.parametrize("codec", CODECS)
def test_a_file_whose_metadata_differs_from_its_item_is_refused(codec):
    store, layout = world(codec)
    item = report(store, codec, delta_of(16))
    files = files_of(codec, delta_of(16))
    claimed = {**item.file_metadata(), "num_examples": 11}
    reason = rejected(store, layout, put_files(store, item, files, metadata=claimed))
    assert reason == "update file's metadata differs from the update item in ['num_examples']"
    renamed = {k: v for k, v in item.file_metadata().items() if k != "encoding"}
    if codec != "float32":  # the file must say its codec as its item does
        renamed["encoding"] = "float32"
        reason = rejected(store, layout, put_files(store, item, files, metadata=renamed))
        assert reason == "update file's metadata differs from the update item in ['encoding']"


# -- the top-k index bits (Elias-Fano) -----------------------------------------------------------


def index_attack(codec: str, seed: int) -> tuple[MemoryStore, ModelLayout, UpdateItem, tensors.Tensors]:
    store, layout = world(codec)
    item = report(store, codec, delta_of(seed))
    return store, layout, item, files_of(codec, delta_of(seed))


@pytest.mark.parametrize("codec", SPARSE)
@pytest.mark.parametrize("flip, count", [(0, 104), (1, 102)])
def test_a_block_whose_index_bits_hold_another_number_of_indices_is_refused(codec, flip, count):
    store, layout, item, files = index_attack(codec, 40)
    code = codecs.get(codec).full_code
    bits = np.unpackbits(files["000/d/kernel:i"])
    upper = code.kept * code.low  # block 0's upper part: exactly k ones
    bits[upper + int(np.flatnonzero(bits[upper : code.bits] == flip)[0])] = 1 - flip
    files["000/d/kernel:i"] = np.packbits(bits)
    reason = rejected(store, layout, put_files(store, item, files))
    assert reason == f"tensor '000/d/kernel:i': a block's index bits hold {count} indices, not 103"


@pytest.mark.parametrize("codec", SPARSE)
def test_an_index_moved_from_one_block_to_the_next_is_refused_though_the_total_is_right(codec):
    store, layout, item, files = index_attack(codec, 44)
    code = codecs.get(codec).full_code
    bits = np.unpackbits(files["000/d/kernel:i"])
    upper = code.kept * code.low
    bits[upper + int(np.flatnonzero(bits[upper : code.bits])[-1])] = 0  # block 0's last index out
    bits[code.bits + upper + int(np.flatnonzero(bits[code.bits + upper : 2 * code.bits] == 0)[0])] = 1  # into block 1
    files["000/d/kernel:i"] = np.packbits(bits)
    reason = rejected(store, layout, put_files(store, item, files))
    assert reason == "tensor '000/d/kernel:i': a block's index bits hold 102 indices, not 103"


@pytest.mark.parametrize("codec", SPARSE)
@pytest.mark.parametrize("change", [-1, 1])
def test_index_bits_of_another_length_than_the_model_implies_are_refused(codec, change):
    store, layout, item, files = index_attack(codec, 41)
    packed = files["000/d/kernel:i"]
    files["000/d/kernel:i"] = np.concatenate([packed, np.zeros(1, np.uint8)]) if change > 0 else packed[:-1]
    reason = rejected(store, layout, put_files(store, item, files))
    assert reason == f"tensor '000/d/kernel:i' has shape ({packed.size + change},), expected ({packed.size},)"


@pytest.mark.parametrize("codec", SPARSE)
def test_index_bits_with_non_zero_padding_are_refused(codec):
    """One file, one meaning: the bits after the last block's are zero."""
    store, layout, item, files = index_attack(codec, 42)
    assert codecs.get(codec).bit_offset(2400, 3) % 8 == 6  # two bits of padding in the last byte
    files["000/d/kernel:i"][-1] |= 1
    reason = rejected(store, layout, put_files(store, item, files))
    assert reason == "tensor '000/d/kernel:i': the padding after the last block's index bits is not zero"


@pytest.mark.parametrize(
    "length, kept", [(1024, 103), (1024, 11), (1024, 1), (1024, 512), (1024, 1023), (352, 103), (2, 1), (5, 5)]
)
def test_elias_fano_codes_any_increasing_index_set_in_bits_fixed_by_its_length_and_count(length, kept):
    rng = np.random.default_rng(length + kept)
    rows = np.sort(np.argsort(rng.random((40, length)), axis=1)[:, :kept], axis=1)
    rows[0], rows[1] = np.arange(kept), np.arange(length - kept, length)  # the extremes
    code = eliasfano.block_code(length, kept)
    bits = eliasfano.pack(rows, code)
    assert bits.size == 40 * code.bits
    np.testing.assert_array_equal(eliasfano.unpack(bits, 40, code, "t"), rows)
    if kept < length:  # Elias-Fano's bound: about 2 + log2(length / kept) bits an index
        assert code.bits <= kept * (math.floor(math.log2(length / kept)) + 3) + 1
    else:
        assert code.bits == 0  # every element kept: the indices are implied
    assert eliasfano.block_code(1024, 103).bits == 540  # topk:0.1: 5.24 bits an index, not 16


@pytest.mark.parametrize("codec", ["topk:0.1", "topk:0.01+int8", "topk:0.5", "topk:0.001+int8", "topk:1"])
def test_ranged_reads_of_any_blocks_decode_as_the_whole_file_and_read_only_their_blocks(codec):
    """A tensor of 100,003 elements: 97 full blocks (more than one decode chunk) and a partial one
    of 675; slices that start and end mid-block, on block edges, one element, the whole tensor."""
    coder = codecs.get(codec)
    n = 100_003
    spec = tensors.TensorSpec({"w": (n,)})
    files, decoded = coder.encode({"w": np.random.default_rng(3).standard_normal(n).astype(np.float32)}, 7)
    assert files["w:i"].shape == coder.layout(spec).spec.shapes["w:i"]
    coder.check(files, spec)
    whole = coder.decode(files, spec)["w"]
    np.testing.assert_array_equal(whole, decoded["w"])
    reads = []

    def read(tensor: str, first: int, stop: int) -> np.ndarray:
        reads.append((tensor, first, stop))
        return files[tensor].reshape(-1)[first:stop].copy()

    edges = [(0, n), (517, 1500), (1023, 1025), (2048, 4096), (64 * 1024 - 3, 66 * 1024 + 5), (n - 676, n)]
    for start, stop in [*edges, (n - 1, n), (5000, 5001), (7, 7)]:
        out = np.full(stop - start, np.nan, np.float32)
        coder.read_slice("w", (n,), start, stop, read, out)
        np.testing.assert_array_equal(out, whole[start:stop])
    reads.clear()
    coder.read_slice("w", (n,), 5000, 5001, read, np.empty(1, np.float32))  # in block 4: its bytes alone
    assert [(f, s) for t, f, s in reads if t == "w:i"] == [
        (coder.bit_offset(n, 4) // 8, -(-coder.bit_offset(n, 5) // 8))
    ]


def test_a_block_keeping_every_element_needs_no_index_bits():
    """topk:1 keeps every element (k = block length): no index bytes, the delta exact."""
    codec = "topk:1"
    store, layout = world(codec)
    assert {layout.file.spec.shapes[f"{name}:i"] for name in SPEC.shapes} == {(0,)}
    delta = delta_of(43)
    checked = read_update(store, report(store, codec, delta), layout)
    for name in delta:
        np.testing.assert_array_equal(checked.tensors[name], delta[name])
    assert codecs.get("topk:0.1").index_bytes(60) == 0  # a tensor of at most k elements: all kept


@pytest.mark.parametrize("codec", CODECS)
def test_a_model_of_one_element_and_an_empty_tensor_reads_the_same_in_one_pass_and_by_slices(codec):
    model = {"000/one": np.zeros(1, np.float32), "001/empty": np.zeros((3, 0), np.float32)}
    store, layout = world(codec, model)
    delta = {"000/one": np.array([0.25], np.float32), "001/empty": np.zeros((3, 0), np.float32)}
    item = report(store, codec, delta)
    (update,) = [{n: t.copy() for n, t in u.delta.items()} for u in UpdateSource(store, layout, Bounds(), [item])]
    assert update["000/one"].tolist() == [0.25] and update["001/empty"].shape == (3, 0)
    sliced = UpdateSource(store, layout, Bounds(), [item])
    assert sliced.slice("000/one", 0, 1).tolist() == [[0.25]]
    assert sliced.slice("001/empty", 0, 0).shape == (1, 0)


# -- sizes ---------------------------------------------------------------------------------------


def test_sizes_on_a_100k_parameter_model_meet_the_goals():
    """Dense 784x128 + 128x10 (101,770 parameters): int8 sends 3.9x fewer tensor bytes than
    float32, topk:0.1+int8 20x fewer file bytes (header included)."""
    rng = np.random.default_rng(0)
    shapes = {
        "000/dense/kernel": (784, 128),
        "001/dense/bias": (128,),
        "002/dense_1/kernel": (128, 10),
        "003/dense_1/bias": (10,),
    }
    delta = {n: (rng.standard_normal(s) * 0.01).astype(np.float32) for n, s in shapes.items()}
    sizes = {}
    for codec in CODECS:
        data, _ = encode_update(
            delta, run_id="run-7", round_number=3, client_id="site-a", num_examples=383,
            metrics={"train_loss": 0.62, "test_accuracy": 0.801}, created_at="2026-12-06T00:00:00Z", codec=codec,
        )  # fmt: skip
        sizes[codec] = (codecs.get(codec).layout(tensors.TensorSpec(shapes)).data_bytes, len(data))
    f32_data, f32_file = sizes["float32"]
    assert f32_data / sizes["int8"][0] >= 3.9
    assert f32_file / sizes["topk:0.1+int8"][1] >= 12
    assert f32_file / sizes["topk:0.1+int8"][1] >= 20  # Elias-Fano indices: 5.24 bits each, not 16
    assert f32_data / sizes["float16"][0] == 2


# -- the client: error feedback ------------------------------------------------------------------


def context(tmp_path, codec: str, round_number: int, *, bound: float | None = None) -> steps.RoundContext:
    instructions = {codecs.INSTRUCTION: codec}
    if bound is not None:
        instructions[codecs.NORM_BOUND_INSTRUCTION] = bound
    msg = RoundMessage(
        run_id=RUN,
        round=round_number,
        attempt=0,
        global_model=ObjectRef("global", "0" * 64, 100),
        issued_at="2026-12-07T00:00:00Z",
        training=TrainingConfig(),
        instructions=instructions,
    )
    return steps.RoundContext(
        msg, "site-a", steps.RoundPrivacy(), GLOBAL, 10, {}, residuals=ResidualStore.for_client(tmp_path, "site-a")
    )


def encode_round(tmp_path, codec: str, round_number: int, delta: tensors.Tensors, **kwargs):
    ctx = context(tmp_path, codec, round_number, **kwargs)
    sent = steps.encode({n: t.copy() for n, t in delta.items()}, ctx)
    assert ctx.encoded is not None
    return ctx.encoded, sent


def decoded_of(codec: str, data: bytes, item: UpdateItem) -> tensors.Tensors:
    store, layout = world(codec)
    store.put(item.update.key, data)
    return read_update(store, item, layout).tensors


@pytest.mark.parametrize("codec", SPARSE)
def test_error_feedback_carries_what_top_k_dropped_into_the_next_round(tmp_path, codec):
    first, second = delta_of(20), delta_of(21)
    (data1, item1), _ = encode_round(tmp_path, codec, 1, first)
    sent1 = decoded_of(codec, data1, item1)
    residuals = ResidualStore.for_client(tmp_path, "site-a")
    residual1 = residuals.latest_before(RUN, 2, SPEC)
    for name in first:  # the residual is exactly what the server did not receive
        np.testing.assert_array_equal(residual1[name], first[name] - sent1[name])
    kernel = residual1["000/d/kernel"]  # about 90 % of it was dropped (the 60-element bias was sent whole)
    assert np.count_nonzero(kernel) > 0.8 * kernel.size
    (data2, item2), encoded2 = encode_round(tmp_path, codec, 2, second)
    for name in second:  # round 2 sends its own delta plus round 1's residual
        np.testing.assert_array_equal(encoded2[name], second[name] + residual1[name])
    sent2 = decoded_of(codec, data2, item2)
    residual2 = residuals.latest_before(RUN, 3, SPEC)
    for name in second:  # over both rounds, what was sent plus what is kept is everything trained
        np.testing.assert_allclose(sent1[name] + sent2[name] + residual2[name], first[name] + second[name], atol=1e-6)


@pytest.mark.parametrize("codec", SPARSE)
def test_delta_plus_residual_is_clipped_to_the_rounds_norm_bound_before_sparsifying(tmp_path, codec):
    encode_round(tmp_path, codec, 1, delta_of(22, scale=1.0))  # a large residual carried over
    (data, item), encoded = encode_round(tmp_path, codec, 2, delta_of(23, scale=1.0), bound=3.0)
    assert tensors.l2_norm(encoded) == pytest.approx(3.0, rel=1e-3)
    sent = decoded_of(codec, data, item)
    assert tensors.l2_norm(sent) <= 3.0  # the server's bound never clips (nor, under "reject", refuses) it
    store, layout = world(codec)
    store.put(item.update.key, data)
    source = UpdateSource(store, layout, Bounds(max_update_norm=3.0, action="reject"), [item])
    assert len(list(source)) == 1 and not source.rejected and not source.clipped


def test_a_float32_round_writes_the_file_encode_update_writes(tmp_path):
    delta = delta_of(24)
    (data, item), _ = encode_round(tmp_path, "float32", 1, delta)
    same, _ = update_file(
        delta, run_id=RUN, round_number=1, client_id="site-a", num_examples=10, metrics={}, created_at=item.created_at
    )
    assert data == same and item.encoding == "float32"
    assert not (tmp_path / "residuals-site-a").exists()  # no residual without error feedback


def test_the_residuals_survive_a_restart_and_old_rounds_are_pruned(tmp_path):
    codec = "topk:0.1"
    encode_round(tmp_path, codec, 1, delta_of(25))
    (first_try, _), _ = encode_round(tmp_path, codec, 2, delta_of(26))
    # a new agent (a new context and store, the same cache directory) encodes round 2 again
    (again, _), _ = encode_round(tmp_path, codec, 2, delta_of(26))
    assert again == first_try  # round 1's residual, not round 2's own, and the same stochastic seed
    store = ResidualStore.for_client(tmp_path, "site-a")
    assert store.rounds(RUN) == [1, 2]
    encode_round(tmp_path, codec, 3, delta_of(27))
    assert store.rounds(RUN) == [2, 3]  # round 1 pruned; round 2 kept for a re-encoded round 3


def test_an_unreadable_residual_is_skipped_not_amplified(tmp_path):
    codec = "topk:0.1"
    encode_round(tmp_path, codec, 1, delta_of(28))
    store = ResidualStore.for_client(tmp_path, "site-a")
    store.path(RUN, 1).write_bytes(b"not a safetensors file")
    (_, _), encoded = encode_round(tmp_path, codec, 2, delta_of(29))
    for name, t in delta_of(29).items():
        np.testing.assert_array_equal(encoded[name], t)


def test_the_int8_block_and_topk_block_fit_their_index_types():
    assert topk.BLOCK <= 65536 and int8.BLOCK >= 1
    assert codecs.get("topk:0.1").k == math.ceil(0.1 * topk.BLOCK)
    assert codecs.get("topk:0.1").kept(2400) == 2 * 103 + 103 and codecs.get("topk:0.1").kept(60) == 60


@pytest.mark.parametrize("codec", CODECS)
def test_a_sliced_plan_reads_a_codecs_updates_as_the_one_pass_decodes_them(codec):
    """The plan path of a model larger than one function (`fedstep.core.sliced`): its streamed check
    keeps no tensors, and its slices decode each update's ranges from ranged reads alone."""
    store, layout = world(codec)
    items = [report(store, codec, delta_of(seed), client=f"site-{seed}") for seed in (30, 31)]
    one_pass = [{n: t.copy() for n, t in u.delta.items()} for u in UpdateSource(store, layout, Bounds(), items)]
    checked = sliced.check_updates(store, layout, Bounds(), items, None)
    assert not checked.rejected and [u.encoding for _, u in checked.accepted] == [codec, codec]
    plan = sliced.SlicePlan(
        RUN, 1, "claim", "fedavg", {}, ObjectRef("g", "0" * 64, 1), {}, 0, "out", "up", {}, SPEC.shapes, 1000,
        [u for _, u in checked.accepted], {},
    )  # fmt: skip
    plan = sliced.SlicePlan.decode(plan.encode())  # as the slices read it
    for index in range(plan.slice_count):
        pieces = plan.pieces(index)
        updates = sliced.PlannedSlice(store, plan, pieces)
        for name, start, stop in pieces:
            rows = updates.slice(name, 0, stop - start)
            for i, update in enumerate(one_pass):
                np.testing.assert_array_equal(rows[i], update[name].reshape(-1)[start:stop])


@pytest.mark.parametrize("codec", ["int8", "topk:0.1+int8"])
def test_a_codecs_one_pass_mean_holds_the_sum_and_one_decoded_update(codec):
    """DESIGN invariant 5 under a codec: the float32 sum, the one decode buffer and one coded file
    (plus the mean's 1 MiB block and small temporaries), whatever the number of clients: within 2x
    one model plus one update (tests/test_aggregation_memory.py measures the float32 path)."""
    shapes = {"000/big/kernel": (1000, 1000)}
    spec = tensors.TensorSpec(shapes)
    store = MemoryStore()
    data = tensors.encode({n: np.zeros(s, np.float32) for n, s in shapes.items()})
    store.put("g", data)
    layout = read_layout(store, ObjectRef("g", tensors.sha256_hex(data), len(data)), codec)
    rng = np.random.default_rng(0)
    items = []
    for i in range(3):
        delta = {n: rng.standard_normal(s).astype(np.float32) for n, s in shapes.items()}
        file, item = encode_update(
            delta, run_id=RUN, round_number=1, client_id=f"c{i}", num_examples=5, metrics={},
            created_at="2026-12-07T00:00:00Z", codec=codec,
        )  # fmt: skip
        store.put(item.update.key, file)
        items.append(item)
    del delta
    tracemalloc.start()
    try:
        aggregation.weighted_mean(UpdateSource(store, layout, Bounds(), items))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak / spec.data_bytes <= 2.8, f"peak {peak / spec.data_bytes:.2f}x one model"
