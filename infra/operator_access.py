"""The operator's role: the least privilege `fedstep start/resume/stop/status/runs/evaluate/promote/
download/report/cost/clients` need, and nothing a client or the aggregation function writes.

| what | allowed on |
|---|---|
| describe the stack and its nested stacks, list their resources | this stack (`<stack>` and `<stack>-*`) |
| start executions, list them, describe the state machine | the training state machine |
| describe, stop, read the history of executions | the training state machine's executions |
| read | every object of the model registry (architectures, global models, states, cards, the registry) |
| write | a run's architecture and simulated partition, what it starts from (`global-initial`, `global-resumed`, |
|       | `state-resumed`), model cards (`fedstep promote`) and the approved-model registry (`registry/*`) |
| put items | run records only: a run record's attributes, never in a client's (`CLIENT#`) or feedback partition |
| put items | stop markers (`fedstep stop`): a stop marker's attributes, only in a stop partition (`STOP#<run id>`) |
| read items | the whole table (runs, rounds, heartbeats, evaluations, feedback) |
| publish | the round topic (`fedstep evaluate`, and the run-ended message of `fedstep stop`) |
| generate data keys, decrypt | the stack's key, through S3 and SNS only |

The role never writes a round's result (`global-<claim>`, `state-<claim>`, `plan-*`), a round
record's fields through a client partition, or a client's update: those are the aggregation
function's and the clients'. Assume it with `aws sts assume-role --role-arn <OperatorRoleArn>`
(stack output) from a principal that `operator_principal_arn` names (default: the account's
principals allowed `sts:AssumeRole` on it); README "The operator's policy" lists it.
"""

from __future__ import annotations

from dataclasses import fields

import aws_cdk as cdk
from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_sns as sns
from aws_cdk import aws_stepfunctions as sfn
from constructs import Construct

from fedstep.core import keys
from fedstep.core.schemas import RunRecord, RunStop
from infra.config import DeploymentConfig
from infra.secure import CLIENT_PARTITIONS, acknowledge, logical_id, partitions

OPERATOR_WRITES = (
    keys.MODEL_KEY_PATTERN,
    keys.PARTITION_KEY_PATTERN,
    *keys.START_KEY_PATTERNS,
    keys.CARD_KEY_PATTERN,
    keys.STATISTICS_KEY_PATTERN,
    f"{keys.REGISTRY_PREFIX}*",
)
"""The S3 keys the operator writes (`fedstep start`, `fedstep local`, `fedstep promote`)."""
RUN_RECORD_ATTRIBUTES = sorted({keys.PK, keys.SK, "schema", "kind", *(f.name for f in fields(RunRecord))})
"""A run record's attributes: what the operator's items may hold (a round record's may not pass)."""
STOP_ATTRIBUTES = sorted({keys.PK, keys.SK, "schema", "kind", *(f.name for f in fields(RunStop))})
"""A stop marker's attributes (`fedstep stop`), written only in a stop partition (`STOP#<run id>`)."""


