"""Gap 4: moto delivers DynamoDB stream records inside the write; deliver them asynchronously, per function."""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

from fedstep.local.gaps.shim import PatchShim

log = logging.getLogger(__name__)

Invoke = Callable[[Any, Any], tuple[str, bool, str]]  # LambdaFunction._invoke_lambda(function, event)

STREAM_ATTEMPTS = 3
STREAM_BATCH_SIZE = 100
"""Records per invocation at most: the aggregation function's event source mapping's BatchSize (infra)."""
_stream_workers: dict[str, _StreamWorker] = {}
_workers_lock = threading.Lock()


class _StreamWorker:
    """Processes one function's stream batches in order, on its own thread (like one shard)."""

    def __init__(self, function: Any, invoke: Invoke) -> None:
        self.function = function
        self.invoke = invoke
        self.queue: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self.thread = threading.Thread(target=self._loop, name=f"stream-{function.function_name}", daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        stopping = False
        while not stopping and (event := self.queue.get()) is not None:
            taken = 1
            try:
                # Records written while the last batch ran wait in the shard: the next invocation gets them
                # together, up to the mapping's batch size, as Lambda's stream poller hands them over.
                while len(event["Records"]) < STREAM_BATCH_SIZE:
                    try:
                        more = self.queue.get_nowait()
                    except queue.Empty:
                        break
                    taken += 1
                    if more is None:
                        stopping = True
                        break
                    event = {**event, "Records": [*event["Records"], *more["Records"]]}
                for attempt in range(1, STREAM_ATTEMPTS + 1):
                    result, errored, _ = self.invoke(self.function, event)
                    if not errored and not _item_failures(result):
                        break
                    if attempt == STREAM_ATTEMPTS:
                        log.error("stream batch dropped after %d failed attempts", attempt)
                    time.sleep(0.2 * attempt)
            finally:
                for _ in range(taken):
                    self.queue.task_done()


def _item_failures(result: str) -> list[Any]:
    """The `batchItemFailures` a handler reported (partial batch response), if any."""
    try:
        parsed = json.loads(result)
    except (TypeError, ValueError):
        return []
    return (parsed.get("batchItemFailures") or []) if isinstance(parsed, dict) else []


def _is_stream_batch(event: Any) -> bool:
    records = event.get("Records") if isinstance(event, dict) else None
    return bool(records) and all(r.get("eventSource") == "aws:dynamodb" for r in records)


def wait_for_stream_batches(timeout_s: float = 60.0) -> None:
    """Block until every queued stream batch has been processed (tests use this)."""
    deadline = time.monotonic() + timeout_s
    for worker in list(_stream_workers.values()):
        while worker.queue.unfinished_tasks:
            if time.monotonic() > deadline:
                raise TimeoutError("stream batches still being processed")
            time.sleep(0.02)


def stop_stream_workers() -> None:
    """Let every worker finish the batches it has queued, then end its thread."""
    with _workers_lock:
        for worker in _stream_workers.values():
            worker.queue.put(None)
        for worker in _stream_workers.values():
            worker.thread.join(timeout=30)
        _stream_workers.clear()


def queueing(invoke: Invoke) -> Invoke:
    """`invoke`, except that a stream batch is queued to the function's worker and the call returns at once."""

    def invoke_or_queue(function: Any, event: Any = None) -> tuple[str, bool, str]:
        if not _is_stream_batch(event):
            return invoke(function, event)
        with _workers_lock:
            worker = _stream_workers.get(function.function_arn)
            if worker is None or worker.function is not function:
                worker = _stream_workers[function.function_arn] = _StreamWorker(function, invoke)
        worker.queue.put(event)
        return json.dumps({"queued": len(event["Records"])}), False, ""

    return invoke_or_queue


class StreamDelivery(PatchShim):
    name = "stream_delivery"
    gap = (
        "moto delivers DynamoDB stream records synchronously, inside the write that produced them, and each time "
        "with every record not yet consumed, so a handler's own writes re-enter it. AWS delivers them "
        "asynchronously, one batch at a time per shard, in order, each batch holding the records that arrived "
        "while the last one ran (up to the batch size). The shim wraps LambdaFunction._invoke_lambda "
        "(moto's, or the in-process runner when that shim is applied first): a stream batch is queued to one "
        "worker thread per function and the write returns at once; a batch that raised or reported batch item "
        f"failures is retried ({STREAM_ATTEMPTS} attempts in all) and then logged as dropped, as the stream's "
        "failure queue would receive it."
    )

    def replacements(self) -> list[tuple[type, str, Any]]:
        from moto.awslambda.models import LambdaFunction

        return [(LambdaFunction, "_invoke_lambda", queueing(LambdaFunction._invoke_lambda))]

    def undo(self) -> None:
        """Finish the queued batches and end the workers, then put back the wrapped invocation."""
        stop_stream_workers()
        super().undo()


SHIM = StreamDelivery()
