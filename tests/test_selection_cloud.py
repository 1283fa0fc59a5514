"""Selection by heartbeat and by name, as an operator meets it on the local cloud (issue 21, finding 3):
a client whose agent stopped is not sent the round and not waited for, `fedstep start --select/--exclude`
choose clients by name, `fedstep start` warns when it sends a round to an offline client, and `fedstep
status` shows the round in progress (selected, sent, pending, failed, left out, deadline).

Heartbeats are written as each client writes its own (under its role); the agents that serve rounds
run in this process with a small numpy trainer (the selection is under test, not Keras). A `fedstep start`
that builds the model runs in this process too (`fedstep_here`: a process would import TensorFlow again)."""

from __future__ import annotations

import json
import re

import pytest

from fedstep.aws.adapters import DynamoRoundTable
from fedstep.core.clock import utc_now
from fedstep.core.schemas import Heartbeat
from tests.cloud_helpers import (
    agent,
    cloud_of,
    drain_queues,
    fedstep,
    fedstep_here,
    published_round,
    serve,
    summaries,
    wait_for_execution,
)

MODEL = "client_agent.models:digits_mlp"
CLIENTS = ("client-1", "client-2", "client-3")


@pytest.fixture(scope="module")
def trio():
    with cloud_of(CLIENTS, round_timeout_s=600) as cloud:
        yield cloud


@pytest.fixture
def cloud(trio):
    """client-1 and client-2 online, client-3's agent stopped (what its clean exit writes)."""
    drain_queues(trio)
    for client in CLIENTS:
        beat = Heartbeat(client, "0.1.0", "stopped" if client == "client-3" else "idle", utc_now(), 600, {})
        DynamoRoundTable(trio.outputs.table, trio.client("dynamodb", client)).put_heartbeat(beat)
    return trio


def started_run(result) -> str:
    assert result.returncode == 0, result.stderr
    return re.search(r"started run (\S+)", result.stdout).group(1)


def arn(cloud, run_id: str) -> str:
    return cloud.outputs.state_machine_arn.replace(":stateMachine:", ":execution:") + f":{run_id}"


def in_progress(cloud, run_id: str) -> dict[str, str]:
    """`fedstep status <run>`'s block on the round in progress: its first line, and each list by name."""
    result = fedstep(cloud, "status", run_id)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    [first] = [i for i, line in enumerate(lines) if re.match(r"round \d+ (in progress|being aggregated)", line)]
    block = {"headline": lines[first]}
    for line in lines[first + 1 :]:
        if not line.startswith("  "):
            break
        name, _, value = line.strip().partition("  ")
        block[name] = value.strip()
    return block


def test_a_stopped_client_is_not_selected_and_status_shows_the_round_in_progress(cloud, tmp_path):
    started = fedstep_here(cloud, "start", "--model", MODEL, "--rounds", "1", "--round-timeout", "600")
    run_id = started_run(started)
    assert "fedstep: round 1 leaves out client-3 (stopped): its heartbeat says offline" in started.stderr
    assert "warning" not in started.stderr  # no selected client is offline
    record = published_round(cloud, run_id)
    assert record["selected"] == ["client-1", "client-2"] and record["skipped"] == {"client-3": "stopped"}

    block = in_progress(cloud, run_id)
    assert block["headline"].startswith("round 1 in progress: 0 of 2 selected client(s) sent, deadline ")
    assert "(in 9 min" in block["headline"] or "(in 10 min" in block["headline"]
    assert block["selected"] == "client-1, client-2"
    assert (block["sent"], block["pending"], block["failed"]) == ("-", "client-1 (online), client-2 (online)", "-")
    assert block["left out"].startswith("client-3 (stopped)")

    serve(agent(cloud, "client-1", tmp_path))
    block = in_progress(cloud, run_id)
    assert (block["sent"], block["pending"]) == ("client-1", "client-2 (online)")
    as_json = json.loads(fedstep(cloud, "status", run_id, "--json").stdout)["current_round"]
    assert (as_json["round"], as_json["sent"], as_json["pending"]) == (1, ["client-1"], {"client-2": "online"})
    assert as_json["failed"] == {} and as_json["deadline"] is not None

    serve(agent(cloud, "client-2", tmp_path))  # the last selected client: the round does not wait for client-3
    assert wait_for_execution(cloud, arn(cloud, run_id), timeout_s=60)["status"] == "SUCCEEDED"
    [summary] = summaries(cloud, run_id)
    assert summary.selected == summary.participants == ["client-1", "client-2"]
    sqs = cloud.client("sqs")
    bodies = [
        json.loads(m["Body"])
        for m in sqs.receive_message(QueueUrl=cloud.outputs.queues["client-3"]).get("Messages", [])
    ]
    assert [b for b in bodies if b.get("type") != "run_ended"] == []  # never sent the round, only told it ended
    assert json.loads(fedstep(cloud, "status", run_id, "--json").stdout)["current_round"] is None


@pytest.mark.parametrize(
    ("flags", "error"),
    [
        (
            ["--select", "client-1,client-9"],
            "--select names client(s) the stack does not have: client-9; its clients are client-1, client-2, client-3",
        ),
        (["--exclude", "hospital-b"], "--exclude names client(s) the stack does not have: hospital-b"),
        (
            ["--select", "client-1"],
            "--select/--exclude leave 1 client(s) (client-1), fewer than the run's min_participants 2",
        ),
        (
            ["--exclude", "client-1,client-2", "--min-participants", "1", "--quorum", "2"],
            "--select/--exclude leave 1 client(s) (client-3), fewer than the run's min_participants 1 and quorum 2",
        ),
        (["--select", "client-1,,client-2"], "--select takes client names separated by commas"),
    ],
)
def test_select_and_exclude_name_clients_and_refuse_what_cannot_work(trio, flags, error):
    result = fedstep(trio, "start", "--model", MODEL, "--rounds", "1", *flags)
    assert result.returncode == 2 and error in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and "started run" not in result.stdout


def test_fedstep_start_warns_when_it_sends_a_round_to_an_offline_client(cloud, tmp_path):
    named = fedstep_here(cloud, "start", "--model", MODEL, "--rounds", "1", "--select", "client-1,client-3")
    run_id = started_run(named)
    assert (
        "fedstep: warning: round 1 is sent to client-3 (stopped), whose heartbeat says offline (too few of its "
        "clients are online to leave them out): unless its agent comes back, the round waits for it until its "
        "deadline (1 h 0 min)."
    ) in named.stderr
    assert published_round(cloud, run_id)["selected"] == ["client-1", "client-3"]
    table = DynamoRoundTable(cloud.outputs.table, cloud.client("dynamodb"))
    assert table.get_run(run_id).clients == ["client-1", "client-3"]
    assert in_progress(cloud, run_id)["pending"] == "client-1 (online), client-3 (stopped)"
    assert fedstep(cloud, "stop", run_id).returncode == 0

    waiting = fedstep_here(
        cloud, "start", "--model", MODEL, "--rounds", "1", "--exclude", "client-2", "--no-select-online"
    )
    run_id = started_run(waiting)
    assert "round 1 is sent to client-3 (stopped), whose heartbeat says offline (select_online is off)" in (
        waiting.stderr
    )
    assert published_round(cloud, run_id)["selected"] == ["client-1", "client-3"]
    assert "offline clients selected too" in fedstep(cloud, "status", run_id).stdout
    assert fedstep(cloud, "stop", run_id).returncode == 0
    drain_queues(cloud)
