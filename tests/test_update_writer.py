"""One update writer (`fedstep.core.updates.encode_update`) and a reader driven by the model's declared
layout (`ModelLayout.element`): the file's bytes are those agents have always written, the item names
them, the server's checks accept them, and the sizes and offsets come from the layout's element type
(float32, the only one accepted)."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from safetensors.numpy import save

from fedstep.core import keys, tensors
from fedstep.core.errors import InvalidUpdate
from fedstep.core.schemas import Bounds, UpdateItem
from fedstep.core.update_source import ModelLayout, UpdateSource, read_elements, read_update
from fedstep.core.updates import encode_update
from fedstep.memory import MemoryStore

DELTA = {
    "000/dense/kernel": np.arange(6, dtype=np.float32).reshape(2, 3) * 0.25 - 0.5,
    "001/dense/bias": np.array([-1.5, 2.0, 0.125], np.float32),
}
FACTS = dict(
    run_id="run-7",
    round_number=3,
    client_id="site-a",
    num_examples=383,
    metrics={"train_loss": 0.62, "test_accuracy": 0.801},
    created_at="2026-12-06T00:00:00Z",
    privacy={"within_clip": 1.0},
)
AGENTS_FILE_SHA256 = "3e344ab73121d652a22800b54feb4a0eb238ac969e37e9ae1540e997dc044174"
"""The sha256 of the file the agent wrote for DELTA and FACTS before the writer existed (the agent's
`tensors.encode(delta, item.file_metadata())` at commit 2a03662)."""
AGENTS_HEADER = (
    b'{"__metadata__":{"fedstep":"{\\"client_id\\":\\"site-a\\",\\"kind\\":\\"update\\",\\"metrics\\":'
    b'{\\"test_accuracy\\":0.801,\\"train_loss\\":0.62},\\"num_examples\\":383,\\"privacy\\":{\\"within_clip\\":1.0},'
    b'\\"round\\":3,\\"run_id\\":\\"run-7\\",\\"schema\\":2,\\"update\\":\\"delta\\"}"},'
    b'"000/dense/kernel":{"dtype":"F32","shape":[2,3],"data_offsets":[0,24]},'
    b'"001/dense/bias":{"dtype":"F32","shape":[3],"data_offsets":[24,36]}}    '
)


def layout(max_header_bytes: int = 4096) -> ModelLayout:
    return ModelLayout(tensors.TensorSpec.of(DELTA), max_header_bytes)


def test_an_update_file_is_byte_for_byte_the_file_agents_wrote_before_the_writer():
    data, item = encode_update(DELTA, **FACTS)
    assert len(data) == 444 and tensors.sha256_hex(data) == AGENTS_FILE_SHA256
    assert data[:8] == (400).to_bytes(8, "little") and data[8:408] == AGENTS_HEADER
    assert data[408:] == b"".join(DELTA[name].astype("<f4").tobytes() for name in sorted(DELTA))
    assert encode_update(DELTA, **FACTS) == (data, item)  # deterministic


def test_the_item_names_the_file_and_the_file_repeats_the_items_facts():
    data, item = encode_update(DELTA, **FACTS)
    assert item.update.key == keys.update_key("run-7", 3, "site-a")
    assert (item.update.sha256, item.update.bytes) == (tensors.sha256_hex(data), len(data))
    assert (item.num_examples, item.metrics, item.privacy) == (383, FACTS["metrics"], {"within_clip": 1.0})
    assert UpdateItem.parse(item.to_item()) == item  # what the aggregation function reads back
    assert tensors.read_metadata(data) == item.file_metadata()


def test_the_servers_check_accepts_the_written_update_and_refuses_it_under_another_item():
    data, item = encode_update(DELTA, **FACTS)
    store = MemoryStore()
    store.put(item.update.key, data)
    checked = read_update(store, item, layout(), norm=True)
    for name, values in DELTA.items():
        np.testing.assert_array_equal(checked.tensors[name], values)
    assert checked.norm == pytest.approx(tensors.l2_norm(DELTA))
    other = dataclasses.replace(item, num_examples=384)  # an item that says something the file does not
    with pytest.raises(InvalidUpdate, match=r"metadata differs from the update item in \['num_examples'\]"):
        read_update(store, other, layout())


def test_the_layout_declares_float32_and_sizes_every_bound_by_it():
    model = layout(100)
    assert model.element is tensors.F32 and (model.element.size, model.element.numpy) == (4, "<f4")
    assert model.data_bytes == 4 * 9
    assert model.max_file_bytes == 8 + 100 + 36
    assert tensors.ELEMENT_TYPES == {"F32": tensors.F32}  # the only element type an update may hold


def test_a_layout_of_an_element_type_no_wire_format_defines_is_refused():
    half = tensors.ElementType("F16", "<f2", 2, "float16")
    with pytest.raises(ValueError, match=r"element type F16 is not one of \['F32'\]"):
        ModelLayout(tensors.TensorSpec.of(DELTA), 100, half)


def test_a_file_of_another_element_type_is_refused_by_the_header_check_with_todays_message():
    _, item = encode_update(DELTA, **FACTS)
    half = save({name: t.astype(np.float16) for name, t in DELTA.items()}, metadata={"fedstep": "{}"})
    data = half + b"\0" * 18  # as long as float32 data would be: past the size check, to the header's
    store = MemoryStore()
    store.put(item.update.key, data)
    wrong = dataclasses.replace(item, update=dataclasses.replace(item.update, bytes=len(data)))
    with pytest.raises(InvalidUpdate, match=r"tensor '000/dense/kernel' has dtype F16, expected float32"):
        read_update(store, wrong, layout())


def test_a_header_entry_that_is_not_an_object_is_refused_not_a_crash():
    _, item = encode_update(DELTA, **FACTS)
    entries = {name: [0, 1] for name in DELTA}  # a client's header whose entries are lists
    text = json.dumps(entries).encode()
    text += b" " * (-len(text) % 8)
    data = len(text).to_bytes(8, "little") + text + bytes(36)
    store = MemoryStore()
    store.put(item.update.key, data)
    wrong = dataclasses.replace(item, update=dataclasses.replace(item.update, bytes=len(data)))
    with pytest.raises(InvalidUpdate, match=r"tensor '000/dense/kernel' has a malformed header entry"):
        read_update(store, wrong, layout())


def test_slices_are_read_at_the_offsets_of_the_headers_element_type():
    data, item = encode_update(DELTA, **FACTS)
    store = MemoryStore()
    store.put(item.update.key, data)
    source = UpdateSource(store, layout(), Bounds(), [item], require_versions=False)
    assert source.slice("000/dense/kernel", 2, 5).tolist() == [DELTA["000/dense/kernel"].reshape(-1)[2:5].tolist()]
    assert source.slice("001/dense/bias", 1, 3).tolist() == [[2.0, 0.125]]


def test_elements_are_never_read_into_an_array_of_another_type():
    data, item = encode_update(DELTA, **FACTS)
    store = MemoryStore()
    store.put(item.update.key, data)
    with pytest.raises(ValueError, match="reading float32 elements into an array of float64"):
        read_elements(store, item.update.key, 408, 0, np.empty(2, np.float64), tensors.F32, None)
    out = np.empty(2, np.float32)
    read_elements(store, item.update.key, 408 + 24, 1, out, tensors.F32, None)
    assert out.tolist() == [2.0, 0.125]
