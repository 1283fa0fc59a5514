"""What moto lacks, filled in - the one module that knows about moto's gaps (see NOTES-aws-local.md).

moto runs the synthesized CloudFormation template, but:

1. it silently skips `AWS::SNS::Subscription`: `create_missing_subscriptions` creates them from the
   template, with their raw-delivery, filter-policy and redrive (dead-letter queue) settings;
2. Step Functions only executes definitions when switched on, and state machines created by
   CloudFormation stay in the non-executing backend: `make_state_machines_executable` switches
   execution on and re-creates them there (same name, definition and role, so the same ARN);
3. it cannot run Lambda code without Docker: `run_lambdas_in_process` replaces moto's private
   `LambdaFunction._invoke_lambda` so that the handler named by the function runs in this process,
   with the function's environment. The handler code is imported from this checkout after checking
   that the deployed zip holds byte-identical sources (the zip's compiled wheels are for the Lambda
   platform, not this interpreter). The patch point is private, so moto is pinned exactly and
   `check_patch_point` fails loudly on any other version;
4. it delivers DynamoDB stream records synchronously inside the write that produced them, again
   with every record not yet consumed, so a handler's own writes re-enter it. AWS delivers them
   asynchronously, one batch at a time per shard, in order. The in-process runner does the same:
   a stream batch is queued to one worker thread per function and the write returns at once; a
   batch that raised or reported batch item failures is retried (`STREAM_ATTEMPTS` in all) and then
   logged as dropped, as the stream's failure queue would receive it.
   `wait_for_stream_batches` blocks until every queued batch is processed.

5. its CloudFormation handler for `AWS::KMS::Key` passes the template's tags (`Key`/`Value`) to a
   tagger that expects KMS's own form (`TagKey`/`TagValue`) and fails with a KeyError, and stores a
   key policy given as a JSON object unconverted, so DescribeKey fails; `fix_kms_keys_from_cloudformation`
   converts both first (for any deployment into this process's moto, `cdk deploy` included);
6. its `AWS::IAM::Role` handler stores inline policy documents as objects, which its own IAM
   enforcement cannot read: `fix_role_policies_from_cloudformation` stores them as JSON text;
7. its StopExecution does not interrupt an execution waiting for a task token (it fails at the
   deadline instead): `make_stop_execution_abort` wakes the waiting task and reports ABORTED.

(`AWS::SQS::QueuePolicy`, `AWS::S3::BucketPolicy`, `AWS::SNS::TopicPolicy` and alarms are skipped too;
moto does not enforce IAM unless told to (`/moto-api/reset-auth`, used by one test), so nothing needs them.)
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import io
import json
import logging
import os
import queue
import threading
import time
import traceback
import uuid
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.request import Request, urlopen

log = logging.getLogger(__name__)

MOTO_VERSION = "5.2.5"
REPO = Path(__file__).resolve().parents[2]


def check_patch_point() -> None:
    """Raise unless moto is the pinned version and still has the private method we replace."""
    import moto
    from moto.awslambda.models import LambdaFunction

    if moto.__version__ != MOTO_VERSION or not callable(getattr(LambdaFunction, "_invoke_lambda", None)):
        raise RuntimeError(
            f"fedstep's local cloud needs moto=={MOTO_VERSION} (found {moto.__version__}); "
            "its in-process Lambda runner patches a private moto method. Re-run `make` to reinstall."
        )


def _patch_cloudformation_create(resource_class: Any, fix: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
    """Wrap moto's CloudFormation handler of `resource_class` so that `fix` rewrites its Properties first
    (idempotent: a class is patched once)."""
    original = resource_class.create_from_cloudformation_json.__func__
    if getattr(original, "_fedstep_fixed", False):
        return

    def create(cls: Any, resource_name: str, cloudformation_json: Any, *args: Any, **kwargs: Any) -> Any:
        properties = fix(dict(cloudformation_json.get("Properties", {})))
        return original(cls, resource_name, {**cloudformation_json, "Properties": properties}, *args, **kwargs)

    create._fedstep_fixed = True  # type: ignore[attr-defined]
    resource_class.create_from_cloudformation_json = classmethod(create)


def fix_kms_keys_from_cloudformation() -> None:
    """Make moto's AWS::KMS::Key CloudFormation handler accept what CloudFormation accepts: tags in
    CloudFormation's form, and a key policy given as a JSON object (moto stores it as is, and
    DescribeKey then fails parsing it)."""
    from moto.kms.models import Key

    def fix(properties: dict[str, Any]) -> dict[str, Any]:
        properties["Tags"] = [
            {"TagKey": t["Key"], "TagValue": t["Value"]} if "Key" in t else t for t in properties.get("Tags") or []
        ]
        if isinstance(properties.get("KeyPolicy"), dict):
            properties["KeyPolicy"] = json.dumps(properties["KeyPolicy"])
        return properties

    _patch_cloudformation_create(Key, fix)


def fix_role_policies_from_cloudformation() -> None:
    """moto's AWS::IAM::Role handler stores inline policy documents as objects; its own IAM enforcement
    (`/moto-api/reset-auth`) then fails reading them (KeyError 'policy_document'). Store them as JSON
    text, as the IAM API does, so an assumed client role is evaluated against its real policy."""
    from moto.iam.models import Role

    def fix(properties: dict[str, Any]) -> dict[str, Any]:
        properties["Policies"] = [
            {**p, "PolicyDocument": json.dumps(p["PolicyDocument"])} if isinstance(p.get("PolicyDocument"), dict) else p
            for p in properties.get("Policies") or []
        ]
        return properties

    _patch_cloudformation_create(Role, fix)


def make_stop_execution_abort() -> None:
    """moto's StopExecution does not interrupt an execution that waits for a task token: it keeps
    waiting, and at the deadline it fails instead of being aborted. After moto's own stop, wake the
    execution's waiting tasks with a failure and report it ABORTED, as Step Functions does (idempotent)."""
    from moto.stepfunctions.models import StateMachine
    from moto.stepfunctions.parser.api import ExecutionStatus
    from moto.stepfunctions.parser.asl.eval.callback.callback import CallbackOutcomeFailure
    from moto.stepfunctions.parser.backend.execution import BaseExecutionWorkerCommunication

    if getattr(StateMachine.stop_execution, "_fedstep_fixed", False):
        return
    original_stop = StateMachine.stop_execution
    original_reflect = BaseExecutionWorkerCommunication._reflect_execution_status

    def stop_execution(self: Any, execution_arn: str) -> Any:
        execution = original_stop(self, execution_arn)
        worker = getattr(execution, "exec_worker", None)
        if worker is not None:
            execution._fedstep_aborted = True
            pool = worker.env.callback_pool_manager
            for callback_id in list(pool._pool):
                with contextlib.suppress(Exception):  # already answered or timed out
                    pool.notify(callback_id, CallbackOutcomeFailure(callback_id, "ExecutionAborted", "stopped"))
        return execution

    def reflect(self: Any) -> None:
        original_reflect(self)
        if getattr(self.execution, "_fedstep_aborted", False):
            self.execution.exec_status = ExecutionStatus.ABORTED
            self.execution.error = self.execution.cause = None

    stop_execution._fedstep_fixed = True  # type: ignore[attr-defined]
    StateMachine.stop_execution = stop_execution  # type: ignore[method-assign]
    BaseExecutionWorkerCommunication._reflect_execution_status = reflect  # type: ignore[method-assign]


