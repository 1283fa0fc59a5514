"""`fedstep local` stopped: Ctrl-C mid-run, the runner killed, a client killed mid-run (tests/test_demo.py
says how the end-to-end runs are split)."""

from __future__ import annotations

import json
import os
import signal
import time

from tests.cloud_helpers import agent_processes
from tests.local_runs import clients_of, fedstep_local, wait_for_line


def test_ctrl_c_stops_everything_and_leaves_no_process(tmp_path):
    out = tmp_path / "interrupted"
    proc = fedstep_local(out, "--clients", "2", "--rounds", "50")
    wait_for_line(proc, "round 1/50")
    assert len(clients_of(out)) == 2
    proc.send_signal(signal.SIGINT)
    rest, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, rest
    assert "interrupted" in rest and "Traceback" not in rest
    assert clients_of(out) == []


def test_clients_exit_even_when_the_runner_is_killed(tmp_path):
    out = tmp_path / "killed"
    proc = fedstep_local(out, "--clients", "2", "--rounds", "50")
    wait_for_line(proc, "client logs in")
    time.sleep(1)
    assert len(clients_of(out)) == 2
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    deadline = time.monotonic() + 60  # each agent gets SIGTERM at once; a busy machine may take a while to end it
    while clients_of(out) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert clients_of(out) == []


def test_a_client_killed_mid_run_does_not_stop_the_run(tmp_path):
    out = tmp_path / "killed-client"
    # a busy machine may start the agents after round 1's deadline: the round is then published again
    proc = fedstep_local(
        out, "--clients", "3", "--rounds", "3", "--quorum", "2", "--round-timeout", "10", "--round-retries", "3"
    )
    wait_for_line(proc, ": 3 rounds, 3 clients")  # round 1 is under way; the clients are still starting
    victim = agent_processes(out)["client-3"]
    os.kill(victim, signal.SIGKILL)  # no cleanup at all: its round message is neither served nor released
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, output[-3000:]
    assert "client client-3 exited with code -9" in output
    assert "errorMessage" not in output  # an expected QuorumNotMet of a retried round is one line
    rounds = json.loads((out / "summary.json").read_text())["rounds"]
    assert [r["participants"] for r in rounds] == [2, 2, 2]  # each round's deadline aggregates the survivors
    assert rounds[-1]["heldout_accuracy"] > rounds[0]["heldout_accuracy"]
    assert clients_of(out) == []
