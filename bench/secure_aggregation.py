"""Secure aggregation's own cost (issue 25): SecAgg+ against plain FedAvg, for 3, 10 and 30 clients and a
100k-parameter model, in memory and on the local cloud.

    .venv/bin/python bench/secure_aggregation.py [--parameters 100000] [--clients 3 10 30] [--drop 1]
    .venv/bin/python bench/secure_aggregation.py --cloud [--rounds 4] [--parameters 100000] [--clients 3 10 30]
    ... --write-docs    # also replace the mode's tables in docs/benchmarks.md

In memory (the default): one round of `fedstep.privacy.secagg`'s protocol. Per round it prints, for
one client: the bytes it sends (its keys, its sealed shares, its masked input, its revealed shares)
and receives (the roster, its inbox of shares, the survivor list), and its compute time (keys,
sharing, masking, revealing); for the server: the time to relay the shares and to unmask the sum
(with `--drop` clients dropping after sharing their keys, whose pairwise masks it must then remove).
Plain FedAvg's client sends its float32 update (4 bytes a parameter) and the server adds the updates.

`--cloud`: for each number of clients, one local cloud (`fedstep.local.cloud.LocalCloud`, the real
stack) with that many clients, whose agents run in this process under their client roles, each in
a thread, with a numpy trainer (`cloud_meter.DeltaTrainer`: a random delta of 1e-3 per weight, a few
ms). On it, one after the other, a plain FedAvg run and a secure one (`--secure-aggregation`;
neighbours k: everyone up to 10 clients, else 2 ceil(log2 n); threshold t = k/2 + 1), each of
`--rounds` rounds from the same initial model. `cloud_meter.Meter` records every request the cloud
answers and every invocation of the aggregation function, tagged with the round and phase. Per
steady round (rounds 2 to R-1: round 1 imports and warms up, round R's tail holds the run's end;
the median) it prints, plain FedAvg beside secure:
- the round's wall time (its summary's `duration_s`: from its publication to its model committed)
  and the added time; the aggregation function's own time (the summary's `aggregation_s`: reading
  the updates, or unmasking the sum, to the committed model) and its invocations (count, summed wall
  and CPU time: publishing the round and each phase, the stream batches, aggregating);
- the state transitions (the execution's history, cut where each round enters "Prepare round"), the
  requests to DynamoDB, S3 and SQS (SQS's empty long polls left out) of the clients and the server;
- the bytes a client sends and receives: the HTTP bodies of its requests and responses (S3 objects,
  DynamoDB's JSON, SQS messages; headers not counted), by what they carry;
- each phase of the secure round: the seconds in its state, the function's invocations and the
  server's requests while it was the last one published;
and `fedstep cost`'s estimate of each run (`fedstep.operator.cost.estimate_run`, as the operator asks).
Lambda's own logs and metrics are silenced (`POWERTOOLS_LOG_LEVEL`, `POWERTOOLS_METRICS_DISABLED`).
Everything runs in one process on the machine's cores (the agents, the local cloud, the function):
the figures are this machine's, for comparing the two rounds, not AWS's latencies.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import statistics
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(1, str(Path(__file__).resolve().parent))  # cloud_meter, as a test loads this script too

from fedstep.core.machine import State
from fedstep.privacy.secagg.fixed_point import FixedPoint
from fedstep.privacy.secagg.protocol import Client, RoundKey, Server

ROOT = Path(__file__).resolve().parents[1]
ADVERT_BYTES = 32 + 32 + 32  # two X25519 public keys and the seed's sha256
ID_BYTES = 16  # a client id on the wire (about)


def neighbours_for(clients: int) -> int:
    """SecAgg+'s neighbourhood: everyone for up to 10 clients, else 2 ceil(log2 n) (even), as its paper
    scales it."""
    return clients - 1 if clients <= 10 else 2 * math.ceil(math.log2(clients))


def threshold_for(neighbours: int) -> int:
    """A majority of a client's k neighbours and itself, at least 2 (a run's smallest threshold)."""
    return max(2, neighbours // 2 + 1)


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


def memory_table(args: argparse.Namespace) -> str:
    drop = args.drop if args.drop is not None else 1
    lines = [
        "| clients | neighbours k / threshold t | a client sends | receives | plain FedAvg sends | "
        "a client's compute (of which masking) | server: relay / unmask | plain FedAvg's sum | max error |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    print(f"one SecAgg+ round in memory, {args.parameters:,} parameters, {drop} client(s) dropping after sharing")
    print("\n".join(lines))
    for clients in args.clients:
        r = one_round(clients, args.parameters, min(drop, clients - 1))
        lines.append(
            f"| {clients} | {r['neighbours']} / {r['threshold']} | {r['sent'] / 1e3:.1f} kB "
            f"({r['sent'] / r['plain_sent']:.3f}x) | {r['received'] / 1e3:.1f} kB | {r['plain_sent'] / 1e3:.1f} kB | "
            f"{1e3 * r['client_s']:.0f} ms ({1e3 * r['client_mask_s']:.0f} ms) | "
            f"{1e3 * r['server_relay_s']:.1f} / {1e3 * r['server_unmask_s']:.0f} ms | "
            f"{1e3 * r['server_plain_s']:.1f} ms | {r['max_error']:.2e} ({r['step']:.1e} a step) |"
        )
        print(lines[-1], flush=True)
    return "\n".join(lines)


# -- on the local cloud ----------------------------------------------------------------------------------


def model_of(parameters: int, seed: int = 0) -> dict[str, np.ndarray]:
    """A dense layer of `parameters` weights (about, for a number not a multiple of 100): a kernel of
    (rows, units) and a bias of units = parameters / 100 (100,000: a 99 x 1,000 kernel)."""
    units = max(1, parameters // 100)
    rows = max(1, (parameters - units) // units)
    kernel = np.random.default_rng(seed).normal(0.0, 0.05, (rows, units)).astype(np.float32)
    return {"000/dense/kernel": kernel, "001/dense/bias": np.zeros(units, np.float32)}


def secure_settings(clients: int) -> dict[str, Any]:
    """The run settings of a secure run of `clients`: k as `neighbours_for` (0, everyone, when that is
    every other client), t as `threshold_for`."""
    k = neighbours_for(clients)
    return {
        "secure_aggregation": True,
        "secagg_threshold": threshold_for(k),
        "secagg_neighbours": 0 if k >= clients - 1 else k,
    }


SENT = ("update", "update item", "keys item", "share item", "reveal item", "other")
"""What a client's sent bytes are counted as: its update file (a masked input under secure aggregation),
its items, and the rest (heartbeats, reads of the stop marker and its feedback, queue requests)."""
RECEIVED = ("global model", "message", "roster", "inbox", "other")


def sent_as(request: Any) -> str:
    if request.service == "s3" and request.action == "PutObject" and request.what == "update file":
        return "update"
    return request.what if request.what in SENT else "other"


def received_as(request: Any) -> str:
    return request.what if request.what in RECEIVED else "other"


PHASE_STATES = {
    "advertise": State.NOTIFY_AND_WAIT,
    "share": State.SHARE_KEYS,
    "input": State.UPLOAD_MASKED_INPUTS,
    "reveal": State.REVEAL_SHARES,
}
"""Each phase of a secure round and the state that publishes it and waits for its clients (the first is
a plain round's only one: the round published, the updates in, the model aggregated)."""


def steady_rounds(rounds: int) -> list[int]:
    """Rounds 2 to R-1 (round 1 warms up, round R's tail holds the run's end); R alone for R < 3."""
    return list(range(2, rounds)) if rounds >= 3 else [rounds]


@dataclass
class Figures:
    """A run's steady round: the median over `steady_rounds` of each figure (per round; bytes per client)."""

    wall_s: float
    aggregation_s: float
    invocations: float
    invocation_wall_s: float
    invocation_cpu_s: float
    transitions: float
    ddb: float
    ddb_clients: float
    s3: float
    sqs: float
    phases: dict[str, dict[str, float]]
    """Per phase ("advertise": a plain round's wait for its updates): the seconds in its state
    (`state_s`), the function's invocations tagged with it (`invocations`, `wall_s`, `cpu_s`) and the
    server's DynamoDB and S3 requests (`ddb`, `s3`)."""
    sent: dict[str, float]
    received: dict[str, float]
    cost_usd: float = math.nan
    """`fedstep cost`'s estimate of the whole run."""
    problems: list[str] = field(default_factory=list)

    @property
    def sent_total(self) -> float:
        return sum(self.sent.values())

    @property
    def received_total(self) -> float:
        return sum(self.received.values())


def phase_figures(
    phase: str, state_s: float, requests: list[Any], invocations: list[Any], clients: list[str]
) -> dict[str, float]:
    """One phase of a round (see `Figures.phases`)."""
    mine = [i for i in invocations if i.phase == phase]
    server = [q for q in requests if q.phase == phase and q.principal not in clients]
    return {
        "state_s": state_s,
        "invocations": len(mine),
        "wall_s": sum(i.wall_s for i in mine),
        "cpu_s": sum(i.cpu_s for i in mine),
        "ddb": sum(q.service == "dynamodb" for q in server),
        "s3": sum(q.service == "s3" for q in server),
    }


def figures(run: Any, meter: Any, clients: list[str], rounds: int) -> Figures:
    """A run's steady round from its summaries, its execution history and what the meter recorded."""
    from cloud_meter import seconds_in_states, transitions_by_round

    from fedstep.local.iam.identities import ADMIN, OPERATOR

    problems = [] if run.status == "SUCCEEDED" else [f"run {run.run_id} {run.status}: {run.cause[:300]}"]
    summaries = {s.round: s for s in run.summaries}
    for s in run.summaries:
        if sorted(s.participants) != clients or s.attempt:
            problems.append(f"round {s.round}: {len(s.participants)} of {len(clients)} took part, attempt {s.attempt}")
    steady = [r for r in steady_rounds(rounds) if r in summaries]
    if not steady:
        raise RuntimeError(f"run {run.run_id} completed none of rounds {steady_rounds(rounds)}: {problems}")
    transitions = transitions_by_round(run.events)
    in_states = seconds_in_states(run.events)
    per_round: list[dict[str, Any]] = []
    for r in steady:
        requests, invocations = meter.of_round(run.run_id, r)
        requests = [q for q in requests if q.principal not in (ADMIN, OPERATOR)]  # the bench's own calls
        sent: Counter[str] = Counter(dict.fromkeys(SENT, 0))
        received: Counter[str] = Counter(dict.fromkeys(RECEIVED, 0))
        for q in requests:
            if q.principal in clients:
                sent[sent_as(q)] += q.sent / len(clients)
                received[received_as(q)] += q.received / len(clients)
        per_round.append(
            {
                "wall_s": summaries[r].duration_s,
                "aggregation_s": summaries[r].aggregation_s,
                "invocations": len(invocations),
                "invocation_wall_s": sum(i.wall_s for i in invocations),
                "invocation_cpu_s": sum(i.cpu_s for i in invocations),
                "transitions": transitions.get(r, 0),
                "ddb": sum(q.service == "dynamodb" for q in requests),
                "ddb_clients": sum(q.service == "dynamodb" and q.principal in clients for q in requests),
                "s3": sum(q.service == "s3" for q in requests),
                "sqs": sum(q.service == "sqs" and q.what != "empty poll" for q in requests),
                "phases": {
                    phase: phase_figures(phase, in_states.get(r, {}).get(state, 0.0), requests, invocations, clients)
                    for phase, state in PHASE_STATES.items()
                },
                "sent": sent,
                "received": received,
            }
        )

    def median(name: str) -> float:
        return float(statistics.median(f[name] for f in per_round))

    def medians(name: str) -> dict[str, float]:
        return {k: float(statistics.median(f[name][k] for f in per_round)) for k in per_round[0][name]}

    phases = {
        phase: {k: float(statistics.median(f["phases"][phase][k] for f in per_round)) for k in figures}
        for phase, figures in per_round[0]["phases"].items()
    }
    scalars = [n for n in per_round[0] if n not in ("phases", "sent", "received")]
    return Figures(
        **{n: median(n) for n in scalars},
        phases=phases,
        sent=medians("sent"),
        received=medians("received"),
        problems=problems,
    )


@dataclass
class Row:
    clients: int
    neighbours: int
    threshold: int
    parameters: int
    rounds: int
    plain: Figures
    secure: Figures


def cost_of(cloud: Any, run_id: str) -> tuple[float, list[str]]:
    """`fedstep cost`'s estimate of a run (USD), as the operator asks for it; a note when the transitions
    its model counts from the state machine's definition differ from the execution's history."""
    from fedstep.aws.adapters import DynamoRoundTable
    from fedstep.local.iam.identities import OPERATOR
    from fedstep.operator.cost import estimate_run
    from fedstep.operator.views import load_run

    sfn = cloud.client("stepfunctions", OPERATOR)
    view = load_run(
        run_id, cloud.outputs, DynamoRoundTable(cloud.outputs.table, cloud.client("dynamodb", OPERATOR)), sfn
    )
    estimate = estimate_run(view, cloud.outputs, sfn)
    notes = []
    if estimate.transitions != estimate.defined_transitions:
        notes.append(
            f"fedstep cost counts {estimate.defined_transitions} transitions from the definition, "
            f"the history has {estimate.transitions:.0f}"
        )
    return estimate.usd, notes


def compare_on_cloud(cloud: Any, cache: Path, parameters: int, rounds: int, timeout_s: int = 600) -> Row:
    """A plain FedAvg run, then a secure one, on `cloud` (a started `LocalCloud`) with an agent of this
    process for each of its clients (caching under `cache`), serving in threads; their steady rounds."""
    from cloud_meter import Meter, agents, run_rounds, serving

    from fedstep.operator.settings import RunSettings

    clients = sorted(cloud.outputs.queues)
    initial = model_of(parameters)
    base = {"rounds": rounds, "round_timeout_s": timeout_s}
    secure = RunSettings(**base, **secure_settings(len(clients)), secagg_phase_timeout_s=timeout_s)
    wait_s = 4 * rounds * timeout_s
    with Meter(cloud) as meter, serving(agents(cloud, cache)) as failures:
        plain_run = run_rounds(cloud, RunSettings(**base), initial, wait_s)
        secure_run = run_rounds(cloud, secure, initial, wait_s)
    if failures:
        raise RuntimeError("agents failed:\n" + "\n".join(failures))
    plain, masked = figures(plain_run, meter, clients, rounds), figures(secure_run, meter, clients, rounds)
    for run, measured in ((plain_run, plain), (secure_run, masked)):
        measured.cost_usd, notes = cost_of(cloud, run.run_id)
        measured.problems += notes
    k = neighbours_for(len(clients))
    size = sum(int(v.size) for v in initial.values())
    return Row(len(clients), k, threshold_for(k), size, rounds, plain, masked)


def _x(plain: float, secure: float) -> str:
    return f"{secure / plain:.2f}x" if plain else "-"


def _kb(n: float) -> str:
    return f"{n / 1e3:.1f} kB" if n >= 1e4 else f"{n:.0f} B"


def time_table(rows: list[Row]) -> str:
    lines = [
        "| clients | k / t | round wall time: FedAvg / secure | added | in its states: FedAvg / secure "
        "advertise + share + input + reveal | aggregation_s: FedAvg / secure | "
        "the function per round, FedAvg: invocations, wall (CPU) | secure |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        p, s = r.plain, r.secure
        lines.append(
            f"| {r.clients} | {r.neighbours} / {r.threshold} | {p.wall_s:.2f} / {s.wall_s:.2f} s "
            f"({_x(p.wall_s, s.wall_s)}) | +{s.wall_s - p.wall_s:.2f} s | {p.phases['advertise']['state_s']:.2f} / "
            + " + ".join(f"{s.phases[phase]['state_s']:.2f}" for phase in PHASE_STATES)
            + f" s | {p.aggregation_s:.3f} / "
            f"{s.aggregation_s:.3f} s ({_x(p.aggregation_s, s.aggregation_s)}) | {p.invocations:.0f}, "
            f"{p.invocation_wall_s:.2f} s ({p.invocation_cpu_s:.2f} s) | {s.invocations:.0f}, "
            f"{s.invocation_wall_s:.2f} s ({s.invocation_cpu_s:.2f} s) |"
        )
    return "\n".join(lines)


def traffic_table(rows: list[Row]) -> str:
    lines = [
        "| clients | transitions | DynamoDB requests (the clients') | S3 requests | SQS requests | "
        "a client sends | a client receives | `fedstep cost` of the run |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        p, s = r.plain, r.secure

        def pair(a: float, b: float) -> str:
            return f"{a:.0f} / {b:.0f} ({_x(a, b)})"

        lines.append(
            f"| {r.clients} | {pair(p.transitions, s.transitions)} | {p.ddb:.0f} ({p.ddb_clients:.0f}) / "
            f"{s.ddb:.0f} ({s.ddb_clients:.0f}) ({_x(p.ddb, s.ddb)}) | {pair(p.s3, s.s3)} | {pair(p.sqs, s.sqs)} | "
            f"{p.sent_total / 1e3:.1f} / {s.sent_total / 1e3:.1f} kB ({_x(p.sent_total, s.sent_total)}) | "
            f"{p.received_total / 1e3:.1f} / {s.received_total / 1e3:.1f} kB "
            f"({_x(p.received_total, s.received_total)}) | ${p.cost_usd:.3g} / ${s.cost_usd:.3g} "
            f"({_x(p.cost_usd, s.cost_usd)}) |"
        )
    return "\n".join(lines)


def bytes_table(rows: list[Row]) -> str:
    names = {"update": "update file", "share item": "share items"}
    sent = [names.get(n, n) for n in SENT]
    received = [f"{n}s" if n == "message" else n for n in RECEIVED]
    lines = [
        "| clients | round | sends: " + " | ".join(sent) + " | receives: " + " | ".join(received) + " |",
        "|---|---|" + "---|" * (len(SENT) + len(RECEIVED)),
    ]
    for r in rows:
        for name, f in (("FedAvg", r.plain), ("secure", r.secure)):
            cells = [_kb(f.sent[n]) if f.sent[n] else "-" for n in SENT]
            cells += [_kb(f.received[n]) if f.received[n] else "-" for n in RECEIVED]
            lines.append(f"| {r.clients} | {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def phase_table(rows: list[Row]) -> str:
    lines = [
        "| clients | round: phase | in its state | the function: invocations, wall (CPU) | "
        "the server's DynamoDB / S3 requests |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        for name, f, phases in (("FedAvg", r.plain, ["advertise"]), ("secure", r.secure, list(PHASE_STATES))):
            for phase in phases:
                p = f.phases[phase]
                label = "the round" if name == "FedAvg" else phase
                lines.append(
                    f"| {r.clients} | {name}: {label} | {p['state_s']:.2f} s | {p['invocations']:.0f}, "
                    f"{p['wall_s']:.2f} s ({p['cpu_s']:.2f} s) | {p['ddb']:.0f} / {p['s3']:.0f} |"
                )
    return "\n".join(lines)


def cloud_legend(rows: list[Row], started: str, load: float, command: str) -> str:
    r = rows[0]
    return (
        f"`{command}` ({started}, load average {load:.1f} at the start): {r.parameters:,} parameters, "
        f"{r.rounds} rounds a run, the median of rounds {', '.join(map(str, steady_rounds(r.rounds)))}; agents, "
        "local cloud and function in one process. Each cell is plain FedAvg / secure aggregation (the ratio). "
        "The wall time is the round summary's `duration_s` (publication to committed model); in its states: "
        "the seconds from entering each waiting state to leaving it, in the execution's history; "
        "`aggregation_s` the aggregating invocation's own time; the function's invocations are every "
        "invocation in the round (publishing the round and each phase, the stream batches), their wall time "
        "summed and, in brackets, their CPU time. Requests: the clients', the aggregation function's and the "
        "state machine's, SQS's empty long polls left out. Bytes: a client's HTTP bodies (sent: its requests'; "
        "received: the responses'; S3 objects, DynamoDB's JSON, SQS's), the mean of the clients. `fedstep "
        "cost`: its estimate of the whole run (start and end included) with the execution's own transitions. "
        "The last table splits a secure round by phase (each request and invocation counted in the phase "
        "last published), plain FedAvg's round beside it."
    )


def cloud_tables(args: argparse.Namespace) -> str:
    from datetime import UTC, datetime

    os.environ.setdefault("POWERTOOLS_LOG_LEVEL", "WARNING")
    os.environ.setdefault("POWERTOOLS_METRICS_DISABLED", "true")
    from fedstep.local.cloud import LocalCloud
    from infra.config import ClientConfig, DeploymentConfig

    started, load = f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC", os.getloadavg()[0]
    rows: list[Row] = []
    for n in args.clients:
        clock = time.perf_counter()
        ids = tuple(ClientConfig(f"client-{i:02d}") for i in range(1, n + 1))
        with (
            LocalCloud(DeploymentConfig(clients=ids, round_timeout_s=600)) as cloud,
            tempfile.TemporaryDirectory(prefix="fedstep-secagg-bench-") as cache,
        ):
            print(f"{n} clients: local cloud up in {time.perf_counter() - clock:.0f} s", flush=True)
            row = compare_on_cloud(cloud, Path(cache), args.parameters, args.rounds)
        rows.append(row)
        for name, f in (("FedAvg", row.plain), ("secure", row.secure)):
            print(
                f"  {name:6s} round {f.wall_s:.2f} s, aggregation {f.aggregation_s:.3f} s, {f.invocations:.0f} "
                f"invocations, {f.transitions:.0f} transitions, {f.ddb:.0f} DynamoDB requests, a client sends "
                f"{f.sent_total / 1e3:.1f} kB and receives {f.received_total / 1e3:.1f} kB"
            )
            for problem in f.problems:
                print(f"  note ({name}): {problem}")
        print(f"  ({time.perf_counter() - clock:.0f} s)", flush=True)
    command = "bench/secure_aggregation.py --cloud" + "".join(
        f" {flag} {value}"
        for flag, value, default in (
            ("--rounds", args.rounds, 4),
            ("--parameters", args.parameters, 100_000),
            ("--clients", " ".join(map(str, args.clients)), "3 10 30"),
        )
        if str(value) != str(default)
    )
    text = "\n\n".join(
        [
            time_table(rows),
            traffic_table(rows),
            bytes_table(rows),
            phase_table(rows),
            cloud_legend(rows, started, load, command),
        ]
    )
    print()
    print(text)
    return text


MARK = "<!-- bench/secure_aggregation.py {} -->"


def write_docs(section: str, text: str) -> None:
    """Replace the text between the benchmark's markers of `section` ("memory" or "cloud") in docs/benchmarks.md."""
    start, end = MARK.format(f"{section} start"), MARK.format(f"{section} end")
    path = ROOT / "docs" / "benchmarks.md"
    old = path.read_text()
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.S)
    if not pattern.search(old):
        print(f"note: docs/benchmarks.md has no {start} ... {end} markers; not written")
        return
    path.write_text(pattern.sub(lambda _: f"{start}\n{text}\n{end}", old, count=1))
    print(f"wrote the {section} tables into docs/benchmarks.md")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--parameters", type=int, default=100_000)
    parser.add_argument("--clients", type=int, nargs="+", default=[3, 10, 30])
    parser.add_argument("--drop", type=int, help="in memory: clients dropping after sharing their keys (default 1)")
    parser.add_argument("--cloud", action="store_true", help="on the local cloud, beside plain FedAvg")
    parser.add_argument("--rounds", type=int, default=4, help="--cloud: rounds a run (default %(default)s)")
    parser.add_argument("--write-docs", action="store_true", help="replace the mode's tables in docs/benchmarks.md")
    args = parser.parse_args()
    if args.cloud and args.drop is not None:
        parser.error("--drop is for the in-memory round: on the local cloud every client stays")
    if min(args.clients) < (2 if args.cloud else 3) or args.parameters < 2 or args.rounds < 2:
        parser.error("--clients: 2 or more on the cloud (3 in memory); --parameters and --rounds: 2 or more")
    text = cloud_tables(args) if args.cloud else memory_table(args)
    if args.write_docs:
        write_docs("cloud" if args.cloud else "memory", text)


if __name__ == "__main__":
    main()
