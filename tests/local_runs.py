"""`fedstep local` as a user runs it, for the end-to-end tests (tests/test_demo*.py): the command as a
process, a terminal's Ctrl-C, its client agents' processes, and its output line by line."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.cloud_helpers import agent_processes

REPO = Path(__file__).resolve().parent.parent


def fedstep_local(out: Path | None, *args: str, cwd: Path = REPO, terminal: bool = False) -> subprocess.Popen[str]:
    """`fedstep local --out <out> <args>` (no --out for None: its default) in `cwd`; `terminal`: in a
    session of its own, as in a terminal, where Ctrl-C signals its whole process group (`ctrl_c`)."""
    return subprocess.Popen(
        [sys.executable, "-m", "fedstep", "local", *(("--out", str(out)) if out else ()), *args],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=terminal,
    )


def ctrl_c(proc: subprocess.Popen[str]) -> None:
    """What a terminal does on Ctrl-C: SIGINT to the foreground process group (started with `terminal`)."""
    os.killpg(proc.pid, signal.SIGINT)


def clients_of(out: Path) -> list[int]:
    """PIDs of client agents started for this output folder."""
    return sorted(agent_processes(out).values())


def wait_for_line(proc: subprocess.Popen[str], text: str, timeout_s: float = 300) -> list[str]:
    lines: list[str] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if text in line:
            return lines
    raise AssertionError(f"{text!r} never printed; output:\n{''.join(lines)}")


def exported(env_file: Path) -> dict[str, str]:
    """What `source <env_file>` exports (`fedstep local --keep-running`'s local-cloud.env: the endpoint,
    region and keys, shell-quoted), but PATH, which it prepends to."""
    return dict(
        shlex.split(line.removeprefix("export "))[0].split("=", 1)
        for line in env_file.read_text().splitlines()
        if line.startswith("export ") and not line.startswith("export PATH=")
    )


def env_of(out: Path) -> dict[str, str]:
    """This environment plus what `source <out>/local-cloud.env` sets (the kept local cloud's endpoint and keys)."""
    return {**os.environ, **exported(out / "local-cloud.env")}
