"""Resource types the local cloud does not create, each with why it can do without it: the one allow-list.

moto's CloudFormation skips every type it has no model for, with nothing but a warning (which the local
cloud hides: `fedstep.local.cloud`), and a stack missing a resource would pass locally and behave
otherwise on AWS. So the local cloud checks the synthesized templates before it deploys them
(`check_template`: a type moto cannot create and this list does not name is refused, naming the type)
and logs each type it skips with its reason; after the deployment it checks that every other type was
created (`check_created`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

UNSUPPORTED_RESOURCES: dict[str, str] = {
    "AWS::SNS::Subscription": "moto's CloudFormation skips it; the sns_subscriptions shim creates each one from the "
    "template (raw delivery, filter policy, dead-letter queue).",
    "AWS::S3::BucketPolicy": "The stack's bucket policies only deny requests without TLS (aws:SecureTransport) and let "
    "S3 log delivery (and, with `audit`, CloudTrail) write logs; the local cloud serves loopback HTTP and has neither. "
    "Every principal's identity policy is enforced.",
    "AWS::SNS::TopicPolicy": "The stack's topic policies only deny publishing without TLS and let CloudWatch publish "
    "alarms; the local cloud serves loopback HTTP and has no alarms. Publishers' identity policies are enforced.",
    "AWS::SQS::QueuePolicy": "The stack's queue policies only deny requests without TLS and let the topic deliver to "
    "the queues; the local cloud serves loopback HTTP, and SNS delivers to SQS inside moto. Receivers' identity "
    "policies are enforced.",
    "AWS::CloudWatch::Alarm": "The local cloud has no CloudWatch metrics from the services to alarm on (the function's "
    "embedded metrics go to its log file); the alarms are checked on the synthesized template.",
    "AWS::Backup::BackupVault": "Deployment config `backup`: a local cloud lives for one run and holds nothing worth "
    "backing up; the vault (its key, its deny on deleting recovery points) is checked on the synthesized template "
    "(tests/test_backup_audit.py), restores are drilled on AWS (docs/operations.md).",
    "AWS::Backup::BackupPlan": "Deployment config `backup`: no backup jobs run locally (the local cloud lives for one "
    "run); the plan's schedule, retention and copy are checked on the synthesized template.",
    "AWS::Backup::BackupSelection": "Deployment config `backup`: the selection of the table and the registry is "
    "checked on the synthesized template; without a plan there is nothing to select for.",
    "AWS::CloudTrail::Trail": "Deployment config `audit`: moto records no CloudTrail events; the trail's event "
    "selectors, its locked and encrypted bucket and CloudTrail's permissions are checked on the synthesized template "
    "(its bucket and key are created locally), and the audit queries (docs/security.md) run on AWS only.",
}
"""Resource types the local cloud does not create, each with why it can do without them. Any other type
moto's CloudFormation cannot create is refused before the deployment (`check_template`), and any type
it did not create fails it after (`check_created`)."""

ALLOW_LIST = "fedstep.local.gaps.skipped_resources.UNSUPPORTED_RESOURCES"


class UnsupportedResource(RuntimeError):
    """The stack holds a resource type the local cloud would skip and the allow-list does not name."""


def moto_creates(resource_type: str) -> bool:
    """Whether moto's CloudFormation creates resources of this type (it skips the others with a warning)."""
    from moto.cloudformation.parsing import NULL_MODELS, get_model_map

    if resource_type.startswith("Custom::"):
        return True
    return resource_type not in NULL_MODELS and resource_type in get_model_map()


