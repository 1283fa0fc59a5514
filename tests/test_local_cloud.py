"""The protocol on the real stack deployed into moto: state machine, SNS->SQS, agents, stream, Lambda.

The agents run in-process with a small numpy trainer (the protocol is under test, not Keras; the
server never reads the architecture file). `fedstep local` with Keras clients is tested in test_demo*.py.
"""

from __future__ import annotations

import html
import io
import json
import subprocess
import time
import zipfile
from collections.abc import Callable
from dataclasses import replace

import numpy as np
import pytest
from botocore.exceptions import EndpointConnectionError

from client_agent.agent import Agent, Outcome
from client_agent.config import AgentConfig
from client_agent.training import TrainResult
from fedstep.aws.adapters import DynamoRoundTable, S3ModelStore
from fedstep.aws.ddb import to_attributes
from fedstep.core import keys, tensors
from fedstep.core.errors import FedstepError
from fedstep.local import gaps
from tests.cloud_helpers import (
    INITIAL,
    SHIFTS,
    ShiftTrainer,
    agent,
    as_the_function,
    fedstep,
    fedstep_here,
    global_after,
    receive,
    serve,
    serve_run,
    start,
    summaries,
    wait_for_execution,
)


def test_state_machine_completes_two_rounds_with_two_clients(cloud, tmp_path):
    run = start(cloud, rounds=2)
    serve_run([agent(cloud, c, tmp_path) for c in SHIFTS], rounds=2)
    desc = wait_for_execution(cloud, run.execution_arn)
    assert desc["status"] == "SUCCEEDED"
    output = json.loads(desc["output"])
    assert output["stop_reason"] == "max_rounds" and output["rounds_completed"] == 2
    assert output["round_summaries"]["pk"] == run.run_id and output["last_round"]["round"] == 2
    history = summaries(cloud, run.run_id)
    assert [h.round for h in history] == [1, 2]
    assert all(len(h.participants) == 2 and h.num_examples == 40 for h in history)
    final = tensors.decode(S3ModelStore(cloud.outputs.bucket, cloud.client("s3")).get(output["global_model"]["key"]))
    for name in INITIAL:
        np.testing.assert_allclose(final[name], 5.0)  # 2 rounds x weighted shift 2.5


def _stream_event(items):
    return {
        "Records": [
            {
                "eventID": f"dup-{i}",
                "eventName": "INSERT",
                "eventVersion": "1.1",
                "eventSource": "aws:dynamodb",
                "awsRegion": "us-east-1",
                "dynamodb": {"NewImage": to_attributes(item), "StreamViewType": "NEW_IMAGE"},
            }
            for i, item in enumerate(items)
        ]
    }


def test_duplicate_stream_record_is_counted_once(cloud, tmp_path, monkeypatch):
    from lambdas.aggregate import handler

    run = start(cloud, rounds=1)
    for client in SHIFTS:
        serve(agent(cloud, client, tmp_path))
    table = DynamoRoundTable(cloud.outputs.table, cloud.client("dynamodb"))
    first_global = global_after(cloud, run.run_id, 1)
    items = list(table.get_updates(run.run_id, 1, list(SHIFTS)).values())
    monkeypatch.setenv("BUCKET_NAME", cloud.outputs.bucket)
    monkeypatch.setenv("TABLE_NAME", cloud.outputs.table)
    context = gaps.LocalLambdaContext("aggregate", "arn:aws:lambda:us-east-1:123456789012:function:x", 1024, "req")
    for _ in range(2):  # the same records delivered twice more
        with as_the_function(cloud):
            assert handler(_stream_event(items), context) == {"batchItemFailures": []}
    assert len(table.list_rounds(run.run_id)) == 1
    assert global_after(cloud, run.run_id, 1) == first_global
    desc = wait_for_execution(cloud, run.execution_arn)
    history = cloud.client("stepfunctions").get_execution_history(executionArn=run.execution_arn)["events"]
    assert desc["status"] == "SUCCEEDED"
    round_reports = [
        e
        for e in history
        if e["type"] == "TaskSucceeded" and e["taskSucceededEventDetails"]["resource"] == "invoke.waitForTaskToken"
    ]
    assert len(round_reports) == 1


