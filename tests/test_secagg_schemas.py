"""A secure round's items and keys (`fedstep.core.schemas.secagg`, `fedstep.core.keys`): exact sizes,
each in its writer's own partition, apart from every other record."""

from __future__ import annotations

import json

import pytest

from fedstep.aws.ddb import from_attributes, to_attributes
from fedstep.core import keys
from fedstep.core.schemas import secagg
from fedstep.core.schemas.validation import InvalidMessage
from fedstep.privacy.secagg import primitives
from fedstep.privacy.secagg.protocol import Client, RoundKey, Server

NOW = "2026-12-07T08:00:00Z"


def _sealed() -> bytes:
    key = RoundKey("run-1", 2, 1)
    clients = {c: Client(c, key, 2) for c in ("client-1", "client-2", "client-3")}
    server = Server(key, 2)
    graph = server.write_roster([c.advertise() for c in clients.values()], 2, seed=0)
    return clients["client-1"].share_keys(server.roster, graph["client-1"])["client-2"]


def test_the_sizes_the_items_hold_are_the_cryptography_s():
    assert secagg.SHARE_BYTES == primitives.SHARE_BYTES
    assert len(_sealed()) == secagg.SEALED_SHARE_BYTES
    assert len(primitives.KeyPair.generate().public) == secagg.PUBLIC_KEY_BYTES


def test_each_item_goes_through_the_table_and_back_unchanged():
    items = [
        secagg.SecAggKeysItem("run-1", 2, 1, "client-1", b"a" * 32, b"b" * 32, b"c" * 32, NOW),
        secagg.SecAggShareItem("run-1", 2, 1, "client-1", "client-2", _sealed(), NOW),
        secagg.SecAggRevealItem("run-1", 2, 1, "client-1", NOW, {"client-2": ("seed", b"s" * 34)}),
    ]
    for item in items:
        stored = from_attributes(to_attributes(item.to_item()))  # binary values come back as Binary
        assert stored["pk"] == "CLIENT#client-1"
        assert type(item).parse(stored) == item


def test_a_reveal_of_a_whole_run_s_clients_fits_one_item():
    shares = {f"client-{i}": ("key", b"k" * 34) for i in range(1000)}
    item = secagg.SecAggRevealItem("run-1", 2, 1, "client-1", NOW, shares).to_item()
    size = len(json.dumps(item, default=lambda value: "x" * len(value)).encode())  # bytes counted as bytes
    assert size < 400_000 / 4  # DynamoDB's 400 KB, with room


def test_an_item_in_another_client_s_partition_or_of_the_wrong_size_is_refused():
    good = secagg.SecAggShareItem("run-1", 2, 1, "client-1", "client-2", _sealed(), NOW).to_item()
    cases = {
        "its key does not match": {**good, "pk": "CLIENT#client-3"},
        "is 95 bytes, not 96": {**good, "sealed": _sealed()[:-1]},
        "must be binary": {**good, "sealed": "c2VhbGVk"},
        "keeps its own share": {
            **good,
            "recipient": "client-1",
            "sk": keys.secagg_share_item_key("run-1", 2, 1, "client-1", "client-2")["sk"],
        },
        "kind must be": {**good, "kind": "update"},
        "is 10000 bytes, not 96": {**good, "sealed": b"A" * 10_000},
    }
    for message, data in cases.items():
        with pytest.raises(InvalidMessage, match=message):
            secagg.SecAggShareItem.parse(data)
    reveal = secagg.SecAggRevealItem("run-1", 2, 1, "client-1", NOW, {"client-2": ("seed", b"s" * 34)}).to_item()
    with pytest.raises(InvalidMessage, match="kind one of"):
        secagg.SecAggRevealItem.parse({**reveal, "shares": {"client-2": ["both", reveal["shares"]["client-2"][1]]}})


def test_a_secure_round_s_records_are_apart_from_every_other_record():
    sks = {
        keys.secagg_keys_item_key("run-1", 2, 0, "client-1")["sk"],
        keys.secagg_keys_item_key("run-1", 2, 1, "client-1")["sk"],  # a retried round: fresh records
        keys.secagg_share_item_key("run-1", 2, 0, "client-1", "client-2")["sk"],
        keys.secagg_reveal_item_key("run-1", 2, 0, "client-1")["sk"],
        keys.secagg_survivors_key("run-1", 2, 0)["sk"],
    }
    assert len(sks) == 5
    prefixes = (keys.ROUND_PREFIX, keys.UPDATE_PREFIX, keys.EVAL_PREFIX, keys.STATS_PREFIX, keys.RUN_SK)
    assert not any(sk.startswith(prefixes) for sk in sks)  # round listings and history are unchanged
    inbox = keys.inbox_item_key("run-1", 2, 0, "client-2", "client-1")
    assert inbox["pk"] == "INBOX#client-2" != keys.client_pk("client-2")
    assert keys.secagg_roster_key("run-1", 2, 0) == "runs/run-1/rounds/00002/secagg-00/roster.json"
    with pytest.raises(ValueError, match="attempt"):
        keys.secagg_sk("run-1", 2, 100, "KEYS")
