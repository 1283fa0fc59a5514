"""FedstepStack: the whole server side of fedstep in one stack (a thin composition; the secure
defaults live in `infra.secure`, per-client access in `infra.client_access`)."""

from __future__ import annotations

import aws_cdk as cdk
from aws_cdk import aws_iam as iam
from aws_cdk import aws_stepfunctions as sfn
from constructs import Construct

from fedstep.core import keys
from infra import secure
from infra.aggregation import Aggregation
from infra.audit import AuditTrail
from infra.backup import Backup
from infra.client_group import CLIENTS_PER_GROUP, ClientGroup, allow_topic, client_groups, group_id
from infra.config import DeploymentConfig
from infra.integrity import Integrity
from infra.monitoring import Monitoring, dead_letter_alarm_count
from infra.operator_access import OperatorAccess
from infra.state_machine import training_definition


class FedstepStack(cdk.Stack):
    """Model registry (S3), round topic (SNS) with one queue and one IAM role per client (SQS, IAM; in
    nested stacks of up to 50 clients, `infra.client_group`),
    update table (DynamoDB) whose stream triggers the aggregation function (Lambda), and the
    training state machine (Step Functions), all encrypted with one customer-managed KMS key; a
    CloudWatch dashboard and alarms (`infra.monitoring`)."""

    def __init__(self, scope: Construct, construct_id: str, *, config: DeploymentConfig, **kwargs) -> None:
        config.check_principals()  # a config built in code (the local cloud, tests) is checked as a file is
        super().__init__(scope, construct_id, **kwargs)
        cdk.Tags.of(self).add("project", config.project)
        cdk.Tags.of(self).add("component", "core", priority=50)  # a default; specific components win
        retention = config.retention

        key = secure.key(self, config.project)
        access_logs = secure.access_log_bucket(self, retention)
        bucket = secure.model_bucket(self, key, access_logs, retention)
        table = secure.table(self, key)
        topic = secure.topic(self, "GlobalModelReady", f"{config.project}-global-model-ready", key)
        for construct, component in ((key, "encryption"), (access_logs, "model-registry"), (bucket, "model-registry")):
            cdk.Tags.of(construct).add("component", component)
        cdk.Tags.of(table).add("component", "round-records")
        cdk.Tags.of(topic).add("component", "messaging")

        # Round messages SNS cannot deliver to a client's queue (after its retries) land here.
        undelivered = secure.dead_letter_queue(
            self, "UndeliveredMessages", f"{config.project}-undelivered-messages", key
        )
        secure.acknowledge(
            undelivered, "AwsSolutions-SQS3", "This queue is itself the dead-letter queue of the round subscriptions."
        )
        aggregation = Aggregation(self, "Aggregation", config=config, bucket=bucket, table=table, topic=topic, key=key)
        cdk.Tags.of(aggregation).add("component", "aggregation")
        # The function writes each finished run's model card beside its global model, and nothing
        # else new: the approved pointer (registry/) is the operator's alone.
        aggregation.function.add_to_role_policy(
            iam.PolicyStatement(
                sid="WriteModelCards",
                actions=["s3:PutObject"],
                resources=[bucket.arn_for_objects(keys.CARD_KEY_PATTERN)],
            )
        )
        secure.acknowledge(
            aggregation.function.role,  # type: ignore[arg-type]
            f"AwsSolutions-IAM5[Resource::<{secure.logical_id(bucket)}.Arn>/{keys.CARD_KEY_PATTERN}]",
            "Writes model cards only; run id, round and version are chosen at run time.",
        )

        machine_logs = secure.log_group(self, "TrainingLogs", retention, key)
        definition = training_definition(self, topic, aggregation.function, table.table_name)
        machine = sfn.StateMachine(
            self,
            "FederatedTraining",
            state_machine_name=config.state_machine_name,
            definition_body=sfn.DefinitionBody.from_chainable(definition),
            tracing_enabled=True,
            logs=sfn.LogOptions(destination=machine_logs, level=sfn.LogLevel.ALL, include_execution_data=True),
        )
        machine.add_to_role_policy(
            iam.PolicyStatement(actions=["kms:Decrypt", "kms:GenerateDataKey"], resources=[key.key_arn])
        )
        secure.acknowledge(
            machine.role,
            "AwsSolutions-IAM5[Resource::*]",
            "X-Ray tracing and CloudWatch Logs delivery actions do not support resource-level permissions.",
        )
        secure.acknowledge(
            machine.role,
            f"AwsSolutions-IAM5[Resource::<{secure.logical_id(aggregation.function)}.Arn>:*]",
            "CDK's LambdaInvoke grant covers the aggregation function's versions and aliases (ARN:*), nothing else.",
        )
        executions = (
            "Resource::arn:<AWS::Partition>:states:<AWS::Region>:<AWS::AccountId>:execution:"
            f'{{"Fn::Select":[6,{{"Fn::Split":[":",{{"Ref":"{secure.logical_id(machine)}"}}]}}]}}'
        )
        for suffix in (":*", "/*:*"):
            secure.acknowledge(
                machine,
                f"AwsSolutions-IAM5[{executions}{suffix}]",
                "CDK's Distributed Map grant: the machine starts, describes and stops its own child executions "
                "(one per slice of a sliced round), whose names are chosen at run time.",
            )
        for construct in (machine, machine_logs):
            cdk.Tags.of(construct).add("component", "orchestration")
        operator = OperatorAccess(
            self, "Operator", config=config, bucket=bucket, table=table, topic=topic, machine=machine, key=key
        )
        cdk.Tags.of(operator).add("component", "operator-access")

        monitoring = Monitoring(
            self,
            "Monitoring",
            config=config,
            machine=machine,
            dead_letter_queues=[undelivered, aggregation.failures],
            key=key,
        )
        cdk.Tags.of(monitoring).add("component", "monitoring")
        integrity = Integrity(
            self, "Integrity", config=config, bucket=bucket, table=table, key=key, alarm_topic=monitoring.topic
        )
        cdk.Tags.of(integrity).add("component", "integrity")

        allow_topic(undelivered, topic, key)
        own_dead_letter_alarms = len(monitoring.alarms) - 1  # besides the failed-executions alarm
        groups = []
        for index, clients in enumerate(client_groups(config.clients)):
            group = ClientGroup(
                self,
                group_id(index),
                config=config,
                clients=clients,
                first_alarm=own_dead_letter_alarms + 1 + index * dead_letter_alarm_count(CLIENTS_PER_GROUP),
                topic=topic,
                undelivered=undelivered,
                bucket=bucket,
                table=table,
                key=key,
                alarm_topic=monitoring.topic,
            )
            for construct in (group, group.nested_stack_resource):
                cdk.Tags.of(construct).add("component", "client-access")
            groups.append(group)

        self._optional(config, table, bucket, key, access_logs)
        cdk.CfnOutput(self, "BucketName", value=bucket.bucket_name)
        cdk.CfnOutput(self, "TableName", value=table.table_name)
        cdk.CfnOutput(self, "TopicArn", value=topic.topic_arn)
        cdk.CfnOutput(self, "StateMachineArn", value=machine.state_machine_arn)
        cdk.CfnOutput(self, "KeyArn", value=key.key_arn)
        cdk.CfnOutput(
            self,
            "ClientGroups",
            value=str(len(groups)),
            description="nested stacks of clients; each outputs its ClientIds and their queue URLs and role ARNs",
        )
        cdk.CfnOutput(self, "DashboardName", value=monitoring.dashboard.dashboard_name)
        cdk.CfnOutput(self, "AlarmTopicArn", value=monitoring.topic.topic_arn)
        cdk.CfnOutput(
            self, "MaxModelBytes", value=str(config.max_model_bytes), description="largest model the stack aggregates"
        )
        cdk.CfnOutput(
            self,
            "SliceBytes",
            value=str(config.slice_bytes or 0),
            description="models larger than this are aggregated by slices (0: none)",
        )

    def _optional(self, config: DeploymentConfig, table, bucket, key, access_logs) -> None:
        """The deployment config's optional parts: the backup plan (`infra.backup`) and the audit trail
        (`infra.audit`), each with its outputs (`fedstep cost` reads `AuditTrailArn`)."""
        if config.backup is not None:
            plan = Backup(
                self, "Backup", config=config, settings=config.backup, table=table, bucket=bucket, data_key=key
            )
            cdk.Tags.of(plan).add("component", "backup")
            # names, not references: the local cloud creates no backup resources to read attributes of
            cdk.CfnOutput(self, "BackupVaultName", value=plan.vault_name)
            cdk.CfnOutput(self, "BackupPlanName", value=plan.plan_name)
            cdk.CfnOutput(self, "BackupRoleArn", value=plan.role.role_arn, description="the role restore jobs run as")
        if config.audit is not None:
            audit = AuditTrail(
                self, "Audit", config=config, settings=config.audit, table=table, bucket=bucket, access_logs=access_logs
            )
            cdk.Tags.of(audit).add("component", "audit")
            cdk.CfnOutput(
                self, "AuditTrailArn", value=audit.trail_arn, description="the audit trail (docs/security.md)"
            )
            cdk.CfnOutput(self, "AuditBucketName", value=audit.bucket.bucket_name)