def test_client_keeps_its_message_when_its_upload_fails(cloud, tmp_path):
    run = start(cloud, rounds=1)
    broken = agent(cloud, "client-1", tmp_path)

    def network_down(**kwargs):
        raise EndpointConnectionError(endpoint_url=cloud.endpoint)

    broken.s3.meta.events.register("before-call.s3.PutObject", network_down)
    message = receive(cloud, "client-1")
    assert broken.handle(message) is Outcome.KEPT
    table = DynamoRoundTable(cloud.outputs.table, cloud.client("dynamodb"))
    assert table.get_item(keys.update_item_key(run.run_id, 1, "client-1")) is None
    # The message was not deleted but released: it is delivered again at once.
    again = receive(cloud, "client-1")
    assert again["MessageId"] == message["MessageId"]
    healthy = agent(cloud, "client-1", tmp_path)
    assert healthy.handle(again) is Outcome.SERVED
    serve(agent(cloud, "client-2", tmp_path))
    assert wait_for_execution(cloud, run.execution_arn)["status"] == "SUCCEEDED"


def test_a_redelivered_message_is_not_trained_twice(cloud, tmp_path):
    run = start(cloud, rounds=1)
    a = agent(cloud, "client-1", tmp_path)
    message = receive(cloud, "client-1")
    assert a.handle(message) is Outcome.SERVED
    assert a.handle(message) is Outcome.ALREADY_SERVED  # e.g. the delete was lost and SQS redelivered
    serve(agent(cloud, "client-2", tmp_path))
    assert wait_for_execution(cloud, run.execution_arn)["status"] == "SUCCEEDED"


def test_the_in_process_lambda_refuses_code_that_differs_from_the_checkout():
    gaps.check_patch_point()  # moto is the pinned version and still has the method we replace

    def zipped(keys_source: bytes) -> bytes:
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as zf:
            zf.writestr("fedstep/core/keys.py", keys_source)
            zf.writestr("numpy/__init__.py", b"# wheels for the Lambda platform are not compared")
        return buffer.getvalue()

    checkout = (gaps.REPO / "fedstep" / "core" / "keys.py").read_bytes()
    gaps.verify_code_matches_checkout(zipped(checkout))
    with pytest.raises(RuntimeError, match=r"fedstep/core/keys\.py differs from this checkout"):
        gaps.verify_code_matches_checkout(zipped(checkout + b"\n# edited after deploying\n"))


def _fedstep(*args: str, cloud) -> subprocess.CompletedProcess[str]:
    return fedstep(cloud, *args, timeout=180)


