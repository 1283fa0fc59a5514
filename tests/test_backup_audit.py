"""The optional backup plan and audit trail (deployment config `backup`, `audit`): their settings, and
the template with both on, synthesized once for the module (cdk-nag runs at synth; cfn-lint on the
files)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from aws_cdk.assertions import Template

from fedstep.local.gaps import skipped_resources
from infra.audit import trail_name
from infra.config import AuditConfig, BackupConfig, ConfigError, DeploymentConfig, backup_schedule
from infra.synth import build_app
from tests.test_infra_template import cfn_lint_errors

COPY_VAULT = "arn:aws:backup:eu-west-1:123456789012:backup-vault:fedstep-copies"


@pytest.fixture(scope="module")
def synthesized(tmp_path_factory) -> tuple[Template, Path]:
    """The trial deployment with backup (copied to another region's vault) and audit on, and its folder."""
    outdir = tmp_path_factory.mktemp("backup-audit")
    config = DeploymentConfig(
        trial=True,
        backup=BackupConfig(schedule="cron(30 2 * * ? *)", retention_days=90, copy_to=COPY_VAULT),
        audit=AuditConfig(retention_days=400, lock_mode="governance"),
    )
    app = build_app(config, outdir, bundle=False)  # raises on any cdk-nag finding
    template = Template.from_stack(app.node.find_child(config.stack_name))
    app.synth()
    return template, outdir


@pytest.fixture(scope="module")
def template(synthesized) -> Template:
    return synthesized[0]


def one(template: Template, kind: str) -> tuple[str, dict]:
    [(logical_id, resource)] = template.find_resources(kind).items()
    return logical_id, resource


def logical_id_of(template: Template, kind: str, alias: str | None = None) -> str:
    """The logical id of the one `kind` resource (the KMS key whose alias is `alias`)."""
    if alias is None:
        return one(template, kind)[0]
    [alias_resource] = [
        a for a in template.find_resources("AWS::KMS::Alias").values() if a["Properties"]["AliasName"] == alias
    ]
    return alias_resource["Properties"]["TargetKeyId"]["Fn::GetAtt"][0]


# -- settings --------------------------------------------------------------------------------------


def test_backup_and_audit_are_off_unless_the_config_names_them_and_true_means_the_defaults():
    assert DeploymentConfig.from_dict({"trial": True}).backup is None
    assert DeploymentConfig.from_dict({"trial": True, "audit": False}).audit is None
    on = DeploymentConfig.from_dict({"trial": True, "backup": True, "audit": True})
    assert on.backup == BackupConfig(schedule="cron(0 5 * * ? *)", retention_days=35, copy_to=None)
    assert on.audit == AuditConfig(retention_days=365, lock_mode="governance")


@pytest.mark.parametrize(
    ("given", "cron"),
    [
        ("cron(15 3 ? * MON *)", "cron(15 3 ? * MON *)"),
        ("rate(1 day)", "cron(0 5 * * ? *)"),
        ("rate(1 hour)", "cron(0 * * * ? *)"),
        ("rate(6 hours)", "cron(0 0/6 * * ? *)"),
    ],
)
def test_a_backup_schedule_is_a_cron_expression_or_a_rate_aws_backup_can_run(given, cron):
    assert backup_schedule(given) == cron
    config = DeploymentConfig.from_dict({"trial": True, "backup": {"schedule": given}})
    assert config.backup is not None and config.backup.schedule == cron


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"backup": "daily"}, "backup: expected true, false or an object"),
        ({"backup": {"schedule": "cron(0/15 * * * ? *)"}}, "at least 60 minutes apart"),
        ({"backup": {"schedule": "rate(5 hours)"}}, r"schedule 'rate\(5 hours\)' is not one AWS Backup takes"),
        ({"backup": {"schedule": "cron(0 5 * * *)"}}, "6 fields"),
        ({"backup": {"schedule": "cron(0 5 1 * * *)"}}, "one minute and \\?"),
        ({"backup": {"retention_days": 0}}, "backup: retention_days must be a whole number from 1 to 36500"),
        ({"backup": {"copy_to": "europe"}}, "copy_to 'europe' must be a region"),
        ({"backup": {"copy_to": "arn:aws:s3:::bucket"}}, "or a backup vault ARN"),
        ({"backup": {"vault": "x"}}, r"backup: unknown field\(s\) \['vault'\]"),
        ({"audit": {"lock_mode": "strict"}}, "lock_mode must be one of \\['governance', 'compliance'\\]"),
        ({"audit": {"retention_days": 4000}}, "audit: retention_days must be a whole number from 1 to 3650"),
        ({"audit": 1}, "audit: expected true, false or an object"),
    ],
)
def test_backup_and_audit_mistakes_are_named(data, message):
    with pytest.raises(ConfigError, match=message):
        DeploymentConfig.from_dict({"trial": True, **data})


