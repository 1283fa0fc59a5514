"""Gap 8: moto's SendTaskFailure drops the cause; pass it on, as AWS does."""

from __future__ import annotations

from typing import Any

from fedstep.local.gaps.shim import PatchShim


class TaskFailureCause(PatchShim):
    name = "task_failure_cause"
    gap = (
        "moto's SendTaskFailure handler passes only the error to its backend and drops the cause, so an execution "
        "failed through a task token has no cause. In AWS the cause reaches the task's catcher and the execution "
        "(`fedstep status` shows it, e.g. which strategy raised what). The shim passes the cause through."
    )

    def replacements(self) -> list[tuple[type, str, Any]]:
        from moto.core.responses import EmptyResult
        from moto.stepfunctions.responses import StepFunctionResponse

        def send_task_failure(self: Any) -> Any:
            self.stepfunction_backend.send_task_failure(
                self._get_param("taskToken"), error=self._get_param("error"), cause=self._get_param("cause")
            )
            return EmptyResult()

        return [(StepFunctionResponse, "send_task_failure", send_task_failure)]


SHIM = TaskFailureCause()
