"""The agent's side of a secure round (SecAgg+, issue 25): it trains, advertises keys instead of
uploading, shares them with its neighbours, uploads a masked update and reveals the shares the server
needs, its secrets kept in its cache across restarts; a round it cannot finish is said and left.

The agent runs in the test's process against the in-memory fakes of tests/test_client_privacy.py;
the round's other clients and the server are `fedstep.privacy.secagg.protocol` objects."""

from __future__ import annotations

import json
import logging
import os
import stat
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import boto3
import numpy as np
import pytest
from moto import mock_aws
from safetensors.numpy import load as load_safetensors

from client_agent.agent import Agent, Outcome
from client_agent.secure_round import SUPERSEDES, SecretStore
from fedstep.aws.ddb import Items, from_attributes, to_attributes
from fedstep.core import keys, tensors
from fedstep.core.clock import utc_now
from fedstep.core.schemas import (
    MASKED_ENCODING,
    MASKED_TENSOR,
    DeclineItem,
    Feedback,
    ObjectRef,
    RoundMessage,
    RunEndedMessage,
    SecAggInboxItem,
    SecAggKeysItem,
    SecAggPhaseMessage,
    SecAggRevealItem,
    SecAggRoster,
    SecAggRound,
    SecAggShareItem,
    UpdateItem,
)
from fedstep.privacy.secagg.inputs import InputCodec
from fedstep.privacy.secagg.protocol import Advertisement, Client, RoundKey, Server
from tests.test_client_privacy import DP, GLOBAL, WEIGHTS, FakeTable, World
from tests.test_client_privacy import message as plain_message

RUN = "run-1"
ME, PEERS = "c1", ("c2", "c3")
SPEC = SecAggRound(threshold=2, neighbours=2, clip=1.0, max_inputs=3, max_examples=200)
SIZE = 1 + sum(w.size for w in WEIGHTS.values())  # the weight, then the delta's 8 elements


class SecureTable(FakeTable):
    """The fake table, with the calls a secure round adds: a conditional put and a prefix query. Every
    item goes through DynamoDB's attribute values and back (bytes come back as `Binary`)."""

    def put(self, item: dict) -> None:
        super().put(from_attributes(to_attributes(item)))

    def put_if(self, item: dict, condition: str, values: dict) -> bool:
        assert condition == SUPERSEDES  # tested against moto below
        old = self.items.get((item["pk"], item["sk"]))
        if old is not None and not ("attempt" in old and old["attempt"] < values[":attempt"]):
            return False
        self.put(item)
        return True

    def query_prefix(self, pk: str, prefix: str) -> list[dict]:
        return [item for (p, sk), item in sorted(self.items.items()) if p == pk and sk.startswith(prefix)]

    def secagg_items(self, kind: str) -> list[dict]:
        return [item for item in self.items.values() if item.get("kind") == kind]