def test_a_copy_region_names_that_regions_vault_of_the_project():
    settings = DeploymentConfig.from_dict({"trial": True, "backup": {"copy_to": "eu-west-1"}}).backup
    assert settings is not None and settings.copy_region == "eu-west-1"
    assert settings.copy_vault_arn("fedstep", "123456789012") == (
        "arn:aws:backup:eu-west-1:123456789012:backup-vault:fedstep-backup-copy"
    )
    assert BackupConfig(copy_to=COPY_VAULT).copy_region == "eu-west-1"


# -- the backup plan -------------------------------------------------------------------------------


@pytest.mark.infra  # synthesizes the stack (once for the module)
def test_the_plan_backs_up_the_table_and_the_registry_on_schedule_into_a_vault_with_its_own_key(template):
    vault_id, vault = one(template, "AWS::Backup::BackupVault")
    key_id = logical_id_of(template, "AWS::KMS::Key", "alias/fedstep-backup")
    assert vault["Properties"]["EncryptionKeyArn"] == {"Fn::GetAtt": [key_id, "Arn"]}
    assert template.find_resources("AWS::KMS::Key")[key_id]["Properties"]["EnableKeyRotation"] is True
    assert vault["DeletionPolicy"] == "Retain"
    [deny] = vault["Properties"]["AccessPolicy"]["Statement"]
    assert deny["Effect"] == "Deny" and "backup:DeleteRecoveryPoint" in deny["Action"]
    _, plan = one(template, "AWS::Backup::BackupPlan")
    [rule] = plan["Properties"]["BackupPlan"]["BackupPlanRule"]
    assert rule["ScheduleExpression"] == "cron(30 2 * * ? *)"
    assert rule["Lifecycle"] == {"DeleteAfterDays": 90}
    assert rule["TargetBackupVault"] == {"Fn::GetAtt": [vault_id, "BackupVaultName"]}
    assert rule["CopyActions"] == [{"DestinationBackupVaultArn": COPY_VAULT, "Lifecycle": {"DeleteAfterDays": 90}}]
    _, selection = one(template, "AWS::Backup::BackupSelection")
    table_id = logical_id_of(template, "AWS::DynamoDB::Table")
    [bucket_id] = [k for k in template.find_resources("AWS::S3::Bucket") if k.startswith("ModelRegistry")]
    assert selection["Properties"]["BackupSelection"]["Resources"] == [
        {"Fn::GetAtt": [table_id, "Arn"]},
        {"Fn::GetAtt": [bucket_id, "Arn"]},
    ]
    bucket = template.find_resources("AWS::S3::Bucket")[bucket_id]
    assert bucket["Properties"]["VersioningConfiguration"] == {"Status": "Enabled"}  # S3 backups need it


@pytest.mark.infra  # synthesizes the stack (once for the module)
def test_the_backup_role_is_aws_backups_with_its_s3_policies_and_reads_through_the_stack_key(template):
    _, selection = one(template, "AWS::Backup::BackupSelection")
    role_id = selection["Properties"]["BackupSelection"]["IamRoleArn"]["Fn::GetAtt"][0]
    role = template.find_resources("AWS::IAM::Role")[role_id]["Properties"]
    assert role["AssumeRolePolicyDocument"]["Statement"][0]["Principal"] == {"Service": "backup.amazonaws.com"}
    managed = json.dumps(role["ManagedPolicyArns"])
    for name in (
        "service-role/AWSBackupServiceRolePolicyForBackup",
        "service-role/AWSBackupServiceRolePolicyForRestores",
        ":iam::aws:policy/AWSBackupServiceRolePolicyForS3Backup",
        ":iam::aws:policy/AWSBackupServiceRolePolicyForS3Restore",
    ):
        assert name in managed, name
    statements = [
        s
        for p in template.find_resources("AWS::IAM::Policy").values()
        if {"Ref": role_id} in p["Properties"]["Roles"]
        for s in p["Properties"]["PolicyDocument"]["Statement"]
    ]
    [read] = [s for s in statements if s.get("Sid") == "ReadThroughTheStackKey"]
    stack_key = logical_id_of(template, "AWS::KMS::Key", "alias/fedstep")
    assert read["Resource"] == {"Fn::GetAtt": [stack_key, "Arn"]}
    assert "kms:ViaService" in read["Condition"]["StringEquals"]
    assert not any("*" in json.dumps(s["Action"]) for s in statements)


