"""The optional AWS Backup plan (deployment config `backup`): the round table and the model registry
backed up on a schedule into a vault of their own, encrypted with a key of its own, optionally copied
to another region's vault. Restoring is in docs/operations.md ("Backups and restore")."""

from __future__ import annotations

import aws_cdk as cdk
from aws_cdk import aws_backup as backup
from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_events as events
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_s3 as s3
from constructs import Construct

from infra.config import BackupConfig, DeploymentConfig
from infra.secure import acknowledge

MANAGED_POLICIES = (
    "service-role/AWSBackupServiceRolePolicyForBackup",
    "service-role/AWSBackupServiceRolePolicyForRestores",
    "AWSBackupServiceRolePolicyForS3Backup",
    "AWSBackupServiceRolePolicyForS3Restore",
)
"""AWS's policies for the backup role: DynamoDB backups and restores, and S3's (which also need the
bucket's versioning, and its key: `Backup` grants it)."""


class Backup(Construct):
    """`vault` (KMS-encrypted with `key`, recovery points not deletable but by their lifecycle), `plan`
    (one rule on `BackupConfig.schedule`, kept `retention_days`, copied to `copy_to`) and its selection
    of `table` and `bucket`, backed up by `role`."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        config: DeploymentConfig,
        settings: BackupConfig,
        table: dynamodb.Table,
        bucket: s3.Bucket,
        data_key: kms.IKey,
    ) -> None:
        super().__init__(scope, construct_id)
        stack = cdk.Stack.of(self)
        self.vault_name = f"{config.project}-backup"
        self.plan_name = f"{config.project}-backup"
        self.key = kms.Key(
            self,
            "VaultKey",
            alias=f"alias/{config.project}-backup",
            description=f"{config.project}: recovery points of the round table and the model registry",
            enable_key_rotation=True,
            removal_policy=cdk.RemovalPolicy.RETAIN,
        )
        self.vault = backup.BackupVault(
            self,
            "Vault",
            backup_vault_name=self.vault_name,
            encryption_key=self.key,
            block_recovery_point_deletion=True,  # only their lifecycle deletes recovery points
            removal_policy=cdk.RemovalPolicy.RETAIN,
        )
        retention = cdk.Duration.days(settings.retention_days)
        copy_arn = settings.copy_vault_arn(config.project, stack.account, stack.partition)
        copies = (
            [
                backup.BackupPlanCopyActionProps(
                    destination_backup_vault=backup.BackupVault.from_backup_vault_arn(self, "CopyVault", copy_arn),
                    delete_after=retention,
                )
            ]
            if copy_arn
            else None
        )
        self.plan = backup.BackupPlan(
            self,
            "Plan",
            backup_plan_name=self.plan_name,
            backup_vault=self.vault,
            backup_plan_rules=[
                backup.BackupPlanRule(
                    rule_name="scheduled",
                    schedule_expression=events.Schedule.expression(settings.schedule),
                    start_window=cdk.Duration.hours(1),
                    completion_window=cdk.Duration.hours(8),
                    delete_after=retention,
                    copy_actions=copies,
                )
            ],
        )
        self.role = iam.Role(
            self,
            "Role",
            assumed_by=iam.ServicePrincipal("backup.amazonaws.com"),
            description=f"{config.project}: AWS Backup backs up and restores the round table and the model registry",
            managed_policies=[iam.ManagedPolicy.from_aws_managed_policy_name(name) for name in MANAGED_POLICIES],
        )
        # The table and the bucket are encrypted with the stack's key: the role reads them through the services.
        self.role.add_to_policy(
            iam.PolicyStatement(
                sid="ReadThroughTheStackKey",
                actions=["kms:Decrypt", "kms:DescribeKey", "kms:GenerateDataKey"],
                resources=[data_key.key_arn],
                conditions={
                    "StringEquals": {
                        "kms:ViaService": [f"dynamodb.{stack.region}.amazonaws.com", f"s3.{stack.region}.amazonaws.com"]
                    }
                },
            )
        )
        self.role.add_to_policy(
            iam.PolicyStatement(
                sid="EncryptRecoveryPoints",
                actions=["kms:Encrypt", "kms:Decrypt", "kms:GenerateDataKey", "kms:DescribeKey"],
                resources=[self.key.key_arn],
            )
        )
        self.role.add_to_policy(
            iam.PolicyStatement(
                sid="LetTheServicesUseTheVaultKey",
                actions=["kms:CreateGrant"],
                resources=[self.key.key_arn],
                conditions={"Bool": {"kms:GrantIsForAWSResource": "true"}},
            )
        )
        self.selection = self.plan.add_selection(
            "TableAndRegistry",
            backup_selection_name=f"{config.project}-table-and-registry",
            role=self.role,
            resources=[
                backup.BackupResource.from_dynamo_db_table(table),
                backup.BackupResource.from_arn(bucket.bucket_arn),
            ],
        )
        acknowledge(
            self.role,
            "AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/AWSBackupServiceRolePolicyForBackup]",
            "AWS's own policy for AWS Backup's role, as AWS Backup documents it; the selection names the resources.",
        )
        acknowledge(
            self.role,
            "AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/AWSBackupServiceRolePolicyForRestores]",
            "AWS's own policy for restoring with AWS Backup's role (restore drills in docs/operations.md).",
        )
        for name in ("AWSBackupServiceRolePolicyForS3Backup", "AWSBackupServiceRolePolicyForS3Restore"):
            acknowledge(
                self.role,
                f"AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/{name}]",
                "AWS Backup backs up and restores S3 buckets only with AWS's own S3 policies on its role.",
            )
