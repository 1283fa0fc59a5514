"""One IAM role per client, allowed exactly what its agent does and nothing more.

| what | allowed on |
|---|---|
| receive, delete, change visibility of messages | its own queue |
| read | every run's `model.keras` and global weights; its own update files |
| write | its own update files, `updates/*/*/<client id>.safetensors` |
| put update items | the table, with only the update item's attribute names, never a `CLIENT#` partition |
| put its heartbeat | its own heartbeat partition `CLIENT#<client id>`, with only the heartbeat's attributes |
| decrypt, generate data keys | the stack's key (SQS and S3 objects are encrypted with it) |

What IAM cannot express: DynamoDB conditions can bind the partition key (the run id) but not the
sort key or attribute values, so a client's role could write an item that *claims* another client.
The aggregation function closes that gap: it accepts an item only if the update file it points to
lies under that client's own prefix (which only that client can write) and the file's metadata -
run id, round, client id, number of examples, metrics - equals the item's. A forged item is
therefore rejected and cannot change a model; what remains is that a registered client could
pre-empt another's item (a denial of service, visible in CloudTrail data events).
"""

from __future__ import annotations

from dataclasses import fields

from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_sqs as sqs
from constructs import Construct

from fedstep import keys
from fedstep.schemas import Heartbeat, UpdateItem
from infra.config import ClientConfig
from infra.secure import acknowledge, logical_id

UPDATE_ITEM_ATTRIBUTES = sorted({keys.PK, keys.SK, "schema", "kind", *(f.name for f in fields(UpdateItem))})
HEARTBEAT_ATTRIBUTES = sorted({keys.PK, keys.SK, "schema", "kind", *(f.name for f in fields(Heartbeat))})


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
        principal = iam.ArnPrincipal(client.principal_arn) if client.principal_arn else iam.AccountRootPrincipal()
        own_updates = bucket.arn_for_objects(keys.client_update_key_pattern(client.id))
        models = [bucket.arn_for_objects(keys.MODEL_KEY_PATTERN), bucket.arn_for_objects(keys.GLOBAL_KEY_PATTERN)]
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
                iam.PolicyStatement(
                    sid="PutUpdateItems",
                    actions=["dynamodb:PutItem"],
                    resources=[table.table_arn],
                    conditions={
                        "ForAllValues:StringEquals": {"dynamodb:Attributes": UPDATE_ITEM_ATTRIBUTES},
                        "ForAllValues:StringNotLike": {"dynamodb:LeadingKeys": [f"{keys.CLIENT_PK_PREFIX}*"]},
                        "StringEqualsIfExists": {"dynamodb:ReturnValues": "NONE"},
                    },
                ),
                iam.PolicyStatement(
                    sid="PutOwnHeartbeat",
                    actions=["dynamodb:PutItem"],
                    resources=[table.table_arn],
                    conditions={
                        "ForAllValues:StringEquals": {
                            "dynamodb:LeadingKeys": [keys.heartbeat_item_key(client.id)[keys.PK]],
                            "dynamodb:Attributes": HEARTBEAT_ATTRIBUTES,
                        },
                        "StringEqualsIfExists": {"dynamodb:ReturnValues": "NONE"},
                    },
                ),
                iam.PolicyStatement(
                    sid="UseStackKey", actions=["kms:Decrypt", "kms:GenerateDataKey"], resources=[key.key_arn]
                ),
            ]
        )
        self.role = iam.Role(
            self,
            "Role",
            assumed_by=principal,
            description=f"fedstep client agent of {client.id}",
            inline_policies={"client-agent": document},
        )
        for pattern in (keys.MODEL_KEY_PATTERN, keys.GLOBAL_KEY_PATTERN, keys.client_update_key_pattern(client.id)):
            acknowledge(
                self.role,
                f"AwsSolutions-IAM5[Resource::<{logical_id(bucket)}.Arn>/{pattern}]",
                "The run id and round in the key are chosen at run time; the pattern fixes everything else, "
                "including this client's own id for writes.",
            )
