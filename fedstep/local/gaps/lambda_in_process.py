"""Gap 3: moto cannot run Lambda code without Docker; run the handler in this process instead."""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import importlib
import io
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
import traceback
import uuid
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedstep.core.errors import FedstepError
from fedstep.local.gaps.moto_server import check_patch_point
from fedstep.local.gaps.shim import PatchShim
from fedstep.local.iam.identities import Keys, service_credentials

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
_verified_objects: list[bytes] = []
"""The last code objects verified (moto keeps one per function), held so that each is known by identity;
at most VERIFIED_KEPT, so that a process deploying many clouds does not keep every bundle."""
VERIFIED_KEPT = 4


def verify_code_matches_checkout(code_bytes: bytes) -> None:
    """Raise if any Python source in the deployed zip differs from this checkout's copy. Each deployed
    zip is checked once: by identity first (hashing a 55 MB bundle costs 30 ms, every invocation)."""
    if any(code_bytes is seen for seen in _verified_objects):
        return
    digest = hashlib.sha256(code_bytes).hexdigest()
    if digest in _verified:
        _remember(code_bytes)
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
    _remember(code_bytes)


def _remember(code_bytes: bytes) -> None:
    _verified_objects.append(code_bytes)
    del _verified_objects[:-VERIFIED_KEPT]


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
    killed: bool = False
    """Stopped while it ran, its memory past `memory_mb` (`peak_mb` is what it had then)."""


_function_credentials: contextvars.ContextVar[Keys | None] = contextvars.ContextVar(
    "function_credentials", default=None
)


def role_credentials(function: Any) -> Keys:
    """The credentials Lambda gives the function: its execution role's, as Lambda obtains them."""
    return service_credentials(function.role, "lambda.amazonaws.com", function.function_arn, function.region)


@contextlib.contextmanager
def acting_as(keys: Keys) -> Any:
    """Within the block, on this thread, the standard credential chain's environment step answers `keys`
    (Lambda puts the role's credentials in the function's environment; in this process the environment
    is everyone's, so the shim answers for this thread only)."""
    token = _function_credentials.set(keys)
    try:
        yield
    finally:
        _function_credentials.reset(token)


WATCH_INTERVAL_S = 0.01
"""How often the memory-enforcing mode reads an invocation's resident memory (s)."""


def resident_mb(pid: int) -> float:
    """A process's resident memory now (VmRSS, MiB); 0 once it has exited."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def watch(process: subprocess.Popen[str], limit_mb: int, timeout_s: float) -> float | None:
    """Wait for `process` to exit, killing it the moment its resident memory passes `limit_mb` (as
    Lambda stops an invocation at its MemorySize) or it runs past `timeout_s`. The memory it was
    killed at, or None if it ended by itself (or was killed for time: `process.returncode`)."""
    deadline = time.monotonic() + timeout_s
    while process.poll() is None:
        used = resident_mb(process.pid)
        if used > limit_mb or time.monotonic() > deadline:
            process.kill()
            process.wait()
            return used if used > limit_mb else None
        time.sleep(WATCH_INTERVAL_S)
    return None


def _out_of_memory(function: Any, message: str) -> tuple[str, bool, str]:
    log.error("Lambda %s: Runtime.OutOfMemory: %s", function.function_name, message)
    return json.dumps({"errorType": "Runtime.OutOfMemory", "errorMessage": message}), True, ""


def run_isolated(function: Any, event: Any) -> tuple[str, bool, str]:
    """Run one invocation in its own Python process (`fedstep.local.lambda_child`) with the function's
    environment and its role's credentials, and stop it as Lambda does - `Runtime.OutOfMemory` - the
    moment its resident memory passes the function's MemorySize (`watch`; a peak between two readings
    is judged from VmHWM when it ends). Each invocation's peak is kept in `SHIM.memory_uses`."""
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
        env.update(role_credentials(function).env())
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
        process = subprocess.Popen(
            [sys.executable, "-m", "fedstep.local.lambda_child"], stdin=subprocess.PIPE, text=True, env=env, cwd=REPO
        )
        assert process.stdin is not None
        process.stdin.write(json.dumps(request))
        process.stdin.close()
        killed_at = watch(process, memory_mb, int(function.timeout or 900) + 60)
        mode = str(event.get("mode", "")) if isinstance(event, dict) else ""
        if killed_at is not None:
            SHIM.memory_uses.append(MemoryUse(function.function_name, mode, killed_at, memory_mb, killed=True))
            return _out_of_memory(function, f"stopped at {killed_at:.0f} MB of the function's {memory_mb} MB")
        if not answer.exists():
            return json.dumps({"errorType": "Runtime.ExitError", "errorMessage": "the runtime exited"}), True, ""
        outcome = json.loads(answer.read_text())
    SHIM.memory_uses.append(MemoryUse(function.function_name, mode, outcome["max_rss_mb"], memory_mb))
    if outcome["max_rss_mb"] > memory_mb:
        return _out_of_memory(function, f"used {outcome['max_rss_mb']:.0f} MB of the function's {memory_mb} MB")
    if "error" in outcome:
        error = outcome["error"]
        if outcome.get("expected"):  # a FedstepError: one line, as `log_failure` logs it in-process
            log.warning("Lambda %s: %s: %s", function.function_name, error["errorType"], error["errorMessage"])
        else:
            log.error("Lambda %s failed:\n%s", function.function_name, outcome.get("trace", ""))
        return json.dumps(error), True, outcome.get("trace", "")
    return json.dumps(outcome["result"]), False, ""


