"""Client agents as child processes that never outlive the parent.

Each child gets FEDSTEP_EXIT_WITH_PARENT=1, which makes the agent ask the kernel to send it SIGTERM
when its parent dies (Linux prctl PR_SET_PDEATHSIG) - even if the parent is killed with SIGKILL.
`stop()` sends SIGTERM, waits, then SIGKILLs whatever is left.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path


class ClientProcesses:
    def __init__(self) -> None:
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.logs: dict[str, Path] = {}

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
