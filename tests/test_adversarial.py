"""The round protocol under a hostile client: one test per attack found on the landed protocol.

Each test performs the attack with what a registered client controls (its own role, its own queue,
prefix and partition, the values in its files and items) and shows it fail while the run goes on.
docs/security.md lists them as the attack table: attack, defence, test. The numbers are the
findings of the issue "No client can break, steer or outgrow a run".

The local-cloud tests run the real stack in moto. Where moto cannot check a rule (DynamoDB's IAM
condition keys), the deployed policy is evaluated by `fedstep/local/iam/policy.py`; where the attack is on
the aggregation logic, the core runs on the in-memory ports (`tests/round_world.py`).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import replace
from typing import Any

import numpy as np
import pytest
from botocore.exceptions import ClientError, EndpointConnectionError

from client_agent.agent import Agent, Outcome
from client_agent.training import TrainResult
from fedstep.aws import boto
from fedstep.aws.adapters import DynamoRoundTable
from fedstep.aws.errors import error_code
from fedstep.core import keys, limits, strategies, tensors
from fedstep.core.clock import utc_now
from fedstep.core.rounds import InvalidAggregate, RoundNotAggregated, TooFewParticipants
from fedstep.core.schemas import (
    Bounds,
    Feedback,
    ObjectRef,
    RoundMessage,
    RoundSummary,
    RunRecord,
    Target,
    TrainingConfig,
    UpdateItem,
)
from fedstep.core.strategies import FedAvg
from fedstep.core.updates import encode_update
from fedstep.local import gaps
from fedstep.local.iam.policy import ALLOW, IMPLICIT_DENY, evaluate, put_item_context
from fedstep.memory import MemoryStore, MemoryTable, record_bytes
from fedstep.operator.views import load_run
from infra.config import MAX_MODEL_MB, ConfigError, DeploymentConfig, aggregation_memory_mb
from tests.cloud_helpers import (
    INITIAL,
    SHIFTS,
    ShiftTrainer,
    agent,
    agent_config,
    fedstep,
    global_after,
    published_round,
    receive,
    serve,
    serve_run,
    start,
    summaries,
    wait_for_execution,
)
from tests.round_world import GLOBAL, RUN, make_world

DENIED = {"AccessDenied", "AccessDeniedException", "AuthorizationError", "403"}


def table_of(cloud) -> DynamoRoundTable:
    return DynamoRoundTable(cloud.outputs.table, cloud.client("dynamodb"))


def denied(call) -> str:
    """The error code of a call that must be refused."""
    with pytest.raises(ClientError) as info:
        call()
    return error_code(info.value)


def deployed_policy(cloud, client_id: str) -> list[dict[str, Any]]:
    """The client role's statements as deployed (resolved ARNs), read back from IAM."""
    iam = cloud.client("iam")
    role = cloud.outputs.roles[client_id].rsplit("/", 1)[1]
    [name] = iam.list_role_policies(RoleName=role)["PolicyNames"]
    document = iam.get_role_policy(RoleName=role, PolicyName=name)["PolicyDocument"]
    return (json.loads(document) if isinstance(document, str) else document)["Statement"]


# -- 1. a client can end any run ------------------------------------------------------------------


def test_1_a_client_cannot_overwrite_run_or_round_records_or_other_clients_items(cloud, tmp_path):
    """The attack: with its own role, PutItem a run's RUN record, a ROUND summary, or another
    client's update item for a future round (a lock-out). moto does not evaluate DynamoDB's IAM
    condition keys, so the deployed policy is evaluated; then the writes IAM does allow (anything
    inside its own partition) are made, and the run goes on."""
    run = start(cloud, rounds=2)
    policy = deployed_policy(cloud, "client-1")
    table_arn = next(s["Resource"] for s in policy if s["Sid"] == "PutOwnUpdateItems")
    record = table_of(cloud).get_item(keys.run_item_key(run.run_id))
    ref = ObjectRef(keys.update_key(run.run_id, 2, "client-2"), "0" * 64, 1)
    attacks = {
        "overwrite the run record": {**record, "rounds": 1},
        "forge a round summary": {**keys.round_item_key(run.run_id, 1), "status": "aggregated"},
        "pre-write client-2's round-2 item": UpdateItem(run.run_id, 2, "client-2", 1, ref, {}, "t").to_item(),
        "forge its own feedback": Feedback("client-1", run.run_id, 1, "0" * 64, "x", "t").to_item(),
    }
    for attack, item in attacks.items():
        assert evaluate(policy, "dynamodb:PutItem", table_arn, put_item_context(item)) == IMPLICIT_DENY, attack
    own = UpdateItem(
        run.run_id, 2, "client-1", 1, replace(ref, key=keys.update_key(run.run_id, 2, "client-1")), {}, "t"
    )
    assert evaluate(policy, "dynamodb:PutItem", table_arn, put_item_context(own.to_item())) == ALLOW
    # What IAM allows: any sort key inside its own partition, e.g. items shaped like server records.
    for junk in ({keys.SK: keys.RUN_SK, "rounds": 1}, {keys.SK: keys.round_sk(1), "status": "aggregated"}):
        table_of(cloud).put({keys.PK: keys.client_pk("client-1"), **junk})
    serve_run([agent(cloud, c, tmp_path) for c in SHIFTS], rounds=2)
    desc = wait_for_execution(cloud, run.execution_arn)
    assert desc["status"] == "SUCCEEDED" and [s.round for s in summaries(cloud, run.run_id)] == [1, 2]


def test_1_a_clients_role_is_refused_everything_outside_its_own_queue_and_prefix(cloud):
    """The same attacker on S3, SQS, SNS and Step Functions, where moto enforces IAM itself."""
    run = start(cloud, rounds=1)
    token = published_round(cloud, run.run_id)["task_token"]  # a real token, read by the operator
    session = cloud.session("client-1")  # the client's own role: all an attacking organisation holds
    s3, sqs = boto.client("s3", session, cloud.endpoint), boto.client("sqs", session, cloud.endpoint)
    sns, sfn = boto.client("sns", session, cloud.endpoint), boto.client("stepfunctions", session, cloud.endpoint)
    bucket, queues = cloud.outputs.bucket, cloud.outputs.queues
    put = lambda key: lambda: s3.put_object(Bucket=bucket, Key=key, Body=b"x")  # noqa: E731
    s3.put_object(Bucket=bucket, Key=keys.update_key(run.run_id, 1, "client-1"), Body=b"own")  # allowed
    sqs.receive_message(QueueUrl=queues["client-1"], WaitTimeSeconds=0)  # allowed
    codes = {
        "replace a round's result": denied(put(keys.global_key(run.run_id, 1, "forged"))),
        "replace the architecture": denied(put(keys.model_key(run.run_id))),
        "write client-2's update": denied(put(keys.update_key(run.run_id, 1, "client-2"))),
        "write outside its own prefix": denied(put(f"updates/{run.run_id}/00001/client-1.safetensors")),
        "read client-2's update": denied(
            lambda: s3.get_object(Bucket=bucket, Key=keys.update_key(run.run_id, 1, "client-2"))
        ),
        "read client-2's queue": denied(lambda: sqs.receive_message(QueueUrl=queues["client-2"])),
        "publish a round message": denied(lambda: sns.publish(TopicArn=cloud.outputs.topic_arn, Message="{}")),
        "complete the round's task": denied(lambda: sfn.send_task_success(taskToken=token, output="{}")),
        "stop the run": denied(lambda: sfn.stop_execution(executionArn=run.execution_arn)),
    }
    assert set(codes.values()) <= DENIED, codes
    cloud.client("stepfunctions").stop_execution(executionArn=run.execution_arn)


# -- 2. one oversized field fails the run ----------------------------------------------------------


def _many_long_names(meta: dict) -> bytes:
    extra = {f"{i:04d}/{'x' * 200}": np.zeros(1, np.float32) for i in range(3000)}
    return tensors.encode({**{k: np.zeros_like(v) for k, v in INITIAL.items()}, **extra}, meta)


OVERSIZED = {  # what client-2 writes: (the file from its honest metadata, changes to its item)
    "3,000 long extra tensor names": (_many_long_names, {}),
    "a 300 KB update key": (None, {"update_key": "u" * 300_000}),
    "a 243 KB metrics dict": (None, {"metrics": {f"m{i:05d}": 0.5 for i in range(24_000)}}),
    "a 100 KB metric name": (None, {"metrics": {"n" * 100_000: 0.5}}),
    "a 300 KB timestamp": (None, {"created_at": "t" * 300_000}),
}


