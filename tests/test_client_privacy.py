"""The client's privacy: its ledger (epsilon by dp-accounting, kept across restarts), the data owner's
budget (a round that would exceed it is declined, never trained), client-side clipping, and what
`fedstep clients` shows.

The agent runs in the test's process against in-memory fakes of its queue, bucket and table."""

from __future__ import annotations

import io
import json
import logging
import math
from datetime import UTC, datetime, timedelta

import boto3
import dp_accounting as dpa
import numpy as np
import pytest
from botocore.exceptions import ClientError
from dp_accounting.pld.pld_privacy_accountant import PLDAccountant
from dp_accounting.rdp import RdpAccountant

from client_agent import config as agent_config
from client_agent.agent import Agent, Outcome
from client_agent.config import AgentConfig
from client_agent.privacy_ledger import PrivacyLedger, Spend
from client_agent.steps import clip_delta
from client_agent.training import FunctionTrainer
from fedstep.core import keys, tensors
from fedstep.core.clock import utc_now
from fedstep.core.errors import FedstepError
from fedstep.core.schemas import (
    DeclineItem,
    Heartbeat,
    ObjectRef,
    RoundMessage,
    RunStop,
    TrainingConfig,
    UpdateItem,
    parse_client_item,
)
from fedstep.core.updates import encode_update
from fedstep.render.clients import render_json, render_table, statuses

N, BATCH = 100, 10  # 10 DP-SGD steps per epoch, sampling rate 0.1
Z, CLIP, DELTA = 1.1, 1.0, 1e-5
DP = {"dp_mode": "dp-sgd", "dp_noise_multiplier": Z, "dp_clip": CLIP, "dp_delta": DELTA}
WEIGHTS = {"000/d/kernel": np.zeros((3, 2), np.float32), "001/d/bias": np.zeros(2, np.float32)}


def independent_epsilon(z: float, q: float, steps: int, delta: float) -> float:
    """dp-accounting, called here without fedstep's adapter: the tighter of its RDP and PLD bounds."""
    event = dpa.SelfComposedDpEvent(dpa.PoissonSampledDpEvent(q, dpa.GaussianDpEvent(z)), steps)
    bounds = []
    for accountant in (RdpAccountant(), PLDAccountant(value_discretization_interval=1e-2)):
        accountant.compose(event)
        bounds.append(float(accountant.get_epsilon(delta)))
    return min(bounds)


# -- the ledger -----------------------------------------------------------------------------------
def spend(round_number: int, steps: int = 13, rate: float = 0.08, z: float = Z, delta: float | None = DELTA) -> Spend:
    return Spend(round=round_number, steps=steps, rate=rate, noise_multiplier=z, delta=delta)


def test_the_ledgers_epsilon_is_dp_accountings_for_all_the_runs_steps(tmp_path):
    ledger = PrivacyLedger.for_client(tmp_path, "c1")
    for r in (1, 2, 3):
        after = ledger.record("run-1", spend(r))
    assert after.steps == 39
    assert after.epsilon == pytest.approx(independent_epsilon(Z, 0.08, 39, DELTA), rel=1e-9)
    assert after.report() == {"epsilon": after.epsilon, "delta": DELTA}
    assert ledger.privacy("run-2").report() == {}  # another run has its own count

    # what a round would bring it to, without recording it
    projected = ledger.privacy("run-1", spend(4))
    assert projected.epsilon == pytest.approx(independent_epsilon(Z, 0.08, 52, DELTA), rel=1e-9)
    assert len(ledger.spends("run-1")) == 3

    # rounds that differ: the worst rate and noise over all the steps, the smallest delta (an upper bound)
    mixed = ledger.privacy("run-1", spend(4, rate=0.2, z=2.0, delta=1e-3))
    assert mixed.delta == DELTA
    assert mixed.epsilon == pytest.approx(independent_epsilon(Z, 0.2, 52, DELTA), rel=1e-9)
    assert mixed.epsilon > projected.epsilon


