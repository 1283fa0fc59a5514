"""Sliced aggregation on the local cloud: the state machine fans a round whose model is larger than
the deployment's slice size out over a Distributed Map of slice invocations and assembles the global
model with an S3 multipart upload (`fedstep.core.sliced`, DESIGN "Beyond one machine").

A 1 GiB model with functions of less memory is in tests/test_sliced_1gib.py (`make test-scale`).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from fedstep.aws.adapters import DynamoRoundTable, S3ModelStore
from fedstep.core import keys, tensors
from fedstep.core.clock import utc_now
from fedstep.core.rounds import try_complete_round
from fedstep.core.schemas import ObjectRef
from fedstep.core.updates import encode_update
from fedstep.local import gaps
from fedstep.memory import MemoryStore, MemoryTable, RecordingReporter
from tests.cloud_helpers import published_round, serve, start, summaries, wait_for_execution

CLIENTS = ("client-1", "client-2")
EXAMPLES = {"client-1": 10, "client-2": 30}


def deployment(max_model_mb: int, slice_mb: int):
    from infra.config import ClientConfig, DeploymentConfig

    return DeploymentConfig(
        project="sliced",
        clients=tuple(ClientConfig(c) for c in CLIENTS),
        max_model_mb=max_model_mb,
        slice_mb=slice_mb,
    )


def submit_updates(cloud, run_id: str, round_number: int, deltas: dict[str, tensors.Tensors]) -> None:
    """Each client's update written as the client writes it: the file under its prefix, then its item
    (whose stream record starts the aggregation)."""
    s3 = cloud.client("s3")
    table = DynamoRoundTable(cloud.outputs.table, cloud.client("dynamodb"))
    for client, delta in deltas.items():
        data, item = encode_update(
            delta,
            run_id=run_id,
            round_number=round_number,
            client_id=client,
            num_examples=EXAMPLES[client],
            metrics={},
            created_at=utc_now(),
        )
        s3.put_object(Bucket=cloud.outputs.bucket, Key=item.update.key, Body=data)
        table.put_once(item.to_item())
        del data
    gaps.wait_for_stream_batches()


def in_one_process(cloud, run_id: str) -> bytes:
    """The same round aggregated in one process (no slices), from the same update files and items,
    on in-memory ports: its global model."""
    table = DynamoRoundTable(cloud.outputs.table, cloud.client("dynamodb"))
    s3 = S3ModelStore(cloud.outputs.bucket, cloud.client("s3"))
    run = table.get_run(run_id)
    record = table.get_round(run_id, 1)
    memory_store, memory_table = MemoryStore(), MemoryTable(run)
    initial = ObjectRef(**record["input_model"])
    memory_store.put(initial.key, s3.get(initial.key))
    memory_table.open_round(run_id, 1, 0, "token", utc_now(), initial)
    for item in table.get_updates(run_id, 1, list(CLIENTS)).values():
        memory_table.put(item)
        memory_store.put(item["update"]["key"], s3.get(item["update"]["key"]))
    summary = try_complete_round(run_id, 1, store=memory_store, table=memory_table, reporter=RecordingReporter())
    assert summary is not None
    return memory_store.get(summary.global_model.key)


def slice_states(cloud, execution_arn: str) -> set[str]:
    events = cloud.client("stepfunctions").get_execution_history(executionArn=execution_arn, maxResults=1000)
    return {e.get("stateEnteredEventDetails", {}).get("name") for e in events["events"]} - {None}


def run_sliced_round(cloud, initial: tensors.Tensors, deltas: dict[str, tensors.Tensors], agents=()):
    """One round of a run started on `initial`, its updates `deltas` written directly and `agents`
    serving theirs: (run, execution, final model)."""
    run = start(cloud, rounds=1, round_timeout_s=1800, min_participants=2, initial=initial)
    published_round(cloud, run.run_id, 1, timeout_s=300)
    for a in agents:
        serve(a)
    submit_updates(cloud, run.run_id, 1, deltas)
    store = S3ModelStore(cloud.outputs.bucket, cloud.client("s3"))
    desc = wait_for_execution(cloud, run.execution_arn, timeout_s=1800)
    assert desc["status"] == "SUCCEEDED", desc.get("cause")
    [summary] = summaries(cloud, run.run_id)
    final = store.get(summary.global_model.key)
    assert tensors.sha256_hex(final) == summary.global_model.sha256 and len(final) == summary.global_model.bytes
    assert sorted(summary.participants) == list(CLIENTS)
    return run, desc, final


@pytest.fixture(scope="module")
def small_cloud():
    from fedstep.local.cloud import LocalCloud

    with LocalCloud(deployment(max_model_mb=64, slice_mb=8)) as cloud:
        yield cloud  # its bucket versioned as the template says (the s3_versioning shim)


def test_a_model_larger_than_a_slice_is_aggregated_by_a_distributed_map_of_slices(small_cloud):
    rng = np.random.default_rng(0)
    initial = {
        "000/big/kernel": rng.normal(size=(4000, 1000)).astype(np.float32),
        "001/big/bias": np.ones(7, np.float32),
    }
    deltas = {c: {k: rng.normal(size=v.shape).astype(np.float32) for k, v in initial.items()} for c in CLIENTS}
    run, desc, final = run_sliced_round(small_cloud, initial, deltas)
    assert {"Aggregate slices", "Assemble global model"} <= slice_states(small_cloud, run.execution_arn)
    expected = tensors.decode(in_one_process(small_cloud, run.run_id))
    assert final == tensors.encode(expected, tensors.read_metadata(final))  # the same bytes, 2 slices of 8 MiB
    plans = small_cloud.client("s3").list_objects_v2(Bucket=small_cloud.outputs.bucket, Prefix=f"runs/{run.run_id}/")
    assert [o["Key"] for o in plans["Contents"] if "/plan-" in o["Key"]]
    assert json.loads(desc["output"])["stop_reason"] == "max_rounds"


def test_an_update_replaced_after_the_plans_check_never_mixes_in_the_versioned_registry(small_cloud, monkeypatch):
    """Issue 20, finding 5. The attack: client-2, with its own role, replaces its update file after the
    plan checked it and before the slices read it. The registry is versioned (as the template says):
    every slice reads the version the plan checked, so the model is the checked updates' average."""
    from lambdas import aggregate

    rng = np.random.default_rng(1)
    initial = {"000/big/kernel": rng.normal(size=(3000, 1000)).astype(np.float32)}
    deltas = {c: {k: rng.normal(size=v.shape).astype(np.float32) for k, v in initial.items()} for c in CLIENTS}
    original, replaced = aggregate.aggregate_slice, []

    def replace_then_slice(plan_ref, index, store, secure=None):
        if not replaced:  # the first slice: the plan has checked every update
            run_id = plan_ref.key.split("/")[1]
            key = keys.update_key(run_id, 1, "client-2")
            metadata = tensors.read_metadata(
                S3ModelStore(small_cloud.outputs.bucket, small_cloud.client("s3")).get(key)
            )
            poisoned = tensors.encode({k: v + 100 for k, v in deltas["client-2"].items()}, metadata)
            small_cloud.client("s3", "client-2").put_object(Bucket=small_cloud.outputs.bucket, Key=key, Body=poisoned)
            replaced.append(key)
        return original(plan_ref, index, store, secure)

    monkeypatch.setattr(aggregate, "aggregate_slice", replace_then_slice)
    _, _, final = run_sliced_round(small_cloud, initial, deltas)
    assert replaced
    expected = (
        initial["000/big/kernel"]
        + (10 * deltas["client-1"]["000/big/kernel"] + 30 * deltas["client-2"]["000/big/kernel"]) / 40
    )
    np.testing.assert_allclose(tensors.decode(final)["000/big/kernel"], expected, atol=1e-4)


