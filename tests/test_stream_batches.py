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
    monkeypatch.setattr(aggregate, "try_complete_round", lambda run, r, **_: checked.append((run, r)))
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