def _moto_api(endpoint: str, path: str, body: dict[str, Any] | None = None) -> None:
    """POST to the moto server's own API (a loopback address)."""
    data = json.dumps(body or {}).encode()
    request = Request(f"{endpoint}/moto-api/{path}", data=data, headers={"Content-Type": "application/json"})
    with urlopen(request, timeout=10) as resp:
        resp.read()


def reset_backends(endpoint: str) -> None:
    """Clear all of moto's state (it is global to the process, shared by every server in it), and
    switch Step Functions execution off: that setting survives a reset, and CloudFormation's state
    machines are only visible while it is off."""
    _moto_api(endpoint, "reset")
    _moto_api(endpoint, "config", {"stepfunctions": {"execute_state_machine": False}})


def enable_step_functions_execution(endpoint: str) -> None:
    _moto_api(endpoint, "config", {"stepfunctions": {"execute_state_machine": True}})


def _physical_ids(cfn: Any, stack_name: str) -> dict[str, str]:
    pages = cfn.get_paginator("list_stack_resources").paginate(StackName=stack_name)
    return {r["LogicalResourceId"]: r["PhysicalResourceId"] for p in pages for r in p["StackResourceSummaries"]}


def create_missing_subscriptions(cfn: Any, sns: Any, sqs: Any, stack_name: str, template: dict[str, Any]) -> int:
    """Create every SNS subscription of the template that moto skipped; returns how many."""
    ids = _physical_ids(cfn, stack_name)
    created = 0
    for props in (r["Properties"] for r in template["Resources"].values() if r["Type"] == "AWS::SNS::Subscription"):
        topic_arn = ids[props["TopicArn"]["Ref"]]
        queue_logical_id, attribute = props["Endpoint"]["Fn::GetAtt"]
        if props["Protocol"] != "sqs" or attribute != "Arn":
            raise RuntimeError(f"local cloud: unsupported subscription {props}")
        queue_arn = sqs.get_queue_attributes(QueueUrl=ids[queue_logical_id], AttributeNames=["QueueArn"])["Attributes"][
            "QueueArn"
        ]
        attributes = {"RawMessageDelivery": str(props.get("RawMessageDelivery", False)).lower()}
        if "FilterPolicy" in props:
            attributes["FilterPolicy"] = json.dumps(props["FilterPolicy"])
        if "RedrivePolicy" in props:
            dlq_logical_id, _ = props["RedrivePolicy"]["deadLetterTargetArn"]["Fn::GetAtt"]
            dlq_arn = sqs.get_queue_attributes(QueueUrl=ids[dlq_logical_id], AttributeNames=["QueueArn"])
            attributes["RedrivePolicy"] = json.dumps({"deadLetterTargetArn": dlq_arn["Attributes"]["QueueArn"]})
        sns.subscribe(TopicArn=topic_arn, Protocol="sqs", Endpoint=queue_arn, Attributes=attributes)
        created += 1
    return created