def skipped(
    types: Iterable[str], creates: Callable[[str], bool] = moto_creates, allowed: dict[str, str] | None = None
) -> dict[str, str]:
    """The types of `types` the local cloud will skip, each with its reason from `allowed` (default
    `UNSUPPORTED_RESOURCES`). UnsupportedResource names those it would skip that `allowed` does not name."""
    allowed = UNSUPPORTED_RESOURCES if allowed is None else allowed
    skipping = sorted({t for t in types if not creates(t)})
    refused = [t for t in skipping if t not in allowed]
    if refused:
        raise UnsupportedResource(
            f"the stack holds {', '.join(refused)}, which moto's CloudFormation cannot create: the local cloud would "
            "skip it without a word and differ from AWS. Fill the gap with a shim (fedstep/local/gaps/), or add the "
            f"type to {ALLOW_LIST} with the reason the local cloud can do without it"
        )
    return {t: allowed[t] for t in skipping}


def template_types(assembly: Path, stack_name: str) -> set[str]:
    """Every resource type of the stack's template and its nested stacks' templates."""
    return {
        resource["Type"]
        for template in (assembly / f"{stack_name}.template.json", *assembly.glob("*.nested.template.json"))
        for resource in json.loads(template.read_text()).get("Resources", {}).values()
    }


def _attributes_read(value: Any) -> Iterable[str]:
    """The logical ids whose attributes `value` reads (`Fn::GetAtt`), at any depth."""
    if isinstance(value, dict):
        if "Fn::GetAtt" in value:
            target = value["Fn::GetAtt"]
            yield target[0] if isinstance(target, list) else str(target).split(".")[0]
        for inner in value.values():
            yield from _attributes_read(inner)
    elif isinstance(value, list):
        for inner in value:
            yield from _attributes_read(inner)


def outputs_of_skipped(template: dict[str, Any], skipping: Iterable[str]) -> list[str]:
    """Outputs of `template` that read an attribute of a resource of a skipped type: moto's CloudFormation
    then fails the whole stack (an internal error), so the local cloud names them first."""
    resources = template.get("Resources", {})
    skipped_ids = {k for k, r in resources.items() if r["Type"] in set(skipping)}
    return sorted(
        name for name, output in template.get("Outputs", {}).items() if skipped_ids & set(_attributes_read(output))
    )


def check_template(assembly: Path, stack_name: str) -> dict[str, str]:
    """Before deploying: the types the local cloud will skip, each logged with its reason (returned by
    type); UnsupportedResource for a type it cannot create that `UNSUPPORTED_RESOURCES` does not name,
    or for an output that reads an attribute of a resource it skips."""
    skipping = skipped(template_types(assembly, stack_name))
    for template in (assembly / f"{stack_name}.template.json", *assembly.glob("*.nested.template.json")):
        reading = outputs_of_skipped(json.loads(template.read_text()), skipping)
        if reading:
            raise UnsupportedResource(
                f"{template.name}: output(s) {', '.join(reading)} read an attribute of a resource the local cloud "
                "skips, which fails the whole stack in moto; output a name or an ARN built from one instead"
            )
    for resource_type, reason in skipping.items():
        log.info("the local cloud skips %s: %s", resource_type, reason)
    return skipping


def check_created(assembly: Path, stack_name: str, cfn: Any) -> None:
    """After deploying: raise unless every resource type of the stack's templates (its own and its nested
    stacks') was created, or is on `UNSUPPORTED_RESOURCES` with its reason (a type moto knows may still
    fail to appear)."""
    wanted = template_types(assembly, stack_name)
    created: set[str] = set()
    stacks = [stack_name]
    while stacks:
        pages = cfn.get_paginator("list_stack_resources").paginate(StackName=stacks.pop())
        for resource in (r for page in pages for r in page["StackResourceSummaries"]):
            created.add(resource["ResourceType"])
            if resource["ResourceType"] == "AWS::CloudFormation::Stack" and resource.get("PhysicalResourceId"):
                stacks.append(resource["PhysicalResourceId"])
    missing = sorted(wanted - created - set(UNSUPPORTED_RESOURCES))
    if missing:
        raise UnsupportedResource(
            f"the local cloud did not create the stack's {', '.join(missing)}: moto's CloudFormation cannot, and "
            "a stack without them would differ from AWS's. Fill the gap with a shim (fedstep/local/gaps/), or add "
            f"the type to {ALLOW_LIST} with the reason the local cloud can do without it"
        )