# -- the audit trail -------------------------------------------------------------------------------


def field_selectors(selector: dict) -> dict[str, dict]:
    return {f["Field"]: {k: v for k, v in f.items() if k != "Field"} for f in selector["FieldSelectors"]}


@pytest.mark.infra  # synthesizes the stack (once for the module)
def test_the_trail_records_table_writes_registry_writes_and_model_reads_but_not_update_reads(template):
    _, trail = one(template, "AWS::CloudTrail::Trail")
    props = trail["Properties"]
    assert props["TrailName"] == trail_name("fedstep") and props["IsLogging"] is True
    assert props["EnableLogFileValidation"] is True
    assert "EventSelectors" not in props  # the basic selectors cannot select DynamoDB or by key prefix
    selectors = {s["Name"]: field_selectors(s) for s in props["AdvancedEventSelectors"]}
    table_id = logical_id_of(template, "AWS::DynamoDB::Table")
    [bucket_id] = [k for k in template.find_resources("AWS::S3::Bucket") if k.startswith("ModelRegistry")]
    bucket_arn = {"Fn::GetAtt": [bucket_id, "Arn"]}

    def under(prefix: str) -> dict:
        return {"Fn::Join": ["", [bucket_arn, prefix]]}

    assert selectors == {
        "round table writes": {
            "eventCategory": {"Equals": ["Data"]},
            "resources.type": {"Equals": ["AWS::DynamoDB::Table"]},
            "readOnly": {"Equals": ["false"]},
            "resources.ARN": {"Equals": [{"Fn::GetAtt": [table_id, "Arn"]}]},
        },
        "model registry writes": {
            "eventCategory": {"Equals": ["Data"]},
            "resources.type": {"Equals": ["AWS::S3::Object"]},
            "readOnly": {"Equals": ["false"]},
            "resources.ARN": {"StartsWith": [under("/")]},
        },
        "model, architecture and registry reads": {
            "eventCategory": {"Equals": ["Data"]},
            "resources.type": {"Equals": ["AWS::S3::Object"]},
            "readOnly": {"Equals": ["true"]},
            "resources.ARN": {"StartsWith": [under("/runs/"), under("/registry/")]},  # not updates/
        },
    }


