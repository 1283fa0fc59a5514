"""Secure aggregation's building blocks (`fedstep.privacy.secagg`): the server learns the exact sum of
the survivors' quantised inputs, whoever drops at which phase, and nothing it is not owed."""

from __future__ import annotations

import numpy as np
import pytest

from fedstep.core.rounds.errors import SecAggThresholdNotMet
from fedstep.privacy.secagg import primitives
from fedstep.privacy.secagg.fixed_point import FixedPoint
from fedstep.privacy.secagg.primitives import SecAggError
from fedstep.privacy.secagg.protocol import Client, RoundKey, Server, neighbourhoods

KEY = RoundKey("run-1", 3, 0)
SIZE = 1000


def _round(n: int, threshold: int, neighbours: int | None = None):
    ids = [f"client-{i}" for i in range(1, n + 1)]
    clients = {cid: Client(cid, KEY, threshold) for cid in ids}
    server = Server(KEY, threshold)
    graph = server.write_roster([c.advertise() for c in clients.values()], neighbours or n - 1, seed=7)
    roster = server.roster
    return clients, server, graph, roster


def _inputs(ids, seed=0):
    rng = np.random.default_rng(seed)
    return {cid: rng.integers(0, 2**29, SIZE, dtype=np.uint32) for cid in ids}


def _shared(n: int, threshold: int, uploading=None, inputs=None):
    """A round of n clients through phase 2 (keys shared and relayed) and the masked `inputs` (default:
    random words) of `uploading` (default: everyone; () for none) received: (clients, server, inputs)."""
    clients, server, graph, roster = _round(n, threshold)
    outboxes = {cid: c.share_keys(roster, graph[cid]) for cid, c in clients.items()}
    for cid, inbox in server.relay(outboxes).items():
        clients[cid].receive_shares(inbox)
    inputs = _inputs(clients) if inputs is None else inputs
    for cid in clients if uploading is None else uploading:
        server.receive_input(cid, clients[cid].masked_input(inputs[cid], server.shared))
    return clients, server, inputs


def test_two_clients_dropping_at_different_phases_leave_the_exact_sum_of_the_survivors():
    # client-4 drops after sharing its keys: it uploads nothing
    clients, server, inputs = _shared(5, threshold=3, uploading=("client-1", "client-2", "client-3", "client-5"))
    survivors, dropped = server.fix_survivors()
    assert dropped == {"client-4"}
    # client-5 drops after uploading: it reveals nothing
    reveals = {cid: clients[cid].reveal(set(survivors), set(dropped)) for cid in ("client-1", "client-2", "client-3")}
    total = server.unmask(reveals)
    expected = sum(inputs[c].astype(np.uint64) for c in ("client-1", "client-2", "client-3", "client-5"))
    assert np.array_equal(total, expected.astype(np.uint32))


def test_a_masked_input_alone_tells_nothing_of_the_input():
    clients, server, _ = _shared(3, threshold=2, uploading=())
    x = np.zeros(SIZE, np.uint32)
    masked = clients["client-1"].masked_input(x, server.shared)
    assert np.count_nonzero(masked) > 0.99 * SIZE  # zeros go out as uniform-looking words
    assert abs(float(masked.mean()) / 2**32 - 0.5) < 0.05


def test_fewer_survivors_than_the_threshold_fail_the_round_by_name():
    _, server, _ = _shared(4, threshold=3, uploading=("client-1", "client-2"))
    with pytest.raises(SecAggThresholdNotMet, match="2 masked input"):
        server.fix_survivors()


def test_too_few_reveals_fail_the_round_by_name():
    clients, server, _ = _shared(4, threshold=3)
    survivors, dropped = server.fix_survivors()
    reveals = {cid: clients[cid].reveal(set(survivors), set(dropped)) for cid in ("client-1", "client-2")}
    with pytest.raises(SecAggThresholdNotMet, match=r"share\(s\) of client-1.s seed, 3 needed"):
        server.unmask(reveals)