@pytest.mark.parametrize("attack", list(OVERSIZED))
def test_2_an_oversized_value_is_rejected_with_a_short_reason_and_the_run_goes_on(cloud, tmp_path, attack):
    make_file, changes = OVERSIZED[attack]
    run = start(cloud, rounds=1, quorum=1, min_participants=1)
    serve(agent(cloud, "client-1", tmp_path))
    receive(cloud, "client-2")
    key = keys.update_key(run.run_id, 1, "client-2")
    item = UpdateItem(run.run_id, 1, "client-2", 30, ObjectRef(key, "0" * 64, 0), {}, utc_now())
    data = (make_file or (lambda meta: tensors.encode({k: v + 1 for k, v in INITIAL.items()}, meta)))(
        item.file_metadata()
    )
    cloud.client("s3").put_object(Bucket=cloud.outputs.bucket, Key=key, Body=data)
    raw = replace(item, update=ObjectRef(key, tensors.sha256_hex(data), len(data))).to_item()
    if "update_key" in changes:
        raw["update"]["key"] = changes["update_key"]
    raw.update({k: v for k, v in changes.items() if k != "update_key"})
    assert record_bytes(raw) < limits.DYNAMODB_ITEM_BYTES  # DynamoDB takes the item
    table_of(cloud).put(raw)
    desc = wait_for_execution(cloud, run.execution_arn)
    assert desc["status"] == "SUCCEEDED", desc.get("cause")
    record = table_of(cloud).get_round(run.run_id, 1)
    [rejection] = record["rejected"]
    assert rejection["client_id"] == "client-2" and len(rejection["reason"]) <= limits.MAX_REASON_CHARS
    assert record_bytes(record) < 10_000  # far inside DynamoDB's 400 KB
    events = cloud.client("stepfunctions").get_execution_history(executionArn=run.execution_arn)["events"]
    payloads = [json.dumps(e, default=str) for e in events]
    assert max(len(p) for p in payloads) < 10_000  # far inside Step Functions' 256 KiB


# -- 3. exactly-once holds only by luck -----------------------------------------------------------


class NoisyFedAvg(FedAvg):
    """FedAvg plus fresh noise on every call (as DP adds): two aggregations never agree."""

    name = "noisy-fedavg"

    def aggregate(self, round_number, global_model, state, updates):
        result = super().aggregate(round_number, global_model, state, updates)
        rng = np.random.default_rng()
        noisy = {k: v + rng.normal(size=v.shape).astype(np.float32) for k, v in result.weights.items()}
        return strategies.Aggregate(noisy, result.state, result.measurements)


