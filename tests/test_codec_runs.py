"""Choosing a run's update codec: `--codec` (flags, run files, `simulate(codec=...)`), kept in the run
record, carried to the clients in the round instructions under a name no strategy may use, and the
pairs that cannot work refused at `fedstep start` with the reason (`fedstep.core.run_rules`)."""

from __future__ import annotations

import copy
import json
from dataclasses import replace

import pytest

from fedstep.core import codecs
from fedstep.core.errors import FedstepError
from fedstep.core.rounds import StrategyFailed
from fedstep.core.run_rules import InvalidRun, check_codec, check_run
from fedstep.core.schemas import Bounds, DPSettings, RunRecord
from fedstep.core.strategies import build
from fedstep.operator.settings import RunSettings, load_run_file, merge_settings
from tests.round_world import World, make_run

MIB = 2**20


def test_the_codec_comes_from_the_run_file_under_the_flag_and_is_kept_in_the_run_record(tmp_path):
    path = tmp_path / "run.json"
    path.write_text(json.dumps({"codec": "int8", "rounds": 2}))
    assert merge_settings(RunSettings(), load_run_file(str(path))).codec == "int8"
    settings = merge_settings(RunSettings(), load_run_file(str(path)), {"codec": "topk:0.10+int8"})
    run = replace(make_run(), codec=settings.codec_instance().name)
    assert run.codec == "topk:0.1+int8"  # the canonical name
    assert RunRecord.parse(json.loads(json.dumps(run.to_item()))).codec == "topk:0.1+int8"


def test_a_run_record_written_before_codecs_reads_float32():
    item = make_run().to_item()
    del item["codec"]
    assert RunRecord.parse(item).codec == "float32"


@pytest.mark.parametrize("bad", ["", "x" * (codecs.MAX_NAME_CHARS + 1), 8])
def test_a_run_record_with_a_malformed_codec_name_is_refused(bad):
    with pytest.raises(Exception, match="codec must be a codec's name"):
        RunRecord.parse({**make_run().to_item(), "codec": bad})


@pytest.mark.parametrize("name", ["gzip", "topk:0", "topk:1.5", "topk:x+int8"])
def test_an_unknown_or_malformed_codec_is_refused_before_anything_starts(name):
    with pytest.raises(FedstepError):
        merge_settings(RunSettings(), {"codec": name})


@pytest.mark.parametrize("strategy", ["median", "trimmed_mean", "krum", "multikrum"])
def test_a_sparse_codec_is_refused_with_a_strategy_that_reads_every_coordinate(strategy):
    with pytest.raises(FedstepError, match=rf"--codec topk:0.1 sends sparse updates .*{strategy}"):
        merge_settings(RunSettings(), {"codec": "topk:0.1", "strategy": strategy, "min_participants": 3})
    merge_settings(RunSettings(), {"codec": "int8", "strategy": strategy, "min_participants": 3})  # dense: fine


@pytest.mark.parametrize("mode", ["central", "client-clip", "dp-sgd"])
def test_error_feedback_is_refused_with_differential_privacy(mode):
    with pytest.raises(FedstepError, match=rf"keeps error feedback .* --dp {mode} does not account for"):
        merge_settings(RunSettings(), {"codec": "topk:0.1+int8", "dp": mode, "dp_noise_multiplier": 1.0})
    merge_settings(RunSettings(), {"codec": "int8", "dp": mode, "dp_noise_multiplier": 1.0})


def test_a_codec_that_cannot_be_read_by_slices_is_refused_on_a_model_aggregated_by_slices():
    whole = copy.copy(codecs.get("int8"))
    whole.sliceable = False  # every registered codec reads by slices; a future one may not
    with pytest.raises(InvalidRun, match=r"cannot be read by slices, and the stack aggregates this model of 600 MiB"):
        check_codec(whole, build("fedavg", {}), None, 600 * MIB, 512 * MIB)
    check_codec(whole, build("fedavg", {}), None, 100 * MIB, 512 * MIB)  # one pass: read whole