def test_a_secure_round_of_a_model_larger_than_a_slice_unmasks_each_slice_on_its_own(small_cloud, tmp_path):
    """Secure aggregation on the sliced path: after the reveal phase the round is planned (the masks'
    seeds kept in the plan), each slice invocation unmasks its own range of the masked sum, and the
    assembled model is FedAvg's of the clients' shifts within the fixed point's steps."""
    from client_agent.agent import Outcome
    from tests.cloud_helpers import SHIFTS, agent, drain_queues

    drain_queues(small_cloud)  # the other tests' round messages: their updates were written directly
    initial = {"000/big/kernel": np.zeros((3000, 1000), np.float32), "001/big/bias": np.zeros(7, np.float32)}
    run = start(
        small_cloud, rounds=1, min_participants=2, initial=initial,
        secure_aggregation=True, secagg_threshold=2, secagg_clip=10_000.0, max_examples=30,
    )  # fmt: skip
    agents = [agent(small_cloud, c, tmp_path) for c in CLIENTS]
    for expected in (Outcome.ADVANCED, Outcome.ADVANCED, Outcome.ADVANCED, Outcome.SERVED):
        for a in agents:
            serve(a, expect=expected)
    desc = wait_for_execution(small_cloud, run.execution_arn, timeout_s=600)
    assert desc["status"] == "SUCCEEDED", desc.get("cause")
    assert {"Reveal shares", "Aggregate slices", "Assemble global model"} <= slice_states(
        small_cloud, run.execution_arn
    )
    [summary] = summaries(small_cloud, run.run_id)
    assert sorted(summary.participants) == list(CLIENTS) and summary.measurements["slices"] == 2
    model = tensors.decode(
        S3ModelStore(small_cloud.outputs.bucket, small_cloud.client("s3")).get(summary.global_model.key)
    )
    expected = sum(SHIFTS[c][0] * SHIFTS[c][1] for c in CLIENTS) / sum(SHIFTS[c][1] for c in CLIENTS)
    for name, values in model.items():
        np.testing.assert_allclose(values, expected, atol=1e-3, err_msg=name)