def test_the_ledger_survives_a_restart_and_is_written_atomically(tmp_path):
    ledger = PrivacyLedger.for_client(tmp_path, "c1")
    ledger.record("run-1", spend(1))
    ledger.record("run-1", spend(2, delta=None))  # no delta in the instructions: its steps still count
    again = PrivacyLedger.for_client(tmp_path, "c1")
    assert again.spends("run-1") == ledger.spends("run-1")
    assert again.privacy("run-1").epsilon == pytest.approx(independent_epsilon(Z, 0.08, 26, DELTA), rel=1e-9)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["privacy-ledger-c1.json"]  # no temporary file left
    assert json.loads((tmp_path / "privacy-ledger-c1.json").read_text())["version"] == 1


def test_an_unreadable_ledger_is_an_error_not_a_fresh_start(tmp_path):
    (tmp_path / "privacy-ledger-c1.json").write_text('{"version": 1, "runs": {"run-1": [{"round": 1')
    with pytest.raises(FedstepError, match=r"privacy ledger .* is unreadable"):
        PrivacyLedger.for_client(tmp_path, "c1").privacy("run-1")


# -- the agent, against fakes ------------------------------------------------------------------------
class Body(io.BytesIO):
    pass


class FakeS3:
    def __init__(self, objects: dict[str, bytes]) -> None:
        self.objects = dict(objects)
        self.uploads: list[str] = []
        self.fail_uploads = 0

    def get_object(self, Bucket: str, Key: str, Range: str | None = None) -> dict:
        if Key not in self.objects:
            raise ClientError({"Error": {"Code": "NoSuchKey", "Message": "no"}}, "GetObject")
        data = self.objects[Key]
        if Range is None:
            return {"Body": Body(data), "ContentLength": len(data)}
        first, last = (int(n) for n in Range.removeprefix("bytes=").split("-"))
        part = data[first : last + 1]
        return {"Body": Body(part), "ContentLength": len(part), "ContentRange": f"bytes {first}-{last}/{len(data)}"}

    def upload_fileobj(self, fileobj, bucket: str, key: str, Callback=None) -> None:
        data = fileobj.read()
        self.objects[key] = data  # the bytes may have arrived even when the call fails
        if self.fail_uploads:
            self.fail_uploads -= 1
            raise ClientError({"Error": {"Code": "InternalError", "Message": "lost"}}, "PutObject")
        self.uploads.append(key)


class FakeSqs:
    def __init__(self) -> None:
        self.deleted: list[str] = []

    def delete_message(self, QueueUrl: str, ReceiptHandle: str) -> None:
        self.deleted.append(ReceiptHandle)

    def change_message_visibility(self, **kwargs) -> None:
        pass


class FakeTable:
    def __init__(self) -> None:
        self.items: dict[tuple[str, str], dict] = {}
        self.beats: list[Heartbeat] = []

    def put(self, item: dict) -> None:
        if item.get("kind") == "heartbeat":
            self.beats.append(Heartbeat.parse(item))
        self.items[item["pk"], item["sk"]] = item

    def put_once(self, item: dict) -> bool:
        if (item["pk"], item["sk"]) in self.items:
            return False
        self.put(item)
        return True

    def get_item(self, key: dict) -> dict | None:
        return self.items.get((key["pk"], key["sk"]))

    def client_item(self, round_number: int, run_id: str = "run-1") -> UpdateItem | DeclineItem:
        key = keys.update_item_key(run_id, round_number, "c1")
        return parse_client_item(self.items[key["pk"], key["sk"]])


GLOBAL = tensors.encode(WEIGHTS)
ARCHITECTURE = b"an architecture the test trainer never reads"


