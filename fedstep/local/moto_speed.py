"""Work moto's server repeats on every request, done once per process (no change in what it answers).

moto's request dispatcher (`DomainDispatcherApplication.get_backend_for_host`) lists moto's package
folder, with a `stat` per entry, on every request to find the service a Host header names: about
a quarter of the server thread's time in a `fedstep local` round. The folder does not change while
the process runs, so its listing is kept.

One process also serves every service, in threads: the server's (one per connection), the Lambda
invocations', the state machine's. A thread that gets its answer back waits for the interpreter's
lock for up to the switch interval (5 ms by default) while another thread computes; with some 60
requests a round that is a tenth of a second of waiting. The local cloud's process switches every
millisecond instead (`SWITCH_INTERVAL_S`; a digits round: 0.84 -> 0.59 s, the same numbers).
"""

from __future__ import annotations

import base64
import functools
import json
import sys
from typing import Any

SWITCH_INTERVAL_S = 0.001
"""How often (s) the local cloud's process hands the interpreter lock between its threads."""


def apply() -> None:
    """Keep moto's list of its service modules, switch threads every `SWITCH_INTERVAL_S` and answer
    DynamoDB's item operations with `plain_json_result` (idempotent)."""
    from moto import backends

    sys.setswitchinterval(SWITCH_INTERVAL_S)
    _answer_items_plainly()
    if getattr(backends.list_of_moto_modules, "kept_by_fedstep", False):
        return
    kept = functools.cache(lambda listing=backends.list_of_moto_modules: tuple(listing()))
    kept.kept_by_fedstep = True  # type: ignore[attr-defined]
    backends.list_of_moto_modules = kept


ITEM_OPERATIONS = frozenset(
    {
        "GetItem",
        "PutItem",
        "UpdateItem",
        "DeleteItem",
        "Query",
        "Scan",
        "BatchGetItem",
        "BatchWriteItem",
        "TransactGetItems",
        "TransactWriteItems",
    }
)
"""The DynamoDB operations whose results are answered by `plain_json_result` instead of moto's serializer."""


class NotPlain(Exception):
    """A result holds a value JSON cannot carry as it is (a timestamp): moto's serializer answers it."""


def _blob(value: object) -> str:
    if isinstance(value, (bytes, bytearray)):
        return base64.b64encode(value).decode("ascii")
    raise NotPlain(type(value).__name__)


def _without_none(value: Any) -> Any:
    """`value` without the members that are None (the serializer leaves them out of a structure)."""
    if isinstance(value, dict):
        return {k: _without_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_none(v) for v in value]
    return value


def plain_json_result(result: Any) -> str:
    """The JSON body of a DynamoDB item operation's result, as moto's response serializer writes it but
    without walking the service model for every attribute (binary values base64, members that are None
    left out). Raises `NotPlain` for what only the serializer can write."""
    return json.dumps(_without_none(result), default=_blob)


def _answer_items_plainly() -> None:
    from moto.core.responses import ActionResult
    from moto.dynamodb.responses import DynamoResult

    if "execute_result" in vars(DynamoResult):
        return
    serialize = ActionResult.execute_result

    def execute_result(self: Any, context: Any) -> Any:
        if context.operation_model.name in ITEM_OPERATIONS:
            try:
                body = plain_json_result(self.result)
            except NotPlain:
                return serialize(self, context)
            return 200, {"Content-Type": "application/x-amz-json-1.0"}, body
        return serialize(self, context)

    DynamoResult.execute_result = execute_result  # type: ignore[method-assign]