class SecureWorld(World):
    """One client's queue, bucket and table (`World`), and the round's other clients and its server."""

    def __init__(self, tmp_path, attempt: int = 0) -> None:
        super().__init__(tmp_path)
        self.table = SecureTable()
        self.new_attempt(attempt)

    def new_attempt(self, attempt: int) -> None:
        self.attempt = attempt
        self.key = RoundKey(RUN, 1, attempt)
        self.peers = {c: Client(c, self.key, SPEC.threshold) for c in PEERS}
        self.server = Server(self.key, SPEC.threshold)
        self.peer_inputs = {
            c: np.random.default_rng(i).integers(0, 2**28, SIZE, dtype=np.uint32) for i, c in enumerate(PEERS)
        }

    def round_message(self, **changes) -> dict:
        msg = RoundMessage.parse(json.loads(plain_message(1, changes.pop("instructions", {}))["Body"]))
        msg = replace(msg, attempt=self.attempt, secagg=SPEC, **changes)
        return {"Body": json.dumps(msg.to_dict()), "ReceiptHandle": f"round-{self.attempt}", "MessageId": "m"}

    def phase_message(self, phase: str, members=(ME, *PEERS), dropped=(), issued_at: str | None = None) -> dict:
        msg = SecAggPhaseMessage(
            RUN, 1, self.attempt, phase, self.roster_ref, list(members), issued_at or utc_now(), 600, list(dropped)
        )
        return {"Body": json.dumps(msg.to_dict()), "ReceiptHandle": f"{phase}-{self.attempt}", "MessageId": "m"}

    def keys_item(self) -> SecAggKeysItem:
        key = keys.secagg_keys_item_key(RUN, 1, self.attempt, ME)
        return SecAggKeysItem.parse(self.table.items[key["pk"], key["sk"]])

    def write_roster(self, mine: tuple[bytes, bytes, bytes] | None = None) -> None:
        """Phase 1 closes: the server's roster of the agent's keys item and the peers' adverts, in the bucket."""
        k = self.keys_item()
        adverts = [Advertisement(ME, *(mine or (k.seal_public, k.mask_public, k.seed_commitment)))]
        graph = self.server.write_roster(adverts + [p.advertise() for p in self.peers.values()], SPEC.neighbours, 0)
        values = {c: (a.seal_public, a.mask_public, a.seed_commitment) for c, a in self.server.roster.items()}
        roster = SecAggRoster(RUN, 1, self.attempt, SPEC.threshold, values, graph)
        data = json.dumps(roster.to_json()).encode()
        key = keys.secagg_roster_key(RUN, 1, self.attempt)
        self.s3.objects[key] = data
        self.roster_ref = ObjectRef(key, tensors.sha256_hex(data), len(data))

    def relay(self) -> None:
        """Phase 2 closes: every client's sealed shares into its recipients' inboxes (the agent's in the table)."""
        prefix = keys.secagg_sk(RUN, 1, self.attempt, "SHARE#")
        mine = {i["recipient"]: i["sealed"].value for i in self.table.query_prefix(keys.client_pk(ME), prefix)}
        peers = {c: p.share_keys(self.server.roster, self.server.neighbours[c]) for c, p in self.peers.items()}
        for recipient, inbox in self.server.relay({ME: mine, **peers}).items():
            if recipient == ME:
                for sender, sealed in inbox.items():
                    self.table.put(SecAggInboxItem(RUN, 1, self.attempt, ME, sender, sealed).to_item())
            else:
                self.peers[recipient].receive_shares(inbox)

    def upload_peers(self, uploading=PEERS) -> None:
        for c in uploading:
            masked = self.peers[c].masked_input(self.peer_inputs[c], self.server.shared)
            self.server.receive_input(c, masked)

    def masked_upload(self) -> tuple[bytes, UpdateItem]:
        data = self.s3.objects[keys.update_key(RUN, 1, ME)]
        return data, UpdateItem.parse(self.table.items[tuple(keys.update_item_key(RUN, 1, ME).values())])

    def reveal_item(self) -> SecAggRevealItem:
        key = keys.secagg_reveal_item_key(RUN, 1, self.attempt, ME)
        return SecAggRevealItem.parse(self.table.items[key["pk"], key["sk"]])

    def store(self) -> SecretStore:
        return SecretStore.for_client(self.tmp_path / "cache", ME)


def advertised(world: SecureWorld) -> Agent:
    agent = world.agent()
    assert agent.handle(world.round_message()) is Outcome.ADVANCED
    world.write_roster()
    return agent


def test_a_secure_round_message_trains_and_writes_only_its_keys_item(tmp_path, caplog):
    world = SecureWorld(tmp_path)
    with caplog.at_level(logging.INFO, logger="fedstep.client"):
        assert world.agent().handle(world.round_message()) is Outcome.ADVANCED
    assert len(world.trained) == 1
    assert world.s3.uploads == []  # no update leaves in the advertise phase
    written = {item["kind"] for item in world.table.items.values() if item.get("kind") != "heartbeat"}
    assert written == {"secagg-keys"}
    k = world.keys_item()
    assert (k.run_id, k.round, k.attempt, k.client_id) == (RUN, 1, 0, ME)
    assert world.sqs.deleted == ["round-0"]
    assert "keys advertised; the masked update follows in the round's input phase" in caplog.text


