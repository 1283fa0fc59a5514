"""The operator's commands against the embedded local cloud: start (run file, --watch), runs, status, stop,
download, report. Each runs as `python -m fedstep ...` in a subprocess, as an operator types it, but for
those that build or load a Keras model (start, download), run in this process (`fedstep_here`: a process
would import TensorFlow again); the clients are real agents in threads of this process (a small numpy
trainer: the commands are under test)."""

from __future__ import annotations

import json
import os
import re
import threading
import time
from datetime import datetime

import numpy as np
import pytest

from client_agent.agent import Agent, Outcome
from client_agent.training import FunctionTrainer
from fedstep.aws.adapters import DynamoRoundTable
from fedstep.core import keys, tensors
from fedstep.core.clock import utc_now
from fedstep.core.errors import RunStopped
from fedstep.core.schemas import RunStop
from fedstep.local import gaps
from tests.cloud_helpers import (
    agent_config,
    drain_queues,
    fedstep,
    fedstep_here,
    published_round,
    serve,
    wait_for_execution,
)


def round_rows(text: str) -> list[list[str]]:
    """The rows of a round table: ROUND, CLIENTS (n/m), REJECTED, EXAMPLES, LOSS, ACCURACY, MODEL ACC, ROUND TIME,
    AGGREGATION, EPSILON, STRATEGY MEASUREMENTS."""
    return [cells for line in text.splitlines() if (cells := line.split()) and cells[0].isdigit() and "/" in cells[1]]


MODEL = "client_agent.models:digits_mlp"


def nudge(model, data, training):
    """Moves every weight a little, by client: client-1 shrinks them, client-2 grows them."""
    factor = 0.9 if len(data[0][0]) == 10 else 1.1
    model.set_weights([w * factor + 0.01 for w in model.get_weights()])
    return {"train_loss": 1.0 / factor, "test_accuracy": factor / 2, "test_accuracy_before": 0.4}


def serve_in_background(cloud, tmp_path) -> list[threading.Thread]:
    threads = []
    for cid, n in (("client-1", 10), ("client-2", 30)):
        x = np.zeros((n, 64), np.float32)
        config = agent_config(cloud, cid, tmp_path, data="in-memory", heartbeat_s=0)
        agent = Agent(config, FunctionTrainer(nudge, ((x, np.zeros(n)), (x[:2], np.zeros(2))), "tests:nudge"))
        thread = threading.Thread(target=agent.run, daemon=True)
        thread.start()
        threads.append(thread)
    return threads


@pytest.fixture(scope="module")
def finished_run(local_cloud, tmp_path_factory) -> str:
    """A run started from a run file with `fedstep start --watch`, served by two agents, finished."""
    tmp = tmp_path_factory.mktemp("run")
    drain_queues(local_cloud)
    run_file = tmp / "run.json"
    run_file.write_text(json.dumps({"model": MODEL, "rounds": 5, "round_timeout_s": 120, "seed": 1}))
    threads = serve_in_background(local_cloud, tmp)
    result = fedstep_here(local_cloud, "start", "--run-file", str(run_file), "--rounds", "3", "--watch")  # flag wins
    for thread in threads:
        thread.join(timeout=60)
    assert result.returncode == 0, result.stderr
    run_id = result.stdout.split("started run ", 1)[1].split()[0]
    lines = result.stdout.splitlines()
    assert [row[0] for row in round_rows(result.stdout)] == ["1", "2", "3"]
    assert lines[-1].startswith(f"run {run_id}: SUCCEEDED (max_rounds), round 3 of 3")
    return run_id


def test_runs_lists_the_run_with_its_status_and_rounds(local_cloud, finished_run):
    result = fedstep(local_cloud, "runs")
    assert result.returncode == 0, result.stderr
    [row] = [line for line in result.stdout.splitlines() if line.startswith(finished_run)]
    assert row.split()[1] == "SUCCEEDED" and row.split()[-1] == "3/3"
    assert result.stdout.splitlines()[0].split() == ["RUN", "STATUS", "STARTED", "DURATION", "ROUNDS"]


def test_runs_json_gives_each_run_with_its_status_times_and_rounds(local_cloud, finished_run):
    result = fedstep(local_cloud, "runs", "--json")
    assert result.returncode == 0, result.stderr
    [run] = [r for r in json.loads(result.stdout) if r["run_id"] == finished_run]
    assert (run["status"], run["rounds_aggregated"], run["rounds_planned"]) == ("SUCCEEDED", 3, 3)
    assert datetime.fromisoformat(run["started"]) <= datetime.fromisoformat(run["stopped"])
    assert run["duration_s"] >= 0


