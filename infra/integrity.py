"""The scheduled integrity check (`lambdas/verify.py`): a small function of the aggregation bundle, invoked
once a day by an EventBridge rule, that checks the runs started in the last `LOOKBACK_DAYS` against
their records once every `SWEEP_EVERY_DAYS` (a sweep larger than one invocation goes on the next day),
and the alarm `<project>-integrity-mismatch` on its `IntegrityMismatches` metric, notifying the
stack's alarm topic.

Its role reads and nothing more, but for its own place in the bucket: the run and round records (GetItem,
Query, and a Scan for the recent runs), the objects under `runs/` (at their versions: a model over 16 MiB
is hashed in ranged reads of one version), ListBucket so that a missing object is NoSuchKey rather than
AccessDenied, its cursor (`keys.integrity_cursor_key()`), the stack's key, and its log group (its
metrics are embedded in its logs: no cloudwatch:PutMetricData).
"""

from __future__ import annotations

import aws_cdk as cdk
from aws_cdk import aws_cloudwatch as cw
from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_events as events
from aws_cdk import aws_events_targets as targets
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_sns as sns
from constructs import Construct

from fedstep.core import keys
from infra import secure
from infra.aggregation import METRICS_NAMESPACE
from infra.bundling import aggregation_code
from infra.config import DeploymentConfig
from infra.monitoring import alarm_on_any

SERVICE = "fedstep-integrity"
"""The function's Powertools service: a dimension of its metrics."""
LOOKBACK_DAYS = 30
"""A sweep checks the runs started in the last 30 days."""
SWEEP_EVERY_DAYS = 7
"""A new sweep starts once a week (the rule's daily invocations go on with one under way)."""
TIMEOUT_S = 900
RESERVE_S = 60
"""The function stops checking when less than this is left of its time (s), and keeps its place."""
MEMORY_MB = 512
"""Objects are hashed a 16 MiB block at a time, whatever their size."""


class Integrity(Construct):
    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        config: DeploymentConfig,
        bucket: s3.IBucket,
        table: dynamodb.ITable,
        key: kms.IKey,
        alarm_topic: sns.ITopic,
    ) -> None:
        super().__init__(scope, construct_id)
        log_group = secure.log_group(self, "Logs", config.retention, key)
        role = iam.Role(
            self,
            "Role",
            assumed_by=iam.ServicePrincipal("lambda.amazonaws.com"),
            description="fedstep scheduled integrity check (reads the records and the registry)",
        )
        log_group.grant_write(role)
        role.add_to_policy(
            iam.PolicyStatement(
                sid="ReadRunObjects",
                actions=["s3:GetObject", "s3:GetObjectVersion"],
                resources=[bucket.arn_for_objects("runs/*")],
            )
        )
        role.add_to_policy(
            iam.PolicyStatement(
                # without it S3 answers a missing object with AccessDenied, and a missing model would
                # stop the check instead of being reported
                sid="TellMissingObjects",
                actions=["s3:ListBucket"],
                resources=[bucket.bucket_arn],
            )
        )
        role.add_to_policy(
            iam.PolicyStatement(
                sid="KeepItsPlace",
                actions=["s3:GetObject", "s3:PutObject"],
                resources=[bucket.arn_for_objects(keys.integrity_cursor_key())],
            )
        )
        role.add_to_policy(
            iam.PolicyStatement(
                sid="ReadRecords",
                actions=["dynamodb:GetItem", "dynamodb:Query", "dynamodb:Scan"],
                resources=[table.table_arn],
            )
        )
        role.add_to_policy(
            iam.PolicyStatement(
                sid="UseStackKey", actions=["kms:Decrypt", "kms:GenerateDataKey"], resources=[key.key_arn]
            )
        )
        self.function = lambda_.Function(
            self,
            "Function",
            function_name=f"{config.project}-integrity",
            description="Checks the objects of recent runs against the sha256 their records hold (fedstep verify)",
            runtime=lambda_.Runtime.PYTHON_3_12,
            architecture=lambda_.Architecture.X86_64,
            handler="lambdas.verify.handler",
            code=aggregation_code(),
            role=role,
            memory_size=MEMORY_MB,
            timeout=cdk.Duration.seconds(TIMEOUT_S),
            log_group=log_group,
            environment={
                "BUCKET_NAME": bucket.bucket_name,
                "TABLE_NAME": table.table_name,
                "LOOKBACK_DAYS": str(LOOKBACK_DAYS),
                "SWEEP_EVERY_DAYS": str(SWEEP_EVERY_DAYS),
                "RESERVE_S": str(RESERVE_S),
                "POWERTOOLS_SERVICE_NAME": SERVICE,
                "POWERTOOLS_METRICS_NAMESPACE": METRICS_NAMESPACE,
                "PROJECT": config.project,
            },
        )
        self.rule = events.Rule(
            self,
            "Daily",
            rule_name=f"{config.project}-integrity-check",
            description="Once a day: the integrity check goes on with its sweep, or starts one every "
            f"{SWEEP_EVERY_DAYS} days",
            schedule=events.Schedule.rate(cdk.Duration.days(1)),
            targets=[targets.LambdaFunction(self.function, retry_attempts=0)],
        )
        mismatches = cw.Metric(
            namespace=METRICS_NAMESPACE,
            metric_name="IntegrityMismatches",
            dimensions_map={"service": SERVICE, "project": config.project},
            statistic="Sum",
            period=cdk.Duration.days(1),
        )
        self.alarm = alarm_on_any(
            self,
            "Mismatch",
            mismatches,
            f"{config.project}-integrity-mismatch",
            "An object of a recent run does not match the sha256 its record holds, or is "
            "missing: it was replaced or deleted after it was written. `fedstep verify <run>` names each "
            "(round, key, expected, found); the function's log too. See docs/operations.md, Integrity.",
            alarm_topic,
        )
        self.failed = alarm_on_any(
            self,
            "Failed",
            self.function.metric_errors(period=cdk.Duration.days(1), statistic="Sum"),
            f"{config.project}-integrity-check-failed",
            "The scheduled integrity check failed (an error, a timeout, the table or the bucket "
            "unreachable): no run was checked that day. Its log says why. See docs/operations.md, Integrity.",
            alarm_topic,
        )
        objects = f"Resource::<{secure.logical_id(bucket)}.Arn>"
        secure.acknowledge(
            role,
            f"AwsSolutions-IAM5[{objects}/runs/*]",
            "Reads (never writes) any run's models, states, plans, manifests and cards: checking them against "
            "their records is this function's job; run ids are chosen at run time.",
        )
        secure.acknowledge(
            self.function,
            "AwsSolutions-L1",
            "Pinned to python3.12: the bundled numpy and safetensors wheels are built for CPython 3.12 "
            "(infra/bundling.py); upgrade the runtime and the bundle together.",
        )
