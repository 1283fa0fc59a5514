"""The agent reads an object a message references with a ranged GET of exactly its size, and never
more: a larger object is refused before its body is read, whatever the store answers."""

from __future__ import annotations

import hashlib

import pytest

from client_agent import objects
from client_agent.objects import BadReference
from fedstep.core.schemas import ObjectRef

DATA = bytes(range(256)) * 4  # 1 KiB
REF = ObjectRef("runs/r/model.keras", hashlib.sha256(DATA).hexdigest(), len(DATA))


class Body:
    """A response body that records how much it was asked for."""

    def __init__(self, data: bytes) -> None:
        self.data, self.asked, self.closed = data, 0, False

    def read(self, amt: int | None = None) -> bytes:
        amt = len(self.data) if amt is None else amt
        self.asked += amt
        chunk, self.data = self.data[:amt], self.data[amt:]
        return chunk

    def close(self) -> None:
        self.closed = True


class Store:
    """S3's GetObject: honours Range unless `ignores_range` (a store or proxy that answers 200 with the
    whole object); `claims` overrides the ContentLength it says."""

    def __init__(self, data: bytes, ignores_range: bool = False, claims: int | None = None) -> None:
        self.data, self.ignores_range, self.claims = data, ignores_range, claims
        self.ranges: list[str | None] = []
        self.body: Body | None = None

    def get_object(self, Bucket: str, Key: str, Range: str | None = None) -> dict:
        self.ranges.append(Range)
        if Range is None or self.ignores_range:
            self.body = Body(self.data)
            return {"Body": self.body, "ContentLength": self.claims or len(self.data)}
        first, last = (int(n) for n in Range.removeprefix("bytes=").split("-"))
        part = self.data[first : last + 1]
        self.body = Body(self.data[first:])  # a body that would go on past the range if asked
        total = len(self.data)
        return {"Body": self.body, "ContentLength": len(part), "ContentRange": f"bytes {first}-{last}/{total}"}


def test_an_object_of_its_references_size_is_read_with_one_ranged_get_in_chunks():
    store, advanced = Store(DATA), []
    assert objects.read(store, "b", REF, advanced.append) == DATA
    assert store.ranges == [f"bytes=0-{len(DATA) - 1}"] and sum(advanced) == len(DATA)


def test_an_object_larger_than_its_reference_is_refused_unread():
    store = Store(DATA + b"\0" * 300_000)
    with pytest.raises(BadReference, match=r"is 301024 bytes; the message says 1024 bytes: refused unread"):
        objects.read(store, "b", REF)
    assert store.body.asked == 0 and store.body.closed


def test_a_store_that_ignores_the_range_is_refused_unread_when_the_object_is_larger():
    store = Store(DATA + b"\0" * 300_000, ignores_range=True)
    with pytest.raises(BadReference, match="is 301024 bytes"):
        objects.read(store, "b", REF)
    assert store.body.asked == 0


def test_a_body_longer_than_its_answer_claims_is_read_no_further_than_the_reference():
    store = Store(DATA + b"\0" * 300_000, ignores_range=True, claims=len(DATA))
    assert objects.read(store, "b", REF) == DATA
    assert store.body.asked == len(DATA)


@pytest.mark.parametrize(
    ("data", "ref", "why"),
    [
        (DATA[:10], REF, "is 10 bytes; the message says 1024"),
        (b"x" * len(DATA), REF, "does not match the sha256 in the message"),
        (DATA, ObjectRef(REF.key, REF.sha256, 0), "with a size of 0 bytes; a model file is never empty"),
    ],
)
def test_an_object_that_is_not_what_its_reference_says_is_refused(data, ref, why):
    with pytest.raises(BadReference, match=why):
        objects.read(Store(data), "b", ref)


def test_a_body_that_ends_early_is_refused():
    store = Store(DATA, ignores_range=True)
    store.data = DATA[:100]  # the answer claims 1024 bytes and sends 100
    store.claims = len(DATA)
    with pytest.raises(BadReference, match="ended after 100 of the 1024 bytes"):
        objects.read(store, "b", REF)


def test_the_objects_size_comes_from_the_content_range_else_the_length():
    assert objects.object_size({"ContentRange": "bytes 0-9/300000000", "ContentLength": 10}) == 300_000_000
    assert objects.object_size({"ContentRange": "bytes 0-9/*", "ContentLength": 10}) == 10
    assert objects.object_size({"ContentLength": 7}) == 7
    assert objects.object_size({}) is None
