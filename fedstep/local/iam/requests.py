"""What one AWS request asks of IAM: its actions, each on a resource ARN with its condition keys.

moto's IAM enforcement authorizes most requests on resource `*` with no condition keys, so a role
granted a table, a topic or a state machine is refused, and a condition cannot be checked. This
module says what IAM is asked instead, for the calls fedstep makes (and the obvious neighbours):

- DynamoDB: the table (or index) ARN; `dynamodb:LeadingKeys` (the partition keys the request
  touches), `dynamodb:Attributes` (the top-level attributes it writes, or reads when it names them),
  `dynamodb:ReturnValues` and `dynamodb:Select` when given; each table of a batch separately, and
  each item of a transaction as its own action (`dynamodb:ConditionCheckItem` for a condition check).
- S3: the IAM action, not moto's operation name (`ListObjectsV2` is `s3:ListBucket`, a HEAD of a
  version is `s3:GetObjectVersion`), the copy source of a copy, and `kms:GenerateDataKey` or
  `kms:Decrypt` on the bucket's key when objects are encrypted with KMS (with `kms:ViaService`).
- SNS and SQS: the topic or queue, and the KMS actions an encrypted topic or queue needs.
- Step Functions: the state machine or execution; a task token's state machine.
- Lambda, CloudFormation, KMS: the function, the stack, the key.

Anything else is asked on the resource moto computed. `Lookups` answers what the request does not
say (a table's partition key, a token's state machine, a bucket's key); the local cloud implements
it on moto's backends (`fedstep.local.gaps.iam_enforcement`).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import unquote


@dataclass(frozen=True)
class Access:
    """One action IAM must allow: on `resource`, with these condition keys."""

    action: str
    resource: str
    context: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Call:
    """One request as the server received it. `service` is the credential scope's service name
    (`dynamodb`, `s3`, `states`, `monitoring`), `operation` the API operation (moto's name for S3),
    `params` the request's parameters (a JSON body, or the query and form fields, each one value),
    `moto_resource` the resource moto would authorize."""

    service: str
    operation: str
    region: str
    account: str
    params: dict[str, Any] = field(default_factory=dict)
    method: str = "GET"
    path: str = "/"
    query: dict[str, str] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    moto_resource: str = "*"


class Lookups(Protocol):
    """What a request does not say, answered from the cloud's state."""

    def partition_key(self, table: str) -> str:
        """The name of the table's partition key attribute."""
        ...

    def token_state_machine(self, token: str) -> str | None:
        """The ARN of the state machine whose execution waits on this task token; None if none does."""
        ...

    def stack_arn(self, name_or_arn: str) -> str:
        """A stack's ARN (with its id) from its name or ARN."""
        ...

    def bucket_key(self, bucket: str) -> str | None:
        """The KMS key ARN the bucket encrypts new objects with; None if not KMS."""
        ...

    def topic_key(self, topic_arn: str) -> str | None:
        """The KMS key ARN of an encrypted topic; None if not encrypted."""
        ...

    def queue_key(self, queue_arn: str) -> str | None:
        """The KMS key ARN of an encrypted queue; None if not encrypted."""
        ...

    def key_arn(self, key_id: str) -> str:
        """A KMS key's ARN from its id, alias or ARN."""
        ...


IAM_PREFIX = {"monitoring": "cloudwatch", "email": "ses", "execute-api": "apigateway"}
"""IAM action prefixes that differ from the credential scope's service name."""


def accesses(call: Call, lookups: Lookups) -> list[Access]:
    """The actions IAM must allow for `call`, each on its resource with its condition keys."""
    describe = _DESCRIBERS.get(call.service)
    if describe is not None:
        found = describe(call, lookups)
        if found is not None:
            return found
    prefix = IAM_PREFIX.get(call.service, call.service)
    return [Access(f"{prefix}:{call.operation}", call.moto_resource)]


def _arn(call: Call, service: str, resource: str) -> str:
    return f"arn:aws:{service}:{call.region}:{call.account}:{resource}"


def _kms(call: Call, key: str | None, actions: tuple[str, ...], via: str) -> list[Access]:
    """The KMS actions a service calls on the caller's behalf (`kms:ViaService` names it)."""
    if key is None:
        return []
    context = {"kms:ViaService": f"{via}.{call.region}.amazonaws.com", "kms:CallerAccount": call.account}
    return [Access(f"kms:{action}", key, context) for action in actions]


# -- DynamoDB ------------------------------------------------------------------------------------

_NAME = r"#?[A-Za-z_][A-Za-z0-9_]*"
_PATH_START = re.compile(rf"(?:^|[\s,(])({_NAME})(?=[\s.\[=,)<>]|$)")
_UPDATE_CLAUSE = re.compile(r"\b(SET|REMOVE|ADD|DELETE)\b", re.IGNORECASE)
_FUNCTIONS = {"if_not_exists", "list_append", "attribute_exists", "attribute_not_exists", "begins_with", "size"}


def _resolve(name: str, names: dict[str, str]) -> str:
    return names.get(name, name) if name.startswith("#") else name


def _update_targets(expression: str, names: dict[str, str]) -> set[str]:
    """The top-level attributes an UpdateExpression writes: the left side of each SET assignment and
    every path of REMOVE, ADD and DELETE."""
    targets: set[str] = set()
    parts = _UPDATE_CLAUSE.split(expression)
    for clause, body in zip(parts[1::2], parts[2::2], strict=True):
        items = [i.strip() for i in re.split(r",(?![^()]*\))", body) if i.strip()]
        for item in items:
            path = item.split("=", 1)[0] if clause.upper() == "SET" else item.split()[0]
            head = re.split(r"[.\[\s]", path.strip(), maxsplit=1)[0]
            if head and head not in _FUNCTIONS:
                targets.add(_resolve(head, names))
    return targets


def _projection(params: dict[str, Any], names: dict[str, str]) -> list[str] | None:
    if params.get("ProjectionExpression"):
        heads = (re.split(r"[.\[]", p.strip(), maxsplit=1)[0] for p in params["ProjectionExpression"].split(","))
        return sorted({_resolve(h, names) for h in heads if h})
    if params.get("AttributesToGet"):
        return sorted(params["AttributesToGet"])
    return None


def _scalar(value: dict[str, Any]) -> str:
    """A DynamoDB key attribute's value as text (`{"S": "x"}`, `{"N": "1"}`, `{"B": ...}`)."""
    return str(next(iter(value.values()))) if isinstance(value, dict) and value else ""


def _key_condition_partition(params: dict[str, Any], hash_key: str) -> list[str]:
    """The partition key value a Query names in its KeyConditionExpression (or legacy KeyConditions)."""
    names = params.get("ExpressionAttributeNames") or {}
    values = params.get("ExpressionAttributeValues") or {}
    expression = params.get("KeyConditionExpression") or ""
    for left, right in re.findall(rf"({_NAME})\s*=\s*(:[A-Za-z0-9_]+)", expression):
        if _resolve(left, names) == hash_key and right in values:
            return [_scalar(values[right])]
    legacy = (params.get("KeyConditions") or {}).get(hash_key)
    if legacy and legacy.get("AttributeValueList"):
        return [_scalar(legacy["AttributeValueList"][0])]
    return []


def _dynamodb_context(params: dict[str, Any], leading: list[str], attributes: list[str] | None) -> dict[str, Any]:
    context: dict[str, Any] = {}
    if leading:
        context["dynamodb:LeadingKeys"] = leading
    if attributes is not None:
        context["dynamodb:Attributes"] = attributes
    for name in ("ReturnValues", "Select", "ReturnConsumedCapacity"):
        if params.get(name):
            context[f"dynamodb:{name}"] = params[name]
    return context


def _dynamodb(call: Call, lookups: Lookups) -> list[Access] | None:
    params, op = call.params, call.operation

    def table_arn(name: str, index: str | None = None) -> str:
        return _arn(call, "dynamodb", f"table/{name}" + (f"/index/{index}" if index else ""))

    if op in ("BatchGetItem", "BatchWriteItem"):
        found = []
        for table, request in (params.get("RequestItems") or {}).items():
            hash_key = lookups.partition_key(table)
            if op == "BatchGetItem":
                leading = [_scalar(k.get(hash_key, {})) for k in request.get("Keys", [])]
                attributes = _projection(request, request.get("ExpressionAttributeNames") or {})
            else:
                rows = [
                    r.get("PutRequest", {}).get("Item") or r.get("DeleteRequest", {}).get("Key") or {} for r in request
                ]
                leading = [_scalar(r.get(hash_key, {})) for r in rows]
                puts = [r["PutRequest"]["Item"] for r in request if "PutRequest" in r]
                attributes = sorted({a for item in puts for a in item}) if puts else None
            context = _dynamodb_context(params, sorted(set(leading)), attributes)
            found.append(Access(f"dynamodb:{op}", table_arn(table), context))
        return found
    if op == "TransactWriteItems":  # each item is asked as its own action, with its own condition keys
        found = []
        for entry in params.get("TransactItems") or []:
            for kind, request in entry.items():
                if kind in _TRANSACT_ACTIONS and isinstance(request, dict) and request.get("TableName"):
                    found += _dynamodb_item(call, _TRANSACT_ACTIONS[kind], request, lookups)
        return found or None
    if not params.get("TableName"):
        return None
    return _dynamodb_item(call, op, params, lookups)


_TRANSACT_ACTIONS = {
    "Put": "PutItem",
    "Update": "UpdateItem",
    "Delete": "DeleteItem",
    "ConditionCheck": "ConditionCheckItem",
}
"""The action IAM is asked for each kind of item of a TransactWriteItems (there is no action of its own)."""


def _dynamodb_item(call: Call, op: str, params: dict[str, Any], lookups: Lookups) -> list[Access]:
    """The access a request on one table asks (a single-item operation, a query or scan)."""
    names = params.get("ExpressionAttributeNames") or {}
    table, index = str(params["TableName"]), params.get("IndexName")
    resource = _arn(call, "dynamodb", f"table/{table}" + (f"/index/{index}" if index else ""))
    hash_key = lookups.partition_key(table) if op in _KEYED or op == "Query" else ""
    leading: list[str] = []
    attributes: list[str] | None = None
    if op == "PutItem":
        item = params.get("Item") or {}
        leading, attributes = [_scalar(item.get(hash_key, {}))], sorted(item)
    elif op in ("GetItem", "DeleteItem", "UpdateItem", "ConditionCheckItem"):
        key = params.get("Key") or {}
        leading = [_scalar(key.get(hash_key, {}))]
        if op == "UpdateItem":
            written = _update_targets(params.get("UpdateExpression") or "", names)
            written |= set(params.get("AttributeUpdates") or {})
            attributes = sorted(written | set(key))
        elif op == "GetItem":
            attributes = _projection(params, names)
    elif op == "Query":
        leading = _key_condition_partition(params, hash_key)
        attributes = _projection(params, names)
    return [Access(f"dynamodb:{op}", resource, _dynamodb_context(params, leading, attributes))]


_KEYED = {"PutItem", "GetItem", "DeleteItem", "UpdateItem", "ConditionCheckItem"}


# -- S3 ------------------------------------------------------------------------------------------

_S3_ACTIONS = {
    "ListObjects": "ListBucket",
    "ListObjectsV2": "ListBucket",
    "HeadBucket": "ListBucket",
    "ListObjectVersions": "ListBucketVersions",
    "ListMultipartUploads": "ListBucketMultipartUploads",
    "GetBucketCORS": "GetBucketCORS",
}
_S3_WRITES = {"PutObject"}
_S3_READS = {"GetObject", "GetObjectVersion"}


def _s3(call: Call, lookups: Lookups) -> list[Access] | None:
    op = _S3_ACTIONS.get(call.operation, call.operation)
    if call.method == "HEAD" and op == "GetObject" and "versionId" in call.query:
        op = "GetObjectVersion"
    found = [Access(f"s3:{op}", call.moto_resource)]
    source = call.headers.get("x-amz-copy-source") or call.headers.get("X-Amz-Copy-Source")
    if op == "PutObject" and source:
        source_path, _, version = unquote(source).lstrip("/").partition("?versionId=")
        found.append(Access("s3:GetObjectVersion" if version else "s3:GetObject", f"arn:aws:s3:::{source_path}"))
        found += _kms(call, lookups.bucket_key(source_path.split("/", 1)[0]), ("Decrypt",), "s3")
    bucket = call.moto_resource.removeprefix("arn:aws:s3:::").split("/", 1)[0]
    if "/" in call.moto_resource.removeprefix("arn:aws:s3:::") and bucket:
        multipart = op == "PutObject" and ("uploads" in call.query or "uploadId" in call.query)
        if op in _S3_WRITES:
            actions = ("GenerateDataKey", "Decrypt") if multipart else ("GenerateDataKey",)
            found += _kms(call, lookups.bucket_key(bucket), actions, "s3")
        elif op in _S3_READS and call.method == "GET":
            found += _kms(call, lookups.bucket_key(bucket), ("Decrypt",), "s3")
    return found


# -- SNS, SQS ------------------------------------------------------------------------------------


def _sns(call: Call, lookups: Lookups) -> list[Access] | None:
    params = call.params
    topic = params.get("TopicArn") or params.get("TargetArn")
    if not topic and params.get("SubscriptionArn"):
        topic = str(params["SubscriptionArn"]).rsplit(":", 1)[0]
    if not topic:
        return None
    found = [Access(f"sns:{call.operation}", topic)]
    if call.operation == "Publish":
        found += _kms(call, lookups.topic_key(topic), ("GenerateDataKey", "Decrypt"), "sns")
    return found


_SQS_KMS = {
    "SendMessage": ("GenerateDataKey", "Decrypt"),
    "SendMessageBatch": ("GenerateDataKey", "Decrypt"),
    "ReceiveMessage": ("Decrypt",),
}


def _sqs(call: Call, lookups: Lookups) -> list[Access] | None:
    found = [Access(f"sqs:{call.operation}", call.moto_resource)]
    if call.operation in _SQS_KMS and call.moto_resource.startswith("arn:"):
        found += _kms(call, lookups.queue_key(call.moto_resource), _SQS_KMS[call.operation], "sqs")
    return found


# -- Step Functions, Lambda, CloudFormation, KMS -----------------------------------------------------

_BY_TASK_TOKEN = {"SendTaskSuccess", "SendTaskFailure", "SendTaskHeartbeat"}


def _states(call: Call, lookups: Lookups) -> list[Access] | None:
    params = call.params
    if call.operation in _BY_TASK_TOKEN:
        machine = lookups.token_state_machine(str(params.get("taskToken", "")))
        return [Access(f"states:{call.operation}", machine)] if machine else []
    resource = params.get("stateMachineArn") or params.get("executionArn") or params.get("mapRunArn")
    return [Access(f"states:{call.operation}", str(resource or "*"))]


_FUNCTION_PATH = re.compile(r"/20\d\d-\d\d-\d\d/functions/([^/]+)")
_LAMBDA_OPERATIONS = {"Invoke": "InvokeFunction", "InvokeAsync": "InvokeAsync"}


def _lambda(call: Call, lookups: Lookups) -> list[Access] | None:
    match = _FUNCTION_PATH.search(call.path)
    if match is None:
        return None
    name = unquote(match.group(1))
    arn = name if name.startswith("arn:") else _arn(call, "lambda", f"function:{name}")
    qualifier = call.query.get("Qualifier")
    if qualifier and arn.count(":") == 6:
        arn = f"{arn}:{qualifier}"
    return [Access(f"lambda:{_LAMBDA_OPERATIONS.get(call.operation, call.operation)}", arn)]


def _cloudformation(call: Call, lookups: Lookups) -> list[Access] | None:
    stack = call.params.get("StackName")
    resource = lookups.stack_arn(str(stack)) if stack else "*"
    return [Access(f"cloudformation:{call.operation}", resource)]


def _kms_call(call: Call, lookups: Lookups) -> list[Access] | None:
    key = call.params.get("KeyId")
    return [Access(f"kms:{call.operation}", lookups.key_arn(str(key)) if key else "*")]


_DESCRIBERS = {
    "dynamodb": _dynamodb,
    "s3": _s3,
    "sns": _sns,
    "sqs": _sqs,
    "states": _states,
    "lambda": _lambda,
    "cloudformation": _cloudformation,
    "kms": _kms_call,
}


def json_params(body: Any) -> dict[str, Any]:
    """A JSON request body's parameters ({} for none); a body already parsed is taken as it is."""
    if isinstance(body, dict):
        return body
    if not body:
        return {}
    try:
        parsed = json.loads(body if isinstance(body, str) else bytes(body).decode())
    except (ValueError, UnicodeDecodeError):
        return {}
    return parsed if isinstance(parsed, dict) else {}


__all__ = ["IAM_PREFIX", "Access", "Call", "Lookups", "accesses", "json_params"]