class OperatorAccess(Construct):
    """The operator role (stack output `OperatorRoleArn`)."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        config: DeploymentConfig,
        bucket: s3.IBucket,
        table: dynamodb.ITable,
        topic: sns.ITopic,
        machine: sfn.IStateMachine,
        key: kms.IKey,
    ) -> None:
        super().__init__(scope, construct_id)
        stack = cdk.Stack.of(self)
        principal: iam.IPrincipal = (
            iam.ArnPrincipal(config.operator_principal_arn)
            if config.operator_principal_arn
            else iam.AccountRootPrincipal()
        )
        stacks = [
            stack.format_arn(service="cloudformation", resource="stack", resource_name=f"{stack.stack_name}{suffix}/*")
            for suffix in ("", "-*")
        ]
        executions = stack.format_arn(
            service="states",
            resource="execution",
            resource_name=f"{config.state_machine_name}:*",
            arn_format=cdk.ArnFormat.COLON_RESOURCE_NAME,
        )
        region = stack.region
        document = iam.PolicyDocument(
            statements=[
                iam.PolicyStatement(
                    sid="ReadTheStack",
                    actions=["cloudformation:DescribeStacks", "cloudformation:ListStackResources"],
                    resources=stacks,
                ),
                iam.PolicyStatement(
                    sid="StartRuns",
                    actions=["states:StartExecution", "states:ListExecutions", "states:DescribeStateMachine"],
                    resources=[machine.state_machine_arn],
                ),
                iam.PolicyStatement(
                    sid="FollowAndStopRuns",
                    actions=["states:DescribeExecution", "states:StopExecution", "states:GetExecutionHistory"],
                    resources=[executions],
                ),
                iam.PolicyStatement(
                    # `fedstep verify` and `promote` hash a model over 16 MiB in ranged reads of one
                    # object version (GetObject with a VersionId is s3:GetObjectVersion)
                    sid="ReadTheRegistry",
                    actions=["s3:GetObject", "s3:GetObjectVersion"],
                    resources=[bucket.arn_for_objects("*")],
                ),
                iam.PolicyStatement(
                    # without it S3 answers a missing object (a run without partition.json, a model
                    # name never promoted) with AccessDenied instead of NoSuchKey
                    sid="TellMissingObjects",
                    actions=["s3:ListBucket"],
                    resources=[bucket.bucket_arn],
                    conditions={"StringLike": {"s3:prefix": ["runs/*", f"{keys.REGISTRY_PREFIX}*"]}},
                ),
                iam.PolicyStatement(
                    sid="WriteRunInputsAndPromotions",
                    actions=["s3:PutObject"],
                    resources=[bucket.arn_for_objects(pattern) for pattern in OPERATOR_WRITES],
                ),
                iam.PolicyStatement(
                    sid="ReadRecords",
                    actions=["dynamodb:GetItem", "dynamodb:BatchGetItem", "dynamodb:Query"],
                    resources=[table.table_arn],
                ),
                iam.PolicyStatement(
                    sid="WriteRunRecords",
                    actions=["dynamodb:PutItem"],
                    resources=[table.table_arn],
                    conditions={
                        **partitions("StringNotLike", CLIENT_PARTITIONS),
                        "ForAllValues:StringEquals": {"dynamodb:Attributes": RUN_RECORD_ATTRIBUTES},
                    },
                ),
                iam.PolicyStatement(
                    sid="StopRuns",
                    actions=["dynamodb:PutItem"],
                    resources=[table.table_arn],
                    conditions={
                        **partitions("StringLike", [f"{keys.STOP_PK_PREFIX}*"]),
                        "ForAllValues:StringEquals": {"dynamodb:Attributes": STOP_ATTRIBUTES},
                    },
                ),
                iam.PolicyStatement(sid="MessageClients", actions=["sns:Publish"], resources=[topic.topic_arn]),
                iam.PolicyStatement(
                    sid="UseStackKeyThroughS3AndSns",
                    actions=["kms:Decrypt", "kms:GenerateDataKey"],
                    resources=[key.key_arn],
                    conditions={
                        "StringEquals": {
                            "kms:ViaService": [f"s3.{region}.amazonaws.com", f"sns.{region}.amazonaws.com"]
                        }
                    },
                ),
            ]
        )
        self.role = iam.Role(
            self,
            "Role",
            assumed_by=principal,
            description="fedstep operator: start, follow, stop and promote runs",
            inline_policies={"operator": document},
        )
        objects = f"Resource::<{logical_id(bucket)}.Arn>"
        acknowledge(
            self.role,
            f"AwsSolutions-IAM5[{objects}/*]",
            "The operator reads any run's models, cards and the approved-model registry: the run ids are chosen at "
            "run time.",
        )
        for pattern in OPERATOR_WRITES:
            acknowledge(
                self.role,
                f"AwsSolutions-IAM5[{objects}/{pattern}]",
                "Run ids, rounds and model names are chosen at run time; the pattern fixes the kind of object.",
            )
        for finding in (
            f"Resource::arn:<AWS::Partition>:cloudformation:<AWS::Region>:<AWS::AccountId>:stack/{stack.stack_name}/*",
            f"Resource::arn:<AWS::Partition>:cloudformation:<AWS::Region>:<AWS::AccountId>:stack/{stack.stack_name}-*/*",
            f"Resource::arn:<AWS::Partition>:states:<AWS::Region>:<AWS::AccountId>:execution:"
            f"{config.state_machine_name}:*",
        ):
            acknowledge(
                self.role,
                f"AwsSolutions-IAM5[{finding}]",
                "Stack ids (this stack and its nested client stacks) and execution names (one per run) are chosen "
                "at deploy and run time.",
            )
        cdk.CfnOutput(stack, "OperatorRoleArn", value=self.role.role_arn, description="assume it to operate runs")
