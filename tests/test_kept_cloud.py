"""`fedstep local --keep-running`, used as the README says: source the env file in bash, then run the
operator's commands. One kept cloud serves the whole module: the demo's own run (digits, 3 clients, 5
rounds), typed as a new user types it (no --out), kept running; its tests run in order, the last one
stops it.

The acceptance test runs every command of the README's Monitoring block (parsed from README.md by
tests/test_readme_monitoring.py, so commands added to the block later run too)."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import boto3
import pytest

from tests.cloud_helpers import agent_processes, environ
from tests.local_runs import exported
from tests.test_readme_monitoring import monitoring_commands

REPO = Path(__file__).resolve().parent.parent
MODEL = "client_agent.models:digits_mlp"
SHELL_PATH = "/usr/bin:/bin"
"""A login shell's PATH without the venv: the env file must bring `fedstep`."""


@dataclass
class KeptCloud:
    proc: subprocess.Popen[str]
    out: Path
    run_id: str
    cwd: Path
    """Where `fedstep local` ran: its default output folder is `runs/<run>` there."""
    lines: list[str] = field(default_factory=list)
    """Everything `fedstep local` printed (a thread keeps reading)."""

    @property
    def env_file(self) -> Path:
        return self.out / "local-cloud.env"

    @property
    def endpoint(self) -> str:
        return re.search(r"AWS_ENDPOINT_URL=(\S+)", self.env_file.read_text()).group(1)

    def bash(self, command: str, cwd: Path, timeout_s: float = 240) -> subprocess.CompletedProcess[str]:
        """`source <env file> && command` in bash, with a PATH that has no fedstep; stderr into stdout."""
        script = f"source {shlex.quote(str(self.env_file))} && {command}"
        env = {**os.environ, "PATH": SHELL_PATH}
        return subprocess.run(
            ["bash", "-c", script],
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=timeout_s,
        )

    def agents(self) -> dict[str, int]:
        """The pids of this cloud's client agents, by client id."""
        return agent_processes(self.out)


def _wait_until(condition, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not within {timeout_s} s"
        time.sleep(0.2)


@pytest.fixture(scope="module")
def kept(tmp_path_factory) -> KeptCloud:
    cwd = tmp_path_factory.mktemp("kept")
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "fedstep", "local", "--dataset", "digits", "--clients", "3", "--rounds", "5"),
            "--keep-running",
        ],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    cloud = KeptCloud(proc, cwd / "runs" / "latest", "", cwd)
    reader = threading.Thread(target=lambda: cloud.lines.extend(iter(proc.stdout.readline, "")), daemon=True)
    reader.start()
    try:
        _wait_until(
            lambda: any("press Ctrl-C" in line for line in cloud.lines) or proc.poll() is not None, 300, "kept cloud"
        )
        assert proc.poll() is None, "".join(cloud.lines)
        cloud.out = (cwd / "runs" / "latest").resolve()
        cloud.run_id = json.loads((cloud.out / "summary.json").read_text())["run_id"]
        with environ(exported(cloud.env_file)):  # this process too, as a user's Python session after `source`
            yield cloud
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)


def test_digits_with_three_clients_reaches_80_percent_and_improves_every_round(kept):
    """Without --out, as a new user types it: the run gets its own folder runs/<run>, and runs/latest."""
    output = "".join(kept.lines)
    run_id = output.split("\nrun ", 1)[1].split(":", 1)[0]
    out = kept.cwd / "runs" / run_id
    assert run_id == kept.run_id and out == kept.out
    assert f"client logs in runs/{run_id}/logs" in output and f"summary in runs/{run_id}/summary.json" in output
    assert (kept.cwd / "runs" / "latest").is_symlink()
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
    # the agents' command lines name runs/<run>/clients/... (test_sigterm_... sees none left at the end)
    assert sorted(kept.agents()) == ["client-1", "client-2", "client-3"]
    # the agents import TensorFlow while the stack deploys, and round 1 is published once all are online
    assert output.index("3 of 3 clients online") < output.index("run run-") < output.index("round 1/5")
    for client in ("client-1", "client-2", "client-3"):
        assert "libraries imported" in (out / "logs" / f"{client}.log").read_text()


def _round_lines(output: str) -> list[str]:
    """The round lines and the final line, without the times (wall clock, not results)."""
    lines = [line for line in output.splitlines() if line.startswith(("round ", "final global model"))]
    return [re.sub(r"  \d+\.\d s\b|; summary in .*", "", line) for line in lines]


