"""Sliced aggregation (`fedstep.core.sliced`), on in-memory ports: a round whose model is larger than
the slice size is planned, aggregated slice by slice and assembled - to the same bytes as the
aggregation in one function - and the protocol holds around it (one plan, retries, refusals)."""

from __future__ import annotations

import tracemalloc
from dataclasses import fields, replace

import numpy as np
import pytest

from fedstep.core import keys, limits, sliced, tensors
from fedstep.core.rounds import (
    AggregationSettings,
    aggregate_slice,
    assemble_round,
    complete_round_at_deadline,
    publish_round,
    try_complete_round,
)
from fedstep.core.schemas import Bounds, ObjectRef, RoundSummary, RunRecord, TrainingConfig
from fedstep.core.updates import encode_update
from fedstep.memory import MemoryStore, MemoryTable, RecordingPublisher, RecordingReporter, record_bytes

RUN = "sliced"
SHAPES = {"000/dense/kernel": (300, 1000), "001/dense/bias": (1000,), "002/out/kernel": (1000, 7), "003/out/bias": (7,)}
SLICE = 256 * 1024  # bytes: the model (about 1.2 MiB) makes 5 slices, which cut across tensors


def world(strategy="fedavg", clients=5, bounds=None, corrupt=(), seed=0, shapes=SHAPES, params=None, nan=()):
    """A published round 1 whose updates are all in (deltas of N(0, 1); client 0's 30x larger)."""
    rng = np.random.default_rng(seed)
    ids = [f"c{i}" for i in range(clients)]
    architecture = ObjectRef(keys.model_key(RUN), "0" * 64, 1)
    run = RunRecord(
        RUN,
        ids,
        1,
        TrainingConfig(),
        strategy,
        "t",
        quorum=1,
        min_participants=1,
        model=architecture,
        bounds=bounds or Bounds(),
        strategy_params=params or {},
    )
    store, table = MemoryStore(), MemoryTable(run)
    initial = tensors.encode({k: rng.normal(size=s).astype(np.float32) for k, s in shapes.items()})
    ref = ObjectRef(keys.global_key(RUN, 0, keys.INITIAL_VERSION), tensors.sha256_hex(initial), len(initial))
    store.put(ref.key, initial)
    publish_round(RUN, 1, 0, ref, "token", "t", store=store, table=table, publisher=RecordingPublisher(), reporter=None)
    for i, client in enumerate(ids):
        scale = 30.0 if i == 0 else 1.0
        delta = {k: (scale * rng.normal(size=s)).astype(np.float32) for k, s in shapes.items()}
        if client in nan:  # a file whose sha256 is right and whose last tensor ends in NaN
            delta[max(delta)][-1] = np.nan
        data, item = encode_update(
            delta,
            run_id=RUN,
            round_number=1,
            client_id=client,
            num_examples=100 + 10 * i,
            metrics={"test_loss": 1.0 + i},
            created_at="t",
        )
        store.put(item.update.key, data)
        if client in corrupt:
            item = replace(item, update=replace(item.update, sha256="f" * 64))
        table.put(item.to_item())
    return store, table


def in_one_function(**kwargs):
    """The round aggregated as it is today (no slices): its global model's file."""
    store, table = world(**kwargs)
    summary = try_complete_round(RUN, 1, store=store, table=table, reporter=RecordingReporter())
    assert summary is not None
    return store.get(summary.global_model.key), summary


def by_slices(**kwargs):
    """The round planned, sliced and assembled as the state machine drives it."""
    store, table = world(**kwargs)
    reporter = RecordingReporter()
    settings = AggregationSettings(slice_bytes=SLICE)
    assert try_complete_round(RUN, 1, store=store, table=table, reporter=reporter, settings=settings) is None
    [(_, output)] = reporter.successes
    plan = ObjectRef(**output["sliced"]["plan"])
    results = [aggregate_slice(plan, i, store) for i in output["sliced"]["slices"]]
    final = assemble_round(plan, results, store=store, table=table)
    return store, table, plan, output, final