def _race(world) -> list[dict]:
    """The last update's stream invocation (delivered three times) and the deadline invocation (twice,
    as a retry would) all at once; the deadline invocations' outputs."""
    start_line = threading.Barrier(5)
    outputs: list[dict] = []

    def stream() -> None:
        start_line.wait()
        world.complete()

    def deadline() -> None:
        start_line.wait()
        outputs.append(world.at_deadline(sleep=lambda s: time.sleep(0.005)))

    threads = [threading.Thread(target=f) for f in (stream, stream, stream, deadline, deadline)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return outputs


def test_3_concurrent_stream_and_deadline_invocations_publish_one_result_with_a_noisy_strategy(monkeypatch):
    """The race that broke the landed protocol, 25 times over: each round must get one result
    object, the one its summary names, and every report must agree."""
    monkeypatch.setitem(strategies.STRATEGIES, NoisyFedAvg.name, NoisyFedAvg)
    for _ in range(25):
        world = make_world(quorum=2, clients=("a", "b", "c"), min_participants=2, strategy=NoisyFedAvg.name)
        for client, value in (("a", 1.0), ("b", 2.0), ("c", 3.0)):
            world.report(client, value, 10)
        outputs = _race(world)
        written = [k for k in world.store.objects if k.startswith(keys.round_prefix(RUN, 1))]
        results = [k for k in written if "/global-" in k]
        assert len(results) == 1, results  # one aggregation wrote; every other invocation left or waited
        summary = world.table.get_round(RUN, 1)
        assert summary["global_model"]["key"] == results[0]
        assert sorted(written) == sorted([results[0], summary["manifest"]["key"]])  # and its manifest, nothing else
        assert summary["global_model"]["sha256"] == tensors.sha256_hex(world.store.get(results[0]))
        reported = [out["global_model"] for _, out in world.reporter.successes] + [o["global_model"] for o in outputs]
        assert len(outputs) == 2 and all(r == summary["global_model"] for r in reported)


# -- 4. a client can steer the model --------------------------------------------------------------


def test_4_a_client_claiming_a_billion_examples_is_weighted_as_its_cap():
    world = make_world(clients=("a", "b", "evil"), bounds=Bounds(max_examples=1000))
    world.report("a", 1.0, 500)
    world.report("b", 1.0, 500)
    world.report("evil", 9.0, 10**9)
    summary = world.complete()
    assert summary.participants == ["a", "b", "evil"] and summary.num_examples == 2000
    np.testing.assert_allclose(world.new_global()["001/d/bias"], (1.0 * 1000 + 9.0 * 1000) / 2000)  # not 9.0
    [clipped] = summary.clipped
    assert (clipped.client_id, clipped.what) == ("evil", "examples 1000000000 -> 1000")


def test_4_with_reject_a_client_over_its_cap_does_not_count():
    world = make_world(clients=("a", "b", "evil"), bounds=Bounds(max_examples=1000, action="reject"))
    for client in ("a", "b"):
        world.report(client, 1.0, 500)
    world.report("evil", 9.0, 10**9)
    summary = world.complete()
    assert summary.participants == ["a", "b"] and "more than max_examples 1000" in summary.rejected[0].reason
    np.testing.assert_allclose(world.new_global()["001/d/bias"], 1.0)


def test_4_an_update_scaled_by_1e30_is_clipped_to_the_norm_bound():
    world = make_world(clients=("a", "b", "evil"), bounds=Bounds(max_update_norm=1.0))
    world.report("a", 0.1, 10)
    world.report("b", 0.1, 10)
    world.report("evil", 1e30, 10)
    summary = world.complete()
    new = world.new_global()
    assert np.abs(np.concatenate([v.ravel() for v in new.values()])).max() < 1.0  # the attacker moved it by <= 1/3
    assert summary.clipped[0].client_id == "evil" and summary.clipped[0].what == "norm 2.828e+30 -> 1"


def test_4_a_reported_accuracy_of_one_with_a_huge_count_does_not_reach_the_target():
    target = Target("test_accuracy", 0.9)
    world = make_world(clients=("a", "b", "evil"), bounds=Bounds(max_examples=1000), target=target)
    world.report("a", 0.1, 1000, metrics={"test_accuracy_before": 0.3})
    world.report("b", 0.1, 1000, metrics={"test_accuracy_before": 0.3})
    world.report("evil", 0.1, 10**9, metrics={"test_accuracy_before": 1.0})
    summary = world.complete()
    [(_, output)] = world.reporter.successes
    assert summary.metrics["test_accuracy_before"] == pytest.approx((0.3 + 0.3 + 1.0) / 3)
    assert output["target_reached"] is False  # the run goes on


def test_4_an_accuracy_above_one_is_refused():
    world = make_world(clients=("a", "b", "evil"))
    for client in ("a", "b"):
        world.report(client, 0.1, 10, metrics={"test_accuracy": 0.3})
    world.report("evil", 0.1, 10, metrics={"test_accuracy": 1e9})
    summary = world.complete()
    assert summary.participants == ["a", "b"] and "must lie in [0, 1]" in summary.rejected[0].reason


# -- 5. FedAvg multiplies in float32 --------------------------------------------------------------


def test_5_finite_inputs_whose_float32_products_overflow_give_a_finite_model():
    """Weights of 1e30 and a count of 1e12: 1e42 overflows float32, not float64. (A norm bound above
    the updates' norms: the arithmetic is under test, not the default bound.)"""
    bounds = Bounds(max_examples=10**12, max_update_norm=1e31)
    world = make_world(clients=("a", "b"), bounds=bounds)
    world.report("a", 1e30, 10**12)
    world.report("b", 1e30, 10**12)
    world.complete()
    new = world.new_global()
    assert all(np.isfinite(v).all() for v in new.values())
    np.testing.assert_allclose(new["001/d/bias"], 1e30, rtol=1e-6)


def test_5_an_aggregate_that_is_not_finite_is_never_published():
    world = make_world(clients=("a", "b"))
    big = {k: np.full(v.shape, 3e38, np.float32) for k, v in GLOBAL.items()}
    world.publish(attempt=1, token="tok-2", model=world.put_model(0, big, "big"))  # the round trains from it
    world.report("a", 3e38, 10)  # global + delta overflows float32
    world.report("b", 3e38, 10)
    assert world.complete() is None  # a round failure, reported by name: the round retries handle it
    [(_, error, cause)] = world.reporter.failures
    assert error == "InvalidAggregate" and "not finite; nothing was published" in cause
    assert issubclass(InvalidAggregate, RoundNotAggregated)
    assert not any(k.startswith(keys.round_prefix(RUN, 1)) for k in world.store.objects)
    assert world.table.get_round(RUN, 1)["status"] == "open"


# -- 6. runs have a length limit ------------------------------------------------------------------


def test_6_two_thousand_rounds_keep_every_record_and_payload_the_same_size():
    """The aggregation path driven directly for 2,000 rounds (two clients, a tiny model): the task
    output that becomes the state machine's payload, the round message and the round record stay
    the same size; the landed protocol grew its payload by about 285 bytes a round."""
    world = make_world(quorum=2, clients=("a", "b"), min_participants=2, rounds=2000)
    output_sizes, message_sizes, record_sizes = [], [], []
    model = world.initial
    for round_number in range(1, 2001):
        if round_number > 1:
            world.publish(round_number, token=f"tok-{round_number}", model=model)
        world.report("a", 0.001, 10, round_number=round_number)
        world.report("b", 0.002, 10, round_number=round_number)
        summary = world.complete(round_number)
        assert summary is not None
        model = summary.global_model
        _, output = world.reporter.successes[-1]
        output_sizes.append(record_bytes(output))
        message_sizes.append(record_bytes(world.publisher.messages[-1][0]))
        record_sizes.append(record_bytes(world.table.get_round(RUN, round_number)))
    for sizes in (output_sizes, message_sizes, record_sizes):
        assert max(sizes) - min(sizes) <= 16, (min(sizes), max(sizes))  # a few digits, never a history
    assert max(output_sizes) < 2_000 and max(record_sizes) < 4_000


def _state_outputs(cloud, execution_arn: str, state: str) -> list[int]:
    events = cloud.client("stepfunctions").get_execution_history(executionArn=execution_arn, maxResults=1000)
    details = [e["stateExitedEventDetails"] for e in events["events"] if "stateExitedEventDetails" in e]
    return [len(d["output"]) for d in details if d["name"] == state]


def test_6_the_state_machines_payload_is_as_small_in_round_10000_as_in_round_1(cloud, tmp_path):
    """Real executions: rounds 1-3 of one run, and rounds 9,998-10,000 of a run of 10,000 rounds."""
    from fedstep.operator.start import launch_run

    early = start(cloud, rounds=3)
    agents = [agent(cloud, c, tmp_path) for c in SHIFTS]
    serve_run(agents, rounds=3)
    assert wait_for_execution(cloud, early.execution_arn)["status"] == "SUCCEEDED"
    record = RunRecord(
        "run-ten-thousand", list(SHIFTS), 10_000, TrainingConfig(), "fedavg", utc_now(), round_timeout_s=120
    )
    weights = tensors.encode(INITIAL)
    outputs, table = cloud.outputs, table_of(cloud)
    clients = {
        "s3": cloud.client("s3"),
        "dynamodb": cloud.client("dynamodb"),
        "stepfunctions": cloud.client("stepfunctions"),
    }
    late = launch_run(record, b"arch", weights, 9_997, keys.INITIAL_VERSION, outputs, **clients)
    serve_run(agents, rounds=3)
    assert wait_for_execution(cloud, late.execution_arn)["status"] == "SUCCEEDED"
    assert [s.round for s in summaries(cloud, late.run_id)] == [9_998, 9_999, 10_000]
    assert table.get_run(late.run_id).rounds == 10_000
    for state in ("Round aggregated", "Prepare round", "Notify clients and wait for updates"):
        # from round 2 on: round 1 starts without a previous round in brief
        first = _state_outputs(cloud, early.execution_arn, state)[1:]
        last = _state_outputs(cloud, late.execution_arn, state)[1:]
        assert max(first) - min(first) <= 8, (state, first)  # flat within a run
        run_id_longer = len(late.run_id) - len(early.run_id)
        assert abs(max(last) - max(first)) <= 8 * (abs(run_id_longer) + 4), (state, first, last)


# -- 7. the aggregation function cannot hold the models the code accepts --------------------------


def test_7_an_oversized_update_is_refused_before_it_is_downloaded():
    world = make_world(clients=("a", "b", "big", "liar"))
    world.report("a", 1.0, 10)
    world.report("b", 1.0, 10)
    for client in ("big", "liar"):  # a 20 MB file for a model of 8 parameters
        item = world.report(client, 1.0, 10)
        key = item.update.key
        data = world.store.get(key) + b"\0" * 20_000_000
        world.store.put(key, data)
        world.store.bytes_read.pop(key, None)
        claimed = len(data) if client == "big" else item.update.bytes  # the liar claims the honest size
        world.table.put(
            {**item.to_item(), "update": {"key": key, "sha256": tensors.sha256_hex(data), "bytes": claimed}}
        )
    summary = world.complete()
    assert summary.participants == ["a", "b"]
    reasons = {r.client_id: r.reason for r in summary.rejected}
    assert "over the limit of" in reasons["big"] and "the item says" in reasons["liar"]
    big, liar = (world.store.bytes_read.get(keys.update_key(RUN, 1, c), 0) for c in ("big", "liar"))
    assert big == 0 and liar < 70_000  # nothing, or no more than the header read


def test_7_the_function_is_sized_to_what_it_holds_and_a_model_no_function_can_hold_is_sliced():
    assert aggregation_memory_mb(512) >= 384 + 3 * 512  # about 3x one model (bench/aggregation_memory.py)
    assert aggregation_memory_mb(MAX_MODEL_MB) <= 10_240
    larger = DeploymentConfig.from_dict({"max_model_mb": MAX_MODEL_MB + 1, "trial": True})
    assert larger.slice_bytes == 512 * 2**20  # aggregated by slices of 512 MiB (tests/test_sliced.py)
    assert aggregation_memory_mb(larger.function_model_mb) < aggregation_memory_mb(MAX_MODEL_MB) <= 10_240
    with pytest.raises(ConfigError, match="one function holds at most 10240 MB"):
        DeploymentConfig.from_dict({"max_model_mb": 4096, "slice_mb": MAX_MODEL_MB + 1})


def test_7_a_function_error_at_the_deadline_is_retried_before_the_run_fails(cloud, tmp_path, monkeypatch):
    from lambdas import aggregate

    original, failures = aggregate.at_round_deadline, []

    def crash_once(*args, **kwargs):
        if not failures:
            failures.append(1)
            raise ConnectionError("simulated crash of the deadline invocation")
        return original(*args, **kwargs)

    monkeypatch.setattr(aggregate, "at_round_deadline", crash_once)
    run = start(cloud, rounds=1, round_timeout_s=3, quorum=1, min_participants=1)
    serve(agent(cloud, "client-1", tmp_path))  # client-2 never reports: the round ends at its deadline
    desc = wait_for_execution(cloud, run.execution_arn, timeout_s=90)
    assert failures and desc["status"] == "SUCCEEDED", desc.get("cause")
    events = cloud.client("stepfunctions").get_execution_history(executionArn=run.execution_arn)["events"]
    assert [e["type"] for e in events].count("LambdaFunctionFailed") + [e["type"] for e in events].count(
        "TaskFailed"
    ) >= 1


# -- 8. a rejected client can never recover within a round's retries ------------------------------


class BrokenOnceTrainer(ShiftTrainer):
    """Its first update is NaN (a diverged local training); later ones are fine."""

    def __init__(self, shift: float, n: int) -> None:
        super().__init__(shift, n)
        self.calls = 0

    def fit(self, architecture, weights, training):
        self.calls += 1
        if self.calls == 1:
            return TrainResult({k: np.full_like(v, np.nan) for k, v in weights.items()}, self.n, {})
        return super().fit(architecture, weights, training)


def test_8_a_rejected_client_learns_why_and_trains_again_on_the_retried_round(cloud, tmp_path, caplog):
    run = start(cloud, rounds=1, quorum=2, round_retries=1)
    first = agent(cloud, "client-1", tmp_path)
    second = agent(cloud, "client-2", tmp_path, BrokenOnceTrainer(*SHIFTS["client-2"]))
    serve(first)
    serve(second)  # NaN: rejected, 1 of 2 valid < quorum 2: the round is retried
    with caplog.at_level(logging.WARNING, logger="fedstep.client"):
        serve(first, expect=Outcome.ALREADY_SERVED)  # its update stands
        serve(second)  # told, it trains again and replaces its update
    assert "the server rejected this client's update for round 1" in caplog.text and "non-finite" in caplog.text
    desc = wait_for_execution(cloud, run.execution_arn)
    assert desc["status"] == "SUCCEEDED" and second.trainer.calls == 2
    [summary] = summaries(cloud, run.run_id)
    assert summary.participants == ["client-1", "client-2"] and summary.attempt == 1
    np.testing.assert_allclose(tensors.decode(global_after(cloud, run.run_id, 1))["001/d/bias"], 2.5)
    status = _fedstep(cloud, "status", run.run_id)
    assert "last rejection per client:" in status and "client-2: round 1: tensor" in status, status
    clients = json.loads(_fedstep(cloud, "clients", "--json"))
    assert {c["client_id"]: c["last_rejection"] for c in clients}["client-2"].startswith(f"{run.run_id} round 1:")


def _fedstep(cloud, *args: str) -> str:
    result = fedstep(cloud, *args, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout


# -- 9. small holes -------------------------------------------------------------------------------


def test_9_a_round_from_a_single_participant_is_not_published_unless_the_run_allows_it():
    world = make_world(clients=("a", "b"), min_participants=2)
    world.report("a", 1.0, 10)
    with pytest.raises(TooFewParticipants):
        world.at_deadline()
    assert not any(k.startswith(keys.round_prefix(RUN, 1)) for k in world.store.objects)


def test_9_undeliverable_round_messages_go_to_a_dead_letter_queue(cloud):
    sns = cloud.client("sns")
    undelivered = cloud.client("sqs").get_queue_url(QueueName="fedstep-undelivered-messages")["QueueUrl"]
    arn = cloud.client("sqs").get_queue_attributes(QueueUrl=undelivered, AttributeNames=["QueueArn"])["Attributes"]
    subscriptions = sns.list_subscriptions_by_topic(TopicArn=cloud.outputs.topic_arn)["Subscriptions"]
    assert len(subscriptions) == len(cloud.outputs.queues)
    for sub in subscriptions:
        attributes = sns.get_subscription_attributes(SubscriptionArn=sub["SubscriptionArn"])["Attributes"]
        assert json.loads(attributes["RedrivePolicy"]) == {"deadLetterTargetArn": arn["QueueArn"]}


def test_9_a_client_may_write_only_under_its_own_prefix_whatever_the_wildcard_matches():
    own = keys.client_update_key_pattern("client-1")
    import fnmatch

    assert fnmatch.fnmatchcase(keys.update_key("run-1", 1, "client-1"), own)
    for key in (keys.update_key("run-1", 1, "client-10"), "updates/run-1/00001/client-1.safetensors"):
        assert not fnmatch.fnmatchcase(key, own), key


def test_9_clients_without_a_principal_are_warned_of_and_the_execution_log_is_encrypted():
    from aws_cdk.assertions import Template

    from infra.config import ClientConfig
    from infra.synth import build_app

    app = build_app(DeploymentConfig(clients=(ClientConfig("org-a"),), trial=True), None, bundle=False)
    stack = app.node.find_child("fedstep")
    template = Template.from_stack(stack).to_json()
    warnings = [m.entry.data for a in app.synth().stacks for m in a.messages if m.level.name == "WARNING"]
    assert any("client org-a has no principal_arn" in str(w) for w in warnings)
    groups = [r for r in template["Resources"].values() if r["Type"] == "AWS::Logs::LogGroup"]
    assert groups and all("KmsKeyId" in g["Properties"] for g in groups)


def test_the_model_the_stack_holds_bounds_what_a_run_may_start_with(cloud):
    from fedstep.core.errors import FedstepError
    from fedstep.operator.settings import RunSettings
    from fedstep.operator.start import start_run

    small = replace(cloud.outputs, max_model_bytes=100)
    with pytest.raises(FedstepError, match="the stack aggregates models of at most 100 bytes"):
        start_run(
            b"arch",
            INITIAL,
            RunSettings(),
            small,
            s3=cloud.client("s3"),
            dynamodb=cloud.client("dynamodb"),
            stepfunctions=cloud.client("stepfunctions"),
            run_id="too-big",
        )
    assert table_of(cloud).get_run("too-big") is None  # nothing was written


def test_2_a_heartbeat_cannot_keep_a_client_online_forever():
    """The attack: the client's own heartbeat claims an interval of 10^9 s, or a last beat in the
    future, so that `fedstep clients` shows it online long after its agent stopped."""
    from datetime import UTC, datetime, timedelta

    from fedstep.core.schemas import Heartbeat
    from fedstep.render.clients import statuses

    now = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
    day_ago, next_year = ((now + timedelta(days=d)).isoformat() for d in (-1, 365))
    beats = {
        "long-interval": Heartbeat("long-interval", "0.1.0", "idle", day_ago, 10**9, {}).to_item(),
        "from-the-future": Heartbeat("from-the-future", "0.1.0", "idle", next_year, 60, {}).to_item(),
    }
    rows = {r.client_id: r for r in statuses(list(beats), beats, now)}
    assert {r.status for r in rows.values()} == {"invalid"}
    assert "'interval_s' must be from 1 to 3600" in rows["long-interval"].activity
    assert "is in the future" in rows["from-the-future"].activity


# -- issue 20: 1. stateful strategies write their state under the aggregation function's role ------


def test_a_stateful_strategy_runs_under_the_aggregation_functions_own_role(cloud, tmp_path):
    """The aggregation function's role could write global models and plans but not strategy state: on
    AWS fedadam (and fedavgm, fedyogi, adaptive clipping) failed with AccessDenied at the state's write.
    The local cloud now runs the function under its role with IAM enforced: the run completes, and the
    state of each round was written by the function's role session."""
    from fedstep.local import gaps

    run = start(cloud, rounds=2, strategy="fedadam")
    serve_run([agent(cloud, c, tmp_path) for c in SHIFTS], rounds=2)
    desc = wait_for_execution(cloud, run.execution_arn)
    assert desc["status"] == "SUCCEEDED", desc.get("cause")
    states = [s.state.key for s in summaries(cloud, run.run_id)]
    assert len(states) == 2 and all("/state-" in key for key in states)
    writes = {
        d.resource.rsplit(":::", 1)[1].split("/", 1)[1]: d.principal
        for d in gaps.IAM_ENFORCEMENT.decisions
        if d.allowed and d.action == "s3:PutObject" and "/state-" in d.resource
    }
    assert all("assumed-role/fedstep-AggregationRole" in writes[key] for key in states), writes


# -- issue 20: 7. a client whose upload fails once, or whose agent is killed, misses the round -----


def test_an_agent_whose_upload_fails_once_serves_the_round_on_its_next_poll(cloud, tmp_path):
    """The fault: the network drops the update's upload once. The landed agent left the message
    invisible for the queue's 900 s, so the round went on without this client. It must be released at
    once, and the agent's very next poll serves the round."""
    run = start(cloud, rounds=1)
    flaky, failures = agent(cloud, "client-1", tmp_path), []

    def network_down_once(**kwargs):
        if not failures:
            failures.append(kwargs["model"].name)
            raise EndpointConnectionError(endpoint_url=cloud.endpoint)

    flaky.s3.meta.events.register("before-call.s3.PutObject", network_down_once)
    serve(flaky, expect=Outcome.KEPT)
    assert failures == ["PutObject"]
    assert flaky.poll_once() is Outcome.SERVED  # its next poll (a 1 s long poll), not 900 s later
    serve(agent(cloud, "client-2", tmp_path))
    assert wait_for_execution(cloud, run.execution_arn)["status"] == "SUCCEEDED"
    [summary] = summaries(cloud, run.run_id)
    assert summary.participants == ["client-1", "client-2"] and summary.attempt == 0


class Killed(BaseException):
    """What SIGKILL (or a power cut) does to an agent: it stops where it is. Nothing is released or
    deleted, and nothing renews the message's visibility any more."""


class KilledWhileTraining(ShiftTrainer):
    def fit(self, architecture, weights, training):
        raise Killed


def test_an_agent_killed_while_training_lets_a_restarted_agent_serve_the_round(cloud, tmp_path):
    """The fault: the agent receives the round and dies mid-training. The message must come back
    within the agent's short visibility timeout (2 s here, 60 s by default), not the queue's 900 s,
    and the restarted agent serves the round."""
    run = start(cloud, rounds=1)
    short = {"visibility_timeout_s": 2, "visibility_extend_s": 1}
    doomed = Agent(agent_config(cloud, "client-1", tmp_path, **short), KilledWhileTraining(*SHIFTS["client-1"]))
    with pytest.raises(Killed):
        serve(doomed)
    killed_at = time.monotonic()
    restarted = Agent(agent_config(cloud, "client-1", tmp_path, **short), ShiftTrainer(*SHIFTS["client-1"]))
    while (outcome := restarted.poll_once()) is None:
        assert time.monotonic() - killed_at < 60, "the killed agent's round did not come back"
    assert outcome is Outcome.SERVED
    serve(agent(cloud, "client-2", tmp_path))
    assert wait_for_execution(cloud, run.execution_arn)["status"] == "SUCCEEDED"
    [summary] = summaries(cloud, run.run_id)
    assert summary.participants == ["client-1", "client-2"] and summary.attempt == 0


# -- issue 20: 8. two runs at once on one stack: one run's rejection fails the other's recovery ----


class NaNTwiceTrainer(BrokenOnceTrainer):
    """Its first two updates are NaN (one in each of two runs); later ones are fine."""

    def fit(self, architecture, weights, training):
        if self.calls < 2:
            self.calls += 1
            return TrainResult({k: np.full_like(v, np.nan) for k, v in weights.items()}, self.n, {})
        self.calls += 1
        return ShiftTrainer.fit(self, architecture, weights, training)


def _next_outcome(a) -> Outcome:
    """Poll until a message arrives; handle it; its outcome (whatever it is)."""
    for _ in range(30):
        if (outcome := a.poll_once()) is not None:
            gaps.wait_for_stream_batches()
            return outcome
    raise AssertionError(f"no message for {a.config.client_id}")


def test_two_runs_at_once_each_recover_their_rejected_client_on_the_retried_round(cloud, tmp_path):
    """The attack (or just bad luck): client-2's update is rejected in two runs at once. With one
    feedback item per client, run B's rejection overwrote run A's, so on A's retried round the agent
    did not see its A update was rejected, re-reported it instead of training again, and A failed
    QuorumNotMet while B recovered. With feedback kept per run, both runs recover."""
    runs = [start(cloud, rounds=1, quorum=2, round_retries=1, round_timeout_s=60) for _ in range(2)]
    first = agent(cloud, "client-1", tmp_path)
    second = agent(cloud, "client-2", tmp_path, NaNTwiceTrainer(*SHIFTS["client-2"]))
    assert [_next_outcome(first) for _ in runs] == [Outcome.SERVED] * 2
    assert [_next_outcome(second) for _ in runs] == [Outcome.SERVED] * 2  # NaN twice: both rounds retried
    assert [_next_outcome(first) for _ in runs] == [Outcome.ALREADY_SERVED] * 2  # its updates stand
    retried = [_next_outcome(second) for _ in runs]
    for run in runs:
        desc = wait_for_execution(cloud, run.execution_arn, timeout_s=120)
        assert desc["status"] == "SUCCEEDED", (run.run_id, desc.get("error"), desc.get("cause"))
        [summary] = summaries(cloud, run.run_id)
        assert summary.participants == ["client-1", "client-2"] and summary.attempt == 1
    assert retried == [Outcome.SERVED] * 2 and second.trainer.calls == 4  # trained again in each run
    table = table_of(cloud)
    for run in runs:  # `fedstep status <run>` shows each run's own rejection
        view = load_run(run.run_id, cloud.outputs, table, cloud.client("stepfunctions"))
        told = view.last_rejections["client-2"]
        assert (told.run_id, told.round) == (run.run_id, 1) and "non-finite" in told.reason
    latest = Feedback.parse(table.get_feedback(["client-2"])["client-2"])  # `fedstep clients`: the latest
    assert latest.run_id in {r.run_id for r in runs} and "non-finite" in latest.reason


def test_a_clients_role_may_read_its_feedback_in_every_run_but_write_none(cloud):
    """The per-run feedback items stay in the server's partition `FEEDBACK#<client>`: the client's role
    may get them (`dynamodb:LeadingKeys`), not put them, and may not get another client's."""
    policy = deployed_policy(cloud, "client-1")
    table_arn = next(s["Resource"] for s in policy if s["Sid"] == "ReadOwnFeedback")
    forged = Feedback("client-1", "run-x", 1, "0" * 64, "forged: train again", "t")
    for item in forged.to_items():  # the run's item and the latest
        assert evaluate(policy, "dynamodb:PutItem", table_arn, put_item_context(item)) == IMPLICIT_DENY, item["sk"]

    def get(key: dict[str, str]) -> str:
        return evaluate(policy, "dynamodb:GetItem", table_arn, {"dynamodb:LeadingKeys": [key[keys.PK]]})

    assert get(keys.rejection_item_key("client-1", "run-x")) == ALLOW
    assert get(keys.last_rejection_item_key("client-1")) == ALLOW
    assert get(keys.rejection_item_key("client-2", "run-x")) == IMPLICIT_DENY


# -- issue 20: 9. the agent trusts a round message's numbers, times and sizes ----------------------


def _round_body(**changes: Any) -> str:
    ref = ObjectRef("runs/run-x/model.keras", "0" * 64, 10)
    body = RoundMessage("run-x", 1, 0, ref, utc_now(), model=ref).to_dict()
    for name, value in changes.items():
        if name in ("epochs", "batch_size"):
            body["training"][name] = value
        else:
            body[name] = value
    return json.dumps(body)


class RecordingTrainer(ShiftTrainer):
    def __init__(self) -> None:
        super().__init__(1.0, 10)
        self.calls = 0

    def fit(self, architecture, weights, training):
        self.calls += 1
        return super().fit(architecture, weights, training)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"epochs": 10**9}, "field 'epochs' must be from 1 to 1000, got 1000000000"),
        ({"batch_size": 10**12}, "field 'batch_size' must be from 1 to 65536, got 1000000000000"),
        ({"deadline_s": 10**15}, "field 'deadline_s' must be from 1 to 31536000, got 1000000000000000"),
        ({"issued_at": "whenever"}, "field 'issued_at' must be an ISO 8601 time such as 2026-11-30T12:00:00Z"),
    ],
    ids=["epochs 1e9", "batch 1e12", "deadline 1e15", "issued_at unparseable"],
)
def test_an_agent_refuses_a_round_message_whose_training_or_deadline_is_out_of_bounds(
    cloud, tmp_path, caplog, change, reason
):
    """The landed agent trained 10^9 epochs, batches of 10^12, served a round for 10^15 s, and never
    found a round with an unparseable `issued_at` past its deadline. It must refuse the round with the
    reason (the message goes to the client's dead-letter queue) and never train it."""
    cloud.client("sqs").send_message(QueueUrl=cloud.outputs.queues["client-1"], MessageBody=_round_body(**change))
    trainer = RecordingTrainer()
    with caplog.at_level(logging.ERROR, logger="fedstep.client"):
        serve(agent(cloud, "client-1", tmp_path, trainer), expect=Outcome.REJECTED)
    assert trainer.calls == 0
    assert "goes to the dead-letter queue: " in caplog.text and reason in caplog.text, caplog.text


