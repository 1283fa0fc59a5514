"""Secure aggregation's own cost (issue 25, in progress): one SecAgg+ round of `fedstep.privacy.secagg`
in memory, against plain FedAvg's upload, for 3, 10 and 30 clients and a 100k-parameter model.

    .venv/bin/python bench/secure_aggregation.py [--parameters 100000] [--clients 3 10 30] [--drop 1]

Per round it prints, for one client: the bytes it sends (its keys, its sealed shares, its masked
input, its revealed shares) and receives (the roster, its inbox of shares, the survivor list), and
its compute time (keys, sharing, masking, revealing); for the server: the time to relay the shares
and to unmask the sum (with `--drop` clients dropping after sharing their keys, whose pairwise masks
it must then remove). Plain FedAvg's client sends its float32 update (4 bytes a parameter) and the
server adds the updates. Not timed: the round's phases on the local cloud (Step Functions states,
DynamoDB items, S3 objects), which the round's wiring will add (the issue's next step).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fedstep.privacy.secagg.fixed_point import FixedPoint
from fedstep.privacy.secagg.protocol import Client, RoundKey, Server

ADVERT_BYTES = 32 + 32 + 32  # two X25519 public keys and the seed's sha256
ID_BYTES = 16  # a client id on the wire (about)


def neighbours_for(clients: int) -> int:
    """SecAgg+'s neighbourhood: everyone for up to 10 clients, else 2 ceil(log2 n) (even), as its paper
    scales it."""
    return clients - 1 if clients <= 10 else 2 * math.ceil(math.log2(clients))


def threshold_for(neighbours: int) -> int:
    return neighbours // 2 + 1


def one_round(clients: int, parameters: int, drop: int, seed: int = 0) -> dict[str, float]:
    rng = np.random.default_rng(seed)
    key = RoundKey("bench", 1, 0)
    k = neighbours_for(clients)
    t = threshold_for(k)
    ids = [f"client-{i:03d}" for i in range(1, clients + 1)]
    fp = FixedPoint.for_sum(bound=1.0, max_inputs=clients)
    updates = {cid: rng.uniform(-1, 1, parameters).astype(np.float32) for cid in ids}

    started = time.perf_counter()
    parties = {cid: Client(cid, key, t) for cid in ids}
    adverts = [c.advertise() for c in parties.values()]
    client_keys = (time.perf_counter() - started) / clients
    server = Server(key, t)
    graph = server.write_roster(adverts, k, seed)
    started = time.perf_counter()
    outboxes = {cid: c.share_keys(server.roster, graph[cid]) for cid, c in parties.items()}
    client_share = (time.perf_counter() - started) / clients
    started = time.perf_counter()
    inboxes = server.relay(outboxes)
    server_relay = time.perf_counter() - started
    started = time.perf_counter()
    for cid, inbox in inboxes.items():
        parties[cid].receive_shares(inbox)
    client_open = (time.perf_counter() - started) / clients
    dropped_ids = set(ids[:drop])
    survivors_ids = [cid for cid in ids if cid not in dropped_ids]
    quantised = {cid: fp.encode(updates[cid], rng) for cid in survivors_ids}
    started = time.perf_counter()
    for cid in survivors_ids:
        server.receive_input(cid, parties[cid].masked_input(quantised[cid], server.shared))
    client_mask = (time.perf_counter() - started) / len(survivors_ids)
    survivors, dropped = server.fix_survivors()
    started = time.perf_counter()
    reveals = {cid: parties[cid].reveal(set(survivors), set(dropped)) for cid in survivors_ids}
    client_reveal = (time.perf_counter() - started) / len(survivors_ids)
    started = time.perf_counter()
    total = server.unmask(reveals)
    server_unmask = time.perf_counter() - started
    expected = sum(quantised[c].astype(np.uint64) for c in survivors_ids).astype(np.uint32)
    assert np.array_equal(total, expected), "the unmasked sum is not the survivors' sum"
    error = np.max(np.abs(fp.decode_sum(total, len(survivors_ids)) - sum(updates[c] for c in survivors_ids)))

    started = time.perf_counter()
    plain = np.zeros(parameters, np.float64)
    for cid in survivors_ids:
        plain += updates[cid]
    server_plain = time.perf_counter() - started

    sealed = len(next(iter(outboxes[ids[0]].values())))
    sent = ADVERT_BYTES + k * sealed + 4 * parameters + len(reveals[survivors_ids[0]]) * (ID_BYTES + 34)
    received = clients * (ADVERT_BYTES + ID_BYTES) + k * sealed + clients * ID_BYTES
    return {
        "clients": clients,
        "neighbours": k,
        "threshold": t,
        "sent": sent,
        "received": received,
        "plain_sent": 4 * parameters,
        "client_s": client_keys + client_share + client_open + client_mask + client_reveal,
        "client_mask_s": client_mask,
        "server_relay_s": server_relay,
        "server_unmask_s": server_unmask,
        "server_plain_s": server_plain,
        "max_error": float(error),
        "step": fp.step,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--parameters", type=int, default=100_000)
    parser.add_argument("--clients", type=int, nargs="+", default=[3, 10, 30])
    parser.add_argument("--drop", type=int, default=1, help="clients dropping after sharing their keys")
    args = parser.parse_args()
    print(f"one SecAgg+ round in memory, {args.parameters:,} parameters, {args.drop} client(s) dropping after sharing")
    print(
        "| clients | neighbours k / threshold t | a client sends | receives | plain FedAvg sends | "
        "a client's compute (of which masking) | server: relay / unmask | plain FedAvg's sum | max error |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for clients in args.clients:
        r = one_round(clients, args.parameters, min(args.drop, clients - 1))
        print(
            f"| {clients} | {r['neighbours']} / {r['threshold']} | {r['sent'] / 1e3:.1f} kB "
            f"({r['sent'] / r['plain_sent']:.3f}x) | {r['received'] / 1e3:.1f} kB | {r['plain_sent'] / 1e3:.1f} kB | "
            f"{1e3 * r['client_s']:.0f} ms ({1e3 * r['client_mask_s']:.0f} ms) | "
            f"{1e3 * r['server_relay_s']:.1f} / {1e3 * r['server_unmask_s']:.0f} ms | "
            f"{1e3 * r['server_plain_s']:.1f} ms | {r['max_error']:.2e} ({r['step']:.1e} a step) |"
        )


if __name__ == "__main__":
    main()
