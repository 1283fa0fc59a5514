"""Client agents forked by `fedstep local` (`fedstep.local.processes`): each a process of its own, with
its own environment, its log as its output, and its exit code seen by the runner as a spawned one's."""

from __future__ import annotations

import signal

from fedstep.local.processes import ClientProcesses


def test_a_forked_agent_runs_the_client_cli_with_its_own_log_and_exit_code(tmp_path):
    log = tmp_path / "logs" / "client-9.log"
    with ClientProcesses(fork=True) as procs:
        procs.start("client-9", ["run", "--config", str(tmp_path / "no-such.json")], {"FEDSTEP_X": "1"}, log)
        assert procs.wait(timeout_s=60)
        assert procs.failed() == {"client-9": 2}  # the CLI's own code for a user error
    text = log.read_text()
    assert "fedstep-client: error:" in text and "no-such.json" in text
    assert "Traceback" not in text


def test_a_forked_agent_that_is_stopped_reports_the_signal_as_popen_does(tmp_path):
    log = tmp_path / "client-8.log"
    procs = ClientProcesses(fork=True)
    config = tmp_path / "late.json"  # never written: the agent waits for it
    procs.start("client-8", ["run", "--config", str(config), "--wait-for-config", "120"], {}, log)
    assert not procs.wait(timeout_s=0.5)  # still waiting for its config
    procs.procs["client-8"].send_signal(signal.SIGKILL)
    assert procs.procs["client-8"].wait(timeout=60) == -signal.SIGKILL
    procs.stop()
    assert procs.failed() == {"client-8": -signal.SIGKILL}
