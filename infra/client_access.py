"""One IAM role per client, allowed exactly what its agent does and nothing more.

| what | allowed on |
|---|---|
| receive, delete, change visibility of messages | its own queue |
| read | every run's `model.keras`, global weights, federated statistics and secure rounds' rosters; its own |
| | prefix `updates/<client id>/` |
| write | its own prefix `updates/<client id>/` |
| put items | its own partition `CLIENT#<id>` (`LeadingKeys`): update, decline, evaluation, statistics, failure and |
| | heartbeat items, and a secure round's keys, sealed shares and revealed shares |
| get or query items | its own inbox `INBOX#<client id>` (the shares sealed to it, relayed by the server) |
| get an item | its own feedback partition `FEEDBACK#<client id>` (why its last update in each run was rejected) |
| get an item | a run's stop marker `STOP#<run id>` (`fedstep stop`: the run's reason and time, nothing else) |
| decrypt, generate data keys | the stack's key, only through S3 and SQS in the stack's region (`kms:ViaService`) |

No client role can write a run record, a round record, another client's item or file, or its own
feedback: those live in partitions and prefixes outside its own. A revoked client's role (`revoke`)
can be assumed by no one and is allowed nothing. IAM binds the partition (not the
sort key), so what a client writes inside its own partition is checked by the aggregation function:
an update item's key must match its run, round and client, and its file must match the item.
"""

from __future__ import annotations

from dataclasses import fields

import aws_cdk as cdk
from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_sqs as sqs
from constructs import Construct

from fedstep.core import keys
from fedstep.core.schemas import DeclineItem, EvalItem, FailureItem, Heartbeat, StatsItem, UpdateItem
from fedstep.core.schemas.secagg import SecAggKeysItem, SecAggRevealItem, SecAggShareItem
from infra.config import ClientConfig
from infra.secure import acknowledge, partitions, reference_name

UPDATE_ITEM_ATTRIBUTES = sorted(
    {keys.PK, keys.SK, "schema", "kind", *(f.name for f in fields(UpdateItem)), *(f.name for f in fields(DeclineItem))}
)
"""An update item's attributes, or a decline item's (it takes the update item's key)."""
EVAL_ITEM_ATTRIBUTES = sorted({keys.PK, keys.SK, "schema", "kind", *(f.name for f in fields(EvalItem))})
"""An evaluation item's attributes (the answer to `fedstep evaluate`)."""
CLIENT_READS = (
    keys.MODEL_KEY_PATTERN,
    keys.GLOBAL_KEY_PATTERN,
    keys.STATISTICS_KEY_PATTERN,
    keys.SECAGG_ROSTER_KEY_PATTERN,
)
"""What every client reads of every run: its architecture, its global weights, its federated statistics
and a secure round's roster (the selected clients' public keys)."""
STATS_ITEM_ATTRIBUTES = sorted({keys.PK, keys.SK, "schema", "kind", *(f.name for f in fields(StatsItem))})
"""A statistics item's attributes (the answer to `fedstep stats`)."""
FAILURE_ITEM_ATTRIBUTES = sorted({keys.PK, keys.SK, "schema", "kind", *(f.name for f in fields(FailureItem))})
"""A failure item's attributes (a round that failed on the client, and its error)."""
HEARTBEAT_ATTRIBUTES = sorted({keys.PK, keys.SK, "schema", "kind", *(f.name for f in fields(Heartbeat))})
SECAGG_ITEM_ATTRIBUTES = sorted(
    {
        keys.PK,
        keys.SK,
        "schema",
        "kind",
        *(f.name for item in (SecAggKeysItem, SecAggShareItem, SecAggRevealItem) for f in fields(item)),
    }
)
"""A secure round's items: a client's public keys, its sealed shares, its revealed shares."""


def key_services(region: str) -> list[str]:
    """The services through which a client role may use the stack's key (`kms:ViaService`): S3 (its
    updates and the models are SSE-KMS objects) and SQS (its queue is encrypted), in the stack's region.
    The agent never calls KMS itself, and DynamoDB uses the table's key under its own grant."""
    return [f"s3.{region}.amazonaws.com", f"sqs.{region}.amazonaws.com"]


def _own_partition(partition: str, attributes: list[str] | None = None) -> dict[str, dict[str, object]]:
    """Conditions binding a DynamoDB request to exactly one partition (and these attribute names)."""
    equal: dict[str, object] = {"dynamodb:LeadingKeys": [partition]}
    if attributes is not None:
        equal["dynamodb:Attributes"] = attributes
    return {
        "ForAllValues:StringEquals": equal,
        "Null": {"dynamodb:LeadingKeys": "false"},
        "StringEqualsIfExists": {"dynamodb:ReturnValues": "NONE"},
    }