def test_fedstep_start_refuses_a_run_that_would_send_such_a_round():
    from fedstep.core.errors import FedstepError
    from fedstep.operator.settings import RunSettings

    for settings, reason in (
        (RunSettings(epochs=10**9), "epochs must be a whole number from 1 to 1000"),
        (RunSettings(batch_size=10**12), "batch_size must be a whole number from 1 to 65536"),
        (RunSettings(round_timeout_s=10**15), "round_timeout_s must be 1 s to 1 year"),
    ):
        with pytest.raises(FedstepError, match=reason):
            settings.validated()


def test_an_agent_reads_no_more_than_a_references_size(cloud, tmp_path, caplog):
    """The attack: a round message names a 10-byte architecture whose object holds 20 MB (the finding's
    300 MB, smaller). The landed agent downloaded all of it before the sha256 check failed. It must ask
    for at most 10 bytes (a ranged GET) and refuse the object as larger than its reference."""
    s3 = cloud.client("s3")
    big = b"\x01" * 20_000_000
    key = keys.model_key("run-big")
    s3.put_object(Bucket=cloud.outputs.bucket, Key=key, Body=big)
    ref = ObjectRef(key, tensors.sha256_hex(big[:10]), 10)  # the sha256 of the first 10 bytes
    body = RoundMessage("run-big", 1, 0, ref, utc_now(), model=ref).to_dict()
    cloud.client("sqs").send_message(QueueUrl=cloud.outputs.queues["client-1"], MessageBody=json.dumps(body))
    a, received = agent(cloud, "client-1", tmp_path, RecordingTrainer()), []
    a.s3.meta.events.register(
        "after-call.s3.GetObject", lambda parsed, **kwargs: received.append(parsed.get("ContentLength", 0))
    )
    with caplog.at_level(logging.ERROR, logger="fedstep.client"):
        serve(a, expect=Outcome.KEPT)
    assert sum(received) <= 10 and a.trainer.calls == 0
    assert f"s3://{cloud.outputs.bucket}/{key} is 20000000 bytes; the message says 10 bytes: refused unread" in (
        caplog.text
    )