@pytest.mark.parametrize("command", [("runs",), ("status", "RUN", "--json")])
def test_a_reader_that_leaves_early_ends_the_command_quietly(local_cloud, finished_run, command):
    """`fedstep runs | head`: the reader closes the pipe before fedstep writes; no BrokenPipeError."""
    read, write = os.pipe()
    os.close(read)  # the reader has left: every write to the pipe fails
    try:
        args = [finished_run if a == "RUN" else a for a in command]
        result = fedstep(local_cloud, *args, stdout=write)
    finally:
        os.close(write)
    assert result.returncode == 141, result.stderr  # as the shell reports a command ended by SIGPIPE
    assert result.stderr == ""


def test_status_has_a_row_per_round_with_participants_metrics_and_durations(local_cloud, finished_run):
    result = fedstep(local_cloud, "status", finished_run)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"run {finished_run}: SUCCEEDED (max_rounds), round 3 of 3")
    assert "2 clients, 2 per round, quorum 1" in lines[1] and "1 epoch(s), batch 32" in lines[1]
    rows = round_rows(result.stdout)
    assert [r[:4] for r in rows] == [[str(i), "2/2", "0", "40"] for i in (1, 2, 3)]
    # weighted by examples: (10 x 0.45 + 30 x 0.55) / 40
    assert all(r[5] == "0.5250" for r in rows)
    # the model a round released, as the next round's clients found it before training (0.4); not yet the last's
    assert [r[6] for r in rows] == ["0.4000", "0.4000", "-"]
    assert all(float(r[7]) > 0 and r[8] == "s" and r[10] == "s" for r in rows)  # round time, aggregation time
    assert all(r[11] == "-" for r in rows)  # no differential privacy: no epsilon
    assert all(r[12].startswith("step_norm=") for r in rows)  # the strategy's measurements (FedAvg: its step)
    assert "fedavg" in lines[1]


def test_download_gives_the_last_global_model_as_a_keras_file_ready_for_predict(local_cloud, finished_run, tmp_path):
    out = tmp_path / "model.keras"
    result = fedstep_here(local_cloud, "download", finished_run, "-o", str(out))
    assert result.returncode == 0, result.stderr
    assert "after round 3" in result.stdout
    from client_agent.keras_model import get_tensors, import_keras

    model = import_keras().models.load_model(out, safe_mode=True)
    assert model.predict(np.zeros((2, 64), np.float32), verbose=0).shape == (2, 10)
    s3 = local_cloud.client("s3")
    table = DynamoRoundTable(local_cloud.outputs.table, local_cloud.client("dynamodb"))
    key = table.get_round(finished_run, 3)["global_model"]["key"]  # the version the round's summary names
    expected = tensors.decode(s3.get_object(Bucket=local_cloud.outputs.bucket, Key=key)["Body"].read())
    for name, value in get_tensors(model).items():
        np.testing.assert_array_equal(value, expected[name])


def test_download_and_report_write_under_runs_of_the_run_when_no_output_is_given(local_cloud, finished_run, tmp_path):
    download = fedstep_here(local_cloud, "download", finished_run, cwd=tmp_path)
    assert download.returncode == 0, download.stderr
    model = tmp_path / "runs" / finished_run / f"{finished_run}-round3.keras"
    assert f"wrote runs/{finished_run}/{finished_run}-round3.keras" in download.stdout and model.stat().st_size > 0
    report = fedstep(local_cloud, "report", finished_run, cwd=tmp_path)
    assert report.returncode == 0, report.stderr
    assert (tmp_path / "runs" / finished_run / "report" / "report.html").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs"]  # nothing else in the working directory


def test_download_of_a_round_that_did_not_complete_is_refused(local_cloud, finished_run, tmp_path):
    result = fedstep(local_cloud, "download", finished_run, "--round", "9", "-o", str(tmp_path / "m.keras"))
    assert result.returncode == 2 and "has no completed round 9 (completed: 1, 2, 3)" in result.stderr


def test_report_writes_one_html_file_and_the_plots_as_png(local_cloud, finished_run, tmp_path):
    result = fedstep(local_cloud, "report", finished_run, "-o", str(tmp_path))
    assert result.returncode == 0, result.stderr
    page = (tmp_path / "report.html").read_text()
    for plot in ("accuracy", "loss", "participation", "clients"):  # clients: each client's own metrics
        png = (tmp_path / f"{plot}.png").read_bytes()
        assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 5_000
        assert f'id="{plot}"' in page
    assert page.count("data:image/png;base64,") == 4 and "client-1, client-2" in page