def test_a_record_that_pairs_a_codec_with_what_it_cannot_work_with_is_refused_by_the_aggregation_function():
    with pytest.raises(InvalidRun, match="sends sparse updates"):
        check_run(replace(make_run(clients=("a", "b", "c"), min_participants=3, strategy="median"), codec="topk:0.1"))
    with pytest.raises(InvalidRun, match="unknown codec"):
        check_run(replace(make_run(), codec="gzip"))


def _published(run: RunRecord) -> dict:
    world = World(run)
    world.publish()
    (message, _), *_ = world.publisher.messages
    return message["instructions"]


def test_the_round_instructions_carry_the_codec_and_for_error_feedback_the_rounds_norm_bound():
    assert codecs.INSTRUCTION not in _published(make_run())  # float32: round messages as before codecs
    assert _published(replace(make_run(), codec="int8")) == {codecs.INSTRUCTION: "int8"}
    bounded = replace(make_run(bounds=Bounds(max_update_norm=2.5)), codec="topk:0.1+int8")
    assert _published(bounded) == {codecs.INSTRUCTION: "topk:0.1+int8", codecs.NORM_BOUND_INSTRUCTION: 2.5}
    default = _published(replace(make_run(), codec="topk:0.1"))
    assert default[codecs.NORM_BOUND_INSTRUCTION] > 0  # the run's default bound, from the initial model


def test_no_strategy_may_give_an_instruction_under_fedsteps_names(monkeypatch):
    strategy = build("fedprox", {})
    cls = type(strategy)
    monkeypatch.setattr(cls, "configure_round", lambda self, r, v: {"fedstep_codec": "float32"})
    with pytest.raises(StrategyFailed, match=r"instruction names starting 'fedstep_' are fedstep's"):
        _published(make_run(strategy="fedprox"))


def test_every_codec_is_listed_by_fedstep_codecs():
    from fedstep.render.codecs import render_codecs

    listed = json.loads(render_codecs(as_json=True))
    assert {c["name"] for c in listed} >= {"float32", "float16", "int8"}
    assert any(c["sparse"] and c["error_feedback"] for c in listed)
    text = render_codecs()
    assert all(c["name"] in text for c in listed) and "--codec NAME" in text


def test_dp_settings_stay_valid_for_a_dense_codec():
    check_codec(codecs.get("float16"), build("fedavg", {}), DPSettings("central", 1.0, 1.0, 1e-5))


def test_a_codec_run_is_aggregated_from_the_decoded_updates_and_refuses_another_codecs_file():
    """The round reads the run's codec (the global model stays a float32 file: FedAvg's step loads it)."""
    import numpy as np

    from fedstep.core import keys, tensors
    from fedstep.core.rounds import try_complete_round
    from fedstep.core.updates import encode_update

    model = {"000/d/kernel": np.zeros((64, 40), np.float32), "001/d/bias": np.zeros(40, np.float32)}
    run = replace(make_run(clients=("a", "b", "c")), codec="int8")
    world = World(run)
    world.initial = world.put_model(0, model, keys.INITIAL_VERSION)
    world.publish()
    rng = np.random.default_rng(7)
    sent = {}
    for client, codec in (("a", "int8"), ("b", "int8"), ("c", "float32")):
        delta = {k: rng.normal(0, 0.01, v.shape).astype(np.float32) for k, v in model.items()}
        data, item = encode_update(
            delta,
            run_id=run.run_id,
            round_number=1,
            client_id=client,
            num_examples=10,
            metrics={},
            created_at="2026-11-21T00:00:00Z",
            codec=codec,
        )
        world.store.put(item.update.key, data)
        world.table.put(item.to_item())
        sent[client] = delta
    summary = try_complete_round(run.run_id, 1, store=world.store, table=world.table, reporter=world.reporter)
    assert summary is not None, world.reporter.failures
    assert summary.participants == ["a", "b"]
    assert [(r.client_id, r.reason) for r in summary.rejected] == [
        ("c", "the run's codec is int8, the update says float32")
    ]
    new = tensors.decode(world.store.get(summary.global_model.key))
    for name in model:
        mean = (sent["a"][name] + sent["b"][name]) / 2
        assert np.abs(new[name] - mean).max() < 0.01 * 6 / 255  # within an int8 block's step
