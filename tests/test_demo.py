"""`fedstep local` end to end: real Keras clients as processes, the real stack on a moto server. One run per
behaviour, in three modules so that pytest-xdist's workers run them side by side: this one (the demo's run,
bad arguments, a client that cannot start), test_demo_stops.py (Ctrl-C, a killed runner, a killed client)
and test_demo_own_data.py (a user's own data split by its sites, the kept cloud and the operator commands)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.local_runs import clients_of, fedstep_local


def test_digits_with_three_clients_reaches_80_percent_and_improves_every_round(tmp_path):
    """Without --out, as a new user types it: the run gets its own folder runs/<run>, and runs/latest."""
    proc = fedstep_local(None, "--dataset", "digits", "--clients", "3", "--rounds", "5", cwd=tmp_path)
    output, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, output[-4000:]
    run_id = output.split("\nrun ", 1)[1].split(":", 1)[0]
    out = tmp_path / "runs" / run_id
    assert f"client logs in runs/{run_id}/logs" in output and f"summary in runs/{run_id}/summary.json" in output
    assert (tmp_path / "runs" / "latest").resolve() == out.resolve() and (tmp_path / "runs" / "latest").is_symlink()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["run_id"] == run_id
    rounds = summary["rounds"]
    assert [r["round"] for r in rounds] == [1, 2, 3, 4, 5]
    assert all(r["participants"] == 3 and r["rejected"] == [] for r in rounds)
    assert all({"accuracy", "loss", "duration_s"} <= set(r) for r in rounds)
    # float32 updates of the 64-unit MLP: 3 files of its 4,810 parameters (19,240 bytes) and a header each
    assert all(3 * 19_240 < r["bytes_up"] < 3 * (19_240 + 4096) for r in rounds), [r["bytes_up"] for r in rounds]
    heldout = [r["heldout_accuracy"] for r in rounds]
    assert heldout == sorted(heldout) and heldout[-1] > heldout[0] + 0.3, heldout
    losses = [r["loss"] for r in rounds]
    assert losses == sorted(losses, reverse=True), losses
    assert summary["final"]["test_accuracy"] >= 0.80
    # no --learning-rate: digits_mlp trains at the SGD(0.1) it was compiled with
    assert summary["config"]["learning_rate"] is None and summary["config"]["batch_size"] == 32
    assert summary["stop_reason"] == "max_rounds" and "the run stops" not in output
    assert output.count("round ") >= 5 and "participants 3" in output
    assert clients_of(Path("runs") / run_id) == []  # the agents' command lines name runs/<run>/clients/...
    # the agents import TensorFlow while the stack deploys, and round 1 is published once all are online
    assert output.index("3 of 3 clients online") < output.index("run run-") < output.index("round 1/5")
    for client in ("client-1", "client-2", "client-3"):
        assert "libraries imported" in (out / "logs" / f"{client}.log").read_text()


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
