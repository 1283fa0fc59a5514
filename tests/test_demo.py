"""`fedstep local` end to end: real Keras clients as processes, the real stack on a moto server."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.cloud_helpers import agent_processes

REPO = Path(__file__).resolve().parent.parent


def _fedstep_local(out: Path | None, *args: str, cwd: Path = REPO, terminal: bool = False) -> subprocess.Popen[str]:
    """`fedstep local --out <out> <args>` (no --out for None: its default) in `cwd`; `terminal`: in a
    session of its own, as in a terminal, where Ctrl-C signals its whole process group (`_ctrl_c`)."""
    return subprocess.Popen(
        [sys.executable, "-m", "fedstep", "local", *(("--out", str(out)) if out else ()), *args],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=terminal,
    )


def _ctrl_c(proc: subprocess.Popen[str]) -> None:
    """What a terminal does on Ctrl-C: SIGINT to the foreground process group (started with `terminal`)."""
    os.killpg(proc.pid, signal.SIGINT)


def _clients_of(out: Path) -> list[int]:
    """PIDs of client agents started for this output folder."""
    return sorted(agent_processes(out).values())


def _wait_for_line(proc: subprocess.Popen[str], text: str, timeout_s: float = 300) -> list[str]:
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


def test_digits_with_three_clients_reaches_80_percent_and_improves_every_round(tmp_path):
    """Without --out, as a new user types it: the run gets its own folder runs/<run>, and runs/latest."""
    proc = _fedstep_local(None, "--dataset", "digits", "--clients", "3", "--rounds", "5", cwd=tmp_path)
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
    heldout = [r["heldout_accuracy"] for r in rounds]
    assert heldout == sorted(heldout) and heldout[-1] > heldout[0] + 0.3, heldout
    losses = [r["loss"] for r in rounds]
    assert losses == sorted(losses, reverse=True), losses
    assert summary["final"]["test_accuracy"] >= 0.80
    # no --learning-rate: digits_mlp trains at the SGD(0.1) it was compiled with
    assert summary["config"]["learning_rate"] is None and summary["config"]["batch_size"] == 32
    assert summary["stop_reason"] == "max_rounds" and "the run stops" not in output
    assert output.count("round ") >= 5 and "participants 3" in output
    assert _clients_of(Path("runs") / run_id) == []  # the agents' command lines name runs/<run>/clients/...
    # the agents import TensorFlow while the stack deploys, and round 1 is published once all are online
    assert output.index("3 of 3 clients online") < output.index("run run-") < output.index("round 1/5")
    for client in ("client-1", "client-2", "client-3"):
        assert "libraries imported" in (out / "logs" / f"{client}.log").read_text()


def test_ctrl_c_stops_everything_and_leaves_no_process(tmp_path):
    out = tmp_path / "interrupted"
    proc = _fedstep_local(out, "--clients", "2", "--rounds", "50")
    _wait_for_line(proc, "round 1/50")
    assert len(_clients_of(out)) == 2
    proc.send_signal(signal.SIGINT)
    rest, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, rest
    assert "interrupted" in rest and "Traceback" not in rest
    assert _clients_of(out) == []


def test_clients_exit_even_when_the_runner_is_killed(tmp_path):
    out = tmp_path / "killed"
    proc = _fedstep_local(out, "--clients", "2", "--rounds", "50")
    _wait_for_line(proc, "client logs in")
    time.sleep(1)
    assert len(_clients_of(out)) == 2
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    deadline = time.monotonic() + 60  # each agent gets SIGTERM at once; a busy machine may take a while to end it
    while _clients_of(out) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _clients_of(out) == []


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
    proc = _fedstep_local(tmp_path / "bad", *args)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 2
    assert message in output and "Traceback" not in output


def test_a_client_killed_mid_run_does_not_stop_the_run(tmp_path):
    out = tmp_path / "killed-client"
    # a busy machine may start the agents after round 1's deadline: the round is then published again
    proc = _fedstep_local(
        out, "--clients", "3", "--rounds", "3", "--quorum", "2", "--round-timeout", "10", "--round-retries", "3"
    )
    _wait_for_line(proc, ": 3 rounds, 3 clients")  # round 1 is under way; the clients are still starting
    victim = next(pid for pid in _clients_of(out) if "client-3.json" in Path(f"/proc/{pid}/cmdline").read_text())
    os.kill(victim, signal.SIGKILL)  # no cleanup at all: its round message is neither served nor released
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, output[-3000:]
    assert "client client-3 exited with code -9" in output
    assert "errorMessage" not in output  # an expected QuorumNotMet of a retried round is one line
    rounds = json.loads((out / "summary.json").read_text())["rounds"]
    assert [r["participants"] for r in rounds] == [2, 2, 2]  # each round's deadline aggregates the survivors
    assert rounds[-1]["heldout_accuracy"] > rounds[0]["heldout_accuracy"]
    assert _clients_of(out) == []


def test_keep_running_leaves_the_cloud_up_for_the_operator_commands_until_ctrl_c(tmp_path):
    out = tmp_path / "kept"
    proc = _fedstep_local(
        out,
        *("--clients", "2", "--rounds", "2", "--clients-per-round", "1", "--min-participants", "1", "--keep-running"),
        terminal=True,
    )
    try:
        lines = _wait_for_line(proc, "press Ctrl-C to stop it", timeout_s=300)
        run_id = json.loads((out / "summary.json").read_text())["run_id"]
        env_file = out / "local-cloud.env"
        assert f"  source {env_file}\n" in lines and f"  fedstep status {run_id}\n" in lines
        env = dict(os.environ)
        for line in env_file.read_text().splitlines():
            name, _, value = line.removeprefix("export ").partition("=")
            env[name] = value
        status = subprocess.run(
            [sys.executable, "-m", "fedstep", "status", run_id], env=env, capture_output=True, text=True, timeout=60
        )
        assert status.returncode == 0, status.stderr
        assert status.stdout.startswith(f"run {run_id}: SUCCEEDED (max_rounds), round 2 of 2")
        assert "2 clients, 1 per round" in status.stdout
    finally:
        _ctrl_c(proc)
        rest, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0 and "stopping the local cloud" in rest, rest
    for noise in ("Exception ignored", "Traceback", "BrokenPipeError"):  # jsii's, when Node.js got the Ctrl-C
        assert noise not in rest, rest


SITE_DATA = """
import numpy as np

