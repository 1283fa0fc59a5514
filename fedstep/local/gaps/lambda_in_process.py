"""Gap 3: moto cannot run Lambda code without Docker; run the handler in this process instead."""

from __future__ import annotations

import hashlib
import importlib
import io
import json
import logging
import os
import subprocess
import sys
import tempfile
import traceback
import uuid
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedstep.core.errors import FedstepError
from fedstep.local.gaps.moto_server import check_patch_point
from fedstep.local.gaps.shim import PatchShim

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[3]


@dataclass
class LocalLambdaContext:
    """The attributes of the Lambda context object that handlers and Powertools read."""

    function_name: str
    invoked_function_arn: str
    memory_limit_in_mb: int
    aws_request_id: str
    function_version: str = "$LATEST"
    log_group_name: str = ""
    log_stream_name: str = ""

    def get_remaining_time_in_millis(self) -> int:
        return 300_000


_verified: set[str] = set()


def verify_code_matches_checkout(code_bytes: bytes) -> None:
    """Raise if any Python source in the deployed zip differs from this checkout's copy."""
    digest = hashlib.sha256(code_bytes).hexdigest()
    if digest in _verified:
        return
    with zipfile.ZipFile(io.BytesIO(code_bytes)) as zf:
        for name in zf.namelist():
            if name.endswith(".py") and name.split("/")[0] in ("fedstep", "lambdas"):
                local = REPO / name
                if not local.exists() or local.read_bytes() != zf.read(name):
                    raise RuntimeError(
                        f"the deployed Lambda's {name} differs from this checkout's; re-deploy the local cloud"
                    )
    _verified.add(digest)


def log_failure(function_name: str, exc: Exception) -> None:
    """One warning line for a named error the round protocol expects (QuorumNotMet, TooFewParticipants,
    StrategyFailed: a `FedstepError`, reported to the state machine by name); the traceback only for
    anything else, which is a bug."""
    if isinstance(exc, FedstepError):
        log.warning("Lambda %s: %s: %s", function_name, type(exc).__name__, exc)
    else:
        log.error("Lambda %s failed:\n%s", function_name, traceback.format_exc())


@dataclass(frozen=True)
class MemoryUse:
    """One invocation's peak resident memory, as Lambda's "Max Memory Used" (MB), against its MemorySize."""

    function_name: str
    mode: str
    """The event's `mode` (publish, slice, ...), or "" (a stream batch)."""
    peak_mb: float
    memory_mb: int


def run_isolated(function: Any, event: Any) -> tuple[str, bool, str]:
    """Run one invocation in its own Python process (`fedstep.local.lambda_child`) with the function's
    environment, and fail it as Lambda does - `Runtime.OutOfMemory` - if its peak resident memory
    passed the function's MemorySize. Each invocation's peak is kept in `SHIM.memory_uses`."""
    memory_mb = int(function.memory_size or 128)
    with tempfile.TemporaryDirectory(prefix="fedstep-lambda-") as tmp:
        answer = Path(tmp) / "answer.json"
        request = {"handler": function.handler, "event": event if event is not None else {}, "answer": str(answer)}
        request["context"] = {
            "function_name": function.function_name,
            "invoked_function_arn": function.function_arn,
            "memory_limit_in_mb": memory_mb,
            "aws_request_id": str(uuid.uuid4()),
        }
        env = {**os.environ, **{k: str(v) for k, v in (function.environment_vars or {}).items()}}
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
        subprocess.run(
            [sys.executable, "-m", "fedstep.local.lambda_child"],
            input=json.dumps(request),
            text=True,
            env=env,
            cwd=REPO,
            check=False,
            timeout=int(function.timeout or 900) + 60,
        )
        if not answer.exists():
            return json.dumps({"errorType": "Runtime.ExitError", "errorMessage": "the runtime exited"}), True, ""
        outcome = json.loads(answer.read_text())
    mode = str(event.get("mode", "")) if isinstance(event, dict) else ""
    SHIM.memory_uses.append(MemoryUse(function.function_name, mode, outcome["max_rss_mb"], memory_mb))
    if outcome["max_rss_mb"] > memory_mb:
        message = f"used {outcome['max_rss_mb']:.0f} MB of the function's {memory_mb} MB"
        log.error("Lambda %s: Runtime.OutOfMemory: %s", function.function_name, message)
        return json.dumps({"errorType": "Runtime.OutOfMemory", "errorMessage": message}), True, ""
    if "error" in outcome:
        error = outcome["error"]
        if outcome.get("expected"):  # a FedstepError: one line, as `log_failure` logs it in-process
            log.warning("Lambda %s: %s: %s", function.function_name, error["errorType"], error["errorMessage"])
        else:
            log.error("Lambda %s failed:\n%s", function.function_name, outcome.get("trace", ""))
        return json.dumps(error), True, outcome.get("trace", "")
    return json.dumps(outcome["result"]), False, ""


def run_handler(function: Any, event: Any = None) -> tuple[str, bool, str]:
    """Replacement for moto's `LambdaFunction._invoke_lambda`: run the function's handler here and now, with
    its environment (or in its own process, `SHIM.enforce_memory`); returns (payload, errored, logs) as
    moto's does."""
    try:
        verify_code_matches_checkout(function.code_bytes)
        if SHIM.enforce_memory:
            return run_isolated(function, event)
        os.environ.update({k: str(v) for k, v in (function.environment_vars or {}).items()})
        module_name, func_name = function.handler.rsplit(".", 1)
        handler = getattr(importlib.import_module(module_name), func_name)
        context = LocalLambdaContext(
            function_name=function.function_name,
            invoked_function_arn=function.function_arn,
            memory_limit_in_mb=int(function.memory_size or 128),
            aws_request_id=str(uuid.uuid4()),
        )
        result = handler(event if event is not None else {}, context)
        return json.dumps(result), False, ""
    except Exception as exc:  # a Lambda reports any exception as a function error
        log_failure(function.function_name, exc)
        payload = {"errorMessage": str(exc), "errorType": type(exc).__name__}
        return json.dumps(payload), True, traceback.format_exc()


class LambdaInProcess(PatchShim):
    """`enforce_memory`: run each invocation in its own process, as Lambda's memory limit applies to it
    (set by `LocalCloud(enforce_lambda_memory=True)`; slower: each invocation imports its handler)."""

    name = "lambda_in_process"
    gap = (
        "moto runs Lambda code only in a Docker container (its private LambdaFunction._invoke_lambda); without "
        "Docker an invocation returns 'error running docker' as a function error. AWS runs the handler. The shim "
        "replaces that method: the handler named by the function runs in this process, with the function's "
        "environment, imported from this checkout after checking that the deployed zip holds byte-identical "
        "sources (the zip's compiled wheels are for the Lambda platform, not this interpreter). The patch point is "
        "private, so moto is pinned exactly and `check_patch_point` fails loudly on any other version."
    )

    def apply(self) -> None:
        check_patch_point()
        super().apply()

    def replacements(self) -> list[tuple[type, str, Any]]:
        from moto.awslambda.models import LambdaFunction

        return [(LambdaFunction, "_invoke_lambda", run_handler)]

    def __init__(self) -> None:
        super().__init__()
        self.enforce_memory = False
        self.memory_uses: list[MemoryUse] = []

    def undo(self) -> None:
        super().undo()
        self.enforce_memory = False


SHIM = LambdaInProcess()