def test_status_of_an_unknown_run_is_a_clear_error(local_cloud):
    result = fedstep(local_cloud, "status", "run-that-never-was")
    assert result.returncode == 2 and "there is no run 'run-that-never-was'" in result.stderr
    assert "Traceback" not in result.stderr


def test_stop_aborts_a_running_run_and_tells_its_clients(local_cloud, finished_run):
    drain_queues(local_cloud)
    started = fedstep_here(local_cloud, "start", "--model", MODEL, "--rounds", "2", "--round-timeout", "300")
    assert started.returncode == 0, started.stderr
    run_id = started.stdout.split("started run ", 1)[1].split()[0]
    result = fedstep(local_cloud, "stop", run_id, "--reason", "wrong learning rate")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"stopped run {run_id}; 0 of 2 rounds completed; ")
    assert result.stdout.rstrip().endswith("; its clients were told")
    arn = local_cloud.outputs.state_machine_arn.replace(":stateMachine:", ":execution:") + f":{run_id}"
    assert wait_for_execution(local_cloud, arn, timeout_s=30)["status"] == "ABORTED"
    sqs = local_cloud.client("sqs")
    for url in local_cloud.outputs.queues.values():  # each client: (its round 1 message, then) run_ended
        bodies = [json.loads(m["Body"]) for m in sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10)["Messages"]]
        assert {"type": "run_ended", "run_id": run_id, "reason": "stopped"}.items() <= bodies[-1].items()
    again = fedstep(local_cloud, "stop", run_id)
    assert again.returncode == 2 and f"run {run_id} is not running (it is ABORTED)" in again.stderr
    status = fedstep(local_cloud, "status", run_id)
    assert status.stdout.startswith(f"run {run_id}: ABORTED (stopped), round 0 of 2")
    assert re.search(r"^stopped at 20\S+: wrong learning rate$", status.stdout, re.MULTILINE), status.stdout
    as_json = json.loads(fedstep(local_cloud, "status", run_id, "--json").stdout)
    assert (as_json["stop_reason"], as_json["stop"]["reason"]) == ("stopped", "wrong learning rate")
    drain_queues(local_cloud)


def client_agent(cloud, client_id, tmp_path, train=nudge) -> Agent:
    """An agent of `client_id` in this process, with a small in-memory data set and `train`."""
    n = 10 if client_id == "client-1" else 30
    x = np.zeros((n, 64), np.float32)
    config = agent_config(cloud, client_id, tmp_path, data="in-memory", heartbeat_s=0)
    trainer = FunctionTrainer(train, ((x, np.zeros(n)), (x[:2], np.zeros(2))), "tests:nudge")
    return Agent(config, trainer, session=cloud.session(client_id))


def poll_until_the_run_ends(a: Agent) -> list[Outcome]:
    """What the agent does with each message until the run-ended one (as `fedstep-client run` does)."""
    outcomes: list[Outcome] = []
    for _ in range(60):
        outcome = a.poll_once()
        if outcome is not None:
            outcomes.append(outcome)
        if outcome is Outcome.RUN_ENDED:
            return outcomes
    raise AssertionError(f"{a.config.client_id}: no run-ended message ({outcomes})")


def started_run(cloud) -> str:
    """`fedstep start` of a 2-round run whose round 1 is open (published), no agent serving it yet."""
    drain_queues(cloud)
    started = fedstep_here(cloud, "start", "--model", MODEL, "--rounds", "2", "--round-timeout", "300")
    assert started.returncode == 0, started.stderr
    run_id = started.stdout.split("started run ", 1)[1].split()[0]
    published_round(cloud, run_id, 1)
    return run_id


def uploaded(cloud, run_id: str, client_id: str) -> bool:
    """Whether the client's update for round 1 (its file or its item) reached the cloud."""
    table = DynamoRoundTable(cloud.outputs.table, cloud.client("dynamodb"))
    if table.get_updates(run_id, 1, [client_id]):
        return True
    return bool(objects(cloud, keys.update_key(run_id, 1, client_id)))


def objects(cloud, prefix: str) -> list[str]:
    """The keys under `prefix` in the model registry."""
    listed = cloud.client("s3").list_objects_v2(Bucket=cloud.outputs.bucket, Prefix=prefix)
    return [o["Key"] for o in listed.get("Contents", [])]