from client_agent.models import mlp


def load():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 4, 400)
    return rng.normal(size=(400, 5)).astype("float32") + y[:, None], y


def load_sites():
    x, y = load()  # as its sites hold it: north has every 0, east every 1, south the 2s and 3s
    return x, y, np.array(["north", "east", "south"])[np.minimum(y, 2)]


def model():
    return mlp(5, 4, hidden=16)
"""


def test_own_data_split_by_its_sites_is_simulated_counted_and_reported(tmp_path):
    """A user's loader and model from the working directory; the loader gives each example's site
    (x, y, groups) and `--partition natural` makes each site one client. Every client agent takes
    exactly its site's examples less the held-out share, as the operator counted, and `fedstep report`
    draws the label histogram from partition.json. (Dividing a whole (x, y) by a scheme such as
    dirichlet:0.5 is tested client by client in test_custom_data.py.)"""
    site = tmp_path / "site"
    site.mkdir()
    (site / "site_data.py").write_text(SITE_DATA)
    out = tmp_path / "own"
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "fedstep", "local", "--out", str(out), "--dataset", "site_data:load_sites"),
            *("--model", "site_data:model", "--partition", "natural", "--rounds", "1", "--keep-running"),
            *("--strategy", "trimmed_mean", "--strategy-param", "beta=0.2"),
        ],
        cwd=site,  # the loader and the model are found in the working directory, by the clients too
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        lines = _wait_for_line(proc, "press Ctrl-C to stop it", timeout_s=300)
        held_out = "data set site_data:load_sites: 319 examples for 3 clients (partition natural, seed 0), 81 held out"
        assert f"{held_out}\n" in lines  # 20% of each site held out, rounded up
        summary = json.loads((out / "summary.json").read_text())
        assert any("strategy trimmed_mean (beta=0.2)" in line for line in lines)  # fedstep local takes a strategy
        assert (summary["config"]["strategy"], summary["config"]["strategy_params"]) == (
            "trimmed_mean",
            {"beta": 0.2},
        )
        assert "step_norm" in summary["rounds"][0]["measurements"]
        counts = summary["partition"]
        assert summary["config"]["partition"] == "natural" and counts["scheme"] == "natural"
        sites = {"client-1": "east", "client-2": "north", "client-3": "south"}  # sorted by name
        assert counts["sites"] == sites
        y = np.random.default_rng(1).integers(0, 4, 400)  # the loader's labels
        group = {"north": y == 0, "east": y == 1, "south": y >= 2}
        for cid, per_label in counts["clients"].items():
            whole = np.bincount(y[group[sites[cid]]], minlength=4)
            held = whole - np.asarray(per_label)
            assert held.sum() == -(-whole.sum() // 5), cid  # its site less ceil(20%) held out ...
            assert (abs(held - 0.2 * whole) <= 1).all(), cid  # ... stratified by label: nobody else's examples
            config = json.loads((out / "clients" / f"{cid}.json").read_text())
            assert (config["partition_scheme"], config["data_seed"]) == ("natural", 0)
            total = sum(per_label)
            train = total - -(-total // 5)  # the local split holds out ceil(20%)
            assert f"| {train} examples |" in (out / "logs" / f"{cid}.log").read_text(), cid
            assert any(line.startswith(f"  {cid} ({sites[cid]}) ") and f" {total} examples, " in line for line in lines)
        env = dict(os.environ)
        for line in (out / "local-cloud.env").read_text().splitlines():
            name, _, value = line.removeprefix("export ").partition("=")
            env[name] = value
        report = subprocess.run(
            [sys.executable, "-m", "fedstep", "report", summary["run_id"], "-o", str(out / "report")],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert report.returncode == 0, report.stderr
        assert "labels.png" in report.stdout and (out / "report" / "labels.png").stat().st_size > 1000
        page = (out / "report" / "report.html").read_text()
        assert 'id="labels"' in page and "partition natural, seed 0" in page
        assert "<tr><td>client-2 (north)</td>" in page
    finally:
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, rest
    assert _clients_of(out) == []


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
