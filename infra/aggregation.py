"""The aggregation function: opens rounds for the state machine, completes them from the table's
stream or at their deadline, writes global models. Its memory and timeout are sized to the
deployment's `max_model_mb` (`infra.config.aggregation_memory_mb`, `aggregation_timeout_s`)."""

from __future__ import annotations

import aws_cdk as cdk
from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_lambda_event_sources as sources
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_sns as sns
from constructs import Construct

from fedstep.core import keys
from fedstep.core.schemas.items import STREAM_KINDS
from infra import secure
from infra.bundling import aggregation_code
from infra.config import DeploymentConfig, aggregation_memory_mb, aggregation_timeout_s

LEASE_MARGIN_S = 60
"""A claim on a round outlives the function's timeout by this much, so a live holder never loses it."""

METRICS_NAMESPACE = "fedstep"
"""CloudWatch namespace of the per-round metrics (dimensions: service, project); see lambdas/aggregate.py."""


class Aggregation(Construct):
    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        config: DeploymentConfig,
        bucket: s3.IBucket,
        table: dynamodb.ITable,
        topic: sns.ITopic,
        key: kms.IKey,
    ) -> None:
        super().__init__(scope, construct_id)
        log_group = secure.log_group(self, "Logs", config.retention, key)
        role = iam.Role(
            self,
            "Role",
            assumed_by=iam.ServicePrincipal("lambda.amazonaws.com"),
            description="fedstep aggregation function",
        )
        log_group.grant_write(role)
        role.add_to_policy(
            iam.PolicyStatement(
                sid="ReadModelsAndUpdates",
                # a sliced round reads each update at the version its plan checked (GetObject with a
                # VersionId is s3:GetObjectVersion)
                actions=["s3:GetObject", "s3:GetObjectVersion"],
                resources=[bucket.arn_for_objects("runs/*"), bucket.arn_for_objects(f"{keys.UPDATES_PREFIX}*")],
            )
        )
        role.add_to_policy(
            iam.PolicyStatement(
                sid="WriteGlobalModels",
                actions=["s3:PutObject", "s3:ListMultipartUploadParts", "s3:AbortMultipartUpload"],
                resources=[bucket.arn_for_objects(keys.GLOBAL_KEY_PATTERN)],
            )
        )
        role.add_to_policy(
            iam.PolicyStatement(
                # what a failed aggregation wrote, best effort (a delete marker in the versioned bucket)
                sid="DeleteWhatAFailedAggregationWrote",
                actions=["s3:DeleteObject"],
                resources=[
                    bucket.arn_for_objects(keys.GLOBAL_KEY_PATTERN),
                    bucket.arn_for_objects(keys.STATE_KEY_PATTERN),
                    bucket.arn_for_objects(keys.MANIFEST_KEY_PATTERN),
                ],
            )
        )
        role.add_to_policy(
            iam.PolicyStatement(
                sid="NeverWhatARunStartsFrom",  # the operator's: `fedstep start` and `--resume`
                effect=iam.Effect.DENY,
                actions=["s3:PutObject"],
                resources=[bucket.arn_for_objects(pattern) for pattern in keys.START_KEY_PATTERNS],
            )
        )
        role.add_to_policy(
            iam.PolicyStatement(
                sid="WriteStrategyStatesSlicePlansAndManifests",
                actions=["s3:PutObject"],
                resources=[
                    bucket.arn_for_objects(keys.STATE_KEY_PATTERN),
                    bucket.arn_for_objects(keys.PLAN_KEY_PATTERN),
                    bucket.arn_for_objects(keys.MANIFEST_KEY_PATTERN),
                ],
            )
        )
        role.add_to_policy(
            iam.PolicyStatement(
                sid="ReadRecordsAndUpdates",
                actions=["dynamodb:GetItem", "dynamodb:BatchGetItem", "dynamodb:Query"],
                resources=[table.table_arn],
            )
        )
        role.add_to_policy(
            iam.PolicyStatement(
                sid="UpdateRoundRecords",  # open, claim, hold, release, commit, report: in the run's partition
                actions=["dynamodb:UpdateItem"],
                resources=[table.table_arn],
                # not the clients' partitions, nor the operator's stop markers (it only checks those)
                conditions=secure.partitions("StringNotLike", [*secure.CLIENT_PARTITIONS, f"{keys.STOP_PK_PREFIX}*"]),
            )
        )
        role.add_to_policy(
            iam.PolicyStatement(
                sid="CommitOnlyRunsNotStopped",  # a round's commit checks the run's stop marker (a transaction)
                actions=["dynamodb:ConditionCheckItem"],
                resources=[table.table_arn],
                conditions=secure.partitions("StringLike", [f"{keys.STOP_PK_PREFIX}*"]),
            )
        )
        role.add_to_policy(
            iam.PolicyStatement(
                sid="PutFeedback",  # why a client's update was rejected, in that client's feedback partition
                actions=["dynamodb:PutItem"],
                resources=[table.table_arn],
                conditions=secure.partitions("StringLike", [f"{keys.FEEDBACK_PK_PREFIX}*"]),
            )
        )
        role.add_to_policy(
            iam.PolicyStatement(
                sid="RelaySecAggShares",  # a secure round's sealed shares, into each recipient's inbox
                actions=["dynamodb:PutItem", "dynamodb:BatchWriteItem"],  # 25 shares a request
                resources=[table.table_arn],
                conditions=secure.partitions("StringLike", [f"{keys.INBOX_PK_PREFIX}*"]),
            )
        )
        role.add_to_policy(
            iam.PolicyStatement(
                sid="WriteSecAggRosters",
                actions=["s3:PutObject"],
                resources=[bucket.arn_for_objects(keys.SECAGG_ROSTER_KEY_PATTERN)],
            )
        )
        role.add_to_policy(
            iam.PolicyStatement(sid="PublishRounds", actions=["sns:Publish"], resources=[topic.topic_arn])
        )
        role.add_to_policy(
            iam.PolicyStatement(
                sid="UseStackKey", actions=["kms:Decrypt", "kms:GenerateDataKey"], resources=[key.key_arn]
            )
        )
        # The state machine invokes this function at a round's deadline, so it is named here by its
        # fixed name rather than referenced (a reference both ways would be a dependency cycle).
        machine_arn = cdk.Stack.of(self).format_arn(
            service="states",
            resource="stateMachine",
            resource_name=config.state_machine_name,
            arn_format=cdk.ArnFormat.COLON_RESOURCE_NAME,
        )
        role.add_to_policy(
            iam.PolicyStatement(
                sid="CompleteRoundTasks",
                actions=["states:SendTaskSuccess", "states:SendTaskFailure", "states:SendTaskHeartbeat"],
                resources=[machine_arn],
            )
        )

        self.failures = secure.dead_letter_queue(self, "StreamFailures", f"{config.project}-aggregation-failures", key)
        timeout_s = aggregation_timeout_s(config.max_model_mb, len(config.clients))
        self.function = lambda_.Function(
            self,
            "Function",
            runtime=lambda_.Runtime.PYTHON_3_12,
            architecture=lambda_.Architecture.X86_64,
            handler="lambdas.aggregate.handler",
            code=aggregation_code(),
            role=role,
            memory_size=aggregation_memory_mb(config.function_model_mb),
            timeout=cdk.Duration.seconds(timeout_s),
            tracing=lambda_.Tracing.ACTIVE,
            log_group=log_group,
            environment={
                "BUCKET_NAME": bucket.bucket_name,
                "TABLE_NAME": table.table_name,
                "TOPIC_ARN": topic.topic_arn,
                "LEASE_S": str(timeout_s + LEASE_MARGIN_S),
                **({"SLICE_BYTES": str(config.slice_bytes)} if config.slice_bytes else {}),
                "POWERTOOLS_SERVICE_NAME": "fedstep-aggregate",
                "POWERTOOLS_METRICS_NAMESPACE": METRICS_NAMESPACE,
                "PROJECT": config.project,
            },
        )
        self.function.add_event_source(
            sources.DynamoEventSource(
                table,
                starting_position=lambda_.StartingPosition.TRIM_HORIZON,
                batch_size=100,
                retry_attempts=5,
                bisect_batch_on_error=True,
                report_batch_item_failures=True,
                on_failure=sources.SqsDlq(self.failures),
                # Update and decline items, as clients write or rewrite them in their own partitions (a
                # decline completes a round as an update does), and a secure round's keys, share and
                # reveal items (each may complete a phase): the function never writes there, so its own
                # writes never invoke it. Heartbeats and evaluation items never invoke it.
                filters=[
                    lambda_.FilterCriteria.filter(
                        {
                            "eventName": lambda_.FilterRule.or_("INSERT", "MODIFY"),
                            "dynamodb": {
                                "Keys": {"pk": {"S": lambda_.FilterRule.begins_with(keys.CLIENT_PK_PREFIX)}},
                                "NewImage": {"kind": {"S": lambda_.FilterRule.or_(*STREAM_KINDS)}},
                            },
                        }
                    )
                ],
            )
        )
        objects = f"Resource::<{secure.logical_id(bucket)}.Arn>"
        for finding, reason in {
            "Resource::*": "X-Ray tracing and dynamodb:ListStreams do not support resource-level permissions.",
            f"{objects}/runs/*": "Reads any run's model and global weights: the run id is chosen at run time.",
            f"{objects}/{keys.UPDATES_PREFIX}*": "Reads any client's update of any run: "
            "aggregating them is this function's job.",
            f"{objects}/{keys.GLOBAL_KEY_PATTERN}": "Writes global models only (whole, or in parts when "
            "sliced); run id and round are chosen at run time.",
            f"{objects}/{keys.PLAN_KEY_PATTERN}": "Writes the slice plans of sliced rounds only; run id and "
            "round are chosen at run time.",
            f"{objects}/{keys.MANIFEST_KEY_PATTERN}": "Writes each round's update manifest (the updates it "
            "aggregated), once; run id, round and version are chosen at run time.",
            f"{objects}/{keys.STATE_KEY_PATTERN}": "Writes the strategy's state after a round (server optimizer "
            "moments, adaptive clip norm); run id, round and version are chosen at run time.",
            f"{objects}/{keys.SECAGG_ROSTER_KEY_PATTERN}": "Writes a secure round's roster (the clients' public "
            "keys), once per attempt; run id, round and attempt are chosen at run time.",
            "Action::kms:GenerateDataKey*": "CDK's grant for sending failed batches to the KMS-encrypted "
            "failure queue.",
            "Action::kms:ReEncrypt*": "CDK's grant for sending failed batches to the KMS-encrypted failure queue.",
        }.items():
            secure.acknowledge(role, f"AwsSolutions-IAM5[{finding}]", reason)
        secure.acknowledge(
            self.failures,
            "AwsSolutions-SQS3",
            "This queue is itself the dead-letter destination of the stream's failed batches.",
        )
        secure.acknowledge(
            self.function,
            "AwsSolutions-L1",
            "Pinned to python3.12: the bundled numpy and safetensors wheels are built for CPython 3.12 "
            "(infra/bundling.py); upgrade the runtime and the bundle together.",
        )