def make_state_machines_executable(
    cfn: Any, sfn: Any, endpoint: str, stack_name: str, template: dict[str, Any]
) -> list[str]:
    """Switch on execution and re-create the stack's state machines in moto's executing backend.

    Those created by CloudFormation live in the non-executing backend, which is no longer visible
    once execution is on, so they are described first. Same name, definition and role: same ARN.
    """
    ids = _physical_ids(cfn, stack_name)
    described = [
        sfn.describe_state_machine(stateMachineArn=ids[logical_id])
        for logical_id, resource in template["Resources"].items()
        if resource["Type"] == "AWS::StepFunctions::StateMachine"
    ]
    enable_step_functions_execution(endpoint)
    return [
        sfn.create_state_machine(name=d["name"], definition=d["definition"], roleArn=d["roleArn"])["stateMachineArn"]
        for d in described
    ]


# -- Lambda in-process ---------------------------------------------------------------------------


@dataclass
class LocalLambdaContext:
    """The attributes of the Lambda context object that handlers and Powertools read."""

    function_name: str
    invoked_function_arn: str
    memory_limit_in_mb: int
    aws_request_id: str
    function_version: str = "$LATEST"
    log_group_name: str = ""
    log_stream_name: str = ""

    def get_remaining_time_in_millis(self) -> int:
        return 300_000


_verified: set[str] = set()


def verify_code_matches_checkout(code_bytes: bytes) -> None:
    """Raise if any Python source in the deployed zip differs from this checkout's copy."""
    digest = hashlib.sha256(code_bytes).hexdigest()
    if digest in _verified:
        return
    with zipfile.ZipFile(io.BytesIO(code_bytes)) as zf:
        for name in zf.namelist():
            if name.endswith(".py") and name.split("/")[0] in ("fedstep", "lambdas"):
                local = REPO / name
                if not local.exists() or local.read_bytes() != zf.read(name):
                    raise RuntimeError(
                        f"the deployed Lambda's {name} differs from this checkout's; re-deploy the local cloud"
                    )
    _verified.add(digest)


