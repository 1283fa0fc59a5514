"""Conversion between plain Python values and DynamoDB attribute values.

DynamoDB has no float type: numbers travel as Decimal. `to_attributes` turns floats into Decimals
(via their shortest repr, so 0.1 stays 0.1); `from_attributes` turns Decimals back into int or float.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from boto3.dynamodb.types import TypeDeserializer, TypeSerializer
from botocore.exceptions import ClientError

from fedstep.aws.errors import error_code
from fedstep.core import keys
from fedstep.core.schemas import RunStop

_serializer = TypeSerializer()
_deserializer = TypeDeserializer()


def _to_decimals(value: Any) -> Any:
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, float):
        return Decimal(repr(float(value)))  # float(): numpy floats repr as np.float64(...)
    if isinstance(value, dict):
        return {k: _to_decimals(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_decimals(v) for v in value]
    return value


def _from_decimals(value: Any) -> Any:
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() and "." not in str(value) else float(value)
    if isinstance(value, dict):
        return {k: _from_decimals(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_from_decimals(v) for v in value]
    return value


def to_attributes(item: dict[str, Any]) -> dict[str, Any]:
    """Plain dict -> DynamoDB attribute-value map (for the low-level client)."""
    return {k: _serializer.serialize(_to_decimals(v)) for k, v in item.items()}


def from_attributes(item: dict[str, Any]) -> dict[str, Any]:
    """DynamoDB attribute-value map (client response or stream NewImage) -> plain dict."""
    return {k: _from_decimals(_deserializer.deserialize(v)) for k, v in item.items()}


def conditional(call: Any, **kwargs: Any) -> dict[str, Any] | None:
    """Run a conditional DynamoDB write: its response, or None if its condition failed."""
    try:
        return call(**kwargs)
    except ClientError as exc:
        if error_code(exc) == "ConditionalCheckFailedException":
            return None
        raise


class Items:
    """Items of one DynamoDB table, through the boto3 client `dynamodb`: the calls the client agent
    and the server share (the agent's own items; the server's table extends it)."""

    def __init__(self, name: str, dynamodb: Any) -> None:
        self.name, self.ddb = name, dynamodb

    def put(self, item: dict[str, Any]) -> None:
        """Write (or replace) `item`."""
        self.ddb.put_item(TableName=self.name, Item=to_attributes(item))

    def put_once(self, item: dict[str, Any]) -> bool:
        """Write `item` unless its key exists; False if it did."""
        return self.put_if(item, "attribute_not_exists(pk)")

    def put_if(self, item: dict[str, Any], condition: str, values: dict[str, Any] | None = None) -> bool:
        """Write (or replace) `item` when `condition` holds for the item at its key (`values`: the
        condition's `:placeholders`); False if it did not."""
        kwargs: dict[str, Any] = {"ConditionExpression": condition}
        if values:
            kwargs["ExpressionAttributeValues"] = to_attributes(values)
        written = conditional(self.ddb.put_item, TableName=self.name, Item=to_attributes(item), **kwargs)
        return written is not None

    def query_prefix(self, pk: str, prefix: str, first: str | None = None, **extra: Any) -> list[dict[str, Any]]:
        """The items of `pk` whose sort key starts with `prefix` (`first`: and is at least `first`, which
        starts with `prefix`), in sort key order (strongly consistent, every page)."""
        items: list[dict[str, Any]] = []
        values = extra.pop("values", {})
        if first is None:
            condition, bounds = "pk = :pk AND begins_with(sk, :prefix)", {":prefix": prefix}
        else:  # the prefix's last key: the prefix followed by the highest character a key may hold
            condition = "pk = :pk AND sk BETWEEN :first AND :last"
            bounds = {":first": first, ":last": prefix + "\uffff"}
        kwargs: dict[str, Any] = {
            "TableName": self.name,
            "KeyConditionExpression": condition,
            "ExpressionAttributeValues": to_attributes({":pk": pk, **bounds, **values}),
            "ConsistentRead": True,
            **extra,
        }
        while True:
            resp = self.ddb.query(**kwargs)
            items.extend(from_attributes(i) for i in resp.get("Items", []))
            if "LastEvaluatedKey" not in resp:
                return items
            kwargs["ExclusiveStartKey"] = resp["LastEvaluatedKey"]

    _query_prefix = query_prefix  # the name the server's table (`fedstep.aws.adapters`) calls it by

    def get_item(self, key: dict[str, str]) -> dict[str, Any] | None:
        """The item at `key` (strongly consistent), None if there is none."""
        resp = self.ddb.get_item(TableName=self.name, Key=to_attributes(key), ConsistentRead=True)
        return from_attributes(resp["Item"]) if "Item" in resp else None

    def get_stop(self, run_id: str) -> RunStop | None:
        """The run's stop marker (`fedstep stop`), None while the run was not stopped."""
        return RunStop.of_item(run_id, self.get_item(keys.stop_item_key(run_id)))
