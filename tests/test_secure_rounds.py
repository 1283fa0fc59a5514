"""A secure round's phases on the in-memory ports: the server closes each phase once, relays shares
unopened, fixes the survivors once and learns only the sum of the survivors' inputs.

The clients here are `fedstep.local.secure_clients.SecureClient`s, as the memory engine's are (a
`protocol.Client` each, driven as the agent drives it); the server side is the aggregation
function's core (`fedstep.core.rounds.secure`) with the `SecAggServer` port, exactly as the Lambda
runs it."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from fedstep.core import keys, tensors
from fedstep.core.rounds import secure
from fedstep.core.rounds.errors import SecAggThresholdNotMet
from fedstep.core.rounds.settings import AggregationSettings
from fedstep.core.schemas import (
    RoundMessage,
    SecAggPhaseMessage,
    SecAggRevealItem,
    SecAggSettings,
    SecAggShareItem,
    masked_order,
)
from fedstep.local.secure_clients import SecureClient
from fedstep.privacy.secagg.inputs import InputCodec
from fedstep.privacy.secagg.server import SecAggServer
from tests.round_world import GLOBAL, RUN, World, make_run

T = "2026-12-07T10:00:00+00:00"
SETTINGS = AggregationSettings(secure=SecAggServer())
CLIENTS = ("a", "b", "c", "d", "e")


class SimClient(SecureClient):
    """One client of the round, doing what the agent does in each phase (`fedstep.local.secure_clients`),
    its delta `value` in every element."""

    def __init__(self, world: World, client_id: str, message: RoundMessage, value: float, examples: int) -> None:
        self.world = world
        self.delta = {k: np.full(v.shape, value, np.float32) for k, v in GLOBAL.items()}
        super().__init__(
            world.store, world.table, client_id, message, self.delta, examples, np.random.default_rng(7),
            metrics={"train_loss": 1.0}, created_at=T,
        )  # fmt: skip

    def upload(self, phase: SecAggPhaseMessage, data: bytes | None = None) -> str | None:
        """Its masked input, or (`data`) other bytes in its place under the same item."""
        if data is None:
            return super().upload(phase)
        _, item = self.masked_input(phase)
        self.world.store.put(item.update.key, data)
        self.world.table.put(item.to_item())
        return item.update.key


def secure_world(threshold: int = 3, clients: tuple[str, ...] = CLIENTS, dp=None) -> World:
    run = replace(
        make_run(quorum=threshold, clients=clients, min_participants=threshold, dp=dp),
        secagg=SecAggSettings(threshold=threshold, clip=10.0),
    )
    world = World(run)
    world.publish()
    return world


def advance(world: World, settings: AggregationSettings = SETTINGS) -> dict | None:
    return secure.advance_secure_round(
        world.run, 1, store=world.store, table=world.table, reporter=world.reporter, settings=settings
    )


def open_phase(world: World, phase: str) -> SecAggPhaseMessage:
    message = secure.publish_phase(
        RUN, 1, 0, phase, f"tok-{phase}", T,
        store=world.store, table=world.table, publisher=world.publisher, reporter=world.reporter,
    )  # fmt: skip
    assert message is not None
    return message


def at_deadline(world: World, phase: str) -> dict:
    return secure.close_at_deadline(RUN, 1, phase, store=world.store, table=world.table, settings=SETTINGS)


def start(world: World, values: dict[str, float]) -> dict[str, SimClient]:
    message = RoundMessage.parse(world.publisher.messages[-1][0])
    sims = {c: SimClient(world, c, message, v, examples=10 * (i + 1)) for i, (c, v) in enumerate(values.items())}
    for sim in sims.values():
        sim.advertise()
    return sims


def expected_mean(sims: list[SimClient], message: RoundMessage) -> np.ndarray:
    """FedAvg's step from the exact sum of these clients' quantised inputs."""
    assert message.secagg is not None
    total = np.zeros_like(sims[0].quantised)
    for sim in sims:
        total = total + sim.quantised
    return InputCodec.for_round(message.secagg).mean_delta(total, len(sims))[1]


def _to_input(world: World, values: dict[str, float]) -> tuple[dict[str, SimClient], SecAggPhaseMessage]:
    """Every client advertised and shared its keys; the input phase opened: (clients, its message)."""
    sims = start(world, values)
    advance(world)
    share = open_phase(world, "share")
    for sim in sims.values():
        sim.share(share)
    advance(world)
    return sims, open_phase(world, "input")


def test_round_message_carries_the_secure_part_and_the_first_phase_closes_with_the_roster():
    world = secure_world()
    message = RoundMessage.parse(world.publisher.messages[-1][0])
    assert message.secagg is not None and message.secagg.threshold == 3 and message.secagg.max_inputs == 5
    start(world, {c: 0.1 for c in CLIENTS})
    assert advance(world) == {"secagg": {"phase": "share"}}
    assert world.reporter.successes[-1] == ("tok-1", {"secagg": {"phase": "share"}})
    share = open_phase(world, "share")
    assert sorted(share.members) == list(CLIENTS)
    roster = secure.read_roster(world.store, share.roster)
    assert set(roster.neighbours["a"]) == {"b", "c", "d", "e"}
    assert advance(world) is None  # nothing new: the share phase waits for its shares


def test_two_dropouts_at_different_phases_still_give_the_exact_sum_of_the_survivors():
    """e drops after sharing its keys (never uploads); d drops after uploading (never reveals)."""
    world = secure_world()
    message = RoundMessage.parse(world.publisher.messages[-1][0])
    sims = start(world, {"a": 0.1, "b": -0.2, "c": 0.3, "d": 0.05, "e": 0.4})
    advance(world)
    share = open_phase(world, "share")
    for sim in sims.values():
        sim.share(share)
    assert advance(world) == {"secagg": {"phase": "input"}}
    inputs = open_phase(world, "input")
    for c in "abcd":
        sims[c].upload(inputs)
    assert advance(world) is None  # e's input is still awaited
    assert at_deadline(world, "input") == {"secagg": {"phase": "reveal"}}
    reveal = open_phase(world, "reveal")
    assert sorted(reveal.members) == ["a", "b", "c", "d"] and reveal.dropped == ["e"]
    for c in "abc":
        sims[c].reveal(reveal)
    output = at_deadline(world, "reveal")
    assert output["summary"]["participants"] == 4
    new = world.new_global()
    mean = expected_mean([sims[c] for c in "abcd"], message)
    names = masked_order(list(GLOBAL))
    flat = np.concatenate([(new[n] - GLOBAL[n]).ravel() for n in names])
    np.testing.assert_allclose(flat, mean.astype(np.float32), rtol=0, atol=1e-6)
    # plain FedAvg of the same deltas, within the quantisation error: n steps of the sum over sum(w)
    weights = np.array([sims[c].examples for c in "abcd"], np.float64)
    plain = sum(w * sims[c].delta[names[0]].ravel()[0] for w, c in zip(weights, "abcd", strict=True)) / weights.sum()
    codec = InputCodec.for_round(message.secagg)
    w_sum = weights.sum() / codec.max_examples
    error = 4 * codec.values.step / w_sum + abs(plain) * 4 * codec.weights.step / w_sum
    assert abs(flat[0] - plain) <= error


def test_fewer_than_t_advertising_fails_the_round_as_threshold_not_met():
    world = secure_world()
    message = RoundMessage.parse(world.publisher.messages[-1][0])
    SimClient(world, "a", message, 0.1, 10).advertise()
    SimClient(world, "b", message, 0.1, 10).advertise()
    with pytest.raises(SecAggThresholdNotMet, match="2 of 5 clients completed the advertise phase"):
        at_deadline(world, "advertise")


def test_a_malformed_masked_input_is_excluded_and_its_owner_counted_as_dropped():
    world = secure_world()
    sims, inputs = _to_input(world, {c: 0.1 * (i + 1) for i, c in enumerate(CLIENTS)})
    for c in "abcd":
        sims[c].upload(inputs)
    sims["e"].upload(inputs, data=b"\x00" * 40)  # not a masked input: its size, sha256 and header are wrong
    assert advance(world) == {"secagg": {"phase": "reveal"}}
    reveal = open_phase(world, "reveal")
    assert reveal.dropped == ["e"]
    feedback = world.table.get(keys.rejection_item_key("e", RUN))
    assert feedback is not None and "masked input refused" in feedback["reason"]
    for c in "abcd":
        sims[c].reveal(reveal)
    output = advance(world)
    assert output is not None and output["summary"]["participants"] == 4


def test_the_survivor_set_is_written_once_and_a_takeover_reuses_it():
    world = secure_world()
    sims, inputs = _to_input(world, {c: 0.1 for c in CLIENTS})
    for c in "abc":
        sims[c].upload(inputs)
    attempt = secure.load_attempt(world.table, world.run, 1)
    assert attempt is not None
    secure.close_input(world.store, world.table, attempt)  # the first invocation fixes a, b, c
    survivors = world.table.get(keys.secagg_survivors_key(RUN, 1, 0))
    sims["d"].upload(inputs)  # too late: the survivors are fixed
    # a second invocation (its closer crashed before the phase record said so) closes again
    world.table.update_where(keys.secagg_phase_key(RUN, 1, 0, "input"), {"status": "open"}, ("closed",))
    retaken = secure.load_attempt(world.table, world.run, 1)
    assert retaken is not None
    secure.close_input(world.store, world.table, retaken)
    assert world.table.get(keys.secagg_survivors_key(RUN, 1, 0)) == survivors
    reveal = open_phase(world, "reveal")
    assert sorted(reveal.members) == ["a", "b", "c"] and reveal.dropped == ["d", "e"]


def _through_reveal(world: World, values: dict[str, float]) -> tuple[dict[str, SimClient], SecAggPhaseMessage]:
    sims, inputs = _to_input(world, values)
    for sim in sims.values():
        sim.upload(inputs)
    advance(world)
    return sims, open_phase(world, "reveal")


def test_only_the_unmasked_sum_is_decoded(monkeypatch):
    """No update file is read as float tensors: the masked files are summed as uint32, and the one
    array decoded into floats is the unmasked sum."""
    from fedstep.core import update_source

    def forbidden(*args, **kwargs):
        raise AssertionError("an update was decoded as floats")

    monkeypatch.setattr(update_source, "read_update", forbidden)
    decoded: list[int] = []
    real = InputCodec.mean_delta

    def spy(self, total, survivors):
        decoded.append(survivors)
        return real(self, total, survivors)

    monkeypatch.setattr(InputCodec, "mean_delta", spy)
    world = secure_world(clients=("a", "b", "c"))
    sims, reveal = _through_reveal(world, {"a": 0.1, "b": 0.2, "c": 0.3})
    for sim in sims.values():
        sim.reveal(reveal)
    assert advance(world) is not None
    assert decoded == [3]  # one sum of three inputs
    assert tensors.decode(world.store.get(world.table.get_round(RUN, 1)["global_model"]["key"]))


def _lie(world: World, sim: SimClient, reveal: SecAggPhaseMessage) -> None:
    """`sim` reveals shares with flipped bits (well-formed, wrong)."""
    shares = sim.proto.reveal(set(reveal.members), set(reveal.dropped))
    forged = {o: (kind, share[:2] + bytes(b ^ 0xFF for b in share[2:])) for o, (kind, share) in shares.items()}
    world.table.put(SecAggRevealItem(RUN, 1, 0, sim.id, T, forged).to_item())


def test_a_lying_reveal_is_outvoted_when_more_than_t_shares_came():
    world = secure_world()
    sims, reveal = _through_reveal(world, {c: 0.1 for c in CLIENTS})
    _lie(world, sims["a"], reveal)
    for c in "bcde":
        sims[c].reveal(reveal)
    output = advance(world)
    assert output is not None and output["summary"]["participants"] == 5


def test_a_lying_reveal_without_spare_shares_fails_the_round_by_name_and_publishes_nothing():
    from fedstep.core.rounds.errors import InvalidAggregate

    world = secure_world(clients=("a", "b", "c"))
    sims, reveal = _through_reveal(world, {"a": 0.1, "b": 0.2, "c": 0.3})
    _lie(world, sims["a"], reveal)
    for c in "bc":
        sims[c].reveal(reveal)
    assert advance(world) is None
    [(token, error, cause)] = world.reporter.failures
    assert (token, error) == ("tok-reveal", InvalidAggregate.__name__) and "a share is wrong" in cause
    assert [k for k in world.store.objects if "/global-" in k and k not in world.store.deleted] == [world.initial.key]
    assert world.table.get_round(RUN, 1)["status"] == "open"  # given back: the retry gets fresh keys


def test_a_malformed_share_leaves_its_sender_out_of_the_round_and_nothing_else_is_lost():
    world = secure_world()
    sims = start(world, {c: 0.1 * (i + 1) for i, c in enumerate(CLIENTS)})
    advance(world)
    share = open_phase(world, "share")
    for c in "abcd":
        sims[c].share(share)
    sims["e"].share(share)
    bad = SecAggShareItem(RUN, 1, 0, "e", "a", b"x" * 96, T).to_item()
    world.table.put({**bad, "sealed": b"x" * 95})  # one share a byte short: its schema refuses it
    assert at_deadline(world, "share") == {"secagg": {"phase": "input"}}
    inputs = open_phase(world, "input")
    assert sorted(inputs.members) == ["a", "b", "c", "d"]
    assert world.table.query_items(keys.inbox_pk("a"), keys.secagg_sk(RUN, 1, 0, "FROM#e")) == []
    for c in "abcd":
        sims[c].upload(inputs)
    advance(world)
    reveal = open_phase(world, "reveal")
    for c in "abcd":
        sims[c].reveal(reveal)
    output = advance(world)
    assert output is not None and output["summary"]["participants"] == 4


def test_distributed_noise_of_t_clients_sums_to_the_target_std():
    """Each client adds discrete Gaussian noise of std sigma / sqrt(t) on the fixed-point grid; the
    unmasked sum of t inputs carries std sigma, and the mean sigma / t (weights 1 under distributed DP)."""
    from fedstep.core.schemas import SecAggRound

    t, sigma, size = 4, 0.8, 40_000
    spec = SecAggRound(threshold=t, neighbours=0, clip=1.0, max_inputs=t, max_examples=1, noise_stddev=sigma / t**0.5)
    codec = InputCodec.for_round(spec)
    rng = np.random.default_rng(3)
    total = np.zeros(size + 1, np.uint32)
    for _ in range(t):
        total = total + codec.encode(np.zeros(size), 1, rng)
    examples, mean = codec.mean_delta(total, t)
    assert examples == pytest.approx(t)
    assert float(np.std(mean)) == pytest.approx(sigma / t, rel=0.03)
    assert abs(float(np.mean(mean))) < 5 * sigma / t / size**0.5


def test_a_secure_rounds_records_and_messages_stay_inside_the_service_limits_at_the_most_clients():
    """With a run's most clients (ids of 64 characters), all in one complete graph: the reveal phase's
    message (SNS), the survivors record, the phase record and a client's reveal item (DynamoDB)."""
    from fedstep.core import limits
    from fedstep.core.schemas import ObjectRef
    from fedstep.memory.sizes import record_bytes

    ids = [f"client-{i:057d}" for i in range(limits.MAX_CLIENTS_PER_RUN)]
    run_id, half = "r" * 64, len(ids) // 2
    roster = ObjectRef(keys.secagg_roster_key(run_id, 99_999, 99), "0" * 64, 10**6)
    message = SecAggPhaseMessage(run_id, 99_999, 99, "reveal", roster, ids[:half], T, 3600, ids[half:])
    assert record_bytes(message.to_dict()) + record_bytes(ids[:half]) <= limits.SNS_MESSAGE_BYTES
    version = "v" * 32  # S3 version ids are 32 characters
    pinned = {c: {"sha256": "0" * 64, "bytes": 2**40, "version": version} for c in ids}
    survivors = {**keys.secagg_survivors_key(run_id, 99_999, 99), **secure.survivors_record(ids, pinned)}
    phase = {
        **keys.secagg_phase_key(run_id, 99_999, 99, "input"),
        "kind": secure.PHASE_KIND, "status": secure.CLOSED, "task_token": "t" * 2048, "issued_at": T,
        "closed_at": T, "members": ids, "next": ids,
    }  # fmt: skip
    reveal = SecAggRevealItem(run_id, 99_999, 99, ids[0], T, {c: ("seed", b"s" * 34) for c in ids}).to_item()
    for item in (survivors, phase, reveal):
        assert record_bytes(item) <= limits.DYNAMODB_ITEM_BYTES, item[keys.SK]


