"""Heartbeats: the agent's own item in the table, rewritten every `heartbeat_s` seconds and whenever its
state changes, so operators see who is online with `fedstep clients`.

The item holds the client id, the agent version, the state (idle / training run r / declined run r /
stopped), the time, the interval and a hardware summary - nothing about the local data - and, once
the agent has trained DP-SGD rounds of a run, that run's record-level epsilon and delta (`privacy`,
with the run's id; kept while idle, until the agent serves another run). A failed write is logged
and never stops the agent.
"""

from __future__ import annotations

import contextlib
import logging
import os
import platform
import shutil
import subprocess
import threading
from typing import Any

from fedstep.aws.ddb import Items
from fedstep.aws.errors import AWS_ERRORS, explain
from fedstep.core.clock import utc_now
from fedstep.core.schemas import Heartbeat
from fedstep.core.version import __version__

log = logging.getLogger("fedstep.client")


def hardware_summary() -> dict[str, Any]:
    """os, arch, python, cpus, memory_gib and gpus (names from nvidia-smi, if present)."""
    summary: dict[str, Any] = {
        "os": platform.system().lower(),
        "arch": platform.machine(),
        "python": platform.python_version(),
        "cpus": os.cpu_count() or 0,
    }
    with contextlib.suppress(ValueError, OSError, AttributeError):  # sysconf is not on every platform
        summary["memory_gib"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    summary["gpus"] = _gpus()
    return summary


def _gpus() -> list[str]:
    smi = shutil.which("nvidia-smi")
    if not smi:
        return []
    try:
        out = subprocess.run(
            [smi, "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True, timeout=5, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in out.splitlines() if line.strip()]


class Heartbeats:
    """Writes the heartbeat from a daemon thread; `set_state` writes at once on a change of state."""

    def __init__(self, client_id: str, table: Items, interval_s: int) -> None:
        self.client_id, self.table, self.interval_s = client_id, table, interval_s
        self.hardware = hardware_summary()
        self._state: tuple[str, str | None, int | None] = ("idle", None, None)
        self._privacy: tuple[str, dict[str, float]] | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failing = False

    @property
    def enabled(self) -> bool:
        return self.interval_s > 0

    def start(self) -> None:
        if not self.enabled:
            return
        self.beat()
        self._thread = threading.Thread(target=self._loop, name="heartbeat", daemon=True)
        self._thread.start()

    def set_state(self, state: str, run_id: str | None = None, round_number: int | None = None) -> None:
        with self._lock:
            changed = self._state != (state, run_id, round_number)
            self._state = (state, run_id, round_number)
        if changed and self.enabled:
            self.beat()

    def set_privacy(self, run_id: str, privacy: dict[str, float] | None) -> None:
        """The run's {"epsilon", "delta"} to show from the next beat on (None or empty: nothing)."""
        with self._lock:
            self._privacy = (run_id, dict(privacy)) if privacy else None

    @property
    def privacy_run(self) -> str | None:
        """The run whose privacy the beats show, if any."""
        with self._lock:
            return self._privacy[0] if self._privacy else None

    def stop(self) -> None:
        """Stop beating and record the agent as stopped."""
        if not self.enabled:
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.set_state("stopped")

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.beat()

    def beat(self) -> None:
        with self._lock:
            state, run_id, round_number = self._state
            known = self._privacy
        privacy = None
        if known is not None and run_id in (None, known[0]):
            run_id, privacy = known  # idle or stopped: the figures of the last run it trained with DP-SGD
        beat = Heartbeat(
            client_id=self.client_id,
            agent_version=__version__,
            state=state,
            last_seen=utc_now(),
            interval_s=self.interval_s,
            hardware=self.hardware,
            run_id=run_id,
            round=round_number,
            privacy=privacy,
        )
        try:
            self.table.put(beat.to_item())
        except AWS_ERRORS as exc:
            if not self._failing:  # once per outage, not every interval
                log.warning("could not write the heartbeat (training goes on): %s", explain(exc))
            self._failing = True
        else:
            if self._failing:
                log.info("heartbeats are written again")
            self._failing = False
