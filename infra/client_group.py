"""A group of up to `CLIENTS_PER_GROUP` clients in one nested stack: for each client its queue, the
queue's dead-letter queue, its subscription to the round topic and its IAM role (`ClientAccess`), and
the dead-letter alarms of the group's queues.

The stack's shared resources (topic, undelivered-messages queue, bucket, table, key, alarm topic) stay
in the parent, which passes their ARNs in as the nested stack's named parameters (`PARAMETERS`).
Each group's outputs name its clients (`ClientIds`), those of them revoked (`RevokedClientIds`, when
any is) and each client's queue URL and role ARN (`keys.client_output_key`,
`keys.client_role_output_key`); `fedstep.aws.stack.StackOutputs.of_stack` reads them. A revoked client
keeps its resources, so revoking one and reinstating it change no resource but its role's policies.

Clients fill the groups in the order of the deployment config (`client_groups`), so a client keeps
its group, and its queue, as long as no client before it is removed (docs/design-notes.md).
"""

from __future__ import annotations

from collections.abc import Sequence

import aws_cdk as cdk
from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_sns as sns
from aws_cdk import aws_sns_subscriptions as subs
from aws_cdk import aws_sqs as sqs
from constructs import Construct

from fedstep.core import keys
from infra import secure
from infra.client_access import ClientAccess
from infra.config import ClientConfig, DeploymentConfig
from infra.monitoring import dead_letter_alarms

CLIENTS_PER_GROUP = 50
"""Clients per nested stack: 6 resources each plus one alarm per 10 (305 of CloudFormation's 500), and
2 outputs each plus `ClientIds` (101 of its 200 outputs). A multiple of `QUEUES_PER_ALARM`, so that
the dead-letter alarms keep one numbering across groups."""


def allow_topic(undelivered: sqs.IQueue, topic: sns.Topic, key: kms.Key) -> None:
    """What CDK adds to the parent's resources when a queue subscribes to its topic, added once in the
    parent for every group's subscriptions: the topic may move round messages it cannot deliver to
    `undelivered`, and SNS may use the key (the client queues are encrypted with it) for this topic
    only (`secure.let_service_use_key`)."""
    secure.let_sns_deliver(key, "RoundTopicDeliversToEncryptedQueues", topic)
    undelivered.add_to_resource_policy(
        iam.PolicyStatement(
            principals=[iam.ServicePrincipal("sns.amazonaws.com")],
            actions=["sqs:SendMessage"],
            resources=[undelivered.queue_arn],
            conditions={"ArnEquals": {"aws:SourceArn": topic.topic_arn}},
        )
    )


def client_groups(clients: Sequence[ClientConfig]) -> list[tuple[ClientConfig, ...]]:
    """The clients in groups of `CLIENTS_PER_GROUP`, in config order (the last group may be smaller)."""
    return [tuple(clients[i : i + CLIENTS_PER_GROUP]) for i in range(0, len(clients), CLIENTS_PER_GROUP)]


def group_id(index: int) -> str:
    """The construct id (and logical id stem) of the nested stack of group `index` (0-based): Clients1, ..."""
    return f"Clients{index + 1}"


PARAMETERS = ("RoundTopicArn", "UndeliveredQueueArn", "ModelRegistryArn", "TableArn", "KeyArn", "AlarmTopicArn")
"""The nested stack's parameters: the ARNs of the parent's resources its clients use."""


class ClientGroup(cdk.NestedStack):
    """The per-client resources of `clients` (one group), in a nested stack of the fedstep stack. The
    parent's resources come in as parameters (`PARAMETERS`), by ARN: a nested stack may not depend on
    its parent's constructs, and named parameters keep the template (and cdk-nag's finding names) plain."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        config: DeploymentConfig,
        clients: Sequence[ClientConfig],
        first_alarm: int,
        topic: sns.ITopic,
        undelivered: sqs.IQueue,
        bucket: s3.IBucket,
        table: dynamodb.ITable,
        key: kms.IKey,
        alarm_topic: sns.ITopic,
    ) -> None:
        values = (topic.topic_arn, undelivered.queue_arn, bucket.bucket_arn, table.table_arn, key.key_arn)
        super().__init__(
            scope,
            construct_id,
            description=f"{config.project}: {len(clients)} clients, from {clients[0].id}",
            parameters=dict(zip(PARAMETERS, (*values, alarm_topic.topic_arn), strict=True)),
        )
        arn = {name: cdk.CfnParameter(self, name, type="String").value_as_string for name in PARAMETERS}
        round_topic = sns.Topic.from_topic_arn(self, "RoundTopic", arn["RoundTopicArn"])
        alarms_topic = sns.Topic.from_topic_arn(self, "AlarmTopic", arn["AlarmTopicArn"])
        registry = s3.Bucket.from_bucket_arn(self, "ModelRegistry", arn["ModelRegistryArn"])
        updates = dynamodb.Table.from_table_arn(self, "Updates", arn["TableArn"])
        stack_key = kms.Key.from_key_arn(self, "Key", arn["KeyArn"])
        dead_letter_queues: list[sqs.IQueue] = []
        for client in clients:
            scope_ = Construct(self, f"Client-{client.id}")  # the client's queue, its DLQ and its role
            queue = secure.queue(scope_, "Queue", config.queue_name(client.id), stack_key, config.retention)
            dead_letter_queues.append(queue.dead_letter_queue.queue)
            subscription = round_topic.add_subscription(
                subs.SqsSubscription(
                    queue,
                    raw_message_delivery=True,
                    filter_policy={"clients": sns.SubscriptionFilter.string_filter(allowlist=[client.id])},
                )
            )
            # What CDK's `dead_letter_queue` would do for the parent's queue is done by the parent
            # (`allow_topic`); here only the subscription's redrive policy.
            redrive = {"deadLetterTargetArn": arn["UndeliveredQueueArn"]}
            subscription.node.default_child.redrive_policy = redrive  # type: ignore[union-attr]
            access = ClientAccess(
                scope_, "Access", client=client, queue=queue, bucket=registry, table=updates, key=stack_key
            )
            cdk.Tags.of(scope_).add("client", client.id)
            cdk.CfnOutput(
                self, keys.client_output_key(client.id), value=queue.queue_url, description=f"queue of {client.id}"
            )
            cdk.CfnOutput(
                self,
                keys.client_role_output_key(client.id),
                value=access.role.role_arn,
                description=f"IAM role of {client.id}",
            )
        cdk.CfnOutput(self, "ClientIds", value=",".join(c.id for c in clients))
        revoked = [c.id for c in clients if c.revoked]
        if revoked:  # offboarded: no run selects them (`StackOutputs.revoked`)
            cdk.CfnOutput(self, "RevokedClientIds", value=",".join(revoked))
        self.alarms = dead_letter_alarms(self, config.project, dead_letter_queues, first_alarm, alarms_topic)
