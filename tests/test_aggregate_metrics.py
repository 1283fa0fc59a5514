"""The aggregation function's CloudWatch metrics: one set per aggregated round (Powertools, embedded metric format)."""

from __future__ import annotations

import json

import pytest

from fedstep.core.schemas import ObjectRef, Rejection, RoundSummary
from lambdas import aggregate

SUMMARY = RoundSummary(
    run_id="run-1",
    round=3,
    selected=["a", "b", "c"],
    participants=["a", "b"],
    num_examples=300,
    rejected=[Rejection("c", "non-finite values")],
    metrics={"test_loss": 0.5, "test_accuracy": 0.8, "test_accuracy_before": 0.7, "train_loss": 0.4},
    global_model=ObjectRef("runs/run-1/rounds/00003/global.safetensors", "0" * 64, 10),
    duration_s=12.5,
    aggregation_s=0.25,
    completed_at="2026-11-21T12:00:00Z",
    bytes_aggregated=2048,
)


def test_an_aggregated_round_emits_its_metrics_with_units_and_dimensions(capsys):
    aggregate.record_round_metrics(SUMMARY)
    aggregate.metrics.flush_metrics()
    [emf] = [json.loads(line) for line in capsys.readouterr().out.splitlines() if '"_aws"' in line]
    [directive] = emf["_aws"]["CloudWatchMetrics"]
    assert directive["Namespace"] == "fedstep"
    assert [sorted(d) for d in directive["Dimensions"]] == [["project", "service"]]
    units = {m["Name"]: m["Unit"] for m in directive["Metrics"]}
    assert units == {
        "Participants": "Count",
        "RejectedUpdates": "Count",
        "ClippedUpdates": "Count",
        "RoundDuration": "Seconds",
        "AggregationDuration": "Seconds",
        "BytesAggregated": "Bytes",
        "WeightedLoss": "None",
        "WeightedAccuracy": "None",
        "WeightedAccuracyBefore": "None",  # no test_loss_before was reported, so no WeightedLossBefore
    }
    values = {name: emf[name] for name in units}  # Powertools writes each value as a list
    assert values["Participants"] == [2] and values["RejectedUpdates"] == [1] and values["BytesAggregated"] == [2048]
    assert values["WeightedLoss"] == [0.5] and values["WeightedAccuracy"] == [0.8] and values["RoundDuration"] == [12.5]
    assert emf["service"] == "fedstep-aggregate" and emf["project"] == "fedstep"


def test_an_empty_stream_batch_is_answered_with_no_failure_and_an_unknown_event_is_named():
    """Powertools' batch processor raises UnexpectedBatchTypeError (a traceback) for an event without
    records; the handler answers an empty batch itself and refuses anything else by name."""
    assert aggregate.handler({"Records": []}, None) == {"batchItemFailures": []}
    for event, shown in (({}, "mode None, keys []"), ({"mode": "train", "x": 1}, "mode 'train', keys ['mode', 'x']")):
        with pytest.raises(aggregate.UnknownEvent) as refused:
            aggregate.handler(event, None)
        assert shown in str(refused.value) and "deadline, publish, card, slice, assemble" in str(refused.value)