def test_a_late_agent_never_trains_or_uploads_for_a_stopped_run_and_no_round_is_aggregated(local_cloud, tmp_path):
    """The issue's case: one agent down, `fedstep start --rounds 2`, `fedstep stop`, then that agent
    starts. It skips the round without training, uploads nothing, and round 1 is never aggregated."""
    run_id = started_run(local_cloud)
    assert serve(client_agent(local_cloud, "client-1", tmp_path)) is Outcome.SERVED  # on time: its update is in
    stopped = fedstep(local_cloud, "stop", run_id, "--reason", "wrong learning rate")
    assert stopped.returncode == 0, stopped.stderr
    assert stopped.stdout.strip() == (
        f"stopped run {run_id}; 0 of 2 rounds completed; round 1 was open with 1 of 2 updates received "
        "(client-1): it is not aggregated; its clients were told"
    )
    trained = []
    late = client_agent(local_cloud, "client-2", tmp_path, lambda *args: trained.append(args) or nudge(*args))
    assert poll_until_the_run_ends(late) == [Outcome.STALE, Outcome.RUN_ENDED]  # round 1 skipped, then the end
    gaps.wait_for_stream_batches()
    assert trained == [] and not uploaded(local_cloud, run_id, "client-2")
    table = DynamoRoundTable(local_cloud.outputs.table, local_cloud.client("dynamodb"))
    assert table.list_rounds(run_id) == [] and table.get_round(run_id, 1)["status"] == "open"
    status = fedstep(local_cloud, "status", run_id)
    assert status.stdout.startswith(f"run {run_id}: ABORTED (stopped), round 0 of 2")
    assert "no round completed yet" in status.stdout and ": wrong learning rate\n" in status.stdout


def test_an_update_that_arrives_after_the_stop_is_never_aggregated_or_published(local_cloud, tmp_path):
    """An agent that does not check (one from before stop markers, or whose check came just before the
    stop) uploads after the stop: every selected update is in, and still no round is aggregated."""
    run_id = started_run(local_cloud)
    assert serve(client_agent(local_cloud, "client-1", tmp_path)) is Outcome.SERVED
    assert fedstep(local_cloud, "stop", run_id).returncode == 0
    unchecking = client_agent(local_cloud, "client-2", tmp_path)
    unchecking._stop_of = lambda run: None  # as if it could not know
    assert poll_until_the_run_ends(unchecking) == [Outcome.SERVED, Outcome.RUN_ENDED]
    gaps.wait_for_stream_batches()
    assert uploaded(local_cloud, run_id, "client-2")  # every selected client's update is in
    table = DynamoRoundTable(local_cloud.outputs.table, local_cloud.client("dynamodb"))
    assert table.list_rounds(run_id) == [] and table.get_round(run_id, 1)["status"] == "open"
    assert table.get_round(run_id, 2) is None  # round 2 was never published
    assert (
        objects(local_cloud, keys.round_prefix(run_id, 1)) == objects(local_cloud, keys.round_prefix(run_id, 2)) == []
    )


def test_an_agent_training_when_the_run_is_stopped_does_not_upload_its_update(local_cloud, tmp_path):
    """The stop comes while the agent trains: it checks again before the upload, and its update stays home."""
    run_id = started_run(local_cloud)
    training, go_on = threading.Event(), threading.Event()

    def slow(model, data, config):
        training.set()
        assert go_on.wait(120)
        return nudge(model, data, config)

    a = client_agent(local_cloud, "client-1", tmp_path, slow)
    thread = threading.Thread(target=a.run, daemon=True)
    thread.start()
    assert training.wait(120)
    stopped = fedstep(local_cloud, "stop", run_id, "--reason", "stopped mid-round")
    go_on.set()
    thread.join(timeout=120)
    assert not thread.is_alive()  # it saw the run end
    assert "round 1 was open with 0 of 2 updates received: it is not aggregated" in stopped.stdout
    assert a.last_report is None and not uploaded(local_cloud, run_id, "client-1")
    drain_queues(local_cloud)