def test_the_survivors_are_fixed_once_and_a_client_never_reveals_both_secrets_of_one_client():
    clients, server, inputs = _shared(4, threshold=2, uploading=("client-1", "client-2", "client-3"))
    first = server.fix_survivors()
    with pytest.raises(SecAggError, match="too late"):  # a late input cannot change the survivors
        server.receive_input("client-4", clients["client-4"].masked_input(inputs["client-4"], server.shared))
    assert server.fix_survivors() == first  # a second invocation takes over the same sets
    revealed = clients["client-1"].reveal(set(first[0]), set(first[1]))
    assert {owner: kind for owner, (kind, _) in revealed.items()} == {
        "client-1": "seed",  # its own share, kept when it shared
        "client-2": "seed",
        "client-3": "seed",
        "client-4": "key",
    }
    with pytest.raises(SecAggError, match="already"):  # asked again (say, with client-4 a survivor): refused
        clients["client-1"].reveal({"client-2", "client-3", "client-4"}, set())
    with pytest.raises(SecAggError, match="both survived and dropped"):
        clients["client-2"].reveal({"client-1", "client-4"}, {"client-4"})


def test_a_tampered_or_misaddressed_share_is_refused_naming_its_sender():
    clients, server, graph, roster = _round(3, threshold=2)
    outboxes = {cid: c.share_keys(roster, graph[cid]) for cid, c in clients.items()}
    inboxes = server.relay(outboxes)
    sealed = bytearray(inboxes["client-1"]["client-2"])
    sealed[-1] ^= 1
    with pytest.raises(SecAggError, match=r"the share client-2 sent client-1: .*not authentic"):
        clients["client-1"].receive_shares({"client-2": bytes(sealed)})
    with pytest.raises(SecAggError, match="not authentic"):  # sealed for client-3, given to client-1
        clients["client-1"].receive_shares({"client-2": inboxes["client-3"]["client-2"]})
    with pytest.raises(SecAggError, match="at least"):
        clients["client-1"].receive_shares({"client-2": b"short"})


def test_a_wrong_revealed_share_is_caught_against_the_roster():
    clients, server, _ = _shared(3, threshold=2)
    survivors, dropped = server.fix_survivors()
    reveals = {cid: clients[cid].reveal(set(survivors), set(dropped)) for cid in clients}
    kind, good = reveals["client-2"]["client-1"]
    reveals["client-2"]["client-1"] = (kind, good[:2] + bytes(32))  # a lie about client-1's seed
    del reveals["client-3"]["client-1"]  # no spare share to outvote it
    with pytest.raises(SecAggError, match="client-1's seed do not recover what it advertised"):
        server.unmask(reveals)


def test_a_wrong_revealed_share_is_outvoted_by_spare_shares():
    clients, server, inputs = _shared(3, threshold=2)
    survivors, dropped = server.fix_survivors()
    reveals = {cid: clients[cid].reveal(set(survivors), set(dropped)) for cid in clients}
    kind, good = reveals["client-2"]["client-1"]
    reveals["client-2"]["client-1"] = (kind, good[:2] + bytes(32))
    expected = sum((inputs[c].astype(np.uint32) for c in clients), np.zeros_like(inputs["client-1"]))
    np.testing.assert_array_equal(server.unmask(reveals), expected)


def test_a_slice_of_the_masks_is_the_same_slice_of_the_whole():
    seed = primitives.random_secret()
    whole = primitives.mask(seed, 0, 1003)
    for offset, count in ((0, 1), (1, 5), (3, 17), (4, 4), (997, 6)):
        assert np.array_equal(primitives.mask(seed, offset, count), whole[offset : offset + count])
    assert not np.array_equal(primitives.mask(primitives.random_secret(), 0, 16), whole[:16])


def test_shamir_recovers_from_any_threshold_shares_and_refuses_fewer():
    secret = primitives.random_secret()
    shares = primitives.share(secret, 3, 5)
    assert primitives.recover(shares[2:], 3) == secret
    assert primitives.recover([shares[4], shares[0], shares[2]], 3) == secret
    with pytest.raises(SecAggError, match="2 share"):
        primitives.recover(shares[:2], 3)
    with pytest.raises(SecAggError, match="distinct index"):
        primitives.recover([shares[0], shares[0], shares[1]], 3)


