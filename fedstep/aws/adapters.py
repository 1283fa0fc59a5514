"""The boto3 adapters of the core's ports: S3 model store, DynamoDB round table, SNS publisher,
Step Functions reporter. Clients come from `fedstep.aws.boto.client`."""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from botocore.exceptions import ClientError

from fedstep.aws.ddb import Items, conditional, from_attributes, to_attributes
from fedstep.aws.errors import error_code
from fedstep.core import keys
from fedstep.core.errors import RunStopped
from fedstep.core.ports import RangeRead
from fedstep.core.round_record import RoundRecord
from fedstep.core.schemas import (
    ROUND_AGGREGATED,
    ROUND_CLAIMED,
    ROUND_OPEN,
    ROUND_REPORTED,
    Heartbeat,
    ObjectRef,
    RunRecord,
    RunStop,
)

log = logging.getLogger(__name__)

TRANSACTION_TRIES = 3
"""How often a round's commit is tried when a concurrent write to its record cancels the transaction."""


class S3ModelStore:
    """Model files in the registry bucket (a versioned bucket: ranged reads pin the version)."""

    def __init__(self, bucket: str, s3: Any) -> None:
        self.bucket, self.s3 = bucket, s3

    def get(self, key: str) -> bytes:
        return self.s3.get_object(Bucket=self.bucket, Key=key)["Body"].read()

    def put(self, key: str, data: bytes) -> None:
        self.s3.put_object(Bucket=self.bucket, Key=key, Body=data)

    def put_once(self, key: str, data: bytes) -> bool:
        try:
            self.s3.put_object(Bucket=self.bucket, Key=key, Body=data, IfNoneMatch="*")
            return True
        except ClientError as exc:
            if error_code(exc) in ("PreconditionFailed", "412", "ConditionalRequestConflict"):
                return False
            raise

    def _get_range(self, key: str, start: int, length: int, version: str | None) -> dict[str, Any]:
        """GetObject of bytes [start, start + length): only a well-formed, non-empty range is ever
        sent, and only a 206 answer for a range starting at `start` is taken. S3 answers a malformed
        range (e.g. `bytes=0--1`, what a length of 0 would give) with the whole object and 200, so
        anything else is refused before its body is read (ValueError)."""
        if start < 0 or length < 1:
            raise ValueError(f"s3://{self.bucket}/{key}: no empty range is requested ({length} bytes at {start})")
        extra = {"VersionId": version} if version else {}
        resp = self.s3.get_object(Bucket=self.bucket, Key=key, Range=f"bytes={start}-{start + length - 1}", **extra)
        status = resp.get("ResponseMetadata", {}).get("HTTPStatusCode")
        answered = str(resp.get("ContentRange", ""))
        if status != 206 or not answered.startswith(f"bytes {start}-"):
            resp["Body"].close()  # never read what was not asked for
            raise ValueError(
                f"s3://{self.bucket}/{key} answered a request for bytes {start}-{start + length - 1} with "
                f"HTTP {status} {answered or '(no Content-Range)'}, not 206 Partial Content for that range: refused"
            )
        return resp

    def read_range(self, key: str, start: int, length: int, version: str | None = None) -> RangeRead:
        resp = self._get_range(key, start, length, version)
        data = resp["Body"].read()
        total = int(str(resp["ContentRange"]).rpartition("/")[2])
        return RangeRead(data, total, resp.get("VersionId"))

    def read_into(self, key: str, start: int, buffer: memoryview, version: str | None) -> None:
        if len(buffer) == 0:
            return  # nothing to read: no request (an empty range cannot be asked for)
        body = self._get_range(key, start, len(buffer), version)["Body"]
        filled = 0
        for chunk in body.iter_chunks(1 << 20):
            if filled + len(chunk) > len(buffer):
                raise ValueError(f"s3://{self.bucket}/{key} returned more bytes than asked for")
            buffer[filled : filled + len(chunk)] = chunk
            filled += len(chunk)
        if filled != len(buffer):
            raise ValueError(f"s3://{self.bucket}/{key} ended after {filled} of {len(buffer)} bytes")

    def delete(self, key: str) -> None:
        """DeleteObject: in the versioned bucket a delete marker, so no reader of the current version
        (a client role may not read older versions) finds the object."""
        self.s3.delete_object(Bucket=self.bucket, Key=key)

    # -- MultipartStore: a model written in parts (a sliced aggregation) --------------------------
    def start_upload(self, key: str) -> str:
        return str(self.s3.create_multipart_upload(Bucket=self.bucket, Key=key)["UploadId"])

    def upload_part(self, key: str, upload_id: str, number: int, data: bytes) -> None:
        self.s3.upload_part(Bucket=self.bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=data)

    def complete_upload(self, key: str, upload_id: str, parts: int) -> None:
        try:
            listed = self._list_parts(key, upload_id)
        except ClientError as exc:
            if error_code(exc) == "NoSuchUpload" and self._exists(key):
                return  # completed by an earlier attempt
            raise
        missing = sorted(set(range(1, parts + 1)) - set(listed))
        if missing or len(listed) != parts:
            raise ValueError(f"s3://{self.bucket}/{key}: parts {missing[:5]} of {parts} were never uploaded")
        self.s3.complete_multipart_upload(
            Bucket=self.bucket,
            Key=key,
            UploadId=upload_id,
            MultipartUpload={"Parts": [{"PartNumber": n, "ETag": listed[n]} for n in range(1, parts + 1)]},
        )

    def _list_parts(self, key: str, upload_id: str) -> dict[int, str]:
        found: dict[int, str] = {}
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Key": key, "UploadId": upload_id}
        while True:
            resp = self.s3.list_parts(**kwargs)
            found.update({int(p["PartNumber"]): p["ETag"] for p in resp.get("Parts", [])})
            if not resp.get("IsTruncated"):
                return found
            kwargs["PartNumberMarker"] = resp["NextPartNumberMarker"]

    def _exists(self, key: str) -> bool:
        try:
            self.s3.head_object(Bucket=self.bucket, Key=key)
            return True
        except ClientError as exc:
            if error_code(exc) in ("404", "NoSuchKey", "NotFound"):
                return False
            raise