def test_a_commit_after_the_stop_is_refused_in_the_same_transaction_and_the_stop_says_so(local_cloud):
    """The stop lands while the function holds round 1's claim: its commit (under its own role, with
    IAM enforced) is refused as RunStopped and changes nothing; `fedstep stop` says the round was
    being aggregated and will not be committed."""
    run_id = started_run(local_cloud)
    name = local_cloud.outputs.table
    function = DynamoRoundTable(name, local_cloud.client("dynamodb", "aggregation"))
    operator = DynamoRoundTable(name, local_cloud.client("dynamodb", "operator"))
    now = time.time()
    record = function.claim_round(run_id, 1, "c0ffee", now, now + 300)
    assert record is not None
    assert operator.put_stop(RunStop(run_id, "stopped mid-aggregation", utc_now()))
    summary = {**keys.round_item_key(run_id, 1), "kind": "round", "round": 1, "status": "reported"}
    with pytest.raises(RunStopped, match="round 1 is not committed"):
        function.complete_round(summary, "c0ffee")
    assert function.get_round(run_id, 1)["status"] == "claimed" and function.list_rounds(run_id) == []
    stopped = fedstep(local_cloud, "stop", run_id)  # the marker written above stays; the stop goes on
    assert stopped.returncode == 0, stopped.stderr
    assert "round 1 was being aggregated from 0 of 2 updates received: it is not committed" in stopped.stdout
    assert ": stopped mid-aggregation" in fedstep(local_cloud, "status", run_id).stdout
    drain_queues(local_cloud)


def test_the_console_shows_each_rounds_summary_and_where_the_history_is(local_cloud, finished_run):
    """What the Step Functions console shows: "Round aggregated" outputs a round in brief; the execution
    output holds the stop reason, the last round and where the round summaries are (the table)."""
    sfn = local_cloud.client("stepfunctions")
    arn = local_cloud.outputs.state_machine_arn.replace(":stateMachine:", ":execution:") + f":{finished_run}"
    events = sfn.get_execution_history(executionArn=arn, maxResults=1000)["events"]
    exits = [e["stateExitedEventDetails"] for e in events if "stateExitedEventDetails" in e]
    summaries = [json.loads(d["output"])["round_summary"] for d in exits if d["name"] == "Round aggregated"]
    assert [s["round"] for s in summaries] == [1, 2, 3]
    assert all(s["participants"] == 2 and s["metrics"]["test_accuracy"] for s in summaries)
    names = {d["name"] for d in exits}
    assert {"Prepare round", "Notify clients and wait for updates", "More rounds?", "Training finished"} <= names
    output = json.loads(sfn.describe_execution(executionArn=arn)["output"])
    assert output["stop_reason"] == "max_rounds" and output["last_round"]["round"] == 3
    where = output["round_summaries"]
    assert (where["table"], where["pk"], where["sk_prefix"]) == (local_cloud.outputs.table, finished_run, "ROUND#")


def test_status_watch_prints_each_round_and_returns_when_the_run_is_over(local_cloud, finished_run):
    result = fedstep(local_cloud, "status", finished_run, "--watch", "--interval", "0.5")
    assert result.returncode == 0, result.stderr
    assert [row[0] for row in round_rows(result.stdout)] == ["1", "2", "3"]
    assert result.stdout.splitlines()[-1].startswith(f"run {finished_run}: SUCCEEDED (max_rounds)")


def test_a_run_file_with_a_mistake_is_refused_with_the_field_named(local_cloud, tmp_path):
    run_file = tmp_path / "run.json"
    run_file.write_text(json.dumps({"model": MODEL, "rounds": "many", "epochs": 1}))
    result = fedstep(local_cloud, "start", "--run-file", str(run_file))
    assert result.returncode == 2 and "run setting rounds must be int, got 'many'" in result.stderr
    run_file.write_text(json.dumps({"model": MODEL, "round": 3}))
    result = fedstep(local_cloud, "start", "--run-file", str(run_file))
    assert result.returncode == 2 and "unknown field(s) ['round']" in result.stderr


@pytest.mark.parametrize(
    ("flag", "env", "expected"),
    [
        (None, {"AWS_REGION": "eu-west-3"}, "eu-west-3"),
        (None, {"AWS_REGION": "eu-west-3", "AWS_DEFAULT_REGION": "us-east-2"}, "eu-west-3"),
        (None, {"AWS_DEFAULT_REGION": "us-east-2"}, "us-east-2"),
        ("ap-south-1", {"AWS_REGION": "eu-west-3", "AWS_DEFAULT_REGION": "us-east-2"}, "ap-south-1"),
    ],
)
def test_the_operator_cli_uses_region_flag_then_aws_region_then_aws_default_region(monkeypatch, flag, env, expected):
    """`AWS_REGION=eu-west-3 fedstep runs` works on eu-west-3 (boto3 alone reads only AWS_DEFAULT_REGION)."""
    import fedstep.cli as cli
    from fedstep.operator.stack import session

    for name in ("AWS_REGION", "AWS_DEFAULT_REGION"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    args = cli.build_parser().parse_args(["runs", *(["--region", flag] if flag else [])])
    assert session(args.region).region_name == expected