def test_the_kept_input_is_the_clipped_weighted_delta_in_masked_order_in_files_only_the_agent_can_read(tmp_path):
    world = SecureWorld(tmp_path)
    world.agent().handle(world.round_message())
    folder = world.store().folder(RUN, 1, 0)
    assert stat.S_IMODE(os.stat(world.store().directory).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(folder).st_mode) == 0o700
    assert sorted(os.listdir(folder)) == ["input.npy", "round.json"]
    assert all(stat.S_IMODE(os.stat(folder / name).st_mode) == 0o600 for name in os.listdir(folder))
    state = json.loads((folder / "round.json").read_text())  # JSON, no pickle
    advert = Client.restore(state["client"]).advertise()
    assert advert.mask_public == world.keys_item().mask_public  # the advertised keys are the kept ones

    quantised = world.store().input(RUN, 1, 0)
    codec = InputCodec.for_round(SPEC)
    assert quantised.dtype == np.uint32 and quantised.size == SIZE
    assert codec.weights.decode_sum(quantised[:1], 1)[0] == pytest.approx(100 / 200, abs=1e-6)  # N=100 examples
    # the trainer added 1 to each of the 8 weights: clipped to norm 1, weighted by 1/2
    values = codec.values.decode_sum(quantised[1:], 1)
    np.testing.assert_allclose(values, np.full(8, 0.5 / np.sqrt(8)), atol=2 * codec.values.step)


def test_a_client_that_would_exceed_its_budget_declines_before_advertising_anything(tmp_path):
    world = SecureWorld(tmp_path)
    agent = world.agent(dp_epsilon_budget=0.01)
    assert agent.handle(world.round_message(instructions=DP)) is Outcome.DECLINED
    assert world.trained == []
    assert isinstance(world.table.client_item(1), DeclineItem)
    assert world.table.secagg_items("secagg-keys") == []
    assert not world.store().directory.exists()  # no keys were even made


def test_the_share_phase_writes_one_share_item_per_neighbour_that_only_it_can_open(tmp_path):
    world = SecureWorld(tmp_path)
    agent = advertised(world)
    assert agent.handle(world.phase_message("share")) is Outcome.ADVANCED
    shares = [SecAggShareItem.parse(item) for item in world.table.secagg_items("secagg-share")]
    assert sorted(s.recipient for s in shares) == sorted(world.server.neighbours[ME]) == sorted(PEERS)
    for share in shares:
        recipient = world.peers[share.recipient]
        recipient.share_keys(world.server.roster, world.server.neighbours[share.recipient])
        recipient.receive_shares({ME: share.sealed})  # opens and authenticates: it holds c1's shares now
        assert ME in recipient.held
    other = world.peers["c3"] if shares[0].recipient == "c2" else world.peers["c2"]
    with pytest.raises(ValueError, match="not authentic"):
        Client.restore({**other.state(), "client_id": other.client_id}).receive_shares({ME: shares[0].sealed})


@pytest.mark.parametrize("restart", [False, True], ids=["one agent", "a new agent for each phase"])
def test_the_masked_update_summed_with_the_others_unmasks_to_the_quantised_inputs(tmp_path, restart):
    world = SecureWorld(tmp_path)
    agent = advertised(world)
    serving = (lambda: world.agent()) if restart else (lambda: agent)
    assert serving().handle(world.phase_message("share")) is Outcome.ADVANCED
    world.relay()
    mine = world.store().input(RUN, 1, 0)
    assert serving().handle(world.phase_message("input")) is Outcome.ADVANCED

    data, item = world.masked_upload()
    assert (item.encoding, item.attempt, item.num_examples) == (MASKED_ENCODING, 0, 100)
    assert item.update == ObjectRef(keys.update_key(RUN, 1, ME), tensors.sha256_hex(data), len(data))
    assert tensors.read_metadata(data) == item.file_metadata()  # what the server checks the file against
    masked = load_safetensors(data)[MASKED_TENSOR]
    assert masked.dtype == np.uint32 and masked.shape == (SIZE,)
    assert not np.array_equal(masked, mine)  # the input itself never leaves

    world.server.receive_input(ME, masked)
    world.upload_peers()
    assert serving().handle(world.phase_message("reveal")) is Outcome.SERVED
    reveals = {c: p.reveal(set((ME, *PEERS)), set()) for c, p in world.peers.items()}
    total = world.server.unmask({ME: world.reveal_item().shares, **reveals})
    expected = mine.astype(np.uint64) + sum(world.peer_inputs[c].astype(np.uint64) for c in PEERS)
    np.testing.assert_array_equal(total, expected.astype(np.uint32))
    assert world.store().load(RUN, 1, 0) is None  # revealed: the secrets are gone


