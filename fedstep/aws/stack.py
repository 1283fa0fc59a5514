"""A deployed fedstep stack's resources, read from its CloudFormation outputs."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from botocore.exceptions import ClientError

from fedstep.core import keys
from fedstep.core.errors import FedstepError
from fedstep.core.tensors import DEFAULT_MAX_BYTES


def _output(outputs: dict[str, str], name: str, legacy: str) -> str:
    """The output `name`, or its `legacy` name in a stack deployed before it; KeyError naming `name`."""
    if name in outputs or legacy not in outputs:
        return outputs[name]
    return outputs[legacy]


@dataclass(frozen=True)
class StackOutputs:
    bucket: str
    table: str
    topic_arn: str
    state_machine_arn: str
    queues: dict[str, str]
    """Queue URL by client id, of the clients that take part (not revoked): those runs select."""
    roles: dict[str, str]
    """IAM role ARN by client id, of the clients that take part."""
    max_model_bytes: int = DEFAULT_MAX_BYTES
    """The largest model file the stack aggregates (deployment config `max_model_mb`)."""
    slice_bytes: int | None = None
    """Models larger than this are aggregated by slices (deployment config `slice_mb`); None: never."""
    operator_role_arn: str = ""
    """The operator role's ARN (`infra.operator_access`); "" for a stack deployed before it existed."""
    revoked: dict[str, str] = field(default_factory=dict)
    """Queue URL by client id, of the clients revoked in the deployment config (`"revoked": true`):
    their role can no longer be assumed and no run selects them; their queue and data stay."""
    revoked_roles: dict[str, str] = field(default_factory=dict)
    """IAM role ARN by revoked client id (a role that trusts nobody and is allowed nothing)."""
    audit_trail_arn: str = ""
    """The audit trail's ARN (deployment config `audit`, output AuditTrailArn); "": no trail."""

    @classmethod
    def parse(cls, outputs: dict[str, str], groups: Sequence[dict[str, str]] = ()) -> StackOutputs:
        """The stack's outputs, and its client groups' (its nested stacks' outputs): each names its
        clients (`ClientIds`, comma-separated), those revoked (`RevokedClientIds`) and their queue URLs
        and role ARNs. A stack without nested stacks names its clients in its own outputs."""
        try:
            queues: dict[str, str] = {}
            roles: dict[str, str] = {}
            if "ClientGroups" in outputs and int(outputs["ClientGroups"]) != len(groups):
                raise FedstepError(
                    f"the stack has {outputs['ClientGroups']} client group(s) (nested stacks) and {len(groups)} "
                    "were found; is it fully deployed?"
                )
            if "ClientGroups" not in outputs and "ClientIds" not in outputs:
                raise KeyError("ClientGroups")
            revoked: dict[str, str] = {}
            revoked_roles: dict[str, str] = {}
            for group in (outputs, *groups):
                gone = set(group.get("RevokedClientIds", "").split(","))
                for cid in (c for c in group.get("ClientIds", "").split(",") if c):
                    old_queue, old_role = keys.legacy_output_keys(cid)
                    queue = _output(group, keys.client_output_key(cid), old_queue)
                    role = _output(group, keys.client_role_output_key(cid), old_role)
                    if cid in gone:
                        revoked[cid], revoked_roles[cid] = queue, role
                    else:
                        queues[cid], roles[cid] = queue, role
            return cls(
                bucket=outputs["BucketName"],
                table=outputs["TableName"],
                topic_arn=outputs["TopicArn"],
                state_machine_arn=outputs["StateMachineArn"],
                queues=queues,
                roles=roles,
                max_model_bytes=int(outputs.get("MaxModelBytes", DEFAULT_MAX_BYTES)),
                slice_bytes=int(outputs.get("SliceBytes", 0)) or None,
                operator_role_arn=outputs.get("OperatorRoleArn", ""),
                revoked=revoked,
                revoked_roles=revoked_roles,
                audit_trail_arn=outputs.get("AuditTrailArn", ""),
            )
        except KeyError as exc:
            raise FedstepError(f"the stack has no output {exc}; is it a fedstep stack, fully deployed?") from None

    def client_config(self, client_id: str, region: str | None, **extra: object) -> dict[str, object]:
        """A ready client agent config (the file `fedstep-client run --config` reads)."""
        if client_id in self.revoked:
            raise FedstepError(
                f"client {client_id!r} is revoked in the deployment config: its role can no longer be assumed "
                '(reinstate it with "revoked": false and deploy; docs/operations.md)'
            )
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
        """Read the outputs of stack `stack_name` and of its nested stacks (one call per client group)."""
        try:
            stack = _describe(cfn, stack_name)
            pages = cfn.get_paginator("list_stack_resources").paginate(StackName=stack_name)
            nested = [
                r["PhysicalResourceId"]
                for page in pages
                for r in page["StackResourceSummaries"]
                if r["ResourceType"] == "AWS::CloudFormation::Stack" and r.get("PhysicalResourceId")
            ]
            groups = [_outputs(_describe(cfn, stack_id)) for stack_id in nested]
        except ClientError as exc:
            raise FedstepError(f"cannot read stack {stack_name!r}: {exc}") from None
        return cls.parse(_outputs(stack), [g for g in groups if "ClientIds" in g])


def _describe(cfn: Any, stack: str) -> dict[str, Any]:
    return cfn.describe_stacks(StackName=stack)["Stacks"][0]


def _outputs(stack: dict[str, Any]) -> dict[str, str]:
    return {o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs", [])}
