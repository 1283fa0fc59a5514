"""`fedstep verify` and the scheduled check (`fedstep.core.integrity`) on the in-memory ports: a clean run
passes; every object its records name, replaced or missing, is named with its round and key; a resumed
run's chain is checked; the update manifest records what each round aggregated; the scheduled check
stops within its budget and goes on where it stopped."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from fedstep.core import integrity, keys, model_card, tensors
from fedstep.core.manifest import UpdateManifest
from fedstep.core.schemas import ObjectRef, RoundSummary
from fedstep.memory import MemoryStore, MemoryTable
from tests.round_world import RUN, World, make_run
from tests.test_sliced import by_slices, in_one_function

pytestmark = pytest.mark.unit
ARCHITECTURE = b"a keras architecture"


def clean_run(strategy: str = "fedadam", rounds: int = 2) -> World:
    """A run of two clients with `rounds` rounds aggregated, its architecture stored and the model card
    of its last round written (as the aggregation function writes it when a run finishes)."""
    store = MemoryStore()
    store.put(keys.model_key(RUN), ARCHITECTURE)
    architecture = ObjectRef(keys.model_key(RUN), tensors.sha256_hex(ARCHITECTURE), len(ARCHITECTURE))
    world = World(replace(make_run(strategy=strategy, rounds=rounds), model=architecture), store=store)
    world.publish()
    for r in range(1, rounds + 1):
        if r > 1:
            world.next_round(r)
        world.report("a", 1.0 * r, round_number=r)
        world.report("b", 2.0 * r, n=30, round_number=r)
        assert world.complete(r) is not None
    summary = RoundSummary.parse(world.table.get_round(RUN, rounds))
    sizes = {"a": model_card.ClientSize(10, rounds), "b": model_card.ClientSize(30, rounds)}
    card = model_card.card_bytes(model_card.build_card(world.run, summary, architecture, sizes))
    version = keys.version_of_global(summary.global_model.key)
    assert world.store.put_once(keys.card_key(RUN, rounds, version), card)
    return world


def summary_of(world: World, round_number: int) -> RoundSummary:
    return RoundSummary.parse(world.table.get_round(RUN, round_number))


def verify(world: World, **kwargs) -> integrity.IntegrityReport:
    return integrity.verify_run(RUN, world.store, world.table, **kwargs)


def test_a_clean_run_verifies():
    world = clean_run()
    report = verify(world)
    assert report.ok and report.mismatches == [] and report.runs == [RUN]
    # architecture, then per round: input model, (input state,) global model, state, manifest, card
    assert report.objects == 1 + (1 + 4) + (2 + 4)
    assert report.to_dict()["ok"] is True


@pytest.mark.parametrize(
    "what, round_number, ref_of",
    [
        ("global model", 1, lambda s: s.global_model),
        ("strategy state", 2, lambda s: s.state),
        ("update manifest", 2, lambda s: s.manifest),
    ],
)
def test_a_replaced_object_is_named_with_its_round_and_key(what, round_number, ref_of):
    world = clean_run()
    ref = ref_of(summary_of(world, round_number))
    world.store.put(ref.key, b"replaced " + world.store.get(ref.key))
    report = verify(world)
    [mismatch] = report.mismatches
    assert (mismatch.run_id, mismatch.round, mismatch.what, mismatch.key) == (RUN, round_number, what, ref.key)
    assert mismatch.expected == f"sha256 {ref.sha256}, {ref.bytes} bytes"
    assert mismatch.found.startswith("sha256 ") and mismatch.found.endswith(f"{ref.bytes + 9} bytes")
    assert f"round {round_number}: {what} {ref.key}: expected sha256 {ref.sha256}" in mismatch.line()
    assert not report.ok


def test_a_missing_object_is_a_mismatch():
    world = clean_run()
    ref = summary_of(world, 2).global_model
    world.store.delete(ref.key)
    [mismatch] = verify(world).mismatches
    assert (mismatch.round, mismatch.what, mismatch.key, mismatch.found) == (2, "global model", ref.key, "missing")


def test_a_replaced_architecture_and_initial_model_are_named():
    world = clean_run()
    world.store.put(keys.model_key(RUN), b"another architecture")
    world.store.put(world.initial.key, world.store.get(world.initial.key) + b" ")
    found = {(m.round, m.what, m.key) for m in verify(world).mismatches}
    assert found == {(0, "architecture", keys.model_key(RUN)), (1, "input model", world.initial.key)}


def test_a_replaced_model_card_is_named_even_with_the_same_model_references():
    world = clean_run()
    summary = summary_of(world, 2)
    key = keys.card_key(RUN, 2, keys.version_of_global(summary.global_model.key))
    card = model_card.parse_card(world.store.get(key), key)
    card["metrics"] = {name: 0.99 for name in card["metrics"]}  # a better-looking model, same weights
    world.store.put(key, model_card.card_bytes(card))
    [mismatch] = verify(world).mismatches
    assert (mismatch.round, mismatch.what, mismatch.key) == (2, "model card", key)
    assert mismatch.expected.startswith("the card its records make, sha256 ")


def test_a_round_without_a_model_card_is_not_a_mismatch():
    world = clean_run()
    summary = summary_of(world, 2)
    world.store.delete(keys.card_key(RUN, 2, keys.version_of_global(summary.global_model.key)))
    assert verify(world).ok


def test_a_replaced_slice_plan_and_the_sliced_rounds_manifest_are_named():
    store, table, plan, _, _ = by_slices()
    run = table.get_run("sliced")
    store.put(run.model.key, b"x")  # that world's architecture: a placeholder of 1 byte
    table.put(replace(run, model=ObjectRef(run.model.key, tensors.sha256_hex(b"x"), 1)).to_item())
    assert integrity.verify_run("sliced", store, table).mismatches == []
    manifest = RoundSummary.parse(table.get_round("sliced", 1)).manifest
    for ref in (plan, manifest):
        store.put(ref.key, store.get(ref.key) + b"\n")
    found = {(m.round, m.what, m.key) for m in integrity.verify_run("sliced", store, table).mismatches}
    assert found == {(1, "slice plan", plan.key), (1, "update manifest", manifest.key)}


def test_the_manifest_records_each_aggregated_update_with_its_version_weight_and_clip_factor():
    world = clean_run(strategy="fedavg", rounds=1)
    summary = summary_of(world, 1)
    manifest = UpdateManifest.decode(world.store.get(summary.manifest.key))
    items = {c: world.table.get(keys.update_item_key(RUN, 1, c))["update"] for c in ("a", "b")}
    assert [(u.client_id, u.key, u.sha256, u.bytes, u.weight) for u in manifest.updates] == [
        (c, items[c]["key"], items[c]["sha256"], items[c]["bytes"], n) for c, n in (("a", 10), ("b", 30))
    ]
    assert all(u.version == "0" and u.clip_factor == 1.0 for u in manifest.updates)
    assert (manifest.run_id, manifest.round, summary.manifest.key) == (
        RUN,
        1,
        keys.manifest_key(RUN, 1, manifest.version),
    )
    assert not world.store.put_once(summary.manifest.key, b"{}")  # written once


def test_a_sliced_round_and_a_round_in_one_function_record_the_same_updates():
    """Both paths record what they aggregated; a clipped update's factor is below 1."""
    from fedstep.core.schemas import Bounds

    bounds = Bounds(max_update_norm=2000.0)  # clips client c0's update
    store, table, _, _, _ = by_slices(bounds=bounds, corrupt=("c3",))
    sliced = UpdateManifest.decode(store.get(RoundSummary.parse(table.get_round("sliced", 1)).manifest.key))
    _, whole_summary = in_one_function(bounds=bounds, corrupt=("c3",))
    assert [u.client_id for u in sliced.updates] == whole_summary.participants == ["c0", "c1", "c2", "c4"]
    factors = {u.client_id: u.clip_factor for u in sliced.updates}
    assert 0 < factors["c0"] < 1 and factors["c1"] == 1.0