class ClientAccess(Construct):
    """The role a client's agent assumes (`fedstep-client run --role-arn`, or `role_arn` in its config)."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        client: ClientConfig,
        queue: sqs.IQueue,
        bucket: s3.IBucket,
        table: dynamodb.ITable,
        key: kms.IKey,
    ) -> None:
        super().__init__(scope, construct_id)
        if client.principal_arn:
            principal: iam.IPrincipal = iam.ArnPrincipal(client.principal_arn)
        elif client.revoked:  # trusts nobody anyway (`revoke`)
            principal = iam.AccountRootPrincipal()
        else:  # only in a trial deployment (`DeploymentConfig.check_principals`)
            principal = iam.AccountRootPrincipal()
            cdk.Annotations.of(self).add_warning_v2(
                "fedstep:principal-arn",
                f'client {client.id} has no principal_arn ("trial": true): any principal of this account '
                "allowed sts:AssumeRole can act as this client. Set principal_arn in the deployment config.",
            )
        own_updates = bucket.arn_for_objects(keys.client_update_key_pattern(client.id))
        models = [bucket.arn_for_objects(pattern) for pattern in CLIENT_READS]
        own_partition = keys.client_pk(client.id)

        def put_own(sid: str, attributes: list[str]) -> iam.PolicyStatement:
            """PutItem in its own partition, of items with these attribute names only."""
            return iam.PolicyStatement(
                sid=sid,
                actions=["dynamodb:PutItem"],
                resources=[table.table_arn],
                conditions=_own_partition(own_partition, attributes),
            )

        document = iam.PolicyDocument(
            statements=[
                iam.PolicyStatement(
                    sid="OwnQueue",
                    actions=[
                        "sqs:ReceiveMessage",
                        "sqs:DeleteMessage",
                        "sqs:ChangeMessageVisibility",
                        "sqs:GetQueueAttributes",
                        "sqs:GetQueueUrl",
                    ],
                    resources=[queue.queue_arn],
                ),
                iam.PolicyStatement(sid="ReadModels", actions=["s3:GetObject"], resources=[*models, own_updates]),
                iam.PolicyStatement(sid="WriteOwnUpdates", actions=["s3:PutObject"], resources=[own_updates]),
                put_own("PutOwnUpdateItems", UPDATE_ITEM_ATTRIBUTES),
                put_own("PutOwnEvaluationItems", EVAL_ITEM_ATTRIBUTES),
                put_own("PutOwnStatisticsItems", STATS_ITEM_ATTRIBUTES),
                put_own("PutOwnFailureItems", FAILURE_ITEM_ATTRIBUTES),
                put_own("PutOwnHeartbeat", HEARTBEAT_ATTRIBUTES),
                put_own("PutOwnSecAggItems", SECAGG_ITEM_ATTRIBUTES),
                iam.PolicyStatement(
                    sid="ReadOwnInbox",  # the shares sealed to it in a secure round, relayed by the server
                    actions=["dynamodb:GetItem", "dynamodb:Query"],
                    resources=[table.table_arn],
                    conditions=_own_partition(keys.inbox_pk(client.id)),
                ),
                iam.PolicyStatement(
                    sid="ReadOwnFeedback",
                    actions=["dynamodb:GetItem"],
                    resources=[table.table_arn],
                    conditions=_own_partition(keys.feedback_pk(client.id)),
                ),
                iam.PolicyStatement(
                    sid="ReadStopMarkers",  # the agent neither trains nor uploads for a stopped run
                    actions=["dynamodb:GetItem"],
                    resources=[table.table_arn],
                    conditions=partitions("StringLike", [f"{keys.STOP_PK_PREFIX}*"]),
                ),
                iam.PolicyStatement(
                    sid="UseStackKey",
                    actions=["kms:Decrypt", "kms:GenerateDataKey"],
                    resources=[key.key_arn],
                    conditions={"StringEquals": {"kms:ViaService": key_services(cdk.Stack.of(self).region)}},
                ),
            ]
        )
        self.role = iam.Role(
            self,
            "Role",
            assumed_by=principal,
            description=f"fedstep client agent of {client.id}",
            inline_policies=None if client.revoked else {"client-agent": document},
        )
        if client.revoked:
            revoke(self.role)
            return
        for pattern in (*CLIENT_READS, keys.client_update_key_pattern(client.id)):
            acknowledge(
                self.role,
                f"AwsSolutions-IAM5[Resource::<{reference_name(self, bucket.bucket_arn)}>/{pattern}]",
                "The run id, round and version in the key are chosen at run time; the pattern fixes everything "
                "else, and a client writes only under its own prefix.",
            )


REVOKED_ACTIONS = ["sts:AssumeRole", "sts:TagSession", "sts:SetSourceIdentity"]
"""What the trust policy of a revoked client's role denies to every principal."""


def revoke(role: iam.Role) -> None:
    """Offboard the client whose role this is (`"revoked": true` in the deployment config): its trust
    policy denies assuming it to everyone (an explicit deny, whatever else the policy allows), and it
    holds no policy, so sessions issued before the deploy can do nothing either. The role itself stays,
    with its ARN: reinstating the client (`"revoked": false`) gives its agent back the same role."""
    role.assume_role_policy.add_statements(  # type: ignore[union-attr]
        iam.PolicyStatement(
            sid="Revoked",
            effect=iam.Effect.DENY,
            principals=[iam.AnyPrincipal()],
            actions=REVOKED_ACTIONS,
        )
    )
