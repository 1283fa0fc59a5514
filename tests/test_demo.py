"""`fedstep local` end to end: real Keras clients as processes, the real stack on a moto server. One run per
behaviour, in modules that pytest-xdist's workers run side by side: this one (bad arguments, a client that
cannot start), test_kept_cloud.py (the demo's own run, as a new user types it, kept running for the README's
operator commands), test_demo_stops.py (Ctrl-C, a killed runner, a killed client) and test_demo_own_data.py
(a user's own data split by its sites)."""

from __future__ import annotations

import pytest

from tests.local_runs import fedstep_local


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--dataset", "cifar"], "unknown data set 'cifar'"),
        (["--dataset", "heart", "--clients", "3"], "4 hospitals"),
        (["--rounds", "0"], "rounds must be 1 to 99999, got 0"),
        (["--model", "nowhere:model"], "cannot import module 'nowhere'"),
        (["--clients", "1"], "min_participants 2 is more than the 1 client(s) selected per round"),
    ],
)
def test_bad_arguments_get_a_clear_error_and_no_traceback(tmp_path, args, message):
    proc = fedstep_local(tmp_path / "bad", *args)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 2
    assert message in output and "Traceback" not in output


def test_a_client_that_cannot_start_stops_the_run_before_it_starts_with_its_log(tmp_path, monkeypatch):
    from fedstep.core.errors import FedstepError
    from fedstep.local import demo
    from fedstep.local.processes import ClientProcesses

    original = ClientProcesses.start

    def broken(self, client_id, args, env, log_path):
        if client_id == "client-2":  # its agent is given a config that does not exist
            args = ["run", "--config", str(tmp_path / "no-such-config.json")]
        return original(self, client_id, args, env, log_path)

    monkeypatch.setattr(ClientProcesses, "start", broken)
    config = demo.DemoConfig(clients=2, out=tmp_path / "demo", settings=demo.RunSettings(rounds=1, round_timeout_s=60))
    with pytest.raises(FedstepError, match=r"client client-2 exited with code 2 before the run started") as caught:
        demo.run_demo(config, echo=lambda line: None)
    assert "no-such-config.json" in str(caught.value)  # the agent's own error, from its log