class World:
    """One client's queue, bucket and table, shared by the agents a test starts (restarts)."""

    def __init__(self, tmp_path) -> None:
        self.tmp_path = tmp_path
        self.s3 = FakeS3({"global": GLOBAL, "model.keras": ARCHITECTURE})
        self.sqs = FakeSqs()
        self.table = FakeTable()
        self.trained: list[dict] = []

    def train(self, model, data, training):
        self.trained.append(dict(training.instructions))
        model.set_weights([w + 1.0 for w in model.get_weights()])
        return {"train_loss": 0.5}

    def agent(self, **config) -> Agent:
        cfg = AgentConfig(
            client_id="c1",
            queue_url="https://sqs.us-east-1.amazonaws.com/1/q",
            bucket="b",
            table="t",
            data="d",
            heartbeat_s=10,
            cache_dir=str(self.tmp_path / "cache"),
            **config,
        ).validated()
        x = np.zeros((N, 3), np.float32)
        trainer = FunctionTrainer(self.train, ((x, np.zeros(N)), (x[:0], np.zeros(0))), "tests:train")
        a = Agent(cfg, trainer, session=boto3.Session(region_name="us-east-1"))
        a.s3, a.sqs, a.table, a.heartbeats.table = self.s3, self.sqs, self.table, self.table
        return a


def message(round_number: int, instructions: dict, run_id: str = "run-1", epochs: int = 1) -> dict:
    msg = RoundMessage(
        run_id=run_id,
        round=round_number,
        attempt=0,
        global_model=ObjectRef("global", tensors.sha256_hex(GLOBAL), len(GLOBAL)),
        issued_at=utc_now(),  # a live round: the agent skips rounds past their deadline
        model=ObjectRef("model.keras", tensors.sha256_hex(ARCHITECTURE), len(ARCHITECTURE)),
        training=TrainingConfig(epochs=epochs, batch_size=BATCH),
        instructions=instructions,
    )
    return {"Body": json.dumps(msg.to_dict()), "ReceiptHandle": f"{run_id}-{round_number}", "MessageId": "m"}


def test_a_dp_sgd_round_reports_the_runs_epsilon_and_a_restarted_agent_keeps_counting(tmp_path):
    world = World(tmp_path)
    assert world.agent().handle(message(1, DP)) is Outcome.SERVED
    one = independent_epsilon(Z, BATCH / N, 10, DELTA)
    item = world.table.client_item(1)
    assert isinstance(item, UpdateItem) and item.privacy == {"epsilon": pytest.approx(one), "delta": DELTA}
    update_file = world.s3.objects[keys.update_key("run-1", 1, "c1")]
    assert tensors.read_metadata(update_file)["privacy"] == item.privacy  # the file is the record of what was sent
    assert world.table.beats[-1].state == "idle" and world.table.beats[-1].privacy == item.privacy
    assert world.table.beats[-1].run_id == "run-1"
    assert world.trained == [DP]  # the train function got the DP parameters

    restarted = world.agent()  # a new process: the count goes on from the ledger in the cache dir
    assert restarted.handle(message(2, DP, epochs=2)) is Outcome.SERVED
    three = independent_epsilon(Z, BATCH / N, 30, DELTA)
    assert world.table.client_item(2).privacy == {"epsilon": pytest.approx(three), "delta": DELTA}
    assert (tmp_path / "cache" / "privacy-ledger-c1.json").exists()


def test_a_round_counts_once_its_update_may_have_left(tmp_path):
    """The conservative choice: recorded before the upload. A failed upload (that may have arrived)
    counts, and so does the training of the retried message; a round reported from the file an
    earlier process uploaded is not counted twice."""
    world = World(tmp_path)
    world.s3.fail_uploads = 1
    assert world.agent().handle(message(1, DP)) is Outcome.KEPT
    assert len(PrivacyLedger.for_client(tmp_path / "cache", "c1").spends("run-1")) == 1
    del world.s3.objects[keys.update_key("run-1", 1, "c1")]  # it did not arrive after all: trained again
    assert world.agent().handle(message(1, DP)) is Outcome.SERVED
    twice = independent_epsilon(Z, BATCH / N, 20, DELTA)
    assert world.table.client_item(1).privacy["epsilon"] == pytest.approx(twice)

    key = keys.update_item_key("run-1", 1, "c1")
    del world.table.items[key["pk"], key["sk"]]  # uploaded, then the agent died before the item
    assert world.agent().handle(message(1, DP)) is Outcome.SERVED  # reported from the file's metadata
    assert len(world.trained) == 2
    assert world.table.client_item(1).privacy["epsilon"] == pytest.approx(twice)
    assert len(PrivacyLedger.for_client(tmp_path / "cache", "c1").spends("run-1")) == 2


