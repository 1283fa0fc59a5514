"""The synthesized stack's state machine definition, as deployed (for tests that check fedstep's own
figures against it: the cost model's paths, the execution history budget)."""

from __future__ import annotations

import json
from typing import Any

FUNCTION_ARN = "arn:aws:lambda:us-east-1:123456789012:function:aggregate"


def state_machine_definition() -> dict[str, Any]:
    """The definition (Amazon States Language) of the default trial deployment's state machine: a
    reference to the aggregation function becomes its ARN, as deployed; any other reference a word."""
    from aws_cdk.assertions import Template

    from infra.config import DeploymentConfig
    from infra.synth import build_app

    config = DeploymentConfig(trial=True)
    template = Template.from_stack(build_app(config, None, bundle=False).node.find_child(config.stack_name))
    [machine] = template.find_resources("AWS::StepFunctions::StateMachine").values()

    def text(part: object) -> str:
        if isinstance(part, str):
            return part
        if isinstance(part, dict) and "Fn::GetAtt" in part and "Function" in part["Fn::GetAtt"][0]:
            return FUNCTION_ARN
        return "ref"

    return json.loads("".join(text(p) for p in machine["Properties"]["DefinitionString"]["Fn::Join"][1]))
