"""The state machine's and SNS's ports in memory: task reports and round messages, recorded."""

from __future__ import annotations

import threading
from typing import Any

from fedstep.core import limits
from fedstep.memory.sizes import record_bytes


class RecordingReporter:
    """Step Functions' task tokens: each may be answered once. `fail_first`: the first success is
    lost (raises ConnectionError), as if the function crashed before the report arrived."""

    def __init__(self, fail_first: bool = False) -> None:
        self.successes: list[tuple[str, dict[str, Any]]] = []
        self.failures: list[tuple[str, str, str]] = []
        self.fail_first = fail_first
        self.lock = threading.Lock()

    def succeed(self, task_token: str, output: dict[str, Any]) -> None:
        with self.lock:
            if self.fail_first:
                self.fail_first = False
                raise ConnectionError("simulated crash before the report reached Step Functions")
            size = record_bytes(output)
            assert size <= limits.STEP_FUNCTIONS_PAYLOAD_BYTES, f"task output of {size} bytes"
            if task_token not in {t for t, _ in self.successes}:
                self.successes.append((task_token, output))

    def fail(self, task_token: str, error: str, cause: str) -> None:
        with self.lock:
            self.failures.append((task_token, error, cause))


class RecordingPublisher:
    """The clients' topic: each message with the clients it was sent to (within SNS's size limit)."""

    def __init__(self) -> None:
        self.messages: list[tuple[dict[str, Any], list[str]]] = []

    def publish(self, message: dict[str, Any], clients: list[str]) -> None:
        size = record_bytes(message) + record_bytes(clients)
        assert size <= limits.SNS_MESSAGE_BYTES, f"round message of {size} bytes"
        self.messages.append((message, clients))