def test_fedstep_start_publishes_the_model_and_starts_an_execution(cloud):
    # in this process: `fedstep start --model` builds the model, a process would import TensorFlow again
    result = fedstep_here(
        cloud,
        "start",
        "--model",
        "client_agent.models:digits_mlp",
        "--rounds",
        "3",
        "--run-id",
        "cli-run",
        "--seed",
        "1",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "started run cli-run with clients client-1, client-2" in result.stdout
    store = S3ModelStore(cloud.outputs.bucket, cloud.client("s3"))
    assert store.get(keys.model_key("cli-run"))[:2] == b"PK"  # a .keras file is a zip archive
    initial = tensors.decode(store.get(keys.global_key("cli-run", 0, keys.INITIAL_VERSION)))
    assert sorted(initial) == ["000/hidden/kernel", "001/hidden/bias", "002/output/kernel", "003/output/bias"]
    run = DynamoRoundTable(cloud.outputs.table, cloud.client("dynamodb")).get_run("cli-run")
    assert run.rounds == 3 and run.clients == ["client-1", "client-2"] and run.training.learning_rate is None
    arn = cloud.outputs.state_machine_arn.replace(":stateMachine:", ":execution:") + ":cli-run"
    assert cloud.client("stepfunctions").describe_execution(executionArn=arn)["status"] == "RUNNING"
    again = fedstep_here(cloud, "start", "--model", "client_agent.models:digits_mlp", "--run-id", "cli-run")
    assert again.returncode == 2 and "run cli-run exists already" in again.stderr


def test_fedstep_start_names_a_missing_stack(cloud):
    result = _fedstep("start", "--model", "client_agent.models:digits_mlp", "--stack", "nope", cloud=cloud)
    assert result.returncode == 2
    assert "cannot read stack 'nope'" in result.stderr and "Traceback" not in result.stderr


def test_client_config_prints_a_ready_config_from_the_stack_outputs(cloud, tmp_path):
    out = tmp_path / "client-2.json"
    result = _fedstep("client-config", "client-2", "--region", "us-east-1", "-o", str(out), cloud=cloud)
    assert result.returncode == 0, result.stderr
    config = json.loads(out.read_text())
    assert config["queue_url"] == cloud.outputs.queues["client-2"]
    assert config["role_arn"] == cloud.outputs.roles["client-2"]
    assert (config["bucket"], config["table"], config["region"]) == (
        cloud.outputs.bucket,
        cloud.outputs.table,
        "us-east-1",
    )
    missing = _fedstep("client-config", "client-9", cloud=cloud)
    assert missing.returncode == 2 and "client 'client-9' is not in the stack" in missing.stderr


def test_an_agent_with_a_role_arn_works_with_the_roles_credentials(cloud, tmp_path):
    run = start(cloud, rounds=1)
    out = cloud.outputs
    config = AgentConfig(
        client_id="client-1",
        queue_url=out.queues["client-1"],
        bucket=out.bucket,
        table=out.table,
        region="us-east-1",
        endpoint_url=cloud.endpoint,
        role_arn=out.roles["client-1"],
        profile="client-1",  # the organisation's own keys, in the local cloud's credentials file
        data="unused",
        poll_wait_s=1,
        cache_dir=str(tmp_path / "c1"),
    )
    a = Agent(config, ShiftTrainer(*SHIFTS["client-1"]))
    credentials = a.s3._request_signer._credentials.get_frozen_credentials()
    assert credentials.access_key != cloud.principals.keys("client-1").access_key  # the role's session's
    assert credentials.token  # temporary credentials of the assumed role, not the organisation's
    serve(a)
    serve(agent(cloud, "client-2", tmp_path))
    assert wait_for_execution(cloud, run.execution_arn)["status"] == "SUCCEEDED"


def test_a_malformed_message_ends_in_the_clients_dead_letter_queue(cloud, tmp_path):
    sqs = cloud.client("sqs")
    queue = cloud.outputs.queues["client-1"]
    sqs.send_message(QueueUrl=queue, MessageBody=json.dumps({"schema": 1, "type": "round", "round": "one"}))
    a = agent(cloud, "client-1", tmp_path)
    outcomes = [a.poll_once() for _ in range(7)]
    assert outcomes[:5] == [Outcome.REJECTED] * 5 and outcomes[5:] == [None, None]
    dlq = sqs.get_queue_url(QueueName="fedstep-client-1-dlq")["QueueUrl"]
    [dead] = sqs.receive_message(QueueUrl=dlq, WaitTimeSeconds=1)["Messages"]
    assert json.loads(dead["Body"])["round"] == "one"


def test_a_straggler_past_the_deadline_does_not_stop_the_run_and_its_late_update_is_ignored(cloud, tmp_path):
    run = start(cloud, rounds=1, round_timeout_s=3, quorum=1, min_participants=1)
    serve(agent(cloud, "client-1", tmp_path))  # client-2 is late
    desc = wait_for_execution(cloud, run.execution_arn, timeout_s=60)
    assert desc["status"] == "SUCCEEDED", desc.get("error")
    [entry] = summaries(cloud, run.run_id)
    assert entry.participants == ["client-1"] and entry.num_examples == 10
    model = global_after(cloud, run.run_id, 1)
    np.testing.assert_allclose(tensors.decode(model)["001/d/bias"], 1.0)  # client-1's shift alone
    late = agent(cloud, "client-2", tmp_path)
    serve(late)  # it still serves the round message it finds...
    assert global_after(cloud, run.run_id, 1) == model  # ...but the aggregate does not change
    names = [
        e["type"] for e in cloud.client("stepfunctions").get_execution_history(executionArn=run.execution_arn)["events"]
    ]
    assert "TaskTimedOut" in names


def test_a_round_below_its_quorum_at_the_deadline_fails_the_run_with_a_named_error(cloud, tmp_path):
    run = start(cloud, rounds=3, round_timeout_s=3, quorum=2)
    serve(agent(cloud, "client-1", tmp_path))  # only one of the two clients reports
    desc = wait_for_execution(cloud, run.execution_arn, timeout_s=60)
    assert desc["status"] == "FAILED"
    assert desc["error"] == "QuorumNotMet"
    assert "1 of 2 updates by the deadline of round 1 (quorum 2)" in desc["cause"]


def _bad_files() -> dict[str, tuple[Callable[[dict], bytes], str]]:
    """Each fault as a file (made from the metadata an honest file would carry) and the reason it gets."""
    import pickle

    wrong_shapes = {"000/d/kernel": np.zeros((3, 4), np.float32), "001/d/bias": np.zeros(3, np.float32)}
    nan = {k: np.full(v.shape, np.nan, np.float32) for k, v in INITIAL.items()}
    return {
        "corrupt file": (lambda meta: b"\x00\x01not a model" * 10, "not a safetensors file"),
        "wrong shapes": (lambda meta: tensors.encode(wrong_shapes, meta), "has shape (3, 4), expected (4, 3)"),
        "NaN values": (lambda meta: tensors.encode(nan, meta), "non-finite"),
        "pickle payload": (
            lambda meta: pickle.dumps({"000/d/kernel": INITIAL["000/d/kernel"]}),
            "not a safetensors file",
        ),  # pickle-attack
    }


@pytest.mark.parametrize("fault", list(_bad_files()))
def test_a_bad_update_is_rejected_and_the_model_equals_a_run_without_it(cloud, tmp_path, fault):
    from fedstep.core.clock import utc_now
    from fedstep.core.schemas import ObjectRef, UpdateItem

    make, reason = _bad_files()[fault]
    run = start(cloud, rounds=1, quorum=1, min_participants=1)
    serve(agent(cloud, "client-1", tmp_path))
    receive(cloud, "client-2")
    key = keys.update_key(run.run_id, 1, "client-2")
    item = UpdateItem(run.run_id, 1, "client-2", 30, ObjectRef(key, "0" * 64, 0), {}, utc_now())
    data = make(item.file_metadata())
    cloud.client("s3").put_object(Bucket=cloud.outputs.bucket, Key=key, Body=data)
    item = replace(item, update=ObjectRef(key, tensors.sha256_hex(data), len(data)))
    DynamoRoundTable(cloud.outputs.table, cloud.client("dynamodb")).put_once(item.to_item())
    gaps.wait_for_stream_batches()
    desc = wait_for_execution(cloud, run.execution_arn)
    assert desc["status"] == "SUCCEEDED"
    summary = DynamoRoundTable(cloud.outputs.table, cloud.client("dynamodb")).get_round(run.run_id, 1)
    assert summary["participants"] == ["client-1"]
    [rejection] = summary["rejected"]
    assert rejection["client_id"] == "client-2" and reason in rejection["reason"]
    final = tensors.decode(global_after(cloud, run.run_id, 1))
    for name in INITIAL:
        np.testing.assert_allclose(final[name], 1.0)  # exactly client-1's update: the fault-free result


def test_an_update_for_a_finished_round_changes_nothing(cloud, tmp_path):
    run = start(cloud, rounds=2)
    agents = [agent(cloud, c, tmp_path) for c in SHIFTS]
    for a in agents:
        serve(a)  # round 1 completes
    round_1 = global_after(cloud, run.run_id, 1)
    table = DynamoRoundTable(cloud.outputs.table, cloud.client("dynamodb"))
    stale = table.get_updates(run.run_id, 1, ["client-1"])["client-1"]
    table.ddb.delete_item(TableName=table.name, Key=to_attributes(keys.update_item_key(run.run_id, 1, "client-1")))
    table.put_once(stale)  # the same round-1 report arriving again, late
    gaps.wait_for_stream_batches()
    assert global_after(cloud, run.run_id, 1) == round_1
    for a in agents:
        serve(a)
    assert wait_for_execution(cloud, run.execution_arn)["status"] == "SUCCEEDED"
    assert len(table.list_rounds(run.run_id)) == 2


class SlowTrainer(ShiftTrainer):
    def fit(self, architecture, weights, training):
        time.sleep(4)
        return super().fit(architecture, weights, training)


def test_a_message_stays_invisible_while_a_long_round_trains(cloud, tmp_path):
    from dataclasses import replace as dc_replace

    start(cloud, rounds=1)
    slow = agent(cloud, "client-1", tmp_path, SlowTrainer(*SHIFTS["client-1"]))
    slow.config = dc_replace(slow.config, visibility_extend_s=1)
    message = receive(cloud, "client-1")
    sqs = cloud.client("sqs")
    sqs.change_message_visibility(
        QueueUrl=cloud.outputs.queues["client-1"], ReceiptHandle=message["ReceiptHandle"], VisibilityTimeout=2
    )
    import threading

    seen_meanwhile = []

    def another_consumer():
        time.sleep(2.5)  # past the original 2 s visibility timeout, while training still runs
        resp = sqs.receive_message(QueueUrl=cloud.outputs.queues["client-1"], WaitTimeSeconds=1)
        seen_meanwhile.extend(resp.get("Messages", []))

    thread = threading.Thread(target=another_consumer)
    thread.start()
    assert slow.handle(message) is Outcome.SERVED
    thread.join()
    assert seen_meanwhile == []


def test_a_stopped_agent_releases_its_round_message_at_once(cloud, tmp_path):
    class Interrupted(ShiftTrainer):
        def fit(self, architecture, weights, training):
            raise SystemExit(143)  # what SIGTERM does in the agent's CLI

    start(cloud, rounds=1)
    message = receive(cloud, "client-1")
    with pytest.raises(SystemExit):
        agent(cloud, "client-1", tmp_path, Interrupted(1.0, 1)).handle(message)
    again = receive(cloud, "client-1")  # available immediately, not after 15 minutes
    assert again["MessageId"] == message["MessageId"]


def test_the_aggregation_function_failing_once_is_retried_and_aggregates_once(cloud, tmp_path, monkeypatch):
    from fedstep.aws import adapters as aws_module

    original = aws_module.S3ModelStore.read_range
    failures = []

    def flaky_read(self, key, *args, **kwargs):
        if not failures and "/rounds/00000/" in key:  # the first read of the round's input model fails
            failures.append(key)
            raise ConnectionError("simulated network failure inside the aggregation function")
        return original(self, key, *args, **kwargs)

    monkeypatch.setattr(aws_module.S3ModelStore, "read_range", flaky_read)
    run = start(cloud, rounds=1)
    for client in SHIFTS:
        serve(agent(cloud, client, tmp_path))
    assert failures, "the fault was not injected"
    assert wait_for_execution(cloud, run.execution_arn)["status"] == "SUCCEEDED"
    table = DynamoRoundTable(cloud.outputs.table, cloud.client("dynamodb"))
    assert len(table.list_rounds(run.run_id)) == 1
    final = tensors.decode(global_after(cloud, run.run_id, 1))
    for name in INITIAL:
        np.testing.assert_allclose(final[name], 2.5)  # the fault-free result


def test_a_trainer_that_crashes_keeps_the_message_and_the_agent_alive(cloud, tmp_path):
    class Broken(ShiftTrainer):
        def fit(self, architecture, weights, training):
            raise RuntimeError("CUDA out of memory")  # anything a user's training code may raise

    start(cloud, rounds=1)
    message = receive(cloud, "client-1")
    assert agent(cloud, "client-1", tmp_path, Broken(1.0, 1)).handle(message) is Outcome.KEPT


class EvaluatingTrainer(ShiftTrainer):
    """Reports the global model's test loss before training: the sum of its weights' first entries."""

    def fit(self, architecture, weights, training):
        result = super().fit(architecture, weights, training)
        before = 10.0 - float(sum(v.ravel()[0] for v in weights.values()))
        return TrainResult(result.weights, result.num_examples, {"test_loss": 0.0, "test_loss_before": before})


def test_a_run_stops_early_when_the_global_models_federated_evaluation_meets_the_target(cloud, tmp_path):
    # the global model moves by 2.5 per weight and round: its evaluated loss is 10, 5, 0 in rounds 1, 2, 3,
    # while the clients' loss after local training is 0 from round 1 on (which must not stop the run)
    run = start(cloud, rounds=5, target="test_loss<=1")
    agents = [agent(cloud, c, tmp_path, EvaluatingTrainer(*SHIFTS[c])) for c in SHIFTS]
    serve_run(agents, 3)
    desc = wait_for_execution(cloud, run.execution_arn)
    output = json.loads(desc["output"])
    assert (desc["status"], output["stop_reason"], output["rounds_completed"]) == ("SUCCEEDED", "target_reached", 3)
    # the operator is told which round's model met it (round 2's, evaluated during round 3), as summary.json says
    status = fedstep(cloud, "status", run.run_id)
    met = "target test_loss<=1 met by round 2's global model (the clients' federated evaluation during round 3): "
    assert f"{met}fedstep download {run.run_id} --round 2" in status.stdout.splitlines()
    as_json = json.loads(fedstep(cloud, "status", run.run_id, "--json").stdout)
    assert as_json["target_met_by_round"] == 2 and as_json["settings"]["target"]["metric"] == "test_loss"
    assert as_json["settings"]["rounds"] == 5 and as_json["settings"]["quorum"] == 1  # the settings the text shows
    assert fedstep(cloud, "report", run.run_id, "-o", str(tmp_path / "report")).returncode == 0
    assert f'<p id="target">{html.escape(met)}' in (tmp_path / "report" / "report.html").read_text()


def test_only_the_clients_selected_for_a_round_receive_it(cloud, tmp_path):
    from fedstep.core.selection import select

    run = start(cloud, rounds=4, clients_per_round="1", min_participants=1)
    agents = {c: agent(cloud, c, tmp_path) for c in SHIFTS}
    expected = {r: select(list(SHIFTS), 1, 0, r) for r in range(1, 5)}
    received: dict[int, list[str]] = {}
    ended = set()
    deadline = time.monotonic() + 60
    while len(ended) < len(agents):
        assert time.monotonic() < deadline, f"run did not end; rounds received: {received}"
        for client, a in agents.items():
            for message in a.sqs.receive_message(QueueUrl=a.config.queue_url, WaitTimeSeconds=0).get("Messages", []):
                body = json.loads(message["Body"])
                if body["type"] == "round":
                    received.setdefault(body["round"], []).append(client)
                if a.handle(message) is Outcome.RUN_ENDED:
                    ended.add(client)
                gaps.wait_for_stream_batches()
        time.sleep(0.1)
    assert received == expected  # every round reached exactly its selected client, and no other
    assert {c for chosen in expected.values() for c in chosen} == set(SHIFTS), "seed 0 picks both over 4 rounds"
    assert wait_for_execution(cloud, run.execution_arn)["status"] == "SUCCEEDED"
    rounds = DynamoRoundTable(cloud.outputs.table, cloud.client("dynamodb")).list_rounds(run.run_id)
    assert [r["selected"] for r in rounds] == list(expected.values())
    assert [r["participants"] for r in rounds] == list(expected.values())


def test_a_failed_run_resumes_from_its_last_completed_round(cloud, tmp_path):
    from fedstep.operator.start import resume_run

    run = start(cloud, rounds=3, round_timeout_s=10, quorum=2)
    agents = {c: agent(cloud, c, tmp_path) for c in SHIFTS}
    for a in agents.values():
        serve(a)  # round 1 completes
    serve(agents["client-1"])  # round 2: client-2 is down, the quorum of 2 fails at the deadline
    assert wait_for_execution(cloud, run.execution_arn, timeout_s=60)["error"] == "QuorumNotMet"
    # client-2 stays down until after the resume: its stale round-2 message of the failed run goes unserved.
    # (Had it served it, that late update would have completed round 2 and the resume would start at 3.)
    stale = receive(cloud, "client-2")
    cloud.client("sqs").delete_message(QueueUrl=cloud.outputs.queues["client-2"], ReceiptHandle=stale["ReceiptHandle"])

    clients = {
        "s3": cloud.client("s3"),
        "dynamodb": cloud.client("dynamodb"),
        "stepfunctions": cloud.client("stepfunctions"),
    }
    resumed = resume_run(run.run_id, cloud.outputs, **clients)
    assert resumed.run_id == f"{run.run_id}-r1"
    for _ in range(2):  # rounds 2 and 3
        for a in agents.values():
            serve(a)
    desc = wait_for_execution(cloud, resumed.execution_arn)
    output = json.loads(desc["output"])
    assert desc["status"] == "SUCCEEDED" and [h.round for h in summaries(cloud, resumed.run_id)] == [2, 3]
    assert [h.round for h in summaries(cloud, run.run_id)] == [1]  # the earlier round stays with its run
    final = tensors.decode(S3ModelStore(cloud.outputs.bucket, cloud.client("s3")).get(output["global_model"]["key"]))
    for name in INITIAL:
        np.testing.assert_allclose(final[name], 7.5)  # three rounds of 2.5: the same as a fault-free run
    with pytest.raises(FedstepError, match="completed all 3 rounds"):
        resume_run(resumed.run_id, cloud.outputs, **clients)
    # --rounds: the total the continuation runs up to; it may extend a run that completed its rounds
    with pytest.raises(FedstepError, match="completed 3 rounds already; --rounds is the total"):
        resume_run(resumed.run_id, cloud.outputs, **clients, rounds=3)
    for a in agents.values():
        serve(a, expect=Outcome.RUN_ENDED)  # the end of the continuation that ran rounds 2 and 3
    extended = resume_run(resumed.run_id, cloud.outputs, **clients, rounds=4)
    for a in agents.values():
        serve(a)  # round 4
    desc = wait_for_execution(cloud, extended.execution_arn)
    assert desc["status"] == "SUCCEEDED" and [h.round for h in summaries(cloud, extended.run_id)] == [4]
    assert DynamoRoundTable(cloud.outputs.table, cloud.client("dynamodb")).get_run(extended.run_id).rounds == 4
    final = tensors.decode(global_after(cloud, extended.run_id, 4))
    for name in INITIAL:
        np.testing.assert_allclose(final[name], 10.0)  # a fourth round of 2.5


def test_a_round_that_misses_its_quorum_is_retried_and_the_run_completes(cloud, tmp_path):
    run = start(cloud, rounds=1, round_timeout_s=10, quorum=2, round_retries=1)
    agents = {c: agent(cloud, c, tmp_path) for c in SHIFTS}
    serve(agents["client-1"])  # attempt 1: client-2 is down; the quorum of 2 is missed at the deadline
    stale = receive(cloud, "client-2")  # client-2 never sees attempt 1's message
    cloud.client("sqs").delete_message(QueueUrl=cloud.outputs.queues["client-2"], ReceiptHandle=stale["ReceiptHandle"])
    serve(agents["client-1"], expect=Outcome.ALREADY_SERVED, tries=60)  # attempt 2: already reported, not retrained
    serve(agents["client-2"])  # attempt 2: client-2 is back
    desc = wait_for_execution(cloud, run.execution_arn)
    assert desc["status"] == "SUCCEEDED", desc.get("cause")
    names = [
        e["type"] for e in cloud.client("stepfunctions").get_execution_history(executionArn=run.execution_arn)["events"]
    ]
    assert names.count("TaskScheduled") >= 3  # notify, aggregate at deadline, notify again
    final = tensors.decode(global_after(cloud, run.run_id, 1))
    for name in INITIAL:
        np.testing.assert_allclose(final[name], 2.5)  # both clients' updates: the fault-free result


def test_a_report_about_another_run_cannot_steer_this_run(cloud, tmp_path):
    run = start(cloud, rounds=2)
    message = json.loads(receive(cloud, "client-1")["Body"])
    assert "task_token" not in message  # clients never see a token...
    table = DynamoRoundTable(cloud.outputs.table, cloud.client("dynamodb"))
    token = table.get_round(run.run_id, 1)["task_token"]  # ...it stays in the round record
    forged = {
        "summary": {"run_id": "some-other-run", "round": 1},
        "global_model": {"key": "runs/other/rounds/00001/global-x.safetensors", "sha256": "0" * 64, "bytes": 1},
        "target_reached": False,
    }
    cloud.client("stepfunctions").send_task_success(taskToken=token, output=json.dumps(forged))
    desc = wait_for_execution(cloud, run.execution_arn)
    assert (desc["status"], desc["error"]) == ("FAILED", "ForeignReport")


def test_the_operators_train_params_reach_every_clients_train_function(cloud, tmp_path):
    """`fedstep start --train-param dropout=0.2 ...` arrives as `training.params` (issue 21, finding 8)."""
    seen: dict[str, dict] = {}

    class Recording(ShiftTrainer):
        def __init__(self, client_id: str) -> None:
            super().__init__(*SHIFTS[client_id])
            self.client_id = client_id

        def fit(self, architecture, weights, training):
            seen[self.client_id] = dict(training.params)
            return super().fit(architecture, weights, training)

    params = {"dropout": 0.2, "augment": True, "backbone": "resnet18"}
    run = start(cloud, rounds=1, train_params=params)
    serve_run([agent(cloud, c, tmp_path, Recording(c)) for c in SHIFTS], 1)
    assert wait_for_execution(cloud, run.execution_arn)["status"] == "SUCCEEDED"
    assert seen == {c: params for c in SHIFTS}