def test_an_exhausted_budget_declines_the_round_without_training(tmp_path, caplog):
    world = World(tmp_path)
    one = independent_epsilon(Z, BATCH / N, 10, DELTA)
    agent = world.agent(dp_epsilon_budget=round(one + 0.01, 2))
    assert agent.handle(message(1, DP)) is Outcome.SERVED
    assert len(world.trained) == 1
    uploads = list(world.s3.uploads)

    with caplog.at_level(logging.WARNING, logger="fedstep.client"):
        assert agent.handle(message(2, DP)) is Outcome.DECLINED
    assert len(world.trained) == 1  # the trainer was never called
    assert world.s3.uploads == uploads  # nothing uploaded
    declined = world.table.client_item(2)
    assert isinstance(declined, DeclineItem)
    two = independent_epsilon(Z, BATCH / N, 20, DELTA)
    assert declined.reason == f"privacy budget: epsilon would reach {two:.4g} > budget {round(one + 0.01, 2):g}"
    assert declined.privacy == {"epsilon": pytest.approx(one), "delta": DELTA}  # what it has spent so far
    assert world.sqs.deleted == ["run-1-1", "run-1-2"]  # deleted like a served round
    beat = world.table.beats[-1]
    assert (beat.state, beat.run_id, beat.round) == ("declined", "run-1", 2)
    assert beat.privacy == declined.privacy
    assert any("round 2 of run-1 declined, not trained: privacy budget" in r.getMessage() for r in caplog.records)
    assert len(PrivacyLedger.for_client(tmp_path / "cache", "c1").spends("run-1")) == 1  # a decline spends nothing

    assert agent.handle(message(2, DP)) is Outcome.ALREADY_SERVED  # redelivered: answered once
    assert world.agent(dp_epsilon_budget=100.0).handle(message(3, DP)) is Outcome.SERVED  # a larger budget


@pytest.mark.parametrize(
    ("config", "instructions", "reason"),
    [
        ({"dp_epsilon_budget": 8.0}, {**DP, "dp_delta": None}, "cannot account the round's epsilon without"),
        ({"dp_max_delta": 1e-6}, DP, "dp_delta 1e-05 is not within dp_max_delta 1e-06"),
        ({}, {**DP, "dp_clip": -1.0}, "unusable privacy instructions: instruction dp_clip must be a number > 0"),
        ({}, {"dp_mode": "client-clip"}, "client-clip needs the instruction dp_clip"),
        ({}, {"dp_mode": "record-level"}, "dp_mode must be one of"),
        ({"dp_epsilon_budget": 8.0}, {**DP, "dp_noise_multiplier": 0.0}, "epsilon would reach inf > budget 8"),
        ({}, {**DP, "dp_delta": 0.5}, "dp_delta 0.5 is not below 1/examples"),
    ],
)
def test_a_round_the_agent_cannot_honour_is_declined(tmp_path, config, instructions, reason):
    world = World(tmp_path)
    instructions = {k: v for k, v in instructions.items() if v is not None}
    assert world.agent(**config).handle(message(1, instructions)) is Outcome.DECLINED
    assert world.trained == []
    declined = world.table.client_item(1)
    assert isinstance(declined, DeclineItem) and reason in declined.reason, declined.reason


def test_a_run_without_dp_under_a_budget_trains_and_says_so_once_per_run(tmp_path, caplog):
    world = World(tmp_path)
    agent = world.agent(dp_epsilon_budget=1.0)
    with caplog.at_level(logging.WARNING, logger="fedstep.client"):
        for r in (1, 2):
            assert agent.handle(message(r, {})) is Outcome.SERVED
        assert agent.handle(message(1, {}, run_id="run-2")) is Outcome.SERVED
    said = [r.getMessage() for r in caplog.records if "no record-level differential privacy" in r.getMessage()]
    assert len(said) == 2 and "run run-1 " in said[0] and "run run-2 " in said[1]
    assert "dp_epsilon_budget 1 is not enforced" in said[0]
    assert world.table.client_item(2).privacy == {}