STREAM_ATTEMPTS = 3
_stream_workers: dict[str, _StreamWorker] = {}
_workers_lock = threading.Lock()


class _StreamWorker:
    """Processes one function's stream batches in order, on its own thread (like one shard)."""

    def __init__(self, function: Any) -> None:
        self.function = function
        self.queue: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self.thread = threading.Thread(target=self._loop, name=f"stream-{function.function_name}", daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while (event := self.queue.get()) is not None:
            try:
                for attempt in range(1, STREAM_ATTEMPTS + 1):
                    result, errored, _ = _run_handler(self.function, event)
                    if not errored and not _item_failures(result):
                        break
                    if attempt == STREAM_ATTEMPTS:
                        log.error("stream batch dropped after %d failed attempts", attempt)
                    time.sleep(0.2 * attempt)
            finally:
                self.queue.task_done()


def _item_failures(result: str) -> list[Any]:
    """The `batchItemFailures` a handler reported (partial batch response), if any."""
    try:
        parsed = json.loads(result)
    except (TypeError, ValueError):
        return []
    return (parsed.get("batchItemFailures") or []) if isinstance(parsed, dict) else []


def _is_stream_batch(event: Any) -> bool:
    records = event.get("Records") if isinstance(event, dict) else None
    return bool(records) and all(r.get("eventSource") == "aws:dynamodb" for r in records)


def wait_for_stream_batches(timeout_s: float = 60.0) -> None:
    """Block until every queued stream batch has been processed (tests use this)."""
    deadline = time.monotonic() + timeout_s
    for worker in list(_stream_workers.values()):
        while worker.queue.unfinished_tasks:
            if time.monotonic() > deadline:
                raise TimeoutError("stream batches still being processed")
            time.sleep(0.02)


def stop_stream_workers() -> None:
    with _workers_lock:
        for worker in _stream_workers.values():
            worker.queue.put(None)
        for worker in _stream_workers.values():
            worker.thread.join(timeout=30)
        _stream_workers.clear()


def _invoke_in_process(self: Any, event: Any = None) -> tuple[str, bool, str]:
    """Replacement for moto's LambdaFunction._invoke_lambda: stream batches are queued for
    asynchronous processing; any other invocation runs the handler here and now."""
    if _is_stream_batch(event):
        with _workers_lock:
            worker = _stream_workers.get(self.function_arn)
            if worker is None or worker.function is not self:
                worker = _stream_workers[self.function_arn] = _StreamWorker(self)
        worker.queue.put(event)
        return json.dumps({"queued": len(event["Records"])}), False, ""
    return _run_handler(self, event)


def _run_handler(self: Any, event: Any) -> tuple[str, bool, str]:
    try:
        verify_code_matches_checkout(self.code_bytes)
        os.environ.update({k: str(v) for k, v in (self.environment_vars or {}).items()})
        module_name, func_name = self.handler.rsplit(".", 1)
        handler = getattr(importlib.import_module(module_name), func_name)
        context = LocalLambdaContext(
            function_name=self.function_name,
            invoked_function_arn=self.function_arn,
            memory_limit_in_mb=int(self.memory_size or 128),
            aws_request_id=str(uuid.uuid4()),
        )
        result = handler(event if event is not None else {}, context)
        return json.dumps(result), False, ""
    except Exception as exc:  # a Lambda reports any exception as a function error
        log.error("Lambda %s failed:\n%s", self.function_name, traceback.format_exc())
        payload = {"errorMessage": str(exc), "errorType": type(exc).__name__}
        return json.dumps(payload), True, traceback.format_exc()


def run_lambdas_in_process() -> None:
    check_patch_point()
    from moto.awslambda.models import LambdaFunction

    LambdaFunction._invoke_lambda = _invoke_in_process  # type: ignore[method-assign]