def test_the_reveal_is_made_once_and_a_redelivered_message_writes_the_same_item(tmp_path, caplog):
    world = SecureWorld(tmp_path)
    agent = advertised(world)
    agent.handle(world.phase_message("share"))
    world.relay()
    agent.handle(world.phase_message("input"))
    world.upload_peers(("c2",))  # c3 drops after sharing its keys
    reveal = world.phase_message("reveal", members=(ME, "c2"), dropped=("c3",))
    assert agent.handle(reveal) is Outcome.SERVED
    first = world.reveal_item()
    assert {owner: kind for owner, (kind, _) in first.shares.items()} == {ME: "seed", "c2": "seed", "c3": "key"}
    folder = world.store().folder(RUN, 1, 0)
    assert os.listdir(folder) == ["reveal.json"]  # its secrets deleted, what it revealed kept

    del world.table.items[tuple(keys.secagg_reveal_item_key(RUN, 1, 0, ME).values())]  # the write was lost
    assert world.agent().handle(reveal) is Outcome.SERVED
    assert world.reveal_item() == first
    other = world.phase_message("reveal", members=(ME, "c2", "c3"))  # asked again, c3 now a survivor
    with caplog.at_level(logging.ERROR, logger="fedstep.client"):
        assert world.agent().handle(other) is Outcome.ALREADY_SERVED
    assert world.reveal_item() == first  # never c3's seed share besides its key's
    assert "asked again with other survivors" in caplog.text


@pytest.mark.parametrize("phase", ["share", "input", "reveal"])
def test_a_phase_message_without_kept_secrets_is_deleted_with_a_clear_log(tmp_path, caplog, phase):
    world = SecureWorld(tmp_path)
    advertised(world)
    world.new_attempt(1)  # the cache holds attempt 0's secrets, not attempt 1's
    with caplog.at_level(logging.WARNING, logger="fedstep.client"):
        assert world.agent().handle(world.phase_message(phase)) is Outcome.STALE
    assert world.sqs.deleted[-1] == f"{phase}-1"
    assert f"the {phase} phase of round 1 of run run-1 (attempt 1): this agent holds no secrets for it" in caplog.text
    assert world.table.secagg_items("secagg-share") == world.table.secagg_items("secagg-reveal") == []


def test_a_stale_phase_message_is_skipped(tmp_path, caplog):
    world = SecureWorld(tmp_path)
    agent = advertised(world)
    old = (datetime.now(UTC) - timedelta(hours=2)).strftime("%Y-%m-%dT%H:%M:%SZ")
    with caplog.at_level(logging.INFO, logger="fedstep.client"):
        assert agent.handle(world.phase_message("share", issued_at=old)) is Outcome.STALE
    assert "the share phase of round 1 of run run-1 (attempt 0) skipped: its deadline (600 s after" in caplog.text
    assert world.table.secagg_items("secagg-share") == []


def test_a_roster_that_does_not_carry_the_clients_own_keys_is_refused(tmp_path, caplog):
    world = SecureWorld(tmp_path)
    advertised(world)
    world.server = Server(world.key, SPEC.threshold)
    forged = Client(ME, world.key, SPEC.threshold).advertise()  # the server swapped in keys of its own
    world.write_roster((forged.seal_public, forged.mask_public, forged.seed_commitment))
    with caplog.at_level(logging.ERROR, logger="fedstep.client"):
        assert world.agent().handle(world.phase_message("share")) is Outcome.REFUSED
    assert world.table.secagg_items("secagg-share") == []
    assert "takes no further part in the attempt: its advertisement in the roster is not the keys it advertised" in (
        caplog.text
    )
    assert world.store().load(RUN, 1, 0) is None


def test_a_rejected_masked_update_is_never_replaced(tmp_path, caplog):
    world = SecureWorld(tmp_path)
    agent = advertised(world)
    agent.handle(world.phase_message("share"))
    world.relay()
    agent.handle(world.phase_message("input"))
    data, item = world.masked_upload()
    feedback = Feedback(ME, RUN, 1, tensors.sha256_hex(data), "the masked update's header is wrong", utc_now())
    world.table.put(feedback.to_item())
    uploads = list(world.s3.uploads)

    with caplog.at_level(logging.ERROR, logger="fedstep.client"):
        assert world.agent().handle(world.phase_message("input")) is Outcome.REFUSED
        assert world.agent().handle(world.round_message()) is Outcome.REFUSED  # the round's message again
    assert world.s3.uploads == uploads and world.masked_upload() == (data, item)
    assert len(world.trained) == 1  # not trained again
    assert "under secure aggregation a masked update is never replaced" in caplog.text