def test_client_clip_clips_the_update_and_reports_within_clip(tmp_path):
    world = World(tmp_path)
    agent = world.agent()
    norm = math.sqrt(sum(w.size for w in WEIGHTS.values()))  # the trainer adds 1 to every weight
    assert agent.handle(message(1, {"dp_mode": "client-clip", "dp_clip": 0.5})) is Outcome.SERVED
    delta = tensors.decode(world.s3.objects[keys.update_key("run-1", 1, "c1")])
    clipped = math.sqrt(sum(float(np.sum(t.astype(np.float64) ** 2)) for t in delta.values()))
    assert clipped == pytest.approx(0.5, rel=1e-6)
    np.testing.assert_allclose(delta["001/d/bias"], 0.5 / norm, rtol=1e-6)  # scaled, not cut
    assert world.table.client_item(1).privacy == {"within_clip": 0.0}

    assert agent.handle(message(2, {"dp_mode": "client-clip", "dp_clip": norm + 1})) is Outcome.SERVED
    delta = tensors.decode(world.s3.objects[keys.update_key("run-1", 2, "c1")])
    np.testing.assert_array_equal(delta["001/d/bias"], np.ones(2, np.float32))
    assert world.table.client_item(2).privacy == {"within_clip": 1.0}


def test_the_agent_uploads_the_file_the_update_writer_writes_for_its_update_and_item(tmp_path):
    world = World(tmp_path)
    assert world.agent().handle(message(1, {"dp_mode": "client-clip", "dp_clip": 0.5})) is Outcome.SERVED
    uploaded = world.s3.objects[keys.update_key("run-1", 1, "c1")]
    item = world.table.client_item(1)
    data, written = encode_update(
        tensors.decode(uploaded),
        run_id="run-1",
        round_number=1,
        client_id="c1",
        num_examples=N,
        metrics=item.metrics,
        created_at=item.created_at,
        privacy={"within_clip": 0.0},
    )
    assert uploaded == data and item == written


def test_clip_delta_scales_all_tensors_together_in_place():
    delta = {"a": np.full(4, 3.0, np.float32), "b": np.full(1, 4.0, np.float32)}  # norm sqrt(36 + 16)
    assert clip_delta(delta, 1.0) is False
    assert math.sqrt(sum(float(np.sum(t.astype(np.float64) ** 2)) for t in delta.values())) == pytest.approx(1.0)
    assert delta["a"].dtype == np.float32 and delta["b"][0] == pytest.approx(4.0 / math.sqrt(52))
    assert clip_delta(delta, 1.01) is True


# -- configuration and `fedstep clients` ----------------------------------------------------------
GOOD = {"client_id": "client-1", "queue_url": "https://q", "bucket": "b", "table": "t", "data": "digits"}


def test_the_budget_comes_from_the_file_the_environment_or_a_flag_and_is_validated(tmp_path, monkeypatch):
    from client_agent.cli import build_parser, config_overrides
    from client_agent.runner import load_config

    path = tmp_path / "client.json"
    path.write_text(json.dumps({**GOOD, "dp_epsilon_budget": 3, "dp_max_delta": 1e-5}))
    config = agent_config.load(str(path), {})
    assert (config.dp_epsilon_budget, config.dp_max_delta) == (3.0, 1e-5)
    monkeypatch.setenv("FEDSTEP_DP_EPSILON_BUDGET", "2.5")
    assert agent_config.load(str(path), {}).dp_epsilon_budget == 2.5
    args = build_parser().parse_args(
        ["run", "--config", str(path), "--dp-epsilon-budget", "1.5", "--dp-max-delta", "1e-6"]
    )
    loaded = load_config(args.config, config_overrides(args))
    assert (loaded.dp_epsilon_budget, loaded.dp_max_delta) == (1.5, 1e-6)
    assert agent_config.load(None, GOOD).dp_epsilon_budget == 2.5
    monkeypatch.delenv("FEDSTEP_DP_EPSILON_BUDGET")
    assert agent_config.load(None, GOOD).dp_epsilon_budget is None
    for overrides, message_ in [
        ({"dp_epsilon_budget": 0}, "dp_epsilon_budget must be a number > 0"),
        ({"dp_epsilon_budget": "lots"}, "dp_epsilon_budget must be a number, got 'lots'"),
        ({"dp_epsilon_budget": True}, "dp_epsilon_budget must be a number"),
        ({"dp_max_delta": 1.0}, "dp_max_delta must be a number between 0 and 1"),
    ]:
        with pytest.raises(FedstepError, match=message_):
            agent_config.load(None, {**GOOD, **overrides})