def test_a_distributed_dp_round_reports_the_published_models_epsilon_and_the_operators():
    from fedstep.core.schemas import DPSettings
    from fedstep.privacy import lazy_client_epsilon, lazy_operator_epsilon

    dp = DPSettings("distributed", noise_multiplier=1.0, clip=10.0, delta=1e-5)
    world = secure_world(clients=("a", "b", "c"), dp=dp)
    message = RoundMessage.parse(world.publisher.messages[-1][0])
    assert message.secagg is not None and message.secagg.max_examples == 1  # every weight 1
    assert message.secagg.noise_stddev == pytest.approx(1.0 * 10.0 / 3**0.5)
    sims, reveal = _through_reveal(world, {"a": 0.1, "b": 0.2, "c": 0.3})
    for sim in sims.values():
        sim.reveal(reveal)
    settings = AggregationSettings(
        secure=SecAggServer(), accountant=lazy_client_epsilon, operator_accountant=lazy_operator_epsilon
    )
    output = advance(world, settings)
    assert output is not None
    summary = world.table.get_round(RUN, 1)
    assert summary["epsilon"] > 0 and summary["operator_epsilon"] >= summary["epsilon"]
    assert summary["noisy_releases"] == 1  # the noisy sum counted before it was unmasked


def test_a_model_larger_than_a_slice_is_unmasked_slice_by_slice_into_the_same_model():
    """Each slice reads its own range of every masked file and removes the masks from that range alone
    (the plan keeps the masks' seeds); the assembled model is the one-function aggregation's."""
    from fedstep.core.rounds import assemble_round
    from fedstep.core.rounds.slices import aggregate_slice
    from fedstep.core.schemas import ObjectRef

    values = {"a": 0.1, "b": -0.2, "c": 0.3, "d": 0.05, "e": 0.4}
    models = []
    for slice_bytes in (None, 8):  # 8 bytes: two elements a slice, four slices
        world = secure_world()
        sims, reveal = _through_reveal(world, values)
        for sim in sims.values():
            sim.reveal(reveal)
        output = advance(world, AggregationSettings(secure=SecAggServer(), slice_bytes=slice_bytes))
        assert output is not None
        if slice_bytes is not None:
            plan = ObjectRef(**output["sliced"]["plan"])
            assert output["sliced"]["slices"] == [0, 1, 2, 3]
            results = [aggregate_slice(plan, i, world.store, SecAggServer()) for i in output["sliced"]["slices"]]
            output = assemble_round(plan, results, store=world.store, table=world.table)
        assert output["summary"]["participants"] == 5
        models.append(world.new_global())
    for name in GLOBAL:
        np.testing.assert_array_equal(models[0][name], models[1][name])