# -- issue 20: 9. a client's strings reach the operator's terminal ---------------------------------

TERMINAL_ATTACK = "\x1b[2J\x1b]0;pwned\x07"
"""Clear the operator's screen, then retitle the window (OSC 0, ended by BEL)."""


def _printable(text: str) -> bool:
    return all(c == "\n" or c.isprintable() for c in text)


def test_20_9_control_sequences_in_a_heartbeat_and_a_decline_are_never_printed(cloud, tmp_path):
    """The attack: client-2 writes, in its own partition, a heartbeat whose version and hardware carry
    terminal control sequences, and declines a round with a reason that carries them; the operator
    runs `fedstep clients`, `fedstep status` and `fedstep report`. Nothing reaches the terminal raw."""
    from fedstep.core.schemas import DeclineItem, Heartbeat

    attacker = cloud.client("dynamodb", "client-2")  # its own role: all an attacking organisation holds
    table = DynamoRoundTable(cloud.outputs.table, attacker)
    run = start(cloud, rounds=1, quorum=1, min_participants=1)
    published_round(cloud, run.run_id)
    table.put(DeclineItem(run.run_id, 1, "client-2", f"budget {TERMINAL_ATTACK}", utc_now()).to_item())
    serve(agent(cloud, "client-1", tmp_path))
    assert wait_for_execution(cloud, run.execution_arn)["status"] == "SUCCEEDED"
    hardware = {"os": f"linux{TERMINAL_ATTACK}", "arch": "x86_64", "cpus": 2, "gpus": [TERMINAL_ATTACK]}
    table.put(Heartbeat("client-2", f"0.1{TERMINAL_ATTACK}", "idle", utc_now(), 60, hardware).to_item())

    clients = _fedstep(cloud, "clients")
    status = _fedstep(cloud, "status", run.run_id, "--clients")
    report = _fedstep(cloud, "report", run.run_id, "-o", str(tmp_path / "report"))
    page = (tmp_path / "report" / "report.html").read_text()
    for text in (clients, status, report, page):
        assert _printable(text), repr(text)
    assert "0.1\\x1b[2J\\x1b]0;pwned\\x07" in clients and "linux\\x1b[2J" in clients
    assert "client-2 declined: budget \\x1b[2J\\x1b]0;pwned\\x07" in status


# -- issue 20: 9. the key serves whoever asks, and every client role trusts the account -------------

ACCOUNT = "123456789012"
"""The local cloud's account (moto's default)."""
OTHER_ACCOUNT = "999999999999"


def deployed_key(cloud) -> tuple[str, list[dict[str, Any]]]:
    """The stack key's ARN and its key policy's statements, as deployed."""
    kms = cloud.client("kms")
    arn = kms.describe_key(KeyId="alias/fedstep")["KeyMetadata"]["Arn"]
    return arn, json.loads(kms.get_key_policy(KeyId=arn, PolicyName="default")["Policy"])["Statement"]