NOW = datetime(2026, 11, 21, 12, 0, 0, tzinfo=UTC)


def beat(client_id: str, state: str = "idle", **extra) -> dict:
    seen = (NOW - timedelta(seconds=5)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return Heartbeat(client_id, "0.1.0", state, seen, 60, {}, **extra).to_item()


def test_fedstep_clients_shows_each_clients_epsilon():
    items = {
        "a": beat("a", "training", run_id="run-1", round=3, privacy={"epsilon": 1.234, "delta": 1e-5}),
        "b": beat("b", "declined", run_id="run-1", round=4, privacy={"epsilon": 2.9, "delta": 1e-5}),
        "c": beat("c"),
    }
    rows = statuses(["a", "b", "c"], items, NOW)
    text = render_table(rows)
    header, *lines = text.splitlines()
    assert "EPSILON" in header
    assert "1.23" in lines[0] and "2.90" in lines[1] and "declined run-1 round 4" in lines[1]
    column = header.index("EPSILON")
    assert lines[2][column] == "-"
    shown = {row["client_id"]: row for row in json.loads(render_json(rows))}
    assert (shown["a"]["epsilon"], shown["a"]["delta"], shown["a"]["privacy_run_id"]) == (1.234, 1e-5, "run-1")
    assert shown["c"]["epsilon"] is None


def test_the_budget_counts_every_run_on_the_same_data_a_resumed_one_too(tmp_path):
    ledger = PrivacyLedger.for_client(tmp_path / "cache", "c1")
    first = World(tmp_path).agent(dp_epsilon_budget=100.0)
    assert first.handle(message(1, DP)) is Outcome.SERVED
    spent = ledger.privacy("run-1").epsilon
    assert ledger.epsilon_of_other_runs("run-1-r1") == pytest.approx(spent)
    # a budget the earlier run used up: the resumed run's first round is declined
    resumed = World(tmp_path).agent(dp_epsilon_budget=spent * 1.5)
    assert resumed.handle(message(1, DP, run_id="run-1-r1")) is Outcome.DECLINED


def test_an_agent_whose_role_cannot_read_stop_markers_warns_once_and_serves(tmp_path, caplog):
    """A stack deployed before `fedstep stop` wrote markers: the client role has no grant for them.
    The agent says so once and serves (the server still refuses a stopped run's rounds)."""
    world = World(tmp_path)
    readable = world.table.get_item

    def get_item(key: dict) -> dict | None:
        if key["pk"].startswith(keys.STOP_PK_PREFIX):
            raise ClientError({"Error": {"Code": "AccessDeniedException", "Message": "denied"}}, "GetItem")
        return readable(key)

    world.table.get_item = get_item
    a = world.agent()
    assert a.handle(message(1, {})) is Outcome.SERVED
    assert a.handle(message(2, {})) is Outcome.SERVED
    warned = [r for r in caplog.records if "cannot read whether run run-1 was stopped" in r.getMessage()]
    assert len(warned) == 1 and "AccessDeniedException" in warned[0].getMessage()


def test_an_agent_skips_the_round_of_a_stopped_run_and_says_why(tmp_path, caplog):
    world = World(tmp_path)
    world.table.put(RunStop("run-1", "wrong learning rate", "2026-12-06T16:40:00.000+00:00").to_item())
    a = world.agent()
    assert a.handle(message(1, {})) is Outcome.STALE and a.handle(message(2, {})) is Outcome.STALE
    assert world.trained == [] and not [k for k in world.s3.objects if k.startswith("updates/")]
    [said] = [r.getMessage() for r in caplog.records if "skipped (not trained)" in r.getMessage()]
    assert said == (
        "round 1 of run-1 skipped (not trained): the run was stopped at 2026-12-06T16:40:00.000+00:00: "
        "wrong learning rate"
    )
