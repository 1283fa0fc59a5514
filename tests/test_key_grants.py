"""Invariant 8: every object and item the system writes is granted to exactly the principal that writes it.

Every S3 key and DynamoDB item key `fedstep.core.keys` builds is written here under its writer's own
credentials, on the local cloud with IAM enforced: the writer succeeds, and every other principal of
the stack (the operator, a client, the aggregation function, the state machine) is refused. A new key
builder without an entry in `WRITES` fails `test_every_key_the_core_builds_has_its_writers`, and a
writer whose role lacks the grant fails its row: a key can no longer be added that works here and is
refused on AWS. (With the local cloud's IAM enforcement off, FEDSTEP_LOCAL_IAM=off, every refusal
here is missing and the rows fail.)
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from botocore.exceptions import ClientError

from fedstep.aws.ddb import to_attributes
from fedstep.aws.errors import error_code
from fedstep.core import keys
from fedstep.core.schemas import (
    DeclineItem,
    EvalItem,
    FailureItem,
    Feedback,
    Heartbeat,
    ObjectRef,
    RunRecord,
    RunStop,
    StatsItem,
    TrainingConfig,
    UpdateItem,
)
from fedstep.core.schemas.secagg import SecAggInboxItem, SecAggKeysItem, SecAggRevealItem, SecAggShareItem

RUN, CLIENT, OTHER_CLIENT, CLAIM, T = "run-grants", "client-1", "client-2", "c0ffee", "2026-12-06T12:00:00+00:00"
PRINCIPALS = ("operator", CLIENT, OTHER_CLIENT, "aggregation", "state-machine")
DENIED = {"AccessDenied", "AccessDeniedException", "AuthorizationError"}


@dataclass(frozen=True)
class Write:
    """One kind of object or item: its key builder, an example of what is written, and who writes it."""

    builder: Callable[..., Any]
    writers: tuple[str, ...]
    object_key: str | None = None
    """An S3 key (None: a DynamoDB item)."""
    item: dict[str, Any] | None = None
    updated: bool = False
    """The item is written with UpdateItem (its writer's call), else PutItem."""


REF = ObjectRef(keys.update_key(RUN, 1, CLIENT), "0" * 64, 100)
WRITES = [
    Write(keys.model_key, ("operator",), object_key=keys.model_key(RUN)),
    Write(keys.statistics_key, ("operator",), object_key=keys.statistics_key(RUN)),
    Write(keys.partition_key, ("operator",), object_key=keys.partition_key(RUN)),
    Write(keys.global_key, ("aggregation",), object_key=keys.global_key(RUN, 1, CLAIM)),
    Write(keys.global_key, ("operator",), object_key=keys.global_key(RUN, 0, keys.INITIAL_VERSION)),
    Write(keys.global_key, ("operator",), object_key=keys.global_key(RUN, 4, keys.RESUMED_VERSION)),
    Write(keys.state_key, ("aggregation",), object_key=keys.state_key(RUN, 1, CLAIM)),
    Write(keys.state_key, ("operator",), object_key=keys.state_key(RUN, 4, keys.RESUMED_VERSION)),
    Write(keys.plan_key, ("aggregation",), object_key=keys.plan_key(RUN, 1, CLAIM)),
    Write(keys.manifest_key, ("aggregation",), object_key=keys.manifest_key(RUN, 1, CLAIM)),
    # the scheduled integrity check's place (its own function writes it; no principal here may)
    Write(keys.integrity_cursor_key, (), object_key=keys.integrity_cursor_key()),
    Write(keys.card_key, ("aggregation", "operator"), object_key=keys.card_key(RUN, 1, CLAIM)),
    Write(keys.approved_key, ("operator",), object_key=keys.approved_key()),
    Write(keys.promotion_key, ("operator",), object_key=keys.promotion_key("default", "20261206T120000Z", RUN, 1)),
    Write(keys.update_key, (CLIENT,), object_key=keys.update_key(RUN, 1, CLIENT)),
    Write(
        keys.run_item_key,
        ("operator",),
        item=RunRecord(RUN, [CLIENT, OTHER_CLIENT], 3, TrainingConfig(), "fedavg", T).to_item(),
    ),
    Write(
        keys.round_item_key,
        ("aggregation",),
        item={**keys.round_item_key(RUN, 1), "kind": "round", "status": "aggregated", "round": 1},
        updated=True,
    ),
    Write(keys.update_item_key, (CLIENT,), item=UpdateItem(RUN, 1, CLIENT, 10, REF, {}, T).to_item()),
    Write(keys.update_item_key, (CLIENT,), item=DeclineItem(RUN, 2, CLIENT, "no budget left", T).to_item()),
    Write(keys.eval_item_key, (CLIENT,), item=EvalItem(RUN, 1, "req1", CLIENT, 10, {"test_loss": 0.5}, T).to_item()),
    Write(keys.stats_item_key, (CLIENT,), item=StatsItem("req1", CLIENT, 1, 0, b"\0" * 40, T).to_item()),
    Write(keys.failure_item_key, (CLIENT,), item=FailureItem(RUN, 1, CLIENT, "ValueError: rank", 2, T).to_item()),
    Write(keys.heartbeat_item_key, (CLIENT,), item=Heartbeat(CLIENT, "0.1.0", "idle", T, 60, {}).to_item()),
    Write(keys.rejection_item_key, ("aggregation",), item=Feedback(CLIENT, RUN, 1, "0" * 64, "nan", T).to_items()[0]),
    Write(
        keys.last_rejection_item_key, ("aggregation",), item=Feedback(CLIENT, RUN, 1, "0" * 64, "nan", T).to_items()[1]
    ),
    Write(keys.stop_item_key, ("operator",), item=RunStop(RUN, "wrong learning rate", T).to_item()),
    # nobody may change a stop marker in place (the aggregation function checks it in its commit)
    Write(keys.stop_item_key, (), item=RunStop(RUN, "changed", T).to_item(), updated=True),
    # a secure round's records (issue 25): each client's in its own partition, the server's in the
    # recipient's inbox and the run's partition, the roster beside the round's models
    Write(
        keys.secagg_keys_item_key,
        (CLIENT,),
        item=SecAggKeysItem(RUN, 1, 0, CLIENT, b"a" * 32, b"b" * 32, b"c" * 32, T).to_item(),
    ),
    Write(
        keys.secagg_share_item_key,
        (CLIENT,),
        item=SecAggShareItem(RUN, 1, 0, CLIENT, OTHER_CLIENT, b"s" * 96, T).to_item(),
    ),
    Write(
        keys.secagg_reveal_item_key,
        (CLIENT,),
        item=SecAggRevealItem(RUN, 1, 0, CLIENT, T, {OTHER_CLIENT: ("seed", b"r" * 34)}).to_item(),
    ),
    Write(
        keys.inbox_item_key,
        ("aggregation",),
        item=SecAggInboxItem(RUN, 1, 0, CLIENT, OTHER_CLIENT, b"s" * 96).to_item(),
    ),
    Write(
        keys.secagg_survivors_key,
        ("aggregation",),
        item={**keys.secagg_survivors_key(RUN, 1, 0), "kind": "secagg-survivors", "survivors": [CLIENT]},
        updated=True,  # written once: an UpdateItem on condition that it does not exist
    ),
    Write(
        keys.secagg_phase_key,
        ("aggregation",),
        item={**keys.secagg_phase_key(RUN, 1, 0, "share"), "kind": "secagg-phase", "status": "open"},
        updated=True,  # opened with a conditional UpdateItem, as the round record is
    ),
    Write(keys.secagg_roster_key, ("aggregation",), object_key=keys.secagg_roster_key(RUN, 1, 0)),
]


def test_every_key_the_core_builds_has_its_writers():
    """A new key builder in `fedstep.core.keys` needs a row above (and a grant for its writer)."""
    builders = {
        function
        for name, function in inspect.getmembers(keys, inspect.isfunction)
        if name.endswith("_key") and "output" not in name and not name.startswith("parse_")
    }
    assert builders == {w.builder for w in WRITES}, builders ^ {w.builder for w in WRITES}


def write(cloud, principal: str, w: Write) -> str:
    """Write `w` as `principal`: "written", "denied", or the unexpected error code."""
    try:
        if w.object_key is not None:
            cloud.client("s3", principal).put_object(Bucket=cloud.outputs.bucket, Key=w.object_key, Body=b"{}")
        elif w.updated:
            fields = {k: v for k, v in w.item.items() if k not in (keys.PK, keys.SK)}
            cloud.client("dynamodb", principal).update_item(
                TableName=cloud.outputs.table,
                Key=to_attributes({k: w.item[k] for k in (keys.PK, keys.SK)}),
                UpdateExpression="SET " + ", ".join(f"#a{i} = :v{i}" for i in range(len(fields))),
                ExpressionAttributeNames={f"#a{i}": name for i, name in enumerate(fields)},
                ExpressionAttributeValues=to_attributes({f":v{i}": v for i, v in enumerate(fields.values())}),
            )
        else:
            cloud.client("dynamodb", principal).put_item(TableName=cloud.outputs.table, Item=to_attributes(w.item))
    except ClientError as exc:
        code = error_code(exc)
        return "denied" if code in DENIED else code
    return "written"


def _name(w: Write) -> str:
    return w.object_key or f"{w.item[keys.PK]} / {w.item[keys.SK]}"


@pytest.mark.parametrize("w", WRITES, ids=_name)
def test_each_key_is_written_by_its_writers_and_refused_to_every_other_principal(local_cloud, w):
    outcomes = {principal: write(local_cloud, principal, w) for principal in PRINCIPALS}
    expected = {principal: "written" if principal in w.writers else "denied" for principal in PRINCIPALS}
    assert outcomes == expected


def test_a_client_reads_its_own_inbox_and_the_roster_and_no_other_inbox(local_cloud):
    """A secure round's relay (issue 25): the server puts each sealed share in its recipient's inbox;
    the recipient reads it, no other client can, and every selected client reads the roster."""
    table, bucket = local_cloud.outputs.table, local_cloud.outputs.bucket
    share = {**keys.inbox_item_key(RUN, 1, 0, CLIENT, OTHER_CLIENT), "kind": "secagg-inbox", "sealed": "AA=="}
    local_cloud.client("dynamodb", "aggregation").put_item(TableName=table, Item=to_attributes(share))
    roster = keys.secagg_roster_key(RUN, 1, 0)
    local_cloud.client("s3", "aggregation").put_object(Bucket=bucket, Key=roster, Body=b"{}")
    mine = {
        "TableName": table,
        "KeyConditionExpression": "pk = :p",
        "ExpressionAttributeValues": {":p": {"S": keys.inbox_pk(CLIENT)}},
    }
    assert local_cloud.client("dynamodb", CLIENT).query(**mine)["Count"] == 1
    key = to_attributes({k: share[k] for k in (keys.PK, keys.SK)})
    assert local_cloud.client("dynamodb", CLIENT).get_item(TableName=table, Key=key)["Item"]["sealed"] == {"S": "AA=="}
    for attempt in (
        lambda: local_cloud.client("dynamodb", OTHER_CLIENT).query(**mine),
        lambda: local_cloud.client("dynamodb", OTHER_CLIENT).get_item(TableName=table, Key=key),
    ):
        with pytest.raises(ClientError) as refused:
            attempt()
        assert error_code(refused.value) in DENIED
    for reader in (CLIENT, OTHER_CLIENT):
        assert local_cloud.client("s3", reader).get_object(Bucket=bucket, Key=roster)["Body"].read() == b"{}"


def test_the_relay_batch_writes_inboxes_and_only_the_aggregation_function_may(local_cloud):
    """The aggregation function relays a secure round's shares 25 to a request (BatchWriteItem), into
    inboxes only; no other principal may batch-write an inbox, and the function may not batch-write
    a client's own partition."""
    table = local_cloud.outputs.table
    items = [
        SecAggInboxItem(RUN, 1, 0, c, s, b"s" * 96).to_item()
        for c, s in ((CLIENT, OTHER_CLIENT), (OTHER_CLIENT, CLIENT))
    ]

    def batch(principal: str, rows: list[dict[str, Any]]) -> str:
        request = {table: [{"PutRequest": {"Item": to_attributes(i)}} for i in rows]}
        try:
            local_cloud.client("dynamodb", principal).batch_write_item(RequestItems=request)
        except ClientError as exc:
            return "denied" if error_code(exc) in DENIED else error_code(exc)
        return "written"

    assert {p: batch(p, items) for p in PRINCIPALS} == {
        p: "written" if p == "aggregation" else "denied" for p in PRINCIPALS
    }
    own = SecAggKeysItem(RUN, 1, 0, CLIENT, b"k" * 32, b"m" * 32, b"c" * 32, T).to_item()
    assert batch("aggregation", [own]) == "denied"