@pytest.mark.parametrize("strategy", ["fedavg", "median", "trimmed_mean", "fedprox"])
def test_a_sliced_round_gives_the_same_bytes_as_aggregating_in_one_function(strategy):
    bounds = Bounds(max_update_norm=2000.0)  # clips client 0's update (norm about 30 x 740)
    whole, whole_summary = in_one_function(strategy=strategy, bounds=bounds, corrupt=("c3",))
    store, table, _, output, final = by_slices(strategy=strategy, bounds=bounds, corrupt=("c3",))
    assert len(output["sliced"]["slices"]) == 5
    data = store.get(final["global_model"]["key"])
    assert final["global_model"]["sha256"] == tensors.sha256_hex(data)
    metadata = tensors.read_metadata(data)
    assert metadata["kind"] == "global" and metadata["round"] == 1
    expected = tensors.decode(whole)
    assert data == tensors.encode(expected, metadata)  # bit for bit, header included
    summary = table.get_round(RUN, 1)
    assert summary["status"] == "reported"
    assert summary["participants"] == whole_summary.participants == ["c0", "c1", "c2", "c4"]
    assert [r["client_id"] for r in summary["rejected"]] == ["c3"]
    assert [c["client_id"] for c in summary["clipped"]] == ["c0"]
    assert summary["metrics"] == whole_summary.metrics
    assert summary["measurements"]["step_norm"] == pytest.approx(whole_summary.measurements["step_norm"], rel=1e-9)
    assert summary["measurements"]["slices"] == 5


def test_the_slices_read_only_their_ranges_and_hold_a_few_slices_in_memory():
    shapes = {"w": (4 * 2**20,)}  # a 16 MiB model in slices of 256 KiB
    store, table = world(shapes=shapes, clients=4)
    reporter = RecordingReporter()
    try_complete_round(
        RUN, 1, store=store, table=table, reporter=reporter, settings=AggregationSettings(slice_bytes=SLICE)
    )
    [(_, output)] = reporter.successes
    plan = ObjectRef(**output["sliced"]["plan"])
    assert len(output["sliced"]["slices"]) == 64
    store.bytes_read.clear()
    tracemalloc.start()
    try:
        aggregate_slice(plan, 17, store)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 6 * SLICE, f"a slice invocation peaked at {peak / SLICE:.1f} slices"
    update_reads = {k: n for k, n in store.bytes_read.items() if k.startswith(keys.UPDATES_PREFIX)}
    assert len(update_reads) == 4 and set(update_reads.values()) == {SLICE}


def test_a_round_planned_for_slices_is_held_against_every_other_claim():
    store, table = world()
    reporter = RecordingReporter()
    settings = AggregationSettings(slice_bytes=SLICE)
    try_complete_round(RUN, 1, store=store, table=table, reporter=reporter, settings=settings)
    [(_, output)] = reporter.successes
    table.expire_lease(RUN, 1)  # even after the one-function lease: the plan's own lease is what counts
    table.hold_round(RUN, 1, table.get_round(RUN, 1)["claim_id"], 10**12, output["sliced"]["plan"])
    assert try_complete_round(RUN, 1, store=store, table=table, reporter=reporter, settings=settings) is None
    assert len(reporter.successes) == 1
    plans = [k for k in store.objects if "/plan-" in k]
    assert len(plans) == 1
    # the deadline path (the report was lost): the same plan again, so the state machine fans out
    again = complete_round_at_deadline(RUN, 1, store=store, table=table, settings=settings)
    assert again == output


def test_a_retried_slice_and_a_retried_assembly_change_nothing():
    store, table, plan, output, final = by_slices()
    model = store.get(final["global_model"]["key"])
    assert assemble_round(plan, [{}] * len(output["sliced"]["slices"]), store=store, table=table) == final
    assert store.get(final["global_model"]["key"]) == model
    assert len(store.objects[final["global_model"]["key"]]) == 1


def test_a_strategy_that_cannot_slice_fails_the_round_by_name():
    store, table = world(strategy="fedadam")
    reporter = RecordingReporter()
    try_complete_round(
        RUN, 1, store=store, table=table, reporter=reporter, settings=AggregationSettings(slice_bytes=SLICE)
    )
    [(_, error, cause)] = reporter.failures
    assert error == "StrategyFailed"
    assert "'fedadam' cannot aggregate this model" in cause and "fedavg, fedprox, median, trimmed_mean" in cause
    assert table.get_round(RUN, 1)["status"] == "open"  # given back: nothing was planned
    assert not [k for k in store.objects if "/plan-" in k]


def test_the_slices_fan_out_and_their_results_stay_inside_step_functions_payloads():
    model = 4 * 10**9  # elements: a 16 GB model in slices of 8 MiB would be 7,630 slices
    elements = sliced.slice_elements_for(model, sliced.MIN_SLICE_MB * 2**20)
    plan = sliced.SlicePlan(
        RUN, 1, "c", "fedavg", {}, ObjectRef("k", "0" * 64, 1), {}, 0, "k", "u", {}, {"w": (model,)}, elements, [], {}
    )
    assert plan.slice_count == sliced.MAX_SLICES  # larger slices instead
    output = {"sliced": {"plan": {"key": "k" * 120, "sha256": "0" * 64, "bytes": 1}, "slices": list(range(1000))}}
    results = [{"step_norm_squared": 1.2345678901234567e300} for _ in range(sliced.MAX_SLICES)]
    assert record_bytes(output) < limits.STEP_FUNCTIONS_PAYLOAD_BYTES / 10
    assert record_bytes({"result": output, "results": results}) < limits.STEP_FUNCTIONS_PAYLOAD_BYTES / 4


