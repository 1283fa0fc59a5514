"""A moto server in a child process on 127.0.0.1, with a fresh table (the stack's key schema) or bucket
per test: for the contract suites (tests/test_round_table_contract.py, tests/test_model_store_contract.py).

A child process, not a thread: moto's state is global to its process, and a local cloud in this one
(`fedstep.local.cloud`) must neither see these tables nor lose its own (no reset, no shims here). The
child exits when its stdin closes, so it never outlives the tests' process.
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import boto3

REGION = "us-east-1"
START_TIMEOUT_S = 120.0  # generous: importing moto on a busy 2-core machine
_SERVER = """
import logging, sys
logging.disable(logging.CRITICAL)
from moto.server import ThreadedMotoServer
server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
server.start()
print(server.get_host_and_port()[1], flush=True)
sys.stdin.read()  # until the tests' process closes it (or dies)
server.stop()
"""


@contextmanager
def moto_server() -> Iterator[str]:
    """A moto server in a child process: its endpoint, e.g. `http://127.0.0.1:40123`."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _SERVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
    )
    try:
        assert proc.stdout is not None
        port = proc.stdout.readline().strip()  # blocks until the server listens (or the child died)
        if not port.isdigit():
            raise RuntimeError(f"the moto server did not start (exit code {proc.poll()})")
        yield f"http://127.0.0.1:{int(port)}"
    finally:
        if proc.stdin is not None:
            proc.stdin.close()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def client(service: str, endpoint: str) -> Any:
    """A boto3 client of the moto server (fake credentials of its own, whatever this process has set)."""
    return boto3.client(
        service,
        region_name=REGION,
        endpoint_url=endpoint,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        aws_session_token="testing",
    )


def new_table(dynamodb: Any) -> str:
    """A new empty table with the stack's key schema (infra/secure.py: pk, sk strings): its name."""
    name = f"contract-{uuid.uuid4().hex[:12]}"
    dynamodb.create_table(
        TableName=name,
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}],
        AttributeDefinitions=[
            {"AttributeName": "pk", "AttributeType": "S"},
            {"AttributeName": "sk", "AttributeType": "S"},
        ],
        BillingMode="PAY_PER_REQUEST",
    )
    return name


def new_bucket(s3: Any, versioned: bool = True) -> str:
    """A new empty bucket, versioned as the stack's model registry is unless `versioned` is False."""
    name = f"contract-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=name)
    if versioned:
        s3.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Enabled"})
    return name
