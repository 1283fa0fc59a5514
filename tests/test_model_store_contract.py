"""The model store's contract (`fedstep.core.ports.ModelStore`, `MultipartStore`): one suite, run
against the in-memory bucket (`fedstep.memory.MemoryStore`) and the S3 registry
(`fedstep.aws.adapters.S3ModelStore`) on a versioned bucket of a moto server.

Write-once keys (S3 `If-None-Match: *`), object versions (a read names the version it read, and a
read pinned to it returns those bytes after the key was overwritten), ranged reads (a malformed or
empty range is never requested), deletes and multipart uploads. A broken rule planted in either store
makes the suite fail (the last tests).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from fedstep.aws.adapters import S3ModelStore
from fedstep.core import keys
from fedstep.core.ports import RangeRead
from fedstep.core.rounds import AggregationSettings
from fedstep.core.update_source import UnversionedStore
from fedstep.memory import MemoryStore
from tests.moto_process import client, moto_server, new_bucket
from tests.round_world import make_world

pytestmark = pytest.mark.contract

KEY = keys.global_key("run-1", 1, "c1")
DATA = bytes(range(256)) * 4  # 1 KiB, every byte value
PART_BYTES = 5 * 1024 * 1024  # S3's smallest part but the last

Store = Any  # a ModelStore and MultipartStore (either implementation)


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    with moto_server() as url:
        yield url


def s3_store(endpoint: str, versioned: bool = True, cls: type[S3ModelStore] = S3ModelStore) -> S3ModelStore:
    """A new empty bucket on the moto server (versioned, as the stack's registry), as `cls`."""
    s3 = client("s3", endpoint)
    return cls(new_bucket(s3, versioned), s3)


@pytest.fixture(params=["memory", "s3"])
def store(request) -> Store:
    """An empty model store of each implementation."""
    if request.param == "memory":
        return MemoryStore()
    return s3_store(request.getfixturevalue("endpoint"))


# -- write once, overwrite, delete -------------------------------------------------------------------


def test_a_write_once_key_keeps_its_first_bytes(store):
    assert store.put_once(KEY, DATA)
    assert not store.put_once(KEY, b"a second aggregation's model")
    assert store.get(KEY) == DATA


def test_a_key_written_by_put_is_not_written_once_again(store):
    store.put(KEY, DATA)
    assert not store.put_once(KEY, b"other")
    assert store.get(KEY) == DATA


def test_put_replaces_what_a_reader_of_the_key_gets(store):
    store.put(KEY, b"first")
    store.put(KEY, b"second")
    assert store.get(KEY) == b"second"


def test_a_deleted_object_is_gone_for_readers_and_deleting_nothing_is_nothing(store):
    store.put(KEY, DATA)
    store.delete(KEY)
    with pytest.raises(Exception):  # noqa: B017 (KeyError in memory, NoSuchKey from S3)
        store.get(KEY)
    store.delete(KEY)
    store.delete(keys.global_key("run-1", 2, "neverwritten"))


# -- versions and ranged reads ---------------------------------------------------------------------


def test_a_ranged_read_returns_the_range_the_object_size_and_its_version(store):
    store.put(KEY, DATA)
    got = store.read_range(KEY, 10, 20)
    assert isinstance(got, RangeRead)
    assert (got.data, got.total_bytes) == (DATA[10:30], len(DATA))
    assert got.version is not None  # a versioned store names the version it read


def test_a_ranged_read_past_the_end_returns_what_is_there(store):
    store.put(KEY, DATA)
    got = store.read_range(KEY, len(DATA) - 5, 100)
    assert (got.data, got.total_bytes) == (DATA[-5:], len(DATA))


def test_a_read_pinned_to_a_version_returns_its_bytes_after_the_key_was_overwritten(store):
    store.put(KEY, DATA)
    first = store.read_range(KEY, 0, 8)
    store.put(KEY, b"X" * len(DATA))  # a client replaces its file after the check
    assert store.read_range(KEY, 0, 8).data == b"X" * 8
    again = store.read_range(KEY, 100, 8, first.version)
    assert (again.data, again.version) == (DATA[100:108], first.version)
    buffer = bytearray(16)
    store.read_into(KEY, 200, memoryview(buffer), first.version)
    assert bytes(buffer) == DATA[200:216]


@pytest.mark.parametrize(("start", "length"), [(-1, 10), (0, 0), (5, -3), (-4, 0)])
def test_a_malformed_or_empty_range_is_refused(store, start, length):
    store.put(KEY, DATA)
    with pytest.raises(ValueError):
        store.read_range(KEY, start, length)


def test_read_into_fills_the_buffer_and_an_empty_buffer_reads_nothing(store):
    store.put(KEY, DATA)
    buffer = bytearray(300)
    store.read_into(KEY, 500, memoryview(buffer), None)
    assert bytes(buffer) == DATA[500:800]
    store.read_into(KEY, 0, memoryview(bytearray(0)), None)


def test_read_into_refuses_an_object_that_ends_before_the_buffer_is_full(store):
    store.put(KEY, DATA)
    with pytest.raises(ValueError):
        store.read_into(KEY, len(DATA) - 10, memoryview(bytearray(20)), None)


def test_read_into_refuses_a_negative_start(store):
    store.put(KEY, DATA)
    with pytest.raises(ValueError):
        store.read_into(KEY, -1, memoryview(bytearray(4)), None)


def test_an_unversioned_bucket_names_no_version_and_a_slice_plan_refuses_it(endpoint):
    """What a store that names no version gets from the round logic: its reads cannot be pinned,
    so slices are refused (`UnversionedStore`). The stack's registry is versioned."""
    store = s3_store(endpoint, versioned=False)
    store.put(KEY, DATA)
    assert store.read_range(KEY, 0, 4).version is None
    world = make_world(clients=("a", "b"), store=store)
    world.report("a", 0.1, 10)
    world.report("b", 0.2, 10)
    with pytest.raises(UnversionedStore, match="the bucket must be versioned"):
        world.complete(settings=AggregationSettings(slice_bytes=16))  # the model is larger: planned by slices
    assert world.table.get_round("run-1", 1)["status"] == "open"


# -- multipart uploads -----------------------------------------------------------------------------


def test_a_model_written_in_parts_is_their_concatenation_and_completing_it_again_is_nothing(store):
    upload = store.start_upload(KEY)
    store.upload_part(KEY, upload, 2, b"tail")
    store.upload_part(KEY, upload, 1, b"a" * PART_BYTES)
    store.complete_upload(KEY, upload, 2)
    assert store.get(KEY) == b"a" * PART_BYTES + b"tail"
    store.complete_upload(KEY, upload, 2)  # a retried assembly
    assert store.get(KEY) == b"a" * PART_BYTES + b"tail"


def test_a_model_with_a_part_missing_is_not_completed(store):
    upload = store.start_upload(KEY)
    store.upload_part(KEY, upload, 1, b"a" * PART_BYTES)
    with pytest.raises(ValueError):
        store.complete_upload(KEY, upload, 2)
    with pytest.raises(Exception):  # noqa: B017 (KeyError in memory, NoSuchKey from S3)
        store.get(KEY)


# -- a planted bug fails the suite -----------------------------------------------------------------


class OverwritingMemory(MemoryStore):
    """A broken rule: a write-once key is written again."""

    def put_once(self, key: str, data: bytes) -> bool:
        self.put(key, data)
        return True


class OverwritingS3(S3ModelStore):
    """The write without its `If-None-Match: *`."""

    def put_once(self, key: str, data: bytes) -> bool:
        self.put(key, data)
        return True


class UnpinnedMemory(MemoryStore):
    """A broken rule: a read ignores the version it is pinned to."""

    def read_range(self, key: str, start: int, length: int, version: str | None = None) -> RangeRead:
        return super().read_range(key, start, length, None)


class UnpinnedS3(S3ModelStore):
    """Ranged reads without their `VersionId`."""

    def _get_range(self, key: str, start: int, length: int, version: str | None) -> dict[str, Any]:
        return super()._get_range(key, start, length, None)


PLANTED = [
    (OverwritingMemory, test_a_write_once_key_keeps_its_first_bytes),
    (OverwritingS3, test_a_write_once_key_keeps_its_first_bytes),
    (UnpinnedMemory, test_a_read_pinned_to_a_version_returns_its_bytes_after_the_key_was_overwritten),
    (UnpinnedS3, test_a_read_pinned_to_a_version_returns_its_bytes_after_the_key_was_overwritten),
]


@pytest.mark.parametrize(
    ("broken", "contract_test"), PLANTED, ids=[f"{b.__name__}-{t.__name__[5:45]}" for b, t in PLANTED]
)
def test_the_contract_fails_on_a_store_with_a_planted_broken_rule(broken, contract_test, endpoint):
    store = broken() if issubclass(broken, MemoryStore) else s3_store(endpoint, cls=broken)
    with pytest.raises((AssertionError, pytest.fail.Exception)):  # an assert, or a `pytest.raises` that failed
        contract_test(store)