def test_a_resumed_runs_chain_is_checked():
    world = clean_run()
    first = summary_of(world, 2)
    resumed = replace(world.run, run_id="run-2", resumed_from=RUN, initial_state=first.state, rounds=3)
    world.table.put(resumed.to_item())
    world.store.put(first.global_model.key, b"replaced")
    report = integrity.verify_run("run-2", world.store, world.table)
    assert report.runs == ["run-2", RUN]
    names = {(m.run_id, m.round, m.what) for m in report.mismatches}
    assert names == {(RUN, 2, "global model")}
    assert integrity.verify_run("run-2", world.store, world.table, follow_resumes=False).ok


def test_an_unknown_run_cannot_be_checked():
    with pytest.raises(integrity.NoSuchRun, match="no run nope"):
        integrity.verify_run("nope", MemoryStore(), MemoryTable())


def test_an_error_that_does_not_mean_missing_is_raised():
    world = clean_run()

    class Unreachable(Exception):
        pass

    def failing(key, *args, **kwargs):
        raise Unreachable("endpoint unreachable")

    world.store.read_range = failing
    with pytest.raises(Unreachable):
        verify(world)


def test_a_check_stopped_early_says_where_to_resume_and_finishes_there():
    world = clean_run()
    world.store.put(summary_of(world, 2).global_model.key, b"replaced")
    asked = iter([False, False, True])
    first = verify(world, should_stop=lambda: next(asked, True))
    assert (first.objects, first.next_index, first.ok) == (2, 2, False)
    rest = verify(world, start=first.next_index)
    assert first.objects + rest.objects == verify(world).objects
    assert [m.what for m in first.mismatches + rest.mismatches] == ["global model"]


