"""The aggregation function's stream handler (`lambdas.aggregate.stream_handler`): a batch of update
records checks each round once."""

from __future__ import annotations

from types import SimpleNamespace

from fedstep.aws.ddb import to_attributes
from fedstep.core import keys


def _record(run_id: str, round_number: int, client: str, sequence: int) -> dict:
    item = {**keys.update_item_key(run_id, round_number, client), "kind": "update"}
    key = {k: item[k] for k in (keys.PK, keys.SK)}
    return {
        "eventID": str(sequence),
        "eventName": "INSERT",
        "eventSource": "aws:dynamodb",
        "dynamodb": {"Keys": to_attributes(key), "NewImage": to_attributes(item), "SequenceNumber": str(sequence)},
    }


def test_a_stream_batch_checks_each_of_its_rounds_once(monkeypatch):
    import lambdas.aggregate as aggregate

    checked: list[tuple[str, int]] = []
    monkeypatch.setattr(aggregate, "services", lambda: (None, None, None, None))
    monkeypatch.setattr(aggregate, "settings", lambda context=None: None)
    monkeypatch.setattr(aggregate, "on_client_item", lambda run, r, **_: checked.append((run, r)))
    records = [
        _record("run-1", 4, "client-1", 1),
        _record("run-1", 4, "client-2", 2),
        _record("run-2", 1, "client-1", 3),
        _record("run-1", 4, "client-3", 4),
    ]
    context = SimpleNamespace(function_name="f", memory_limit_in_mb=128, invoked_function_arn="arn", aws_request_id="r")
    assert aggregate.stream_handler({"Records": records}, context) == {"batchItemFailures": []}
    assert checked == [("run-1", 4), ("run-2", 1)]
    aggregate.stream_handler({"Records": records[:1]}, context)  # the next batch checks again
    assert checked == [("run-1", 4), ("run-2", 1), ("run-1", 4)]


def test_a_secure_rounds_keys_share_and_reveal_items_name_their_round_and_an_inbox_item_none():
    from aws_lambda_powertools.utilities.data_classes.dynamo_db_stream_event import DynamoDBRecord

    import lambdas.aggregate as aggregate

    def record(key: dict[str, str], kind: str) -> DynamoDBRecord:
        item = {**key, "kind": kind}
        return DynamoDBRecord({"eventName": "INSERT", "dynamodb": {"NewImage": to_attributes(item)}})

    for key in (
        keys.secagg_keys_item_key("run-1", 4, 2, "client-1"),
        keys.secagg_share_item_key("run-1", 4, 2, "client-1", "client-2"),
        keys.secagg_reveal_item_key("run-1", 4, 2, "client-1"),
    ):
        assert aggregate.round_of(record(key, "secagg")) == ("run-1", 4)
    assert aggregate.round_of(record(keys.inbox_item_key("run-1", 4, 2, "client-2", "client-1"), "inbox")) is None