def test_neighbourhoods_are_symmetric_and_of_the_size_asked():
    ids = [f"c{i:02d}" for i in range(30)]
    graph = neighbourhoods(ids, 6, seed=1)
    assert all(len(n) == 6 for n in graph.values())
    assert all(i in graph[j] for i, ns in graph.items() for j in ns)
    assert neighbourhoods(ids[:5], 8, seed=1)["c00"] == ["c01", "c02", "c03", "c04"]  # the complete graph


def test_fixed_point_sums_within_the_quantisation_error_and_leaves_headroom():
    rng = np.random.default_rng(0)
    fp = FixedPoint.for_sum(bound=1.0, max_inputs=30)
    assert fp.bits == 27
    values = [rng.uniform(-1.5, 1.5, 500) for _ in range(30)]
    total = np.zeros(500, np.uint32)
    for v in values:
        total = total + fp.encode(v, rng)
    expected = sum(np.clip(v, -1, 1) for v in values)
    assert np.max(np.abs(fp.decode_sum(total, 30) - expected)) <= 30 * fp.step
    with pytest.raises(ValueError, match="headroom"):
        fp.decode_sum(total, 33)
    with pytest.raises(ValueError, match="non-finite"):
        fp.encode(np.array([np.nan]), rng)


def test_a_restarted_client_finishes_its_round_from_its_kept_state():
    import json

    clients, server, graph, roster = _round(3, threshold=2)
    outboxes = {cid: c.share_keys(roster, graph[cid]) for cid, c in clients.items()}
    for cid, inbox in server.relay(outboxes).items():
        clients[cid].receive_shares(inbox)
    kept = json.loads(json.dumps(clients["client-2"].state()))  # written to its cache, read back after a restart
    clients["client-2"] = Client.restore(kept)
    inputs = _inputs(clients)
    for cid in clients:
        server.receive_input(cid, clients[cid].masked_input(inputs[cid], server.shared))
    survivors, dropped = server.fix_survivors()
    reveals = {cid: clients[cid].reveal(set(survivors), set(dropped)) for cid in clients}
    assert np.array_equal(server.unmask(reveals), sum(v.astype(np.uint64) for v in inputs.values()).astype(np.uint32))
    with pytest.raises(SecAggError, match="not a secure-aggregation client state"):
        Client.restore({"client_id": "client-2"})


def _secure_sum(encoded: dict[str, np.ndarray], threshold: int, drop_after_sharing: tuple[str, ...] = ()):
    uploading = [cid for cid in encoded if cid not in drop_after_sharing]
    clients, server, _ = _shared(len(encoded), threshold, uploading, encoded)
    survivors, dropped = server.fix_survivors()
    reveals = {cid: clients[cid].reveal(set(survivors), set(dropped)) for cid in survivors}
    return server.unmask(reveals), len(survivors)


def test_the_unmasked_sum_gives_fedavg_s_step_over_the_survivors_within_the_quantisation_error():
    from fedstep.privacy.secagg.inputs import InputCodec

    rng = np.random.default_rng(3)
    codec = InputCodec(clip=2.0, max_examples=1000, max_inputs=5)
    ids = [f"client-{i}" for i in range(1, 6)]
    deltas = {cid: rng.normal(0, s, 300) for cid, s in zip(ids, (0.01, 0.05, 0.2, 1.0, 0.1), strict=True)}
    examples = dict(zip(ids, (50, 400, 2500, 120, 7), strict=True))  # client-3 above the cap
    encoded = {cid: codec.encode(deltas[cid], examples[cid], rng) for cid in ids}
    total, survivors = _secure_sum(encoded, threshold=3, drop_after_sharing=("client-5",))
    found_examples, found = codec.mean_delta(total, survivors)

    kept = ids[:4]
    clipped = {c: deltas[c] * min(1.0, 2.0 / np.linalg.norm(deltas[c])) for c in kept}
    w = {c: min(examples[c], 1000) for c in kept}
    expected = sum(w[c] * clipped[c] for c in kept) / sum(w.values())
    assert found_examples == pytest.approx(sum(w.values()), abs=1e-3)
    bound = survivors * codec.values.step / (sum(w.values()) / 1000) + 1e-6
    assert np.max(np.abs(found - expected)) <= bound


