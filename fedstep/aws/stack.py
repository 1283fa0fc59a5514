"""A deployed fedstep stack's resources, read from its CloudFormation outputs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from botocore.exceptions import ClientError

from fedstep.core import keys
from fedstep.core.errors import FedstepError
from fedstep.core.tensors import DEFAULT_MAX_BYTES


@dataclass(frozen=True)
class StackOutputs:
    bucket: str
    table: str
    topic_arn: str
    state_machine_arn: str
    queues: dict[str, str]
    """Queue URL by client id."""
    roles: dict[str, str]
    """IAM role ARN by client id."""
    max_model_bytes: int = DEFAULT_MAX_BYTES
    """The largest model file the stack aggregates (deployment config `max_model_mb`)."""

    @classmethod
    def parse(cls, outputs: dict[str, str]) -> StackOutputs:
        try:
            clients = [c for c in outputs["ClientIds"].split(",") if c]
            return cls(
                bucket=outputs["BucketName"],
                table=outputs["TableName"],
                topic_arn=outputs["TopicArn"],
                state_machine_arn=outputs["StateMachineArn"],
                queues={cid: outputs[keys.client_output_key(cid)] for cid in clients},
                roles={cid: outputs[keys.client_role_output_key(cid)] for cid in clients},
                max_model_bytes=int(outputs.get("MaxModelBytes", DEFAULT_MAX_BYTES)),
            )
        except KeyError as exc:
            raise FedstepError(f"the stack has no output {exc}; is it a fedstep stack, fully deployed?") from None

    def client_config(self, client_id: str, region: str | None, **extra: object) -> dict[str, object]:
        """A ready client agent config (the file `fedstep-client run --config` reads)."""
        if client_id not in self.queues:
            raise FedstepError(
                f"client {client_id!r} is not in the stack; its clients: {', '.join(sorted(self.queues))}"
            )
        return {
            "client_id": client_id,
            "region": region,
            "queue_url": self.queues[client_id],
            "bucket": self.bucket,
            "table": self.table,
            "role_arn": self.roles[client_id],
            **extra,
        }

    @classmethod
    def of_stack(cls, cfn: Any, stack_name: str) -> StackOutputs:
        try:
            stack = cfn.describe_stacks(StackName=stack_name)["Stacks"][0]
        except ClientError as exc:
            raise FedstepError(f"cannot read stack {stack_name!r}: {exc}") from None
        return cls.parse({o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs", [])})
