"""The deployed stack an operator works on: its outputs, and one AWS client per service."""

from __future__ import annotations

import os
from typing import Any

from fedstep.aws import boto
from fedstep.aws.adapters import DynamoRoundTable
from fedstep.aws.stack import StackOutputs


def session(region: str | None) -> Any:  # -> boto3.Session
    """The operator's AWS session: `region`, else AWS_REGION, else AWS_DEFAULT_REGION, else the
    profile's (boto3 itself reads only the last two)."""
    from fedstep.aws.boto import new_session

    return new_session(region_name=region or os.environ.get("AWS_REGION") or None)


class Stack:
    """A deployed stack (`name`, default `fedstep`) in `region`, reached at `endpoint_url` (None: AWS's
    own; the embedded local cloud's otherwise): its outputs, read once, and one client per service
    for this object's lifetime (a watch polls with the same ones)."""

    def __init__(self, name: str = "fedstep", region: str | None = None, endpoint_url: str | None = None) -> None:
        self.session = session(region)
        self.endpoint_url = endpoint_url
        self._clients: dict[str, Any] = {}
        self.outputs = StackOutputs.of_stack(self.client("cloudformation"), name)

    def client(self, service: str) -> Any:  # -> botocore client
        if service not in self._clients:
            self._clients[service] = boto.client(service, self.session, self.endpoint_url)
        return self._clients[service]

    @property
    def table(self) -> DynamoRoundTable:
        """The stack's table, read and written as this operator."""
        return DynamoRoundTable(self.outputs.table, self.client("dynamodb"))
