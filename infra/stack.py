"""FedstepStack: the whole server side of fedstep in one stack."""

from __future__ import annotations

import aws_cdk as cdk
from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_lambda_event_sources as sources
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_sns as sns
from aws_cdk import aws_sns_subscriptions as subs
from aws_cdk import aws_sqs as sqs
from aws_cdk import aws_stepfunctions as sfn
from constructs import Construct

from fedstep.keys import client_output_key
from infra.bundling import aggregation_code
from infra.config import DeploymentConfig
from infra.state_machine import training_definition


class FedstepStack(cdk.Stack):
    """Model registry (S3), round topic (SNS) with one queue per client (SQS), update table (DynamoDB)
    whose stream triggers the aggregation function (Lambda), and the training state machine."""

    def __init__(self, scope: Construct, construct_id: str, *, config: DeploymentConfig, **kwargs) -> None:
        super().__init__(scope, construct_id, **kwargs)
        cdk.Tags.of(self).add("project", config.project)

        bucket = s3.Bucket(
            self,
            "ModelRegistry",
            encryption=s3.BucketEncryption.S3_MANAGED,
            block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
            enforce_ssl=True,
            removal_policy=cdk.RemovalPolicy.RETAIN,
        )
        table = dynamodb.Table(
            self,
            "Updates",
            partition_key=dynamodb.Attribute(name="pk", type=dynamodb.AttributeType.STRING),
            sort_key=dynamodb.Attribute(name="sk", type=dynamodb.AttributeType.STRING),
            billing_mode=dynamodb.BillingMode.PAY_PER_REQUEST,
            stream=dynamodb.StreamViewType.NEW_IMAGE,
            removal_policy=cdk.RemovalPolicy.RETAIN,
        )
        topic = sns.Topic(self, "GlobalModelReady", topic_name=f"{config.project}-global-model-ready")

        for client in config.clients:
            queue = sqs.Queue(
                self,
                f"Queue-{client.id}",
                queue_name=config.queue_name(client.id),
                visibility_timeout=cdk.Duration.minutes(15),
                retention_period=cdk.Duration.days(4),
                encryption=sqs.QueueEncryption.SQS_MANAGED,
                enforce_ssl=True,
            )
            topic.add_subscription(subs.SqsSubscription(queue, raw_message_delivery=True))
            cdk.CfnOutput(
                self, client_output_key(client.id), value=queue.queue_url, description=f"queue of {client.id}"
            )

        machine = sfn.StateMachine(
            self,
            "FederatedTraining",
            state_machine_name=config.state_machine_name,
            definition_body=sfn.DefinitionBody.from_chainable(training_definition(self, topic)),
            tracing_enabled=True,
        )

        aggregate = lambda_.Function(
            self,
            "AggregateFunction",
            runtime=lambda_.Runtime.PYTHON_3_12,
            architecture=lambda_.Architecture.X86_64,
            handler="lambdas.aggregate.handler",
            code=aggregation_code(),
            memory_size=1024,
            timeout=cdk.Duration.minutes(5),
            tracing=lambda_.Tracing.ACTIVE,
            environment={
                "BUCKET_NAME": bucket.bucket_name,
                "TABLE_NAME": table.table_name,
                "POWERTOOLS_SERVICE_NAME": "fedstep-aggregate",
            },
        )
        aggregate.add_event_source(
            sources.DynamoEventSource(
                table,
                starting_position=lambda_.StartingPosition.TRIM_HORIZON,
                batch_size=100,
                retry_attempts=5,
                bisect_batch_on_error=True,
                filters=[
                    lambda_.FilterCriteria.filter(
                        {
                            "eventName": lambda_.FilterRule.is_equal("INSERT"),
                            "dynamodb": {"NewImage": {"kind": {"S": lambda_.FilterRule.is_equal("update")}}},
                        }
                    )
                ],
            )
        )
        bucket.grant_read_write(aggregate)
        table.grant_read_write_data(aggregate)
        machine.grant_task_response(aggregate)

        cdk.CfnOutput(self, "BucketName", value=bucket.bucket_name)
        cdk.CfnOutput(self, "TableName", value=table.table_name)
        cdk.CfnOutput(self, "TopicArn", value=topic.topic_arn)
        cdk.CfnOutput(self, "StateMachineArn", value=machine.state_machine_arn)
        cdk.CfnOutput(self, "ClientIds", value=",".join(c.id for c in config.clients))
