"""The local cloud never skips a resource type silently: a type moto's CloudFormation cannot create is
refused before the deployment unless the allow-list names it with its reason, and each one skipped is
logged with that reason (`fedstep.local.gaps.skipped_resources`). The decision is tested on templates
written here: no cloud is started."""

from __future__ import annotations

import json
import logging

import pytest

from fedstep.local import deploy
from fedstep.local.gaps import skipped_resources
from fedstep.local.gaps.skipped_resources import UNSUPPORTED_RESOURCES, UnsupportedResource, check_template, skipped

BACKUP_AND_AUDIT = ("AWS::Backup::BackupVault", "AWS::Backup::BackupPlan", "AWS::Backup::BackupSelection")


def assembly(tmp_path, *types: str, nested: tuple[str, ...] = ()):
    """A cloud assembly of the stack `fedstep` holding one resource of each type (and a nested template)."""
    for name, kinds in (("fedstep.template.json", types), ("fedstepGroup.nested.template.json", nested)):
        resources = {f"R{i}": {"Type": kind, "Properties": {}} for i, kind in enumerate(kinds)}
        (tmp_path / name).write_text(json.dumps({"Resources": resources}))
    return tmp_path


def test_a_type_moto_cannot_create_and_the_allow_list_does_not_name_is_refused_before_deploying(tmp_path):
    stack = assembly(tmp_path, "AWS::SQS::Queue", "AWS::CloudWatch::Alarm", nested=("AWS::WAFv2::RuleGroup",))
    with pytest.raises(UnsupportedResource, match=r"holds AWS::WAFv2::RuleGroup, which moto.s CloudFormation cannot"):
        check_template(stack, "fedstep")
    with pytest.raises(UnsupportedResource, match="UNSUPPORTED_RESOURCES with the reason"):
        skipped(["AWS::Backup::BackupPlan"], allowed={})  # the same decision without the entry


def test_the_backup_plan_and_the_audit_trail_are_skipped_locally_and_each_is_logged_with_its_reason(tmp_path, caplog):
    types = (*BACKUP_AND_AUDIT, "AWS::CloudTrail::Trail", "AWS::S3::Bucket", "AWS::KMS::Key", "Custom::Thing")
    with caplog.at_level(logging.INFO, logger=skipped_resources.__name__):
        skipping = check_template(assembly(tmp_path, *types), "fedstep")
    assert set(skipping) == {*BACKUP_AND_AUDIT, "AWS::CloudTrail::Trail"}  # moto creates buckets, keys, custom
    for resource_type, reason in skipping.items():
        assert f"the local cloud skips {resource_type}: {reason}" in caplog.text


def test_every_allow_listed_type_is_one_moto_cannot_create_and_carries_a_reason():
    """A canary: once moto creates one of them, its entry goes (the local cloud then creates it)."""
    for resource_type, reason in UNSUPPORTED_RESOURCES.items():
        assert not skipped_resources.moto_creates(resource_type), f"moto now creates {resource_type}: drop its entry"
        assert len(reason) > 40, resource_type
    assert deploy.UNSUPPORTED_RESOURCES is UNSUPPORTED_RESOURCES  # one list


def test_an_output_reading_an_attribute_of_a_skipped_resource_is_refused_by_name(tmp_path):
    stack = assembly(tmp_path, "AWS::Backup::BackupPlan")
    body = json.loads((stack / "fedstep.template.json").read_text())
    body["Outputs"] = {"PlanId": {"Value": {"Fn::GetAtt": ["R0", "BackupPlanId"]}}, "Name": {"Value": "plan"}}
    (stack / "fedstep.template.json").write_text(json.dumps(body))
    with pytest.raises(UnsupportedResource, match=r"output\(s\) PlanId read an attribute of a resource the local"):
        check_template(stack, "fedstep")