def sweep(world: World, runs: list[str], budget: int | None = None, due: bool = True):
    calls = {"n": 0}

    def should_stop() -> bool:
        calls["n"] += 1
        return budget is not None and calls["n"] > budget

    return integrity.sweep(
        world.store,
        world.table,
        lambda: list(runs),
        now="2026-12-07T00:00:00+00:00",
        due=lambda started: due,
        should_stop=should_stop,
    )


def test_the_scheduled_check_stops_within_its_budget_and_goes_on_where_it_stopped():
    world = clean_run()
    world.store.put(summary_of(world, 2).state.key, b"replaced")
    first = sweep(world, [RUN], budget=4)
    assert first.started_sweep and first.runs_checked == [] and first.remaining == [RUN]
    cursor = integrity.Cursor.decode(world.store.get(keys.integrity_cursor_key()))
    assert cursor.runs == [RUN] and cursor.index == first.objects > 0
    second = sweep(world, [RUN])
    assert not second.started_sweep and second.runs_checked == [RUN] and second.remaining == []
    assert [m.what for m in first.mismatches + second.mismatches] == ["strategy state"]
    assert first.objects + second.objects == verify(world).objects
    writes = len(world.store.puts)
    idle = sweep(world, [RUN], due=False)  # the sweep is done and the next is not due: nothing checked
    assert (idle.objects, idle.started_sweep, idle.runs_checked) == (0, False, [])
    assert len(world.store.puts) == writes  # nor written
    again = sweep(world, [RUN, "gone"], due=True)
    assert again.started_sweep and again.runs_checked == [RUN] and len(again.mismatches) == 1


def test_the_round_record_stays_small_with_its_manifest():
    world = clean_run(strategy="fedavg", rounds=1)
    item = world.table.get_round(RUN, 1)
    assert set(item["manifest"]) == {"key", "sha256", "bytes"}
    assert np.isclose(len(str(item["manifest"])), len(str(item["global_model"])), rtol=0.2)


@pytest.fixture
def cli_on(monkeypatch):
    """`fedstep verify` wired to an in-memory world instead of a deployed stack."""
    import fedstep.cli
    import fedstep.operator.integrity

    def on(world: World | None, stack_error: Exception | None = None):
        def stack(args):
            if stack_error is not None:
                raise stack_error
            return type("FakeStack", (), {"outputs": None, "table": world.table, "client": lambda self, s: None})()

        def verify_run(run_id, outputs, s3, table):
            return integrity.verify_run(run_id, world.store, table)

        monkeypatch.setattr(fedstep.cli, "_stack", stack)
        monkeypatch.setattr(fedstep.operator.integrity, "verify_run", verify_run)
        return fedstep.cli.main

    return on


def test_fedstep_verify_exits_0_on_a_clean_run(cli_on, capsys):
    assert cli_on(clean_run())(["verify", RUN]) == 0
    out = capsys.readouterr().out
    assert f"run {RUN}: every object matches its record (12 objects" in out


def test_fedstep_verify_exits_1_naming_each_mismatch(cli_on, capsys):
    world = clean_run()
    ref = summary_of(world, 1).global_model
    world.store.put(ref.key, b"replaced")
    assert cli_on(world)(["verify", RUN]) == 1
    out = capsys.readouterr().out
    assert f"MISMATCH run {RUN} round 1: global model {ref.key}: expected sha256 {ref.sha256}, {ref.bytes} bytes" in out
    assert out.strip().endswith(
        "1 object(s) do not match their records (12 objects, 0.0 MiB hashed); see docs/operations.md, Integrity"
    )
    assert cli_on(world)(["verify", RUN, "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is False and [m["key"] for m in report["mismatches"]] == [ref.key]


def test_fedstep_verify_exits_2_when_it_cannot_check(cli_on, capsys):
    from botocore.exceptions import NoCredentialsError

    assert cli_on(clean_run())(["verify", "another-run"]) == 2
    assert "fedstep: error: no run another-run in this stack" in capsys.readouterr().err
    assert cli_on(None, NoCredentialsError())(["verify", RUN]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fedstep: error: ") and "credentials" in err.lower() and "Traceback" not in err