def test_a_sum_no_honest_survivors_could_give_is_refused_by_name():
    from fedstep.core.rounds.errors import InvalidAggregate
    from fedstep.privacy.secagg.inputs import InputCodec

    rng = np.random.default_rng(0)
    codec = InputCodec(clip=1.0, max_examples=100, max_inputs=3)
    honest = sum(codec.encode(rng.normal(0, 0.1, 50), 10, rng).astype(np.uint64) for _ in range(3)).astype(np.uint32)
    codec.mean_delta(honest, 3)
    no_weight = honest.copy()
    no_weight[0] = codec.weights.encode(np.array([-1.0]), rng)[0] * 3  # the weights sum to zero or less
    with pytest.raises(InvalidAggregate, match="weight"):
        codec.mean_delta(no_weight, 3)
    too_far = honest.copy()
    too_far[1:] = np.uint32(2**32 - 1)  # every element at the top of the range
    with pytest.raises(InvalidAggregate, match="outside the range the survivors"):
        codec.mean_delta(too_far, 3)
    with pytest.raises(ValueError, match="not finite"):
        codec.encode(np.array([np.inf]), 10, rng)


def test_the_secure_aggregation_bench_checks_the_sum_and_counts_the_bytes():
    from bench_modules import load_bench

    bench = load_bench("secure_aggregation", "secure_aggregation_bench")
    figures = bench.one_round(clients=4, parameters=500, drop=1)
    assert (figures["neighbours"], figures["threshold"]) == (3, 2)
    assert figures["plain_sent"] == 2000 < figures["sent"] < 2000 + 1000  # the masked input, plus keys and shares
    assert figures["max_error"] <= 3 * figures["step"] * 500
    assert bench.neighbours_for(30) == 10 and bench.threshold_for(10) == 6


def test_a_neighbourhood_that_holds_exactly_the_threshold_of_shares_with_its_owner_unmasks_the_sum():
    # every client shares t-of-(k + 1) among its k neighbours and itself: k + 1 = t is enough
    for n, threshold, neighbours in ((3, 3, 2), (6, 3, 2)):  # the complete graph of t; a ring of k = t - 1
        ids = [f"client-{i}" for i in range(1, n + 1)]
        clients = {cid: Client(cid, KEY, threshold) for cid in ids}
        server = Server(KEY, threshold)
        graph = server.write_roster([c.advertise() for c in clients.values()], neighbours, seed=7)
        assert {len(graph[cid]) for cid in ids} == {threshold - 1}
        outboxes = {cid: c.share_keys(server.roster, graph[cid]) for cid, c in clients.items()}
        for cid, inbox in server.relay(outboxes).items():
            clients[cid].receive_shares(inbox)
        inputs = _inputs(ids)
        for cid in ids:
            server.receive_input(cid, clients[cid].masked_input(inputs[cid], server.shared))
        survivors, dropped = server.fix_survivors()
        total = server.unmask({cid: clients[cid].reveal(set(survivors), set(dropped)) for cid in ids})
        assert np.array_equal(total, sum(inputs[c].astype(np.uint64) for c in ids).astype(np.uint32))


def test_a_neighbourhood_too_small_for_the_threshold_is_refused_when_keys_are_shared():
    clients, _, graph, roster = _round(4, threshold=4, neighbours=2)  # a ring of 2: 3 holders, 4 needed
    with pytest.raises(SecAggThresholdNotMet, match="has 2 neighbours, 3 needed"):
        clients["client-1"].share_keys(roster, graph["client-1"])
