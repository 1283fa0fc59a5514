"""boto3 sessions and the AWS adapters of the core's ports (S3 model store, DynamoDB table, Step Functions).

Every client is built by `client()`, which applies the endpoint (`AWS_ENDPOINT_URL` or an explicit
one, e.g. the embedded local cloud), standard retries with backoff, and path-style S3 addressing
for custom endpoints.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import boto3
import botocore.session
from botocore.config import Config
from botocore.credentials import RefreshableCredentials
from botocore.exceptions import ClientError

from fedstep import keys
from fedstep.aws_errors import error_code
from fedstep.ddb import from_attributes, to_attributes
from fedstep.schemas import Heartbeat, RunRecord

log = logging.getLogger(__name__)

RETRIES = {"max_attempts": 8, "mode": "standard"}


FAIL_FAST = {"max_attempts": 2, "mode": "standard"}


def client(
    service: str, session: boto3.Session | None = None, endpoint_url: str | None = None, fail_fast: bool = False
) -> Any:
    """A boto3 client with retries; `endpoint_url` overrides AWS_ENDPOINT_URL (None: the AWS default).

    `fail_fast`: 2 attempts and a 5 s connect timeout instead of 8 attempts and 10 s, for checks that
    should report an unreachable endpoint in seconds rather than minutes.
    """
    config = Config(
        retries=FAIL_FAST if fail_fast else RETRIES,
        s3={"addressing_style": "path"},
        connect_timeout=5 if fail_fast else 10,
        read_timeout=70,
    )
    return (session or boto3.Session()).client(service, endpoint_url=endpoint_url, config=config)


def assumed_role_session(
    role_arn: str,
    region: str | None,
    endpoint_url: str | None = None,
    session_name: str = "fedstep",
    fail_fast: bool = False,
) -> boto3.Session:
    """A session whose credentials come from assuming `role_arn` (also in another account) with the
    standard credential chain, refreshed automatically before they expire (1 hour)."""
    source = boto3.Session(region_name=region)
    sts = client("sts", source, endpoint_url, fail_fast=fail_fast)

    def fetch() -> dict[str, str]:
        creds = sts.assume_role(RoleArn=role_arn, RoleSessionName=session_name)["Credentials"]
        return {
            "access_key": creds["AccessKeyId"],
            "secret_key": creds["SecretAccessKey"],
            "token": creds["SessionToken"],
            "expiry_time": creds["Expiration"].isoformat(),
        }

    core = botocore.session.get_session()
    core._credentials = RefreshableCredentials.create_from_metadata(
        metadata=fetch(), refresh_using=fetch, method="sts-assume-role"
    )
    return boto3.Session(botocore_session=core, region_name=source.region_name)


class S3ModelStore:
    """Model files in the registry bucket."""

    def __init__(self, bucket: str, s3: Any) -> None:
        self.bucket, self.s3 = bucket, s3

    def get(self, key: str) -> bytes:
        return self.s3.get_object(Bucket=self.bucket, Key=key)["Body"].read()

    def put(self, key: str, data: bytes) -> None:
        self.s3.put_object(Bucket=self.bucket, Key=key, Body=data)


class DynamoRoundTable:
    """The single table: run records, update items, round summaries (see `fedstep.keys`)."""

    def __init__(self, table_name: str, dynamodb: Any) -> None:
        self.name, self.ddb = table_name, dynamodb

    def get_item(self, key: dict[str, str]) -> dict[str, Any] | None:
        resp = self.ddb.get_item(TableName=self.name, Key=to_attributes(key), ConsistentRead=True)
        return from_attributes(resp["Item"]) if "Item" in resp else None

    def _query_prefix(self, run_id: str, prefix: str) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        kwargs: dict[str, Any] = {
            "TableName": self.name,
            "KeyConditionExpression": "pk = :pk AND begins_with(sk, :prefix)",
            "ExpressionAttributeValues": to_attributes({":pk": run_id, ":prefix": prefix}),
            "ConsistentRead": True,
        }
        while True:
            resp = self.ddb.query(**kwargs)
            items.extend(from_attributes(i) for i in resp.get("Items", []))
            if "LastEvaluatedKey" not in resp:
                return items
            kwargs["ExclusiveStartKey"] = resp["LastEvaluatedKey"]

    def put_once(self, item: dict[str, Any]) -> bool:
        """Write `item` unless its key exists; False if it did."""
        try:
            self.ddb.put_item(
                TableName=self.name,
                Item=to_attributes(item),
                ConditionExpression="attribute_not_exists(pk)",
            )
            return True
        except ClientError as exc:
            if error_code(exc) == "ConditionalCheckFailedException":
                return False
            raise

    def get_run(self, run_id: str) -> RunRecord | None:
        item = self.get_item(keys.run_item_key(run_id))
        return RunRecord.parse(item) if item else None

    def list_updates(self, run_id: str, round_number: int) -> list[dict[str, Any]]:
        return self._query_prefix(run_id, keys.update_sk_prefix(round_number))

    def get_round(self, run_id: str, round_number: int) -> dict[str, Any] | None:
        return self.get_item(keys.round_item_key(run_id, round_number))

    def put_round_once(self, item: dict[str, Any]) -> bool:
        return self.put_once(item)

    def mark_reported(self, run_id: str, round_number: int) -> None:
        self.ddb.update_item(
            TableName=self.name,
            Key=to_attributes(keys.round_item_key(run_id, round_number)),
            UpdateExpression="SET #s = :s REMOVE task_token",
            ExpressionAttributeNames={"#s": "status"},
            ExpressionAttributeValues=to_attributes({":s": "reported"}),
        )

    def list_rounds(self, run_id: str) -> list[dict[str, Any]]:
        return self._query_prefix(run_id, keys.ROUND_PREFIX)

    def put_heartbeat(self, beat: Heartbeat) -> None:
        """Overwrite the client's heartbeat item (the client's role may write only its own)."""
        self.ddb.put_item(TableName=self.name, Item=to_attributes(beat.to_item()))

    def get_heartbeats(self, client_ids: list[str]) -> dict[str, dict[str, Any]]:
        """The heartbeat items of these clients, by client id (absent: never seen)."""
        found: dict[str, dict[str, Any]] = {}
        for start in range(0, len(client_ids), 100):  # BatchGetItem takes at most 100 keys
            pending: dict[str, Any] = {
                self.name: {
                    "Keys": [to_attributes(keys.heartbeat_item_key(c)) for c in client_ids[start : start + 100]],
                    "ConsistentRead": True,
                }
            }
            while pending:
                resp = self.ddb.batch_get_item(RequestItems=pending)
                for raw in resp.get("Responses", {}).get(self.name, []):
                    item = from_attributes(raw)
                    found[str(item[keys.PK]).removeprefix(keys.CLIENT_PK_PREFIX)] = item
                pending = resp.get("UnprocessedKeys") or {}
        return found


class StepFunctionsReporter:
    """Completes the round's waitForTaskToken task."""

    _ALREADY_DONE = {"TaskTimedOut", "InvalidToken", "TaskDoesNotExist"}

    def __init__(self, sfn: Any) -> None:
        self.sfn = sfn

    def succeed(self, task_token: str, output: dict[str, Any]) -> None:
        try:
            self.sfn.send_task_success(taskToken=task_token, output=json.dumps(output))
        except ClientError as exc:
            if error_code(exc) not in self._ALREADY_DONE:
                raise
            log.info("round already reported or its task timed out (%s)", error_code(exc))

    def fail(self, task_token: str, error: str, cause: str) -> None:
        try:
            self.sfn.send_task_failure(taskToken=task_token, error=error, cause=cause[:32000])
        except ClientError as exc:
            if error_code(exc) not in self._ALREADY_DONE:
                raise
            log.info("round already reported or its task timed out (%s)", error_code(exc))
