"""The client agent as an organisation runs it: real `fedstep-client` processes against the embedded local cloud.

Configs come from the real `fedstep client-config` command, with `role_arn` set, so every agent here
assumes its client's role. Each misconfiguration a user can make gets its own `--dry-run` failure.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from fedstep.core import keys, tensors
from fedstep.operator.model import keras_payload
from fedstep.operator.settings import RunSettings
from fedstep.operator.start import start_run
from infra.client_access import HEARTBEAT_ATTRIBUTES, UPDATE_ITEM_ATTRIBUTES
from tests.cloud_helpers import drain_queues, wait_for_execution

REPO = Path(__file__).resolve().parent.parent
SKLEARN = ("--trainer", "examples.sklearn_trainer:train")


def cli(module: str, *args: str, env: dict[str, str], timeout: int = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", module, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout
    )


def agent_env(cloud, **changes: str | None) -> dict[str, str]:
    env = {**os.environ, **cloud.env(), "PYTHONUNBUFFERED": "1", "TF_CPP_MIN_LOG_LEVEL": "3"}
    for key, value in changes.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


@pytest.fixture(scope="module")
def configs(local_cloud, tmp_path_factory) -> dict[str, dict]:
    """client id -> the config `fedstep client-config` writes, with the built-in digits data filled in."""
    out: dict[str, dict] = {}
    folder = tmp_path_factory.mktemp("configs")
    for i, cid in enumerate(("client-1", "client-2"), start=1):
        path = folder / f"{cid}.json"
        args = ("client-config", cid, "--endpoint-url", local_cloud.endpoint, "--data", "digits", "-o", str(path))
        result = cli("fedstep", *args, env=agent_env(local_cloud))
        assert result.returncode == 0, result.stderr
        # the organisation's own keys: its profile in the local cloud's credentials file (its agent assumes its role)
        out[cid] = {**json.loads(path.read_text()), "partition": f"{i}/2", "poll_wait_s": 1, "profile": cid}
    assert out["client-1"]["role_arn"].endswith(out["client-1"]["role_arn"].split("/")[-1])
    return out


def write(tmp_path: Path, config: dict, name: str = "client.json") -> str:
    path = tmp_path / name
    path.write_text(json.dumps(config))
    return str(path)


def dry_run(cloud, tmp_path, config, **env_changes):
    result = cli(
        "client_agent.cli", "run", "--config", write(tmp_path, config), "--dry-run", env=agent_env(cloud, **env_changes)
    )
    assert "Traceback" not in result.stdout + result.stderr, result.stderr
    lines = {line.split()[1]: line for line in result.stdout.splitlines() if line.startswith("  ")}
    return result, lines


def test_dry_run_with_a_good_config_passes_every_check(local_cloud, configs, tmp_path):
    result, lines = dry_run(local_cloud, tmp_path, configs["client-1"])
    assert result.returncode == 0, result.stdout
    assert result.stdout.strip().endswith("all checks passed")
    assert all(line.split()[0] == "ok" for name, line in lines.items() if name != "model"), result.stdout
    assert lines["model"].split()[0] == "skip" and "pass --run RUN" in lines["model"]  # no round waiting
    assert "digits part 1/2: 575 training and 144 test examples" in lines["data"]
    assert "assumed-role" in lines["identity"]  # the checks ran with the client's role
    print(result.stdout)
    assert "nothing written" in lines["uploads"] and "nothing written" in lines["heartbeats"]


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize(
    ("case", "failing", "message"),
    [
        ("no credentials", "credentials", "no AWS credentials found"),
        ("wrong region", "region", "wrong region: the agent uses eu-west-1 but the queue is in us-east-1"),
        ("queue not found", "queue", "queue not found in region us-east-1"),
        ("bucket not found", "uploads", "bucket not found"),
        ("table not found", "update", "table fedstep-nowhere does not exist"),
        ("endpoint unreachable", "role", "cannot reach http://127.0.0.1:"),
    ],
)
def test_dry_run_names_each_misconfiguration(local_cloud, configs, tmp_path, case, failing, message):
    config, env = dict(configs["client-1"]), {}
    if case == "no credentials":
        config["profile"] = None  # the standard chain, which finds nothing
        env = {
            "AWS_ACCESS_KEY_ID": None,
            "AWS_SECRET_ACCESS_KEY": None,
            "AWS_SESSION_TOKEN": None,
            "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"),
            "AWS_CONFIG_FILE": str(tmp_path / "none"),
            "AWS_EC2_METADATA_DISABLED": "true",
        }
    elif case == "wrong region":
        config["region"] = "eu-west-1"
    elif case == "queue not found":
        config["queue_url"] = config["queue_url"].rsplit("/", 1)[0] + "/fedstep-nobody"
    elif case == "bucket not found":
        config["bucket"] = "fedstep-nowhere"
    elif case == "table not found":
        config["table"] = "fedstep-nowhere"
    elif case == "endpoint unreachable":
        config["endpoint_url"] = f"http://127.0.0.1:{closed_port()}"
        env = {"AWS_ENDPOINT_URL": None}
    result, lines = dry_run(local_cloud, tmp_path, config, **env)
    assert result.returncode == 1
    assert lines[failing].split()[0] == "FAIL" and message in lines[failing], result.stdout
    assert "check(s) failed" in result.stdout


def test_run_stops_at_once_with_the_cause_when_the_config_is_wrong(local_cloud, configs, tmp_path):
    config = {**configs["client-1"], "queue_url": configs["client-1"]["queue_url"] + "-typo"}
    result = cli("client_agent.cli", "run", "--config", write(tmp_path, config), "--once", env=agent_env(local_cloud))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "fedstep-client: error: queue not found in region us-east-1" in result.stderr


def test_dry_run_names_the_action_an_iam_policy_denies(local_cloud, configs, tmp_path):
    """The local cloud enforces IAM: client-1's role, pointed at client-2's queue, may not read it."""
    config = {**configs["client-1"], "queue_url": configs["client-2"]["queue_url"], "role_arn": None, "profile": None}
    result, lines = dry_run(local_cloud, tmp_path, config, **local_cloud.keys("client-1").env())
    assert result.returncode == 1
    assert lines["identity"].split()[0] == "ok"
    assert "FAIL" in lines["queue"] and "access denied: sqs:GetQueueAttributes on queue" in lines["queue"], lines


def clients_json(cloud) -> dict[str, dict]:
    result = cli("fedstep", "clients", "--json", "--endpoint-url", cloud.endpoint, env=agent_env(cloud))
    assert result.returncode == 0, result.stderr
    return {row["client_id"]: row for row in json.loads(result.stdout)}


def start(cloud, architecture: bytes, weights: dict) -> object:
    return start_run(
        architecture,
        weights,
        RunSettings(rounds=1, round_timeout_s=120, learning_rate=0.1),
        cloud.outputs,
        s3=cloud.client("s3"),
        dynamodb=cloud.client("dynamodb"),
        stepfunctions=cloud.client("stepfunctions"),
    )


WHAT_LEAVES = {  # docs/client.md, "What leaves the premises", field by field
    "update file metadata": {
        "schema",
        "kind",
        "update",
        "run_id",
        "round",
        "client_id",
        "num_examples",
        "metrics",
        "privacy",
    },
    "update item": set(UPDATE_ITEM_ATTRIBUTES),
    "heartbeat item": set(HEARTBEAT_ATTRIBUTES),
    "hardware": {"os", "arch", "python", "cpus", "memory_gib", "gpus"},
}
READS = {("sqs", "ReceiveMessage"), ("sqs", "GetQueueAttributes"), ("s3", "GetObject"), ("dynamodb", "GetItem")}
WRITES = {("sqs", "DeleteMessage"), ("sqs", "ChangeMessageVisibility"), ("s3", "PutObject"), ("dynamodb", "PutItem")}


def test_the_agent_sends_nothing_but_its_update_its_item_and_its_heartbeat(local_cloud, configs, tmp_path):
    """Every AWS call of a real agent serving a round is recorded; each write is checked field by field."""
    from client_agent.agent import Agent, Outcome
    from client_agent.config import load
    from client_agent.training import FunctionTrainer

    drain_queues(local_cloud)
    weights = {"000/d/kernel": np.zeros((3, 2), np.float32), "001/d/bias": np.zeros(2, np.float32)}
    run = start(local_cloud, b"an architecture this trainer never reads", weights)
    secret_x = np.full((5, 3), 42.0)  # the local data: must never leave

    def train(model, data, training):
        model.set_weights([w + 1 for w in model.get_weights()])
        return {"train_loss": 0.5}

    calls: list[tuple[str, str, dict]] = []
    agents = []
    for cid in ("client-1", "client-2"):
        config = load(write(tmp_path, configs[cid], f"{cid}.json"), {"cache_dir": str(tmp_path / cid)})
        agent = Agent(config, FunctionTrainer(train, ((secret_x, np.zeros(5)), (secret_x[:0], np.zeros(0)))))
        if cid == "client-1":
            for client in (agent.sqs, agent.s3, agent.table.ddb):
                client.meta.events.register(
                    "before-parameter-build",
                    lambda params, model, **_: calls.append((model.service_model.service_name, model.name, params)),
                )
        agents.append(agent)
    for agent in agents:
        for _ in range(30):
            if (outcome := agent.poll_once()) is not None:
                assert outcome is Outcome.SERVED
                break
    assert wait_for_execution(local_cloud, run.execution_arn, timeout_s=120)["status"] == "SUCCEEDED"
    drain_queues(local_cloud)

    assert {(service, op) for service, op, _ in calls} <= READS | WRITES
    uploads = [p for service, op, p in calls if op == "PutObject"]
    assert [p["Key"] for p in uploads] == [keys.update_key(run.run_id, 1, "client-1")]
    data = local_cloud.client("s3").get_object(Bucket=uploads[0]["Bucket"], Key=uploads[0]["Key"])["Body"].read()
    assert set(tensors.decode(data)) == set(weights)  # the update, under the global model's names
    reads = [p["Key"] for service, op, p in calls if op == "GetItem"]
    own_feedback, stop_marker = keys.rejection_item_key("client-1", run.run_id), keys.stop_item_key(run.run_id)
    # its run's stop marker (before training and before the upload) and its feedback, nothing else
    assert reads == [{k: {"S": v} for k, v in key.items()} for key in (stop_marker, own_feedback, stop_marker)]
    assert set(tensors.read_metadata(data)) == WHAT_LEAVES["update file metadata"]
    for dtype in (np.float32, np.float64):  # no trace of the local data's values
        assert np.array(42, dtype).tobytes() not in data
    items = [p["Item"] for service, op, p in calls if op == "PutItem"]
    assert {i["pk"]["S"] for i in items} == {"CLIENT#client-1"}  # its own partition only
    updates = [i for i in items if i["sk"]["S"].startswith("UPDATE#")]
    beats = [i for i in items if i["sk"]["S"] == "HEARTBEAT"]
    assert len(updates) == 1 and len(updates) + len(beats) == len(items)
    assert set(updates[0]) <= WHAT_LEAVES["update item"]
    assert set(updates[0]["metrics"]["M"]) == {"train_loss"}
    assert beats and all(set(b) <= WHAT_LEAVES["heartbeat item"] for b in beats)
    assert all(set(b["hardware"]["M"]) <= WHAT_LEAVES["hardware"] for b in beats)


def test_a_keras_client_and_a_scikit_learn_client_serve_a_round_once(local_cloud, configs, tmp_path):
    """One run, two trainers: client-1 the default Keras fit (JSON logs), client-2 examples.sklearn_trainer."""
    from examples.sklearn_trainer import softmax_regression

    drain_queues(local_cloud)
    run = start(local_cloud, *keras_payload(softmax_regression()))
    keras_cfg = write(tmp_path, configs["client-1"], "keras.json")
    sklearn_cfg = write(tmp_path, configs["client-2"], "sklearn.json")
    procs = {
        "client-1": subprocess.Popen(
            [sys.executable, "-m", "client_agent.cli", "run", "--config", keras_cfg, "--once", "--log-format", "json"],
            **popen_args(local_cloud),
        ),
        "client-2": subprocess.Popen(
            [sys.executable, "-m", "client_agent.cli", "run", "--config", sklearn_cfg, "--once", *SKLEARN],
            **popen_args(local_cloud),
        ),
    }
    outputs = {cid: p.communicate(timeout=240) for cid, p in procs.items()}
    for cid, p in procs.items():
        assert p.returncode == 0, outputs[cid][1]
    desc = wait_for_execution(local_cloud, run.execution_arn, timeout_s=120)
    assert desc["status"] == "SUCCEEDED"
    summary = json.loads(desc["output"])["last_round"]
    assert summary["participants"] == 2 and summary["rejected"] == 0
    assert summary["metrics"]["test_accuracy"] > summary["metrics"]["test_accuracy_before"]

    records = [json.loads(line) for line in outputs["client-1"][1].splitlines() if line.strip()]  # all JSON
    [line] = [r for r in records if "round_summary" in r]
    assert line["round_summary"]["round"] == 1 and line["round_summary"]["examples"] == 575
    assert line["round_summary"]["bytes_up"] > 0 and "test_loss_before" in line["round_summary"]["metrics"]
    assert f"round 1 of {run.run_id} | 574 examples | loss " in outputs["client-2"][1]
    assert "(test) | accuracy " in outputs["client-2"][1]

    seen = clients_json(local_cloud)
    assert {seen[c]["status"] for c in procs} == {"stopped"}
    assert seen["client-1"]["agent_version"] and seen["client-1"]["hardware"]["cpus"] >= 1


def popen_args(cloud) -> dict:
    return {
        "cwd": REPO,
        "env": agent_env(cloud),
        "stdout": subprocess.PIPE,
        "stderr": subprocess.PIPE,
        "text": True,
    }


def test_fedstep_clients_shows_a_running_agent_online_then_stopped(local_cloud, configs, tmp_path):
    path = write(tmp_path, configs["client-1"])
    launched = datetime.now(UTC)  # a heartbeat from before (another module's agent on the shared cloud) is not it
    proc = subprocess.Popen(
        [sys.executable, "-m", "client_agent.cli", "run", "--config", path, "--follow", "--heartbeat", "10"],
        **popen_args(local_cloud),
    )

    def its_own_beat(row: dict) -> bool:
        return row["status"] == "online" and datetime.fromisoformat(row["last_seen"]) >= launched

    try:
        deadline = time.monotonic() + 60
        while not its_own_beat(row := clients_json(local_cloud)["client-1"]):
            assert time.monotonic() < deadline and proc.poll() is None, proc.stderr.read() if proc.poll() else row
            time.sleep(1)
        assert row["activity"] == "idle" and row["seconds_ago"] < 30
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
    assert clients_json(local_cloud)["client-1"]["status"] == "stopped"