def test_a_retried_round_gets_fresh_keys_and_its_masked_update_replaces_the_earlier_attempts(tmp_path):
    world = SecureWorld(tmp_path)
    agent = advertised(world)
    agent.handle(world.phase_message("share"))
    world.relay()
    agent.handle(world.phase_message("input"))
    first_keys, (_, first_item) = world.keys_item(), world.masked_upload()

    world.new_attempt(1)  # e.g. too few survivors: SecAggThresholdNotMet, the round retried
    agent = advertised(world)
    assert world.keys_item().mask_public != first_keys.mask_public
    assert not world.store().folder(RUN, 1, 0).exists()  # attempt 0's secrets are gone
    agent.handle(world.phase_message("share"))
    world.relay()
    assert agent.handle(world.phase_message("input")) is Outcome.ADVANCED
    _, item = world.masked_upload()
    assert (first_item.attempt, item.attempt) == (0, 1) and item.update.sha256 != first_item.update.sha256


def test_the_end_of_the_run_deletes_its_secure_rounds_secrets(tmp_path):
    world = SecureWorld(tmp_path)
    agent = advertised(world)
    assert world.store().folder(RUN, 1, 0).exists()
    ended = {"Body": json.dumps(RunEndedMessage(RUN, "completed", 1).to_dict()), "ReceiptHandle": "end"}
    assert agent.handle(ended) is Outcome.RUN_ENDED
    assert not (world.store().directory / RUN).exists()


def test_a_masked_update_item_is_written_over_an_earlier_attempts_only_on_dynamodb(tmp_path):
    """The fake's `put_if` and `query_prefix` are DynamoDB's (moto in-process), with the agent's condition."""
    with mock_aws():
        ddb = boto3.client("dynamodb", region_name="us-east-1")
        ddb.create_table(
            TableName="t",
            KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}],
            AttributeDefinitions=[{"AttributeName": n, "AttributeType": "S"} for n in ("pk", "sk")],
            BillingMode="PAY_PER_REQUEST",
        )
        table = Items("t", ddb)
        key = keys.update_key(RUN, 1, ME)
        item = UpdateItem(RUN, 1, ME, 5, ObjectRef(key, "0" * 64, 99), {}, utc_now(), encoding=MASKED_ENCODING)
        for attempt, written in ((1, True), (1, False), (0, False), (2, True)):
            got = table.put_if(replace(item, attempt=attempt).to_item(), SUPERSEDES, {":attempt": attempt})
            assert got is written, attempt
        decline = DeclineItem(RUN, 1, ME, "privacy budget", utc_now()).to_item()
        assert table.put_if(decline, SUPERSEDES, {":attempt": 3}) is True  # over attempt 2's update
        assert table.put_if(replace(item, attempt=4).to_item(), SUPERSEDES, {":attempt": 4}) is False  # declined

        for sender in ("c2", "c3"):
            table.put(SecAggInboxItem(RUN, 1, 0, ME, sender, b"s" * 96).to_item())
        table.put(SecAggInboxItem(RUN, 1, 1, ME, "c2", b"s" * 96).to_item())  # another attempt's
        rows = table.query_prefix(keys.inbox_pk(ME), keys.secagg_sk(RUN, 1, 0, "FROM#"))
        assert [SecAggInboxItem.parse(r).sender for r in rows] == ["c2", "c3"]


def test_a_plain_round_still_uploads_its_update(tmp_path):
    world = SecureWorld(tmp_path)
    assert world.agent().handle(plain_message(1, {})) is Outcome.SERVED
    assert world.s3.uploads == [keys.update_key(RUN, 1, ME)]
    assert world.table.secagg_items("secagg-keys") == [] and not world.store().directory.exists()
    assert tensors.decode(world.s3.objects[keys.update_key(RUN, 1, ME)]).keys() == tensors.decode(GLOBAL).keys()