def test_a_client_flooding_its_partition_with_shares_makes_the_server_read_no_more_than_its_neighbours():
    """The attack: a client writes 500 share items to made-up recipients. The server reads each
    member's shares by key, one per neighbour of the roster, so the flood is never read and the
    phase closes as it would have."""
    world = secure_world()
    sims = start(world, {c: 0.1 for c in CLIENTS})
    advance(world)
    share = open_phase(world, "share")
    for sim in sims.values():
        sim.share(share)
    for i in range(500):
        junk = SecAggShareItem(RUN, 1, 0, "e", f"nobody-{i}", b"j" * 96, T).to_item()
        world.table.put(junk)
    read: list[str] = []  # the sort keys of every share item the server is handed, however it asks
    get_items, query_items = world.table.get_items, world.table.query_items

    def counted(found: list[dict]) -> list[dict]:
        read.extend(i[keys.SK] for i in found if "#SHARE#" in i[keys.SK])
        return found

    world.table.get_items = lambda item_keys: counted(get_items(item_keys))  # type: ignore[method-assign]
    world.table.query_items = lambda pk, prefix: counted(query_items(pk, prefix))  # type: ignore[method-assign]
    assert advance(world) == {"secagg": {"phase": "input"}}
    assert len(read) <= 2 * len(CLIENTS) * (len(CLIENTS) - 1)  # the readiness check and the close
    assert not any("nobody-" in sk for sk in read)
    inputs = open_phase(world, "input")
    assert sorted(inputs.members) == list(CLIENTS)
