"""Gap 14: moto's DynamoDB stream delivery ignores the event source mapping's filters; apply them."""

from __future__ import annotations

import base64
import json
from typing import Any

from fedstep.local.gaps.shim import PatchShim


def passes(filter_criteria: dict[str, Any] | None, record: dict[str, Any]) -> bool:
    """Whether a stream record passes an event source mapping's FilterCriteria: any of its patterns
    matches (Lambda's event filtering, EventBridge's pattern syntax); no filters: every record."""
    from moto.events.models import EventPattern

    patterns = (filter_criteria or {}).get("Filters") or []
    if not patterns:
        return True
    plain = json.loads(json.dumps(record, default=str))
    return any(EventPattern.load(p.get("Pattern")).matches_event(plain) for p in patterns)


def binary_as_base64(value: Any) -> Any:
    """A stream record with its binary values (`{"B": ...}`, also inside maps and lists) as base64 text,
    as AWS puts them in a Lambda's event: moto's records hold raw bytes, which its own
    `json.dumps` of the event cannot encode (the write that produced the record then fails)."""
    if isinstance(value, (bytes, bytearray)):
        return base64.b64encode(value).decode("ascii")
    if isinstance(value, dict):
        return {k: binary_as_base64(v) for k, v in value.items()}
    if isinstance(value, list):
        return [binary_as_base64(v) for v in value]
    return value


class _AsDelivered:
    """A moto StreamRecord as AWS delivers it (binary values as base64)."""

    def __init__(self, record: Any) -> None:
        self.record = record

    def to_json(self) -> dict[str, Any]:
        return binary_as_base64(self.record.to_json())


class StreamFilters(PatchShim):
    name = "stream_filters"
    gap = (
        "moto's DynamoDB stream hands every record to every event source mapping of the table and ignores their "
        "FilterCriteria. AWS invokes the function only with the records that match one of the mapping's filter "
        "patterns and drops (consumes) the others. The shim delivers each mapping the records its filters pass "
        "(patterns matched with moto's EventBridge pattern matcher, the syntax Lambda's filters share), and none "
        "when none passes: the aggregation function is never invoked by a heartbeat, an evaluation answer, or a "
        "server record. moto's records also hold binary attributes as raw bytes, which its event cannot "
        "encode; they are delivered as base64 text, as AWS delivers them."
    )

    def replacements(self) -> list[tuple[type, str, Any]]:
        from moto.awslambda.utils import get_backend
        from moto.dynamodb.models.table import StreamRecord, StreamShard

        def add(shard: Any, old: Any, new: Any) -> None:
            kind = shard.table.stream_specification["StreamViewType"]
            event_name = "INSERT" if old is None else ("REMOVE" if new is None else "MODIFY")
            sequence = len(shard.items) + shard.starting_sequence_number
            shard.items.append(StreamRecord(shard.table, kind, event_name, old, new, sequence))
            delivered = True
            for arn, mapping in shard.table.lambda_event_source_mappings.items():
                records = [_AsDelivered(r) for r in shard.items if passes(mapping.filter_criteria, r.to_json())]
                if records:
                    region = arn.split(":")[3]
                    result = get_backend(shard.account_id, region).send_dynamodb_items(
                        arn, records, mapping.event_source_arn
                    )
                    delivered = delivered and bool(result)
            if delivered:  # every mapping took its records (or filtered them out): they are consumed
                shard.items = []

        return [(StreamShard, "add", add)]


SHIM = StreamFilters()
