"""Secure defaults, one place per service: every bucket, queue, topic, table, key and log group of
the stack is created here, encrypted with the stack's customer-managed key where the service allows,
TLS-only, private, and retained on stack deletion where it holds data."""

from __future__ import annotations

import aws_cdk as cdk
from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_logs as logs
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_sns as sns
from aws_cdk import aws_sqs as sqs
from constructs import Construct

from fedstep.core import keys
from infra.config import Retention

CLIENT_PARTITIONS = [f"{keys.CLIENT_PK_PREFIX}*", f"{keys.FEEDBACK_PK_PREFIX}*", f"{keys.INBOX_PK_PREFIX}*"]
"""The table's partitions that belong to clients: their own (`CLIENT#`), the feedback to them (`FEEDBACK#`)
and the shares relayed to them in a secure round (`INBOX#`)."""


def partitions(operator: str, patterns: list[str]) -> dict[str, dict[str, object]]:
    """Conditions on the partitions a DynamoDB request touches (`dynamodb:LeadingKeys`, which must be
    present): all of them match `patterns` (`operator` StringLike), or none does (StringNotLike)."""
    return {f"ForAllValues:{operator}": {"dynamodb:LeadingKeys": patterns}, "Null": {"dynamodb:LeadingKeys": "false"}}


def acknowledge(construct: Construct, rule: str, reason: str) -> None:
    """Acknowledge one cdk-nag finding on `construct`; every acknowledgement carries its reason."""
    cdk.Validations.of(construct).acknowledge(cdk.Acknowledgment(id=rule, reason=reason))


def logical_id(construct: Construct) -> str:
    """The CloudFormation logical id of an L2 construct's resource (cdk-nag names findings by it)."""
    return cdk.Stack.of(construct).get_logical_id(construct.node.default_child)  # type: ignore[arg-type]


def reference_name(scope: Construct, token: str) -> str:
    """How cdk-nag names a reference in a finding: `<id>.Arn` for `Fn::GetAtt [id, Arn]` (a resource of
    `scope`'s stack), `<name>` for `Ref name` (a parameter, e.g. a nested stack's)."""
    resolved = cdk.Stack.of(scope).resolve(token)
    if "Fn::GetAtt" in resolved:
        return ".".join(resolved["Fn::GetAtt"])
    return resolved["Ref"]


def key(scope: Construct, project: str) -> kms.Key:
    """The stack's customer-managed key (rotated yearly) for S3, SQS, SNS, DynamoDB and CloudWatch
    Logs (the state machine's execution log holds round data). CloudWatch Logs may use it only for
    this account's and region's log groups."""
    stack = cdk.Stack.of(scope)
    key_ = kms.Key(
        scope,
        "Key",
        alias=f"alias/{project}",
        description=f"{project}: models, updates, messages, round records and logs",
        enable_key_rotation=True,
        removal_policy=cdk.RemovalPolicy.RETAIN,
    )
    key_.add_to_resource_policy(
        iam.PolicyStatement(
            sid="CloudWatchLogsOfThisAccount",
            principals=[iam.ServicePrincipal(f"logs.{stack.region}.amazonaws.com")],
            actions=["kms:Encrypt*", "kms:Decrypt*", "kms:ReEncrypt*", "kms:GenerateDataKey*", "kms:Describe*"],
            resources=["*"],
            conditions={
                "ArnLike": {
                    "kms:EncryptionContext:aws:logs:arn": stack.format_arn(
                        service="logs",
                        resource="log-group",
                        resource_name="*",
                        arn_format=cdk.ArnFormat.COLON_RESOURCE_NAME,
                    )
                }
            },
        )
    )
    return key_


def let_service_use_key(key_: kms.Key, sid: str, service: str, actions: list[str], source_arn: str) -> None:
    """Let an AWS service principal use the key only on behalf of this stack's own resources: its
    request must come from this account (`aws:SourceAccount`) and for `source_arn` (`aws:SourceArn`,
    wildcards allowed), so that no one else's topic or alarm can make the service use the key for them
    (the confused deputy)."""
    key_.add_to_resource_policy(
        iam.PolicyStatement(
            sid=sid,
            principals=[iam.ServicePrincipal(service)],
            actions=actions,
            resources=["*"],
            conditions={
                "StringEquals": {"aws:SourceAccount": cdk.Stack.of(key_).account},
                "ArnLike": {"aws:SourceArn": source_arn},
            },
        )
    )


def let_sns_deliver(key_: kms.Key, sid: str, topic: sns.Topic) -> None:
    """Let SNS use the key to deliver `topic`'s messages to queues encrypted with it (its subscribers,
    its dead-letter queues), for that topic only. The topic's ARN is built from its name: a reference
    to the topic, which is encrypted with the key, would make the key and the topic depend on each other."""
    name = topic.node.default_child.topic_name  # type: ignore[union-attr]  # the name given, not a reference
    arn = cdk.Stack.of(key_).format_arn(service="sns", resource=name)
    let_service_use_key(key_, sid, "sns.amazonaws.com", ["kms:Decrypt", "kms:GenerateDataKey"], arn)