def test_the_plan_header_matches_safetensors_for_any_names_and_shapes():
    rng = np.random.default_rng(0)
    names = ["a", "B", "000/dense/kernel", "é/ü", "z z", 'x"q', "ctl\u0001", "日本"]
    for _ in range(100):
        chosen = rng.choice(names, size=int(rng.integers(1, 6)), replace=False)
        arrays = {str(n): np.zeros(tuple(rng.integers(0, 4, size=rng.integers(1, 3))), np.float32) for n in chosen}
        metadata = {"run_id": "r" * int(rng.integers(0, 20)), "round": int(rng.integers(0, 100)), "x": "é"}
        header, _ = tensors.encoded_header(tensors.TensorSpec.of(arrays), metadata)
        assert tensors.encode(arrays, metadata).startswith(header)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"strategy": "fedadam"}, "strategy 'fedadam' cannot aggregate this model of 2 MiB"),
        ({"strategy": "fedavg", "dp": "central", "dp_noise_multiplier": 1.0}, "--dp central clips and noises whole"),
    ],
)
def test_fedstep_start_refuses_a_run_that_would_need_slices_its_strategy_cannot_take(settings, message):
    from fedstep.aws.stack import StackOutputs
    from fedstep.core.errors import FedstepError
    from fedstep.operator.settings import RunSettings
    from fedstep.operator.start import start_run

    outputs = StackOutputs("b", "t", "topic", "sm", {"a": "qa", "b": "qb"}, {}, 2**30, slice_bytes=2**20)
    weights = {"w": np.zeros(2**19, np.float32)}  # 2 MiB: two slices of 1 MiB
    with pytest.raises(FedstepError, match=message):  # before anything is written: no AWS client is used
        start_run(b"arch", weights, RunSettings(**settings), outputs, s3=None, dynamodb=None, stepfunctions=None)


def test_an_update_replaced_after_the_plans_check_cannot_mix_into_the_slices():
    whole, _ = in_one_function()
    store, table = world()
    reporter = RecordingReporter()
    settings = AggregationSettings(slice_bytes=SLICE)
    try_complete_round(RUN, 1, store=store, table=table, reporter=reporter, settings=settings)
    [(_, output)] = reporter.successes
    key = keys.update_key(RUN, 1, "c2")
    original = store.get(key)
    store.put(key, original[:-4] + b"\x00\x00\xc0\x7f")  # the client rewrites its file: last value NaN
    plan = ObjectRef(**output["sliced"]["plan"])
    results = [aggregate_slice(plan, i, store) for i in output["sliced"]["slices"]]
    final = assemble_round(plan, results, store=store, table=table)
    data = store.get(final["global_model"]["key"])
    assert data == tensors.encode(tensors.decode(whole), tensors.read_metadata(data))  # the checked version only


def test_a_nan_update_with_a_correct_sha256_is_rejected_by_the_plans_streamed_check():
    whole, _ = in_one_function(nan=("c1",))
    store, table, _, _, final = by_slices(nan=("c1",))
    summary = table.get_round(RUN, 1)
    assert [(r["client_id"], "non-finite" in r["reason"]) for r in summary["rejected"]] == [("c1", True)]
    data = store.get(final["global_model"]["key"])
    assert data == tensors.encode(tensors.decode(whole), tensors.read_metadata(data))


def test_a_round_aggregated_by_slices_is_summarised_as_the_same_round_in_one_function():
    """One summary builder: a sliced round's record says what the same round aggregated in one function
    says (selection, participants, rejections, clipping, metrics, privacy, bound), except its model, its
    timing and the strategy's measurements."""
    bounds = Bounds(max_update_norm=2000.0)
    _, whole = in_one_function(bounds=bounds, corrupt=("c3",))
    _, table, _, _, _ = by_slices(bounds=bounds, corrupt=("c3",))
    sliced = RoundSummary.parse(table.get_round(RUN, 1))
    differ = {"global_model", "duration_s", "aggregation_s", "completed_at", "measurements", "manifest"}
    same = [f.name for f in fields(RoundSummary) if f.name not in differ]
    assert {name: getattr(sliced, name) for name in same} == {name: getattr(whole, name) for name in same}
    # each names its own manifest (under its own claim); tests/test_integrity.py compares their entries
    assert sliced.manifest and whole.manifest and sliced.manifest.key != whole.manifest.key
    assert sliced.clipped and sliced.rejected and sliced.norm_bound == 2000.0
