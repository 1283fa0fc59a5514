"""Gap 2: moto executes state machines only when switched on, and never CloudFormation's; re-create them."""

from __future__ import annotations

import copy
from typing import Any

from fedstep.local.gaps.moto_server import moto_api
from fedstep.local.gaps.shim import StackShim

_UNSET = object()


def enable_step_functions_execution(endpoint: str) -> None:
    moto_api(endpoint, "config", {"stepfunctions": {"execute_state_machine": True}})


class StepFunctionsExecution(StackShim):
    name = "step_functions_execution"
    gap = (
        "moto runs a state machine's definition only when execution is switched on (a process-wide setting that "
        "a reset keeps), and then serves Step Functions from a second backend; the state machines its "
        "CloudFormation created stay in the first one, invisible once execution is on. In AWS a stack's state "
        "machines execute. The shim describes them, switches execution on and re-creates them there with the same "
        "name, definition and role, hence the same ARN."
    )

    def __init__(self) -> None:
        self._previous: Any = _UNSET  # the Step Functions setting `apply` replaced, until `undo` puts it back

    def apply(self, cfn: Any, sfn: Any, endpoint: str, stack_name: str, template: dict[str, Any]) -> list[str]:
        """Switch execution on and re-create the stack's state machines in moto's executing backend; returns
        their ARNs. `endpoint` is a moto server running in this process (its settings are this process's)."""
        from moto.core.config import default_user_config

        ids = self.physical_ids(cfn, stack_name)
        described = [
            sfn.describe_state_machine(stateMachineArn=ids[logical_id])
            for logical_id, resource in template["Resources"].items()
            if resource["Type"] == "AWS::StepFunctions::StateMachine"
        ]
        if self._previous is _UNSET:
            self._previous = copy.deepcopy(default_user_config.get("stepfunctions"))
        enable_step_functions_execution(endpoint)
        return [
            sfn.create_state_machine(name=d["name"], definition=d["definition"], roleArn=d["roleArn"])[
                "stateMachineArn"
            ]
            for d in described
        ]

    def undo(self) -> None:
        """Put back the execution setting `apply` replaced (normally off), so that CloudFormation's state machines
        are visible again. The re-created state machines stay in the executing backend until the next reset."""
        from moto.core.config import default_user_config

        if self._previous is _UNSET:
            return
        if self._previous is None:
            default_user_config.pop("stepfunctions", None)
        else:
            default_user_config["stepfunctions"] = self._previous
        self._previous = _UNSET


SHIM = StepFunctionsExecution()