class SnsPublisher:
    """Messages to the clients' topic: attribute `kind` (the message's type) and `clients` (who may
    receive it; each client's subscription filters on its own id)."""

    def __init__(self, topic_arn: str, sns: Any) -> None:
        self.topic_arn, self.sns = topic_arn, sns

    def publish(self, message: dict[str, Any], clients: list[str]) -> None:
        self.sns.publish(
            TopicArn=self.topic_arn,
            Message=json.dumps(message),
            MessageAttributes={
                "kind": {"DataType": "String", "StringValue": str(message.get("type", "round"))},
                "clients": {"DataType": "String.Array", "StringValue": json.dumps(clients)},
            },
        )


class DynamoRoundTable(Items):
    """The single table: run and round records, the clients' items (see `fedstep.core.keys`)."""

    def _update_request(
        self,
        key: dict[str, str],
        sets: dict[str, Any],
        condition: str,
        values: dict[str, Any],
        removes: tuple[str, ...] = (),
        extra_sets: str = "",
    ) -> dict[str, Any]:
        """The parameters of an UpdateItem setting `sets` (attribute -> value) when `condition` holds."""
        names = {f"#a{i}": name for i, name in enumerate(sets)}
        if "#s" in condition or "#s" in extra_sets:  # DynamoDB refuses a name no expression uses
            names["#s"] = "status"
        assignments = [f"#a{i} = :v{i}" for i in range(len(sets))] + ([extra_sets] if extra_sets else [])
        expression = "SET " + ", ".join(assignments) + (f" REMOVE {', '.join(removes)}" if removes else "")
        return {
            "TableName": self.name,
            "Key": to_attributes(key),
            "UpdateExpression": expression,
            "ConditionExpression": condition,
            "ExpressionAttributeNames": names,
            "ExpressionAttributeValues": to_attributes({f":v{i}": v for i, v in enumerate(sets.values())} | values),
        }

    def _update(
        self,
        key: dict[str, str],
        sets: dict[str, Any],
        condition: str,
        values: dict[str, Any],
        removes: tuple[str, ...] = (),
        extra_sets: str = "",
    ) -> dict[str, Any] | None:
        """UpdateItem setting `sets` (attribute -> value) when `condition` holds: the item as
        updated, or None if the condition did not hold."""
        request = self._update_request(key, sets, condition, values, removes, extra_sets)
        resp = conditional(self.ddb.update_item, **request, ReturnValues="ALL_NEW")
        return from_attributes(resp["Attributes"]) if resp is not None else None

    def get_run(self, run_id: str) -> RunRecord | None:
        item = self.get_item(keys.run_item_key(run_id))
        return RunRecord.parse(item) if item else None

    def get_round(self, run_id: str, round_number: int) -> dict[str, Any] | None:
        return self.get_item(keys.round_item_key(run_id, round_number))

    def runs_created_since(self, since: str) -> list[str]:
        """The ids of the runs whose record was created at or after `since` (an ISO time as
        `utc_now` writes them), oldest first: a Scan of the run records (`sk` = RUN), for the
        scheduled integrity check (once a week: the table has no index by time)."""
        kwargs: dict[str, Any] = {
            "TableName": self.name,
            "FilterExpression": "sk = :run AND created_at >= :since",
            "ProjectionExpression": "pk, created_at",
            "ExpressionAttributeValues": to_attributes({":run": keys.RUN_SK, ":since": since}),
        }
        found: list[tuple[str, str]] = []
        while True:
            resp = self.ddb.scan(**kwargs)
            found += [(str(i.get("created_at", "")), str(i[keys.PK])) for i in map(from_attributes, resp["Items"])]
            if "LastEvaluatedKey" not in resp:
                return [run_id for _, run_id in sorted(found)]
            kwargs["ExclusiveStartKey"] = resp["LastEvaluatedKey"]

    def list_round_records(self, run_id: str) -> list[dict[str, Any]]:
        """Every round record of the run, open, claimed or completed, in round order."""
        return self._query_prefix(run_id, keys.ROUND_PREFIX)

    def open_round(
        self,
        run_id: str,
        round_number: int,
        attempt: int,
        task_token: str,
        issued_at: str,
        input_model: ObjectRef,
        input_state: ObjectRef | None = None,
        selected: list[str] | None = None,
        skipped: dict[str, str] | None = None,
    ) -> bool:
        record = RoundRecord.opened(
            run_id, round_number, attempt, task_token, issued_at, input_model, input_state, selected, skipped
        )
        # the record's item, less what the condition's own SET writes: the status, the first issue time
        sets = {k: v for k, v in record.to_item().items() if k not in (keys.PK, keys.SK, "status", "first_issued_at")}
        return None is not self._update(
            keys.round_item_key(run_id, round_number),
            sets,
            "attribute_not_exists(pk) OR #s = :open",
            {":open": ROUND_OPEN, ":first": issued_at},
            extra_sets="#s = :open, first_issued_at = if_not_exists(first_issued_at, :first)",
        )

    def claim_round(
        self, run_id: str, round_number: int, claim_id: str, now: float, lease_until: float
    ) -> dict[str, Any] | None:
        return self._update(
            keys.round_item_key(run_id, round_number),
            {"status": ROUND_CLAIMED, "claim_id": claim_id, "lease_until": lease_until},
            "#s = :open OR (#s = :claimed AND lease_until < :now)",
            {":open": ROUND_OPEN, ":claimed": ROUND_CLAIMED, ":now": now},
        )

    def hold_round(
        self, run_id: str, round_number: int, claim_id: str, lease_until: float, plan: dict[str, Any]
    ) -> bool:
        return None is not self._update(
            keys.round_item_key(run_id, round_number),
            {"lease_until": lease_until, "plan": plan},
            "#s = :claimed AND claim_id = :claim",
            {":claimed": ROUND_CLAIMED, ":claim": claim_id},
        )

    def release_round(self, run_id: str, round_number: int, claim_id: str) -> None:
        self._update(
            keys.round_item_key(run_id, round_number),
            {"status": ROUND_OPEN},
            "#s = :claimed AND claim_id = :claim",
            {":claimed": ROUND_CLAIMED, ":claim": claim_id},
            removes=("claim_id", "lease_until"),
        )

    def put_stop(self, stop: RunStop) -> bool:
        """Write the run's stop marker once (the operator's `fedstep stop`); False if it existed."""
        return self.put_once(stop.to_item())

    def complete_round(self, item: dict[str, Any], claim_id: str) -> bool:
        """One transaction: the summary, on condition that the claim holds the round and that the run
        has no stop marker (`RunStopped` if it has). A conflict with a concurrent write to the round
        record (another invocation trying to claim it) is retried."""
        run_id = str(item[keys.PK])
        sets = {k: v for k, v in item.items() if k not in (keys.PK, keys.SK)}
        update = self._update_request(
            {keys.PK: run_id, keys.SK: item[keys.SK]},
            sets,
            "#s = :claimed AND claim_id = :claim",
            {":claimed": ROUND_CLAIMED, ":claim": claim_id},
            removes=("lease_until",),
        )
        not_stopped = {
            "TableName": self.name,
            "Key": to_attributes(keys.stop_item_key(run_id)),
            "ConditionExpression": "attribute_not_exists(pk)",
        }
        for attempt in range(1, TRANSACTION_TRIES + 1):
            try:
                self.ddb.transact_write_items(TransactItems=[{"Update": update}, {"ConditionCheck": not_stopped}])
                return True
            except ClientError as exc:
                if error_code(exc) != "TransactionCanceledException":
                    raise
                codes = [str(r.get("Code")) for r in exc.response.get("CancellationReasons", [])]
                if len(codes) > 1 and codes[1] == "ConditionalCheckFailed":
                    raise RunStopped(f"run {run_id} was stopped: round {item.get('round')} is not committed") from None
                if codes and codes[0] == "ConditionalCheckFailed":
                    return False
                if "TransactionConflict" not in codes or attempt == TRANSACTION_TRIES:
                    raise
                time.sleep(0.1 * attempt)
        return False  # not reached: the last try returns or raises

    def count_release(self, run_id: str, round_number: int, claim_id: str) -> int | None:
        resp = conditional(
            self.ddb.update_item,
            TableName=self.name,
            Key=to_attributes(keys.round_item_key(run_id, round_number)),
            UpdateExpression="ADD noisy_releases :one",
            ConditionExpression="#s = :claimed AND claim_id = :claim",
            ExpressionAttributeNames={"#s": "status"},
            ExpressionAttributeValues=to_attributes({":one": 1, ":claimed": ROUND_CLAIMED, ":claim": claim_id}),
            ReturnValues="UPDATED_NEW",
        )
        return None if resp is None else int(from_attributes(resp["Attributes"])["noisy_releases"])

    def mark_reported(self, run_id: str, round_number: int) -> None:
        """Set the round reported and drop its task token; nothing for a round never published (no
        stray item is created)."""
        conditional(
            self.ddb.update_item,
            TableName=self.name,
            Key=to_attributes(keys.round_item_key(run_id, round_number)),
            UpdateExpression="SET #s = :s REMOVE task_token",
            ConditionExpression="attribute_exists(pk)",
            ExpressionAttributeNames={"#s": "status"},
            ExpressionAttributeValues=to_attributes({":s": ROUND_REPORTED}),
        )

    def list_rounds(self, run_id: str, after: int = 0) -> list[dict[str, Any]]:
        return self._query_prefix(
            run_id,
            keys.ROUND_PREFIX,
            first=keys.round_sk(after + 1) if after else None,
            FilterExpression="#s IN (:aggregated, :reported)",
            ExpressionAttributeNames={"#s": "status"},
            values={":aggregated": ROUND_AGGREGATED, ":reported": ROUND_REPORTED},
        )

    def open_rounds(self, run_id: str) -> list[dict[str, Any]]:
        """The run's round records not yet aggregated (open, or claimed by an aggregation), in round order."""
        return self._query_prefix(
            run_id,
            keys.ROUND_PREFIX,
            FilterExpression="#s IN (:open, :claimed)",
            ExpressionAttributeNames={"#s": "status"},
            values={":open": ROUND_OPEN, ":claimed": ROUND_CLAIMED},
        )

    def get_updates(self, run_id: str, round_number: int, client_ids: list[str]) -> dict[str, dict[str, Any]]:
        found = self._batch_get([keys.update_item_key(run_id, round_number, c) for c in client_ids])
        return {keys.client_of(item[keys.PK]): item for item in found}

    def latest_updates(self, run_id: str, client_ids: list[str], up_to_round: int) -> dict[str, dict[str, Any]]:
        """Each client's update item (kind "update") of the latest round <= `up_to_round` it sent
        one in, by client id; clients without one are absent. One query per client, newest first."""
        latest: dict[str, dict[str, Any]] = {}
        for client in client_ids:
            kwargs: dict[str, Any] = {
                "TableName": self.name,
                "KeyConditionExpression": "pk = :pk AND sk BETWEEN :first AND :last",
                "ExpressionAttributeValues": to_attributes(
                    {
                        ":pk": keys.client_pk(client),
                        ":first": keys.update_sk(run_id, 0),
                        ":last": keys.update_sk(run_id, up_to_round),
                    }
                ),
                "ConsistentRead": True,
                "ScanIndexForward": False,
                "Limit": 10,
            }
            while client not in latest:
                resp = self.ddb.query(**kwargs)
                items = (from_attributes(i) for i in resp.get("Items", []))
                newest = next((i for i in items if i.get("kind") == "update"), None)
                if newest is not None:
                    latest[client] = newest
                if "LastEvaluatedKey" not in resp:
                    break
                kwargs["ExclusiveStartKey"] = resp["LastEvaluatedKey"]
        return latest

    def put_feedback(self, item: dict[str, Any]) -> None:
        self.put(item)

    def get_feedback(self, client_ids: list[str], run_id: str | None = None) -> dict[str, dict[str, Any]]:
        """The clients' feedback items, by client id (absent: never rejected): their last rejection in
        run `run_id`, or (None) their latest in any run."""
        key = keys.last_rejection_item_key if run_id is None else lambda c: keys.rejection_item_key(c, run_id)
        found = self._batch_get([key(c) for c in client_ids])
        return {keys.client_of(item[keys.PK]): item for item in found}

    def get_failures(self, run_id: str, client_ids: list[str]) -> dict[str, dict[str, Any]]:
        """The clients' failure items in run `run_id` (their last failed round there), by client id
        (absent: none reported). Items as stored: `FailureItem.parse` them."""
        found = self._batch_get([keys.failure_item_key(run_id, c) for c in client_ids])
        return {keys.client_of(item[keys.PK]): item for item in found}

    def get_client_items(self, item_keys: list[dict[str, str]]) -> dict[str, dict[str, Any]]:
        """Items in the clients' partitions (e.g. their answers to one request), by client id (absent:
        not written). Items as stored: parse them."""
        return {keys.client_of(item[keys.PK]): item for item in self._batch_get(item_keys)}

    def put_heartbeat(self, beat: Heartbeat) -> None:
        """Overwrite the client's heartbeat item (the client's role may write only its own)."""
        self.put(beat.to_item())

    def get_heartbeats(self, client_ids: list[str]) -> dict[str, dict[str, Any]]:
        """The heartbeat items of these clients, by client id (absent: never seen)."""
        found = self._batch_get([keys.heartbeat_item_key(c) for c in client_ids])
        return {keys.client_of(item[keys.PK]): item for item in found}

    def _batch_get(self, item_keys: list[dict[str, str]]) -> list[dict[str, Any]]:
        """These items, strongly consistent (BatchGetItem takes at most 100 keys a call)."""
        found: list[dict[str, Any]] = []
        for start in range(0, len(item_keys), 100):
            pending: dict[str, Any] = {
                self.name: {"Keys": [to_attributes(k) for k in item_keys[start : start + 100]], "ConsistentRead": True}
            }
            while pending:
                resp = self.ddb.batch_get_item(RequestItems=pending)
                found.extend(from_attributes(raw) for raw in resp.get("Responses", {}).get(self.name, []))
                pending = resp.get("UnprocessedKeys") or {}
        return found

    # -- a secure round's records (`fedstep.core.ports.SecureTable`) ---------------------------------
    def get_items(self, item_keys: list[dict[str, str]]) -> list[dict[str, Any]]:
        return self._batch_get(item_keys)

    def put_server_items(self, items: list[dict[str, Any]]) -> None:
        """BatchWriteItem, 25 items a request (DynamoDB's most), the unprocessed ones sent again."""
        for start in range(0, len(items), 25):
            pending: dict[str, Any] = {
                self.name: [{"PutRequest": {"Item": to_attributes(i)}} for i in items[start : start + 25]]
            }
            while pending:
                pending = self.ddb.batch_write_item(RequestItems=pending).get("UnprocessedItems") or {}

    def update_where(
        self, key: dict[str, str], sets: dict[str, Any], statuses: tuple[str | None, ...]
    ) -> dict[str, Any] | None:
        named = [s for s in statuses if s is not None]
        clauses = (["attribute_not_exists(pk)"] if None in statuses else []) + [
            f"#s = :st{i}" for i in range(len(named))
        ]
        values = {f":st{i}": status for i, status in enumerate(named)}
        return self._update(key, sets, " OR ".join(clauses), values)


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
