"""Helpers shared by the tests that run against the embedded local cloud."""

from __future__ import annotations

import time
from typing import Any


def wait_for_execution(cloud: Any, arn: str, timeout_s: float = 30) -> dict:
    """Poll until the execution is no longer RUNNING; its description."""
    sfn = cloud.client("stepfunctions")
    deadline = time.monotonic() + timeout_s
    while (desc := sfn.describe_execution(executionArn=arn))["status"] == "RUNNING":
        assert time.monotonic() < deadline, "execution still running"
        time.sleep(0.2)
    return desc


def drain_queues(cloud: Any) -> None:
    """Empty every client queue (PurgeQueue is limited to once a minute)."""
    sqs = cloud.client("sqs")
    for url in cloud.outputs.queues.values():
        while messages := sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10).get("Messages"):
            for m in messages:
                sqs.delete_message(QueueUrl=url, ReceiptHandle=m["ReceiptHandle"])