PAYLOAD_LIMIT_BYTES = 6 * 2**20
"""Lambda's limit on a synchronous invocation's request and response payloads (6 MB each)."""


def _too_large(function: Any, error: str, what: str) -> tuple[str, bool, str]:
    message = f"{what}: more than Lambda's {PAYLOAD_LIMIT_BYTES} bytes for a synchronous invocation"
    log.error("Lambda %s: %s: %s", function.function_name, error, message)
    return json.dumps({"errorType": error, "errorMessage": message}), True, ""


def _bounded_response(function: Any, outcome: tuple[str, bool, str]) -> tuple[str, bool, str]:
    """The invocation's outcome, or Lambda's error for a response larger than its payload limit."""
    size = len(outcome[0].encode())
    if size > PAYLOAD_LIMIT_BYTES:
        return _too_large(function, "Function.ResponseSizeTooLarge", f"the response is {size} bytes")
    return outcome


def run_handler(function: Any, event: Any = None) -> tuple[str, bool, str]:
    """Replacement for moto's `LambdaFunction._invoke_lambda`: run the function's handler here and now, with
    its environment (or in its own process, `SHIM.enforce_memory`); returns (payload, errored, logs) as
    moto's does. A request or a response larger than Lambda's 6 MB payload limit fails as Lambda fails it."""
    try:
        verify_code_matches_checkout(function.code_bytes)
        size = len(json.dumps(event if event is not None else {}).encode())
        if size > PAYLOAD_LIMIT_BYTES:
            return _too_large(function, "RequestEntityTooLargeException", f"the request is {size} bytes")
        if SHIM.enforce_memory:
            return _bounded_response(function, run_isolated(function, event))
        os.environ.update({k: str(v) for k, v in (function.environment_vars or {}).items()})
        module_name, func_name = function.handler.rsplit(".", 1)
        handler = getattr(importlib.import_module(module_name), func_name)
        context = LocalLambdaContext(
            function_name=function.function_name,
            invoked_function_arn=function.function_arn,
            memory_limit_in_mb=int(function.memory_size or 128),
            aws_request_id=str(uuid.uuid4()),
        )
        with acting_as(role_credentials(function)):
            result = handler(event if event is not None else {}, context)
        return _bounded_response(function, (json.dumps(result), False, ""))
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
        "Docker an invocation returns 'error running docker' as a function error. AWS runs the handler, with its "
        "execution role's credentials. The shim replaces that method: the handler named by the function runs in "
        "this process, with the function's environment and its role's credentials (obtained as Lambda obtains "
        "them; the standard credential chain answers them on the invoking thread), imported from this checkout "
        "after checking that the deployed zip holds byte-identical "
        "sources (the zip's compiled wheels are for the Lambda platform, not this interpreter). The patch point is "
        "private, so moto is pinned exactly and `check_patch_point` fails loudly on any other version."
    )

    def apply(self) -> None:
        check_patch_point()
        super().apply()

    def replacements(self) -> list[tuple[type, str, Any]]:
        from botocore.credentials import Credentials, EnvProvider
        from moto.awslambda.models import LambdaFunction

        original_load = EnvProvider.load

        def load(provider: Any) -> Any:
            keys = _function_credentials.get()
            if keys is None:
                return original_load(provider)
            return Credentials(keys.access_key, keys.secret_key, keys.token, method="env")

        return [(LambdaFunction, "_invoke_lambda", run_handler), (EnvProvider, "load", load)]

    def __init__(self) -> None:
        super().__init__()
        self.enforce_memory = False
        self.memory_uses: list[MemoryUse] = []

    def undo(self) -> None:
        super().undo()
        self.enforce_memory = False


SHIM = LambdaInProcess()