@pytest.mark.infra  # synthesizes the stack (once for the module)
def test_the_audit_bucket_is_locked_encrypted_with_its_own_key_versioned_private_and_tls_only(template):
    _, trail = one(template, "AWS::CloudTrail::Trail")
    bucket_id = trail["Properties"]["S3BucketName"]["Ref"]
    bucket = template.find_resources("AWS::S3::Bucket")[bucket_id]
    props = bucket["Properties"]
    assert bucket["DeletionPolicy"] == "Retain"
    assert props["ObjectLockEnabled"] is True
    assert props["ObjectLockConfiguration"] == {
        "ObjectLockEnabled": "Enabled",
        "Rule": {"DefaultRetention": {"Mode": "GOVERNANCE", "Days": 400}},
    }
    assert props["VersioningConfiguration"] == {"Status": "Enabled"}
    key_id = logical_id_of(template, "AWS::KMS::Key", "alias/fedstep-audit")
    [rule] = props["BucketEncryption"]["ServerSideEncryptionConfiguration"]
    assert rule["ServerSideEncryptionByDefault"] == {
        "SSEAlgorithm": "aws:kms",
        "KMSMasterKeyID": {"Fn::GetAtt": [key_id, "Arn"]},
    }
    assert trail["Properties"]["KMSKeyId"] == {"Fn::GetAtt": [key_id, "Arn"]}
    assert props["PublicAccessBlockConfiguration"] == {
        "BlockPublicAcls": True,
        "BlockPublicPolicy": True,
        "IgnorePublicAcls": True,
        "RestrictPublicBuckets": True,
    }
    [policy] = [
        p
        for p in template.find_resources("AWS::S3::BucketPolicy").values()
        if p["Properties"]["Bucket"] == {"Ref": bucket_id}
    ]
    statements = policy["Properties"]["PolicyDocument"]["Statement"]
    [tls] = [s for s in statements if s["Effect"] == "Deny"]
    assert tls["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}


TRAIL_ARN = {
    "Fn::Join": [
        "",
        [
            "arn:",
            {"Ref": "AWS::Partition"},
            ":cloudtrail:",
            {"Ref": "AWS::Region"},
            ":",
            {"Ref": "AWS::AccountId"},
            f":trail/{trail_name('fedstep')}",
        ],
    ]
}
"""The trail's ARN, built from its name (a reference to the trail would make it depend on its bucket's policy)."""


@pytest.mark.infra  # synthesizes the stack (once for the module)
def test_cloudtrail_may_write_and_encrypt_only_this_trails_logs(template):
    _, trail = one(template, "AWS::CloudTrail::Trail")
    bucket_id = trail["Properties"]["S3BucketName"]["Ref"]
    [(policy_id, policy)] = [
        (k, p)
        for k, p in template.find_resources("AWS::S3::BucketPolicy").items()
        if p["Properties"]["Bucket"] == {"Ref": bucket_id}
    ]
    assert policy_id in trail["DependsOn"]  # CloudTrail checks it may write when the trail is created
    by_sid = {s.get("Sid"): s for s in policy["Properties"]["PolicyDocument"]["Statement"]}
    write = by_sid["CloudTrailWritesThisTrailsLogs"]
    assert write["Principal"] == {"Service": "cloudtrail.amazonaws.com"} and write["Action"] == "s3:PutObject"
    assert write["Condition"] == {
        "StringEquals": {"aws:SourceArn": TRAIL_ARN, "s3:x-amz-acl": "bucket-owner-full-control"}
    }
    assert write["Resource"]["Fn::Join"][1][1:] == ["/AWSLogs/", {"Ref": "AWS::AccountId"}, "/*"]
    check = by_sid["CloudTrailChecksTheBucket"]
    assert check["Action"] == "s3:GetBucketAcl" and check["Condition"] == {"StringEquals": {"aws:SourceArn": TRAIL_ARN}}
    key_id = logical_id_of(template, "AWS::KMS::Key", "alias/fedstep-audit")
    key_statements = template.find_resources("AWS::KMS::Key")[key_id]["Properties"]["KeyPolicy"]["Statement"]
    [encrypt] = [s for s in key_statements if s.get("Sid") == "CloudTrailEncryptsThisTrailsLogs"]
    assert encrypt["Action"] == "kms:GenerateDataKey*"
    assert encrypt["Condition"]["StringEquals"] == {"aws:SourceArn": TRAIL_ARN}


@pytest.mark.infra  # synthesizes the stack (once for the module)
def test_the_stack_names_its_vault_plan_trail_and_audit_bucket_in_its_outputs(template):
    outputs = template.find_outputs("*")
    assert {"BackupVaultName", "BackupPlanName", "BackupRoleArn", "AuditTrailArn", "AuditBucketName"} <= set(outputs)
    assert outputs["BackupVaultName"]["Value"] == outputs["BackupPlanName"]["Value"] == "fedstep-backup"
    assert outputs["AuditTrailArn"]["Value"] == TRAIL_ARN


@pytest.mark.infra  # synthesizes the stack (once for the module)
def test_with_backup_and_audit_the_templates_pass_cfn_lint_and_fit_cloudformations_limits(synthesized):
    """cdk-nag passed at synth (the fixture); the root template keeps room for the most client groups
    (one nested stack resource each: 10 at 500 clients, 1 here)."""
    _, outdir = synthesized
    root = outdir / "fedstep.template.json"
    body = json.loads(root.read_text())
    assert len(body["Resources"]) + 9 <= 500 and len(body["Outputs"]) <= 200
    assert cfn_lint_errors(root, *outdir.glob("*.nested.template.json")) == []


@pytest.mark.infra  # synthesizes the stack (once for the module)
def test_the_local_cloud_skips_only_allow_listed_types_of_the_stack_with_backup_and_audit(synthesized):
    _, outdir = synthesized
    skipping = skipped_resources.skipped(skipped_resources.template_types(outdir, "fedstep"))
    assert {"AWS::Backup::BackupPlan", "AWS::Backup::BackupSelection", "AWS::Backup::BackupVault"} <= set(skipping)
    assert "AWS::CloudTrail::Trail" in skipping
    assert "AWS::S3::Bucket" not in skipping  # the audit bucket and its key are created locally
