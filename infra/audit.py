"""The optional audit trail (deployment config `audit`): a CloudTrail trail of the stack's data events
(who wrote to the round table, who wrote to the model registry, who read a global model, an
architecture or the approved-model registry) into a bucket of its own: KMS-encrypted with a key of its
own, versioned, locked (S3 Object Lock), private and TLS-only. Queries in docs/security.md ("Audit trail").

The trail selects events by key prefix (`event_selectors`): reads under `runs/` (global models, states,
architectures, cards, plans) and `registry/`, never under `updates/`, so that the aggregation function's
many ranged reads of the clients' updates are not billed as events; every write to the bucket and every
write to the table is."""

from __future__ import annotations

import aws_cdk as cdk
from aws_cdk import aws_cloudtrail as cloudtrail
from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_s3 as s3
from constructs import Construct

from fedstep.core import keys
from infra.config import AuditConfig, DeploymentConfig

READ_PREFIXES = (keys.RUNS_PREFIX, keys.REGISTRY_PREFIX)
"""Key prefixes of the model registry whose reads the trail records (global models and the files beside
them, the approved pointers); reads under `updates/` are not recorded."""


def trail_name(project: str) -> str:
    return f"{project}-audit"


def event_selectors(table_arn: str, bucket_arn: str) -> list[cloudtrail.CfnTrail.AdvancedEventSelectorProperty]:
    """The trail's advanced event selectors: table writes, bucket writes, and reads under `READ_PREFIXES`."""

    def selector(name: str, kind: str, read_only: str, arn: tuple[str, list[str]]):
        operator, values = arn
        return cloudtrail.CfnTrail.AdvancedEventSelectorProperty(
            name=name,
            field_selectors=[
                cloudtrail.CfnTrail.AdvancedFieldSelectorProperty(field="eventCategory", equal_to=["Data"]),
                cloudtrail.CfnTrail.AdvancedFieldSelectorProperty(field="resources.type", equal_to=[kind]),
                cloudtrail.CfnTrail.AdvancedFieldSelectorProperty(field="readOnly", equal_to=[read_only]),
                cloudtrail.CfnTrail.AdvancedFieldSelectorProperty(field="resources.ARN", **{operator: values}),
            ],
        )

    return [
        selector("round table writes", "AWS::DynamoDB::Table", "false", ("equal_to", [table_arn])),
        selector("model registry writes", "AWS::S3::Object", "false", ("starts_with", [f"{bucket_arn}/"])),
        selector(
            "model, architecture and registry reads",
            "AWS::S3::Object",
            "true",
            ("starts_with", [f"{bucket_arn}/{prefix}" for prefix in READ_PREFIXES]),
        ),
    ]


class AuditTrail(Construct):
    """`trail` (a `CfnTrail`: the high-level `Trail` selects only S3 and Lambda data events) writing into
    `bucket`, encrypted with `key`."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        config: DeploymentConfig,
        settings: AuditConfig,
        table: dynamodb.Table,
        bucket: s3.Bucket,
        access_logs: s3.IBucket,
    ) -> None:
        super().__init__(scope, construct_id)
        stack = cdk.Stack.of(self)
        name = trail_name(config.project)
        trail_arn = stack.format_arn(service="cloudtrail", resource="trail", resource_name=name)
        cloudtrail_principal = iam.ServicePrincipal("cloudtrail.amazonaws.com")
        from_this_trail = {"StringEquals": {"aws:SourceArn": trail_arn}}

        self.key = kms.Key(
            self,
            "Key",
            alias=f"alias/{config.project}-audit",
            description=f"{config.project}: the audit trail's log files",
            enable_key_rotation=True,
            removal_policy=cdk.RemovalPolicy.RETAIN,
        )
        self.key.add_to_resource_policy(
            iam.PolicyStatement(
                sid="CloudTrailEncryptsThisTrailsLogs",
                principals=[cloudtrail_principal],
                actions=["kms:GenerateDataKey*"],
                resources=["*"],
                conditions={
                    **from_this_trail,
                    "StringLike": {
                        "kms:EncryptionContext:aws:cloudtrail:arn": stack.format_arn(
                            service="cloudtrail", resource="trail", resource_name="*"
                        )
                    },
                },
            )
        )
        self.key.add_to_resource_policy(
            iam.PolicyStatement(
                sid="CloudTrailDescribesTheKey",
                principals=[cloudtrail_principal],
                actions=["kms:DescribeKey"],
                resources=["*"],
                conditions=from_this_trail,
            )
        )
        lock = cdk.Duration.days(settings.retention_days)
        self.bucket = s3.Bucket(
            self,
            "Logs",
            encryption=s3.BucketEncryption.KMS,
            encryption_key=self.key,
            bucket_key_enabled=True,
            block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
            enforce_ssl=True,
            versioned=True,
            object_lock_enabled=True,
            object_lock_default_retention=(
                s3.ObjectLockRetention.compliance(lock)
                if settings.lock_mode == "compliance"
                else s3.ObjectLockRetention.governance(lock)
            ),
            object_ownership=s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
            server_access_logs_bucket=access_logs,
            server_access_logs_prefix="audit-trail/",
            lifecycle_rules=[
                # a log file outlives its lock by a day, then its version goes (a locked one cannot)
                s3.LifecycleRule(
                    id="expire-audit-logs",
                    expiration=cdk.Duration.days(settings.retention_days + 1),
                    noncurrent_version_expiration=cdk.Duration.days(1),
                    abort_incomplete_multipart_upload_after=cdk.Duration.days(7),
                )
            ],
            removal_policy=cdk.RemovalPolicy.RETAIN,
        )
        self.bucket.add_to_resource_policy(
            iam.PolicyStatement(
                sid="CloudTrailChecksTheBucket",
                principals=[cloudtrail_principal],
                actions=["s3:GetBucketAcl"],
                resources=[self.bucket.bucket_arn],
                conditions=from_this_trail,
            )
        )
        self.bucket.add_to_resource_policy(
            iam.PolicyStatement(
                sid="CloudTrailWritesThisTrailsLogs",
                principals=[cloudtrail_principal],
                actions=["s3:PutObject"],
                resources=[self.bucket.arn_for_objects(f"AWSLogs/{stack.account}/*")],
                conditions={"StringEquals": {"aws:SourceArn": trail_arn, "s3:x-amz-acl": "bucket-owner-full-control"}},
            )
        )
        self.trail = cloudtrail.CfnTrail(
            self,
            "Trail",
            trail_name=name,
            is_logging=True,
            s3_bucket_name=self.bucket.bucket_name,
            kms_key_id=self.key.key_arn,
            enable_log_file_validation=True,
            include_global_service_events=False,
            is_multi_region_trail=False,
            advanced_event_selectors=event_selectors(table.table_arn, bucket.bucket_arn),
        )
        assert self.bucket.policy is not None
        self.trail.node.add_dependency(self.bucket.policy)  # CloudTrail checks it may write when it is created
        self.trail_arn = trail_arn