def test_20_9_sns_and_cloudwatch_cannot_be_made_to_use_the_stack_key_for_anyone_elses_topic_or_alarm(cloud):
    """The confused deputy: another account's topic delivering to a queue encrypted with our key (or
    its alarm publishing to a topic encrypted with it) makes SNS (CloudWatch) call KMS on our key. The
    deployed key policy, evaluated for each service's request: only our topic and our alarms pass."""
    key_arn, statements = deployed_key(cloud)
    sns, cloudwatch = {"Service": "sns.amazonaws.com"}, {"Service": "cloudwatch.amazonaws.com"}

    def as_(principal: dict[str, str], account: str, source: str, action: str = "kms:GenerateDataKey") -> str:
        context = {"aws:SourceAccount": account, "aws:SourceArn": source}
        return evaluate(statements, action, key_arn, context, principal=principal)

    ours = cloud.outputs.topic_arn
    theirs = ours.replace(ACCOUNT, OTHER_ACCOUNT)
    assert as_(sns, ACCOUNT, ours) == ALLOW and as_(sns, ACCOUNT, ours, "kms:Decrypt") == ALLOW
    assert as_(sns, OTHER_ACCOUNT, theirs) == IMPLICIT_DENY
    assert as_(sns, ACCOUNT, ours.rsplit(":", 1)[0] + ":another-topic") == IMPLICIT_DENY
    assert evaluate(statements, "kms:Decrypt", key_arn, {}, principal=sns) == IMPLICIT_DENY
    alarm = f"arn:aws:cloudwatch:us-east-1:{ACCOUNT}:alarm:fedstep-executions-failed"
    assert as_(cloudwatch, ACCOUNT, alarm) == ALLOW
    assert as_(cloudwatch, OTHER_ACCOUNT, alarm.replace(ACCOUNT, OTHER_ACCOUNT)) == IMPLICIT_DENY
    assert as_(cloudwatch, ACCOUNT, alarm.replace("fedstep-", "another-project-")) == IMPLICIT_DENY


def test_20_9_a_clients_role_can_use_the_stack_key_only_through_s3_and_sqs_in_the_stacks_region(cloud):
    """With its own credentials a client calls KMS directly (to decrypt what the key protects outside
    S3 and SQS); the deployed role policy, evaluated: only requests S3 or SQS make for it pass."""
    key_arn, _ = deployed_key(cloud)
    policy = deployed_policy(cloud, "client-1")
    for action in ("kms:Decrypt", "kms:GenerateDataKey"):
        assert evaluate(policy, action, key_arn, {}) == IMPLICIT_DENY  # direct
        for service in ("s3.us-east-1.amazonaws.com", "sqs.us-east-1.amazonaws.com"):
            assert evaluate(policy, action, key_arn, {"kms:ViaService": service}) == ALLOW
        for service in (
            "dynamodb.us-east-1.amazonaws.com",
            "s3.eu-west-1.amazonaws.com",
            "logs.us-east-1.amazonaws.com",
        ):
            assert evaluate(policy, action, key_arn, {"kms:ViaService": service}) == IMPLICIT_DENY


def test_20_9_no_client_role_trusts_the_account_root_unless_the_deployment_is_a_trial():
    """The attack: any principal of the deploying account allowed sts:AssumeRole acts as a client
    whose role trusts the account root (the old default). A config without principals is refused,
    naming the fix; with principals, another principal of the account cannot assume the role."""
    from aws_cdk.assertions import Template

    from infra.config import ClientConfig
    from infra.synth import build_app

    with pytest.raises(ConfigError, match=r"client\(s\) org-a have no principal_arn.*\"trial\": true"):
        DeploymentConfig.from_dict({"clients": [{"id": "org-a"}]})
    partner = "arn:aws:iam::111122223333:role/fl-agent"
    app = build_app(DeploymentConfig(clients=(ClientConfig("org-a", partner),)), None, bundle=False)
    [group] = [c for c in app.node.find_child("fedstep").node.children if c.node.id == "Clients1"]
    [role] = Template.from_stack(group).find_resources("AWS::IAM::Role").values()
    trust = role["Properties"]["AssumeRolePolicyDocument"]["Statement"]
    role_arn = f"arn:aws:iam::{ACCOUNT}:role/org-a"
    assert evaluate(trust, "sts:AssumeRole", role_arn, {}, principal={"AWS": partner}) == ALLOW
    insider = f"arn:aws:iam::{ACCOUNT}:role/someone-else"
    assert evaluate(trust, "sts:AssumeRole", role_arn, {}, principal={"AWS": insider}) == IMPLICIT_DENY
    assert evaluate(trust, "sts:AssumeRole", role_arn, {}, principal={"AWS": f"arn:aws:iam::{ACCOUNT}:root"}) == (
        IMPLICIT_DENY
    )


# -- issue 20: 6. runs stopped near round 1,530 ------------------------------------------------------


def _history(cloud, execution_arn: str) -> list[dict[str, Any]]:
    sfn = cloud.client("stepfunctions")
    pages = sfn.get_paginator("get_execution_history").paginate(executionArn=execution_arn)
    return [e for page in pages for e in page["events"]]