def access_log_bucket(scope: Construct, retention: Retention) -> s3.Bucket:
    """Server access logs of the model registry (S3 log delivery requires S3-managed encryption)."""
    bucket = s3.Bucket(
        scope,
        "AccessLogs",
        encryption=s3.BucketEncryption.S3_MANAGED,
        block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
        enforce_ssl=True,
        object_ownership=s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
        lifecycle_rules=[s3.LifecycleRule(id="expire-access-logs", expiration=cdk.Duration.days(retention.log_days))],
        removal_policy=cdk.RemovalPolicy.RETAIN,
    )
    acknowledge(bucket, "AwsSolutions-S1", "This is the access-log bucket; logging it to itself would loop.")
    return bucket


def model_bucket(scope: Construct, key_: kms.IKey, logs_bucket: s3.IBucket, retention: Retention) -> s3.Bucket:
    """The model registry: versioned, KMS-encrypted, TLS-only, private; old updates expire."""
    return s3.Bucket(
        scope,
        "ModelRegistry",
        encryption=s3.BucketEncryption.KMS,
        encryption_key=key_,
        bucket_key_enabled=True,
        block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
        enforce_ssl=True,
        versioned=True,
        object_ownership=s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
        server_access_logs_bucket=logs_bucket,
        server_access_logs_prefix="model-registry/",
        lifecycle_rules=[
            s3.LifecycleRule(
                id="expire-client-updates",
                prefix="updates/",
                expiration=cdk.Duration.days(retention.update_days),
                noncurrent_version_expiration=cdk.Duration.days(1),
            ),
            s3.LifecycleRule(id="expire-old-versions", noncurrent_version_expiration=cdk.Duration.days(30)),
            # parts of a multipart upload never completed (an agent's upload, a sliced round's model
            # whose run failed) are billed until aborted
            s3.LifecycleRule(
                id="abort-incomplete-uploads", abort_incomplete_multipart_upload_after=cdk.Duration.days(7)
            ),
        ],
        removal_policy=cdk.RemovalPolicy.RETAIN,
    )


def table(scope: Construct, key_: kms.IKey) -> dynamodb.Table:
    """The single table (pk = run id, sk = kind/round/client) with a NEW_IMAGE stream and PITR."""
    return dynamodb.Table(
        scope,
        "Updates",
        partition_key=dynamodb.Attribute(name="pk", type=dynamodb.AttributeType.STRING),
        sort_key=dynamodb.Attribute(name="sk", type=dynamodb.AttributeType.STRING),
        billing_mode=dynamodb.BillingMode.PAY_PER_REQUEST,
        stream=dynamodb.StreamViewType.NEW_IMAGE,
        encryption=dynamodb.TableEncryption.CUSTOMER_MANAGED,
        encryption_key=key_,
        point_in_time_recovery_specification=dynamodb.PointInTimeRecoverySpecification(
            point_in_time_recovery_enabled=True
        ),
        removal_policy=cdk.RemovalPolicy.RETAIN,
    )


def topic(scope: Construct, construct_id: str, name: str, key_: kms.IKey) -> sns.Topic:
    """Every topic: KMS-encrypted with the stack's key, TLS only."""
    return sns.Topic(scope, construct_id, topic_name=name, master_key=key_, enforce_ssl=True)


def _encrypted_queue(scope: Construct, construct_id: str, name: str, key_: kms.IKey, **props: object) -> sqs.Queue:
    """Every queue: KMS-encrypted with the stack's key, TLS only."""
    return sqs.Queue(
        scope,
        construct_id,
        queue_name=name,
        encryption=sqs.QueueEncryption.KMS,
        encryption_master_key=key_,
        enforce_ssl=True,
        **props,  # type: ignore[arg-type]
    )


def dead_letter_queue(scope: Construct, construct_id: str, name: str, key_: kms.IKey) -> sqs.Queue:
    """Where messages that failed too often go; kept 14 days (the SQS maximum) for inspection."""
    return _encrypted_queue(scope, construct_id, name, key_, retention_period=cdk.Duration.days(14))


def queue(
    scope: Construct, construct_id: str, name: str, key_: kms.IKey, retention: Retention, max_receives: int = 5
) -> sqs.Queue:
    """A work queue with its own dead-letter queue (after `max_receives` receives, default 5);
    a received message stays invisible to others for 15 minutes."""
    dlq = dead_letter_queue(scope, f"{construct_id}DeadLetters", f"{name}-dlq", key_)
    return _encrypted_queue(
        scope,
        construct_id,
        name,
        key_,
        visibility_timeout=cdk.Duration.minutes(15),
        retention_period=cdk.Duration.days(retention.message_days),
        dead_letter_queue=sqs.DeadLetterQueue(max_receive_count=max_receives, queue=dlq),
    )


def log_group(scope: Construct, construct_id: str, retention: Retention, key_: kms.IKey) -> logs.LogGroup:
    """A log group kept `retention.log_days` days, encrypted with the stack's key."""
    group = logs.LogGroup(scope, construct_id, encryption_key=key_, removal_policy=cdk.RemovalPolicy.RETAIN)
    group.node.default_child.retention_in_days = retention.log_days  # type: ignore[union-attr]
    return group
