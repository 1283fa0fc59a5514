"""Gap 7: moto's StopExecution leaves an execution waiting for a task token; wake it and report ABORTED."""

from __future__ import annotations

import contextlib
from typing import Any

from fedstep.local.gaps.shim import PatchShim


class StopExecution(PatchShim):
    name = "stop_execution"
    gap = (
        "moto's StopExecution does not interrupt an execution waiting for a task token: it keeps waiting, and at "
        "the task's deadline it fails (States.Timeout) instead of being aborted. In AWS, Step Functions ends it at "
        "once, ABORTED. After moto's own stop, the shim wakes the execution's waiting tasks with a failure and "
        "reports the execution ABORTED (`fedstep stop`)."
    )

    def replacements(self) -> list[tuple[type, str, Any]]:
        from moto.stepfunctions.models import StateMachine
        from moto.stepfunctions.parser.api import ExecutionStatus
        from moto.stepfunctions.parser.asl.eval.callback.callback import CallbackOutcomeFailure
        from moto.stepfunctions.parser.backend.execution import BaseExecutionWorkerCommunication

        original_stop = StateMachine.stop_execution
        original_reflect = BaseExecutionWorkerCommunication._reflect_execution_status

        def stop_execution(self: Any, execution_arn: str) -> Any:
            execution = original_stop(self, execution_arn)
            worker = getattr(execution, "exec_worker", None)
            if worker is not None:
                execution._fedstep_aborted = True
                pool = worker.env.callback_pool_manager
                for callback_id in list(pool._pool):
                    with contextlib.suppress(Exception):  # already answered or timed out
                        pool.notify(callback_id, CallbackOutcomeFailure(callback_id, "ExecutionAborted", "stopped"))
            return execution

        def reflect(self: Any) -> None:
            original_reflect(self)
            if getattr(self.execution, "_fedstep_aborted", False):
                self.execution.exec_status = ExecutionStatus.ABORTED
                self.execution.error = self.execution.cause = None

        return [
            (StateMachine, "stop_execution", stop_execution),
            (BaseExecutionWorkerCommunication, "_reflect_execution_status", reflect),
        ]


SHIM = StopExecution()