def _rounds_of(events: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """The history cut where each round begins ("Prepare round" entered); the first part is the
    execution's start, the last round runs to the execution's end."""
    parts: list[list[dict[str, Any]]] = [[]]
    for event in events:
        if event.get("stateEnteredEventDetails", {}).get("name") == "Prepare round":
            parts.append([])
        parts[-1].append(event)
    return parts


def _withhold(cloud, client_id: str) -> None:
    """The client takes its round message and sends nothing."""
    message = receive(cloud, client_id)
    cloud.client("sqs").delete_message(QueueUrl=cloud.outputs.queues[client_id], ReceiptHandle=message["ReceiptHandle"])


def _attempt_published(cloud, run_id: str, round_number: int, attempt: int, timeout_s: float = 60) -> None:
    table = table_of(cloud)
    deadline = time.monotonic() + timeout_s
    while (table.get_round(run_id, round_number) or {}).get("attempt") != attempt:
        assert time.monotonic() < deadline, f"round {round_number} attempt {attempt} was not published"
        time.sleep(0.2)


def test_20_6_a_run_never_outgrows_its_executions_history_and_start_says_how_to_go_beyond_it(cloud, tmp_path):
    """The deployed definition's worst case is fedstep's budget; a real execution's rounds on each path
    (every update in; aggregated at the deadline; retried after missing its quorum) stay within it;
    and a continuation that would outgrow one execution is refused, naming the rounds that fit."""
    from fedstep.core.errors import FedstepError
    from fedstep.core.execution_history import FEDSTEP, HISTORY_EVENTS, fedstep_budget
    from fedstep.operator.start import resume_run

    sfn = cloud.client("stepfunctions")
    deployed = json.loads(sfn.describe_state_machine(stateMachineArn=cloud.outputs.state_machine_arn)["definition"])
    assert fedstep_budget(deployed, secure=False) == FEDSTEP

    run = start(cloud, rounds=3, round_timeout_s=5, quorum=1, min_participants=1, round_retries=1)
    first, second = (agent(cloud, c, tmp_path) for c in SHIFTS)
    serve(first)  # round 1: every update in
    serve(second)
    serve(first)  # round 2: client-2 sends nothing; aggregated at the deadline
    _withhold(cloud, "client-2")
    _withhold(cloud, "client-1")  # round 3: nothing by the deadline (QuorumNotMet), published again
    _withhold(cloud, "client-2")
    _attempt_published(cloud, run.run_id, 3, 1)
    serve(first)
    serve(second)
    assert wait_for_execution(cloud, run.execution_arn, timeout_s=60)["status"] == "SUCCEEDED"
    events = _history(cloud, run.execution_arn)
    _, *rounds = _rounds_of(events)
    entered = [e["stateEnteredEventDetails"]["name"] for e in events if "stateEnteredEventDetails" in e]
    assert {"Aggregate at deadline", "Retry round"} <= set(entered)  # every path of a round was taken
    counted = [len(r) for r in rounds]  # 18, 23 and 33 + 15 of the run's end, on the local cloud
    assert len(rounds) == 3 and min(counted) >= 18, counted
    for part in rounds[:-1]:  # each within a round's worst case at the run's round_retries
        assert len(part) <= FEDSTEP.per_round(1), counted
    assert len(rounds[-1]) <= FEDSTEP.per_round(1) + FEDSTEP.fixed, counted
    assert len(events) <= 3 * FEDSTEP.per_round(1) + FEDSTEP.fixed < HISTORY_EVENTS

    most = FEDSTEP.rounds_per_execution(1)
    with pytest.raises(FedstepError, match=rf"{most + 1} rounds do not fit one Step Functions execution") as info:
        resume_run(
            run.run_id,
            cloud.outputs,
            s3=cloud.client("s3"),
            dynamodb=cloud.client("dynamodb"),
            stepfunctions=sfn,
            rounds=3 + most + 1,
        )
    assert f"resume run {run.run_id} with --rounds {3 + most}, then resume that continuation" in str(info.value)
    assert table_of(cloud).get_run(f"{run.run_id}-r1") is None  # nothing was started


# -- issue 20: 2. one client can end any run with a huge but finite delta -------------------------

HUGE_DELTAS = {
    "fedavg": 3e38,
    "fedprox": 3e38,
    "fedavgm": 3e38,
    "fedadam": 1e30,
    "fedyogi": 1e20,
    "fedadagrad": 1e20,
    "trimmed_mean": 3e38,
    "multikrum": 3e38,
}
"""The delta that ended a run of each strategy with its default settings (issue 20, finding 2)."""


@pytest.mark.parametrize(("strategy", "huge"), sorted(HUGE_DELTAS.items()))
def test_a_client_sending_a_huge_delta_every_round_cannot_end_a_run(strategy, huge):
    """The attack: every round, one of three clients sends a finite delta of `huge` in every weight,
    with the run's default settings (no `max_update_norm`). The default bound (10 x the larger of the
    initial model's norm and sqrt(parameters)) clips it, and all five rounds are aggregated."""
    world = make_world(quorum=2, clients=("a", "b", "evil"), min_participants=2, strategy=strategy, rounds=5)
    bound = 10 * np.sqrt(sum(v.size for v in GLOBAL.values()))  # GLOBAL is all zeros: the floor
    for round_number in range(1, 6):
        if round_number > 1:
            world.next_round(round_number)
        world.report("a", 0.01, 10, round_number=round_number)
        world.report("b", 0.02, 10, round_number=round_number)
        world.report("evil", huge, 10, round_number=round_number)
        summary = world.complete(round_number)
        assert summary is not None, world.reporter.failures
        assert [c.client_id for c in summary.clipped] == ["evil"]
        assert summary.clipped[0].what.endswith(f"-> {bound:.4g} (default bound)")
        assert summary.norm_bound == pytest.approx(bound)
        assert all(np.isfinite(v).all() for v in world.new_global(round_number).values())
    assert not world.reporter.failures


def test_the_default_norm_bound_leaves_honest_updates_alone_and_follows_the_initial_model():
    """An all-zeros model takes updates up to 10 x sqrt(parameters); a larger initial model, 10 x its
    own norm, carried to later rounds (not the round's own model, which an attacker could grow)."""
    from fedstep.core.influence import default_norm_bound

    assert default_norm_bound(0.0, 4810) == pytest.approx(693.5, abs=0.05)  # the demo's MLP
    assert default_norm_bound(1e4, 4810) == 1e5
    assert default_norm_bound(float("nan"), 100) == 100.0
    world = make_world(clients=("a", "b"), rounds=3)
    big = {k: np.full(v.shape, 100.0, np.float32) for k, v in GLOBAL.items()}
    world.publish(attempt=1, token="tok-2", model=world.put_model(0, big, "big"))  # the run starts from `big`
    world.report("a", 500.0, 10)
    world.report("b", 700.0, 10)  # norm 1980, under 10 x 282.8
    first = world.complete()
    assert first.clipped == [] and first.norm_bound == pytest.approx(10 * np.sqrt(8) * 100, rel=1e-6)
    world.next_round(2)
    world.report("a", 0.0, 10, round_number=2)
    world.report("b", 5000.0, 10, round_number=2)
    second = world.complete(2)
    assert second.norm_bound == first.norm_bound  # not 10 x the norm of round 1's model
    assert [c.client_id for c in second.clipped] == ["b"]


class StateOverflow(FedAvg):
    """FedAvg whose state overflows: finite weights, a moment tensor of inf."""

    name = "state-overflow"

    def aggregate(self, round_number, global_model, state, updates):
        result = super().aggregate(round_number, global_model, state, updates)
        moment = {"m/x": np.full(3, np.inf, np.float32)}
        return strategies.Aggregate(result.weights, strategies.ServerState(moment), result.measurements)


def test_an_aggregate_or_state_that_is_not_finite_writes_nothing_and_fails_only_the_round(monkeypatch):
    """Before any write, the weights and the state are checked finite: a state that overflowed leaves
    no global model behind (the landed code wrote the model, then refused the state), and the round
    fails as InvalidAggregate, which the state machine retries like a quorum miss."""
    from infra.state_machine import NOT_AGGREGATED

    monkeypatch.setitem(strategies.STRATEGIES, StateOverflow.name, StateOverflow)
    world = make_world(clients=("a", "b"), strategy=StateOverflow.name)
    world.report("a", 0.1, 10)
    world.report("b", 0.2, 10)
    assert world.complete() is None
    [(_, error, cause)] = world.reporter.failures
    assert error == "InvalidAggregate" and "state tensor 'm/x' is not finite" in cause
    assert not any(k.startswith(keys.round_prefix(RUN, 1)) for k in world.store.objects)
    assert world.table.get_round(RUN, 1)["status"] == "open"  # given back: a retry can aggregate it
    assert "InvalidAggregate" in NOT_AGGREGATED
    with pytest.raises(InvalidAggregate):
        world.at_deadline()


def test_an_operator_cap_of_2_to_the_40_examples_cannot_make_one_3e38_update_overflow_the_sum():
    """Weights were examples x 2^-20: with `max_examples` 2^40 a weight was 2^20, and 2^20 x 3e38 is
    inf. Normalised (x 2^-40), no weight exceeds 1. (A norm bound above the update's norm: the sum is
    under test.)"""
    world = make_world(clients=("a", "evil"), bounds=Bounds(max_examples=2**40, max_update_norm=1e39))
    world.report("a", 1.0, 10)
    world.report("evil", 3e38, 2**40)
    summary = world.complete()
    assert summary is not None and not world.reporter.failures
    np.testing.assert_allclose(world.new_global()["001/d/bias"], 3e38, rtol=1e-6)


# -- issue 20: 3. a client can make the aggregation function read a whole file of any size ---------


def test_a_client_claiming_a_zero_byte_file_makes_the_server_read_nothing():
    """The attack: an item claiming `bytes: 0` (or any size no safetensors file has) made the server
    ask for `Range: bytes=0--1`, which S3 answers with the whole object. The item is refused when it
    is parsed, before any read; a size too small for the model's tensors is refused before any read."""
    world = make_world(quorum=2, clients=("a", "b", "zero", "tiny"), min_participants=2)
    world.report("a", 0.1, 10)
    world.report("b", 0.1, 10)
    world.report("zero", 0.1, 10, update={"key": keys.update_key(RUN, 1, "zero"), "sha256": "0" * 64, "bytes": 0})
    world.report("tiny", 0.1, 10, update={"key": keys.update_key(RUN, 1, "tiny"), "sha256": "0" * 64, "bytes": 12})
    summary = world.complete()
    reasons = {r.client_id: r.reason for r in summary.rejected}
    assert summary.participants == ["a", "b"]
    assert "update bytes 0 is less than the smallest safetensors file" in reasons["zero"]
    assert "file is 12 bytes, under the" in reasons["tiny"]
    assert keys.update_key(RUN, 1, "zero") not in world.store.bytes_read
    assert keys.update_key(RUN, 1, "tiny") not in world.store.bytes_read


def test_the_s3_store_never_asks_for_an_empty_range_and_refuses_an_answer_that_is_not_206(cloud):
    """S3 answers a Range it cannot parse (`bytes=0--1`) with the whole object and HTTP 200. The adapter
    never sends an empty range, and refuses any answer to a range request that is not 206 Partial
    Content for the range it asked for."""
    from fedstep.aws.adapters import S3ModelStore

    s3 = cloud.client("s3")
    key = "updates/client-1/issue-20/00001.safetensors"
    s3.put_object(Bucket=cloud.outputs.bucket, Key=key, Body=b"x" * 1000)
    store = S3ModelStore(cloud.outputs.bucket, s3)
    with pytest.raises(ValueError, match="no empty range is requested"):
        store.read_range(key, 0, 0)
    store.read_into(key, 0, memoryview(bytearray()), None)  # nothing to read: no request at all
    assert store.read_range(key, 10, 5).data == b"xxxxx"

    def malformed(params, **_):
        # what a claimed size of 0 produced, `bytes=0--1`: S3 ignores a Range it cannot parse and answers 200
        # with the whole object (the local cloud refuses it with 416 InvalidRange); a GET without one alike
        params.pop("Range")

    s3.meta.events.register("provide-client-params.s3.GetObject", malformed)
    try:
        with pytest.raises(ValueError, match="not 206 Partial Content"):
            store.read_range(key, 0, 16)
        with pytest.raises(ValueError, match="not 206 Partial Content"):
            store.read_into(key, 0, memoryview(bytearray(16)), None)
    finally:
        s3.meta.events.unregister("provide-client-params.s3.GetObject", malformed)


# -- issue 20: 4. one client can fail a Krum run ----------------------------------------------------


@pytest.mark.parametrize(
    ("strategy", "params", "needs"),
    [("krum", {}, 3), ("multikrum", {"num_malicious": 1}, 5), ("krum", {"num_selected": 4}, 4)],
)
def test_fedstep_start_refuses_a_krum_run_whose_min_participants_is_below_what_krum_needs(strategy, params, needs):
    """With 3 clients and the defaults (min_participants 2), one client withholding its update left
    Krum 2 updates: it raised, and the run failed as StrategyFailed. `fedstep start` now names the fix."""
    from fedstep.core.errors import FedstepError
    from fedstep.operator.settings import RunSettings

    with pytest.raises(FedstepError, match=f"needs at least {needs} valid updates.*--min-participants {needs}"):
        RunSettings(strategy=strategy, strategy_params=params, min_participants=needs - 1).validated()
    RunSettings(strategy=strategy, strategy_params=params, min_participants=needs).validated()
    RunSettings(strategy="trimmed_mean", strategy_params={"beta": 0.4}, min_participants=1).validated()


def test_a_client_withholding_its_update_fails_a_krum_round_by_name_not_the_run():
    """A Krum run started before `fedstep start` refused it (min_participants 2, 3 clients): one client
    withholds its update. At the deadline the round fails as TooFewParticipants, which the state
    machine retries like a quorum miss, not as StrategyFailed, which ends the run."""
    world = make_world(quorum=2, clients=("a", "b", "silent"), min_participants=2, strategy="krum")
    world.report("a", 0.1, 10)
    world.report("b", 0.2, 10)
    with pytest.raises(TooFewParticipants, match=r"strategy 'krum' needs at least 3: 2 x num_malicious \+ 3"):
        world.at_deadline()
    assert world.table.get_round(RUN, 1)["status"] == "open"


def test_a_client_sending_nan_fails_a_krum_round_by_name_not_the_run():
    world = make_world(quorum=2, clients=("a", "b", "evil"), min_participants=3, strategy="krum")
    world.report("a", 0.1, 10)
    world.report("b", 0.2, 10)
    world.report("evil", delta={k: np.full(v.shape, np.nan, np.float32) for k, v in GLOBAL.items()}, n=10)
    assert world.complete() is None
    [(_, error, cause)] = world.reporter.failures
    assert error == "TooFewParticipants" and "evil: " in cause and "non-finite" in cause


# -- issue 20: 5. a sliced round mixes in an update replaced after the plan's check -----------------


class UnversionedBucket(MemoryStore):
    """A bucket without versioning: reads name no object version."""

    def read_range(self, key, start, length, version=None):
        return replace(super().read_range(key, start, length, version), version=None)


def test_a_slice_plan_refuses_a_store_that_names_no_object_version():
    """Without a version, the plan's slices would read whatever the key holds when they run: a file
    the client replaced after the plan's check. The plan is refused, and nothing is planned."""
    from fedstep.core.rounds import AggregationSettings
    from fedstep.core.update_source import UnversionedStore

    world = make_world(clients=("a", "b"), store=UnversionedBucket())
    world.report("a", 0.1, 10)
    world.report("b", 0.2, 10)
    with pytest.raises(UnversionedStore, match="the bucket must be versioned"):
        world.complete(settings=AggregationSettings(slice_bytes=16))  # the model is larger: planned by slices
    assert not any("/plan-" in k for k in world.store.objects)
    assert world.table.get_round(RUN, 1)["status"] == "open"


# -- issue 20: 9. smaller holes: the card's counts, DP-SGD's epsilon, what failed aggregations leave --


def test_a_model_card_records_the_examples_aggregation_counted_not_a_claim_of_2_to_the_40():
    from fedstep.core.model_card import ClientSize, client_sizes

    def item(client, n):
        ref = ObjectRef(keys.update_key(RUN, 3, client), "0" * 64, 100)
        return UpdateItem(RUN, 3, client, n, ref, {}, "2026-11-30T00:00Z").to_item()

    sizes = client_sizes({"a": item("a", 500), "evil": item("evil", 2**40)}, Bounds())
    assert sizes == {"a": ClientSize(500, 3), "evil": ClientSize(100_000, 3, claimed=2**40)}
    capped = client_sizes({"a": item("a", 500)}, Bounds(client_max_examples={"a": 50}, action="reject"))
    assert capped == {"a": ClientSize(50, 3, claimed=500)}


def test_under_dp_sgd_a_rounds_epsilon_is_unknown_unless_every_participant_reported_one():
    """The attack: honest DP-SGD clients' agents report no epsilon (a custom trainer's), the attacker
    reports 0.01, and the round's epsilon showed 0.01."""
    from fedstep.core.schemas import DPSettings

    dp = DPSettings("dp-sgd", 1.0, 1.0, 1e-5)
    world = make_world(quorum=2, clients=("a", "b", "evil"), min_participants=2, dp=dp)
    world.report("a", 0.1, 10)
    world.report("b", 0.1, 10)
    world.report("evil", 0.1, 10, privacy={"epsilon": 0.01})
    assert world.complete().epsilon is None
    world.next_round(2)
    for client, epsilon in (("a", 2.5), ("b", 3.0), ("evil", 0.01)):
        world.report(client, 0.1, 10, round_number=2, privacy={"epsilon": epsilon})
    assert world.complete(2).epsilon == 3.0


class StateWriteDenied(MemoryStore):
    """A bucket where the aggregation's role may not write state objects (issue 20, finding 1)."""

    def put_once(self, key, data):
        if "/state-" in key:
            raise PermissionError(f"AccessDenied: s3:PutObject on {key}")
        return super().put_once(key, data)


def test_an_aggregation_whose_state_cannot_be_written_leaves_no_global_model_behind():
    world = make_world(clients=("a", "b"), strategy="fedadam", store=StateWriteDenied())
    world.report("a", 0.1, 10)
    world.report("b", 0.2, 10)
    with pytest.raises(PermissionError):
        world.complete()
    assert not any(k.startswith(keys.round_prefix(RUN, 1)) for k in world.store.objects)
    assert [k for k in world.store.deleted if "/global-" in k]
    assert world.table.get_round(RUN, 1)["status"] == "open"


class TakeoverTable(MemoryTable):
    """The first commit finds its claim gone: its lease ran out mid-aggregation and another
    invocation took the round (and crashed in turn: its lease is expired too)."""

    taken_over = False

    def complete_round(self, item, claim_id):
        if not self.taken_over:
            self.taken_over = True
            run_id, round_number = item["run_id"], item["round"]
            self.expire_lease(run_id, round_number)
            self.claim_round(run_id, round_number, "takeover", 2.0, 3.0)  # taken, then its holder died
        return super().complete_round(item, claim_id)


def _takeover_world(**kwargs):
    world = make_world(clients=("a", "b"), min_participants=2, quorum=2, **kwargs)
    table = TakeoverTable(world.run)
    table.items = world.table.items  # the published round 1
    world.table = table
    world.report("a", 0.1, 10)
    world.report("b", 0.2, 10)
    return world


def test_an_aggregation_that_lost_its_claim_leaves_no_global_model_behind():
    world = _takeover_world()
    assert world.complete() is None  # its commit failed: the claim was gone
    assert not any(k.startswith(keys.round_prefix(RUN, 1)) for k in world.store.objects)
    output = world.at_deadline()  # the round is aggregated once more, by whoever holds it next
    written = [k for k in world.store.objects if k.startswith(keys.round_prefix(RUN, 1))]
    [kept] = [k for k in written if "/global-" in k]
    assert output["global_model"]["key"] == kept
    assert sorted(written) == sorted([kept, world.table.get_round(RUN, 1)["manifest"]["key"]])  # and its manifest


def test_under_central_dp_a_noisy_model_released_by_an_aggregation_that_lost_its_claim_is_accounted():
    """Under central DP each aggregation draws new noise. One whose model was written and whose claim
    was then lost (the model was readable meanwhile) is a release: the round that is finally committed
    counts both, so the run's epsilon is that of two Gaussian releases, not one."""
    from fedstep.core.rounds import AggregationSettings
    from fedstep.core.schemas import DPSettings
    from fedstep.privacy.accounting import epsilon_fixed

    dp = DPSettings("central", 2.0, 1.0, 1e-5)
    world = _takeover_world(dp=dp)
    settings = AggregationSettings(accountant=epsilon_fixed)
    assert world.complete(settings=settings) is None
    world.at_deadline(settings=settings)
    summary = RoundSummary.parse(world.table.get_round(RUN, 1))
    assert summary.repeated_releases == 1 and world.table.get_round(RUN, 1)["noisy_releases"] == 2
    assert summary.epsilon == round(epsilon_fixed(2.0, 2, 2, 2, 1e-5), 6) > epsilon_fixed(2.0, 2, 2, 1, 1e-5)
    world.next_round(2)
    world.report("a", 0.1, 10, round_number=2)
    world.report("b", 0.2, 10, round_number=2)
    second = world.complete(2, settings=settings)
    assert second.repeated_releases == 1 and second.epsilon == round(epsilon_fixed(2.0, 2, 2, 3, 1e-5), 6)


# -- 22.4 a header the check did not expect ------------------------------------------------------


def test_22_4_an_update_whose_header_entries_are_not_objects_is_rejected_and_the_round_goes_on():
    world = make_world(clients=("a", "b", "evil"))
    world.report("a", 1.0, 10)
    world.report("b", 1.0, 10)
    zeros = {name: np.zeros_like(values) for name, values in GLOBAL.items()}
    _, item = encode_update(
        zeros, run_id=RUN, round_number=1, client_id="evil", num_examples=10, metrics={}, created_at=utc_now()
    )
    meta = json.dumps(item.file_metadata(), sort_keys=True, separators=(",", ":"))
    header = json.dumps({"__metadata__": {"fedstep": meta}, **{name: [0, 1] for name in GLOBAL}}).encode()
    header += b" " * (-len(header) % 8)
    data = len(header).to_bytes(8, "little") + header + bytes(tensors.TensorSpec.of(GLOBAL).data_bytes)
    world.store.put(item.update.key, data)
    ref = replace(item.update, sha256=tensors.sha256_hex(data), bytes=len(data))
    world.table.put(replace(item, update=ref).to_item())
    summary = world.complete()
    assert summary.participants == ["a", "b"]
    [rejected] = summary.rejected
    assert rejected.client_id == "evil" and "malformed header entry (not an object)" in rejected.reason
    np.testing.assert_allclose(world.new_global()["001/d/bias"], GLOBAL["001/d/bias"] + 1.0)
