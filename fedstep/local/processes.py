"""Client agents as child processes that never outlive the parent.

Each child gets FEDSTEP_EXIT_WITH_PARENT=<pid>, which makes the agent ask the kernel to send it SIGTERM
when its parent dies (Linux prctl PR_SET_PDEATHSIG) - even if the parent is killed with SIGKILL.
`stop()` sends SIGTERM, waits, then SIGKILLs whatever is left.

An agent is started one of two ways, with the same command-line arguments, environment and log:
- spawned: `python -m client_agent.cli <args>`, a new interpreter that imports TensorFlow itself;
- forked (`ClientProcesses(fork=True)`, where `fork_is_safe()`): a copy of this process, made once
  it has imported TensorFlow and the agent's modules (`preload_agent`) and before it starts any
  thread, which runs `client_agent.cli.main(<args>)` and exits. The agents of a run then share one
  TensorFlow import (about 6 s of CPU each) instead of each paying for its own. Each is still a
  process of its own, with its own credentials (its profile, from its config) and no state shared
  with the runner after the fork: the runner forks before it starts the local cloud. Its
  `/proc/<pid>/comm` is `agent <client id>` (the command line stays the runner's).
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import NoReturn


def fork_is_safe() -> bool:
    """Whether this process may fork agents: Linux, and no Python thread but this one (a thread holding a
    lock at the fork, such as a notebook kernel's or a test worker's, could leave the copy stuck)."""
    return hasattr(os, "fork") and sys.platform == "linux" and threading.active_count() == 1


def preload_agent() -> None:
    """Import TensorFlow and the agent's modules here, once, so that forked agents need not."""
    import client_agent.cli  # noqa: F401 - the agent itself, boto3 and botocore with it
    from client_agent.keras_model import import_keras

    import_keras()


class ForkedAgent:
    """An agent forked from this process: the part of `subprocess.Popen` the runner uses."""

    def __init__(self, pid: int, args: list[str]) -> None:
        self.pid, self.args = pid, args
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(self.args, timeout or 0)
            time.sleep(0.02)
        assert self.returncode is not None
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


def _run_forked_agent(client_id: str, args: list[str], changes: dict[str, str | None], log_path: Path) -> NoReturn:
    """The forked copy: the agent's log as its stdout and stderr, its environment, `client_agent.cli.main(args)`,
    then exit with its code without running anything of the runner's (no atexit, no `finally` of its)."""
    code = 1
    try:
        log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.close(log)
        os.close(null)
        sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115 - the process's own, to its end
        sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
        for name, value in changes.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_DFL if sig == signal.SIGTERM else signal.default_int_handler)
        logging.root.handlers.clear()  # the runner's; the agent configures its own
        try:
            import ctypes

            ctypes.CDLL(None).prctl(15, f"agent {client_id}".encode()[:15], 0, 0, 0)  # PR_SET_NAME: its comm
        except (OSError, AttributeError):
            pass
        sys.argv = ["fedstep-client", *args]
        from client_agent.cli import main

        code = main(args)
    except SystemExit as exc:  # argparse's usage errors exit as the interpreter would
        code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
        if exc.code is not None and not isinstance(exc.code, int):
            print(exc.code, file=sys.stderr)
    except BaseException:  # as the interpreter ends a process on an uncaught exception
        traceback.print_exc()
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


class ClientProcesses:
    def __init__(self, fork: bool = False) -> None:
        """`fork`: fork the agents from this process (`preload_agent` first) rather than spawn them."""
        self.procs: dict[str, subprocess.Popen[bytes] | ForkedAgent] = {}
        self.logs: dict[str, Path] = {}
        self.fork = fork

    def __enter__(self) -> ClientProcesses:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, client_id: str, args: list[str], env: dict[str, str | None], log_path: Path) -> None:
        """Start `fedstep-client <args>` with this process's environment changed by `env` (None: unset)."""
        log_path.parent.mkdir(parents=True, exist_ok=True)
        changes = {
            **env,
            "FEDSTEP_EXIT_WITH_PARENT": str(os.getpid()),
            "PYTHONUNBUFFERED": "1",
            "TF_CPP_MIN_LOG_LEVEL": "3",
        }
        self.logs[client_id] = log_path
        if self.fork:
            sys.stdout.flush()  # nothing of the runner's buffered output is written twice
            sys.stderr.flush()
            gc.freeze()  # what the copy inherits (TensorFlow, the agent's modules) is never collected in it
            pid = os.fork()
            if pid == 0:
                _run_forked_agent(client_id, args, changes, log_path)
            self.procs[client_id] = ForkedAgent(pid, ["fedstep-client", *args])
            return
        environment = {k: v for k, v in {**os.environ, **changes}.items() if v is not None}
        with open(log_path, "wb") as log:
            self.procs[client_id] = subprocess.Popen(
                [sys.executable, "-m", "client_agent.cli", *args],
                env=environment,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        self.logs[client_id] = log_path

    def failed(self) -> dict[str, int]:
        """Clients that exited with an error: id -> exit code."""
        return {cid: p.returncode for cid, p in self.procs.items() if p.poll() not in (None, 0)}

    def log_tail(self, client_id: str, lines: int = 15) -> str:
        text = self.logs[client_id].read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def wait(self, timeout_s: float) -> bool:
        """Wait for every client to exit by itself; True if they all did."""
        try:
            for proc in self.procs.values():
                proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return False
        return True

    def stop(self, grace_s: float = 5.0) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
