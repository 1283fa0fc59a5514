"""Gap 6: moto's `AWS::IAM::Role` handler stores inline policies as objects; store them as JSON text."""

from __future__ import annotations

import json
from typing import Any

from fedstep.local.gaps.shim import CloudFormationFix


class IamRolePolicies(CloudFormationFix):
    name = "iam_role_policies"
    gap = (
        "moto's CloudFormation handler for AWS::IAM::Role stores the role's inline policy documents as objects; "
        "its own IAM enforcement (`/moto-api/reset-auth`) then fails reading them (KeyError 'policy_document'). "
        "The IAM API, and CloudFormation in AWS, keep them as JSON text. The shim converts them before moto's "
        "handler runs, so an assumed client role is evaluated against its real, deployed policy."
    )

    def resource_class(self) -> type:
        from moto.iam.models import Role

        return Role

    def fix(self, properties: dict[str, Any]) -> dict[str, Any]:
        properties["Policies"] = [
            {**p, "PolicyDocument": json.dumps(p["PolicyDocument"])} if isinstance(p.get("PolicyDocument"), dict) else p
            for p in properties.get("Policies") or []
        ]
        return properties


SHIM = IamRolePolicies()
