"""Gap 5: moto's `AWS::KMS::Key` handler fails on CloudFormation's tags and key policy objects; convert both."""

from __future__ import annotations

import json
from typing import Any

from fedstep.local.gaps.shim import CloudFormationFix


class KmsFromCloudFormation(CloudFormationFix):
    name = "kms_from_cloudformation"
    gap = (
        "moto's CloudFormation handler for AWS::KMS::Key passes the template's tags (Key/Value) to a tagger that "
        "expects KMS's own form (TagKey/TagValue), so the stack fails with a KeyError; and it stores a key policy "
        "given as a JSON object unconverted, so DescribeKey then fails parsing it. CloudFormation accepts both. "
        "The shim converts them before moto's handler runs, for any deployment into this process's moto "
        "(`cdk deploy` included)."
    )

    def resource_class(self) -> type:
        from moto.kms.models import Key

        return Key

    def fix(self, properties: dict[str, Any]) -> dict[str, Any]:
        properties["Tags"] = [
            {"TagKey": t["Key"], "TagValue": t["Value"]} if "Key" in t else t for t in properties.get("Tags") or []
        ]
        if isinstance(properties.get("KeyPolicy"), dict):
            properties["KeyPolicy"] = json.dumps(properties["KeyPolicy"])
        return properties


SHIM = KmsFromCloudFormation()