def test_memory_engine_matches_cloud_engine_per_round(kept, tmp_path):
    """fedstep issue 24: `--engine memory` on the kept cloud's own configuration (digits, 3 clients, 5
    rounds, seed 0) gives the same per-round numbers: held-out accuracy and loss, the round summary's
    weighted metrics and the strategy's measurements, and the same console lines. One worker process:
    it trains all three clients on one warm model, as no agent does, and still matches."""
    args = ("--dataset", "digits", "--clients", "3", "--rounds", "5", "--engine", "memory", "--workers", "1")
    result = subprocess.run(
        [sys.executable, "-m", "fedstep", "local", "--out", str(tmp_path), *args],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout
    cloud = json.loads((kept.out / "summary.json").read_text())
    memory = json.loads((tmp_path / "summary.json").read_text())
    fields = ("round", "participants", "heldout_accuracy", "heldout_loss", "metrics", "measurements", "bytes_up")
    assert [{f: r[f] for f in fields} for r in memory["rounds"]] == [{f: r[f] for f in fields} for r in cloud["rounds"]]
    assert memory["final"] == cloud["final"] and memory["config"] == cloud["config"]
    assert memory["partition"] == cloud["partition"] and memory["stop_reason"] == cloud["stop_reason"]
    assert memory["engine"] == {"name": "memory", "workers": 1}
    assert _round_lines(result.stdout) == _round_lines("".join(kept.lines))
    assert len(_round_lines(result.stdout)) == 6
    assert "memory engine: 1 worker process(es)" in result.stdout


def test_sourcing_the_env_file_in_bash_puts_fedstep_on_path(kept, tmp_path):
    bare = subprocess.run(["bash", "-c", "fedstep --help"], env={**os.environ, "PATH": SHELL_PATH}, capture_output=True)
    assert bare.returncode == 127  # what the README's next line said before: fedstep: command not found
    result = kept.bash("fedstep --help && command -v fedstep", tmp_path)
    assert result.returncode == 0, result.stdout
    assert result.stdout.startswith("usage: fedstep")
    found = Path(result.stdout.splitlines()[-1])
    assert found.resolve() == (Path(sys.executable).parent / "fedstep").resolve()


def test_the_kept_cloud_says_how_to_reach_it_and_its_agents_keep_serving(kept, tmp_path):
    printed = "".join(kept.lines)
    env_file = kept.env_file.relative_to(kept.cwd)  # as it was typed: runs/<run>/local-cloud.env
    assert f"  source {env_file}\n" in printed and f"  fedstep status {kept.run_id}\n" in printed
    assert f"  fedstep start --model {MODEL} --rounds 3 --watch\n" in printed
    assert sorted(kept.agents()) == ["client-1", "client-2", "client-3"]  # the run ended; they did not
    result = kept.bash("fedstep clients", tmp_path)
    assert result.returncode == 0, result.stdout
    assert "3 of 3 client(s) online" in result.stdout


@pytest.fixture(scope="module")
def monitoring(kept, tmp_path_factory) -> list[tuple[str, int, subprocess.CompletedProcess[str]]]:
    """Every command of the README's Monitoring block, run in order in bash after sourcing the env
    file, with `<run>` as the kept cloud's run. A `stop` needs a running run: it gets one started
    just before it. A bare-`...` form runs as the complete example below it (which the block holds)."""
    import fedstep

    work = tmp_path_factory.mktemp("monitoring")
    operator = fedstep.Operator(endpoint_url=kept.endpoint)
    results = []
    for command in monitoring_commands():
        if command.is_template:
            continue
        run_id = kept.run_id
        if command.subcommand == "stop":
            run_id = operator.start(MODEL, rounds=50)
        text = command.runnable(run_id)
        results.append((text, command.expected_code, kept.bash(text, work)))
    return results


def test_the_readme_monitoring_commands_work_verbatim_on_the_kept_local_cloud(monitoring):
    failed = [
        f"$ {text}\nexit {result.returncode}, expected {code}:\n{result.stdout[-2000:]}"
        for text, code, result in monitoring
        if result.returncode != code
    ]
    assert not failed, "\n\n".join(failed)
    assert len(monitoring) >= 7


def test_a_second_run_started_with_fedstep_start_completes_because_the_agents_still_serve(monitoring):
    started = [result for text, _, result in monitoring if text.startswith("fedstep start ")]
    assert started, "the README's block starts a run"
    result = started[0]
    assert result.returncode == 0, result.stdout
    run_id = re.search(r"started run (\S+)", result.stdout).group(1)
    assert f"run {run_id}: SUCCEEDED (max_rounds), round 2 of 2" in result.stdout
    rows = [line.split() for line in result.stdout.splitlines() if re.match(r"^\d+\s+\d+/\d+", line)]
    assert [row[1] for row in rows] == ["3/3", "3/3"]  # every agent served every round


def test_the_operator_api_reads_and_starts_runs_on_the_kept_cloud(kept, tmp_path, capsys):
    import fedstep

    operator = fedstep.Operator(endpoint_url=kept.endpoint)
    runs = operator.runs()
    assert kept.run_id in set(runs["run_id"]) and list(runs.columns)[:2] == ["run_id", "status"]
    status = operator.status(kept.run_id)
    assert (status["status"], status["stop_reason"], len(status["rounds"])) == ("SUCCEEDED", "max_rounds", 5)
    history = operator.history(kept.run_id)
    assert list(history.index) == [1, 2, 3, 4, 5] and history.loc[2, "participants"] == 3
    assert history.loc[2, "accuracy"] > history.loc[1, "accuracy"]
    clients = operator.clients()
    assert list(clients["status"]) == ["online"] * 3
    path = operator.download(kept.run_id, out=tmp_path / "model.keras")
    assert path.stat().st_size > 0
    evaluation = operator.evaluate(kept.run_id, deadline_s=300)
    assert sorted(a["client_id"] for a in evaluation["clients"]) == ["client-1", "client-2", "client-3"]
    assert 0 < evaluation["mean"]["metrics"]["test_accuracy"] <= 1
    assert operator.cost(kept.run_id)["total_usd"] > 0
    pointer = operator.promote(kept.run_id, 2, note="the API's promotion")
    assert (pointer["run_id"], pointer["round"]) == (kept.run_id, 2)
    assert operator.download_approved(tmp_path / "approved.keras").stat().st_size > 0
    run_id = operator.start(MODEL, rounds=1, watch=True)
    assert operator.status(run_id)["status"] == "SUCCEEDED"
    assert "fedstep: warning" not in capsys.readouterr().err  # all three agents are online


def test_fedstep_start_with_offline_clients_warns_before_starting_and_the_run_fails_at_its_deadline(kept, tmp_path):
    agents = kept.agents()
    for client_id in ("client-2", "client-3"):
        os.kill(agents[client_id], signal.SIGTERM)  # a clean exit: their heartbeat says "stopped"
    _wait_until(lambda: sorted(kept.agents()) == ["client-1"], 30, "two agents stopped")
    result = kept.bash(f"fedstep start --model {MODEL} --rounds 1 --round-timeout 3 --watch", tmp_path)
    output = result.stdout
    assert result.returncode == 1, output
    warning = (
        "fedstep: warning: only 1 of 3 client(s) online, fewer than the run's quorum of 2: client-2 (stopped), "
        "client-3 (stopped). Unless enough agents come online, round 1 waits until its deadline (3 s) and then "
        "the run fails with QuorumNotMet."
    )
    assert warning in output
    assert output.index(warning) < output.index("started run")  # before starting, and --watch shows it
    assert "FAILED" in output and "QuorumNotMet" in output


def test_the_client_api_serves_a_round_on_the_kept_cloud(kept, capsys):
    import fedstep

    config = kept.out / "clients" / "client-3.json"  # its agent was stopped above
    client = fedstep.Client(config)
    assert client.dry_run()
    assert "all checks passed" in capsys.readouterr().out
    sqs = boto3.Session(profile_name="admin").client("sqs", endpoint_url=kept.endpoint)  # the account's owner
    queue = json.loads(config.read_text())["queue_url"]
    while messages := sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10).get("Messages"):
        for m in messages:  # the failed run's round, which this client missed: not the one to serve now
            sqs.delete_message(QueueUrl=queue, ReceiptHandle=m["ReceiptHandle"])
    operator = fedstep.Operator(endpoint_url=kept.endpoint)
    # seed 2 selects client-1 (its agent) and client-3 (this Client) for round 1: client-2 is away
    run_id = operator.start(MODEL, rounds=1, clients_per_round="2", seed=2, round_timeout_s=300)
    assert client.run_once() == 0
    status = operator.watch(run_id)
    assert status["status"] == "SUCCEEDED"
    assert status["rounds"][0]["participants"] == ["client-1", "client-3"]  # both in: no deadline to wait for


def test_sigterm_stops_the_kept_cloud_and_its_agents(kept):
    assert kept.agents(), "client-1's agent still serves"
    kept.proc.send_signal(signal.SIGTERM)
    assert kept.proc.wait(timeout=60) == 0
    _wait_until(lambda: "stopping the local cloud\n" in kept.lines, 10, "the runner's last words")
    assert kept.agents() == {}  # by the relative paths their command lines name
