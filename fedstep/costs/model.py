"""The cost model: a run's facts -> requests, GB-seconds and bytes per service -> USD, per participant.

Pure Python (no AWS, no numpy), so every figure can be checked by hand in tests/test_cost.py. What
each round does is counted from the code that does it (see docs/cost.md for the full list):

- **Step Functions**: the states a round passes through (`ROUND_PATH`, `DEADLINE_PATH`; a retry adds
  `RETRY_PATH`, a secure round `SECURE_PATH`), plus the run's end (`Paths.end`); or the count of the
  execution's history, when it is known (`RunFacts.observed_transitions`).
- **Lambda** (the aggregation function): per publication one invocation (it publishes the round), per
  update item one stream invocation (one of them aggregates: `aggregation_s` measured), plus one at
  the deadline for a round that timed out; GB-seconds = memory x durations.
- **Secure aggregation** (`RunFacts.secure_aggregation`): per round its three later phases
  (`secure_round_shared`, `secure_client_direct`): their states, publications and messages, a stream
  invocation per keys, share and reveal item, the shares relayed into inboxes, the phase and survivors
  records, and the roster (written once, read by each client).
- **S3**, **SQS**, **SNS**, **DynamoDB**, **KMS**: per round and client, the calls the agent and the
  aggregation function make (`client_agent/agent.py`, `fedstep/core/rounds/`).
- **CloudTrail** (only when the stack's audit trail is on, `RunFacts.audit`): one data event per
  DynamoDB write request, per S3 PUT-class request, and per S3 read of a key the trail selects (under
  `runs/` and `registry/`: global models, states, the architecture; not the reads of `updates/`),
  counted from the same requests as above.

A client pays (directly) for its own queue's requests, its S3 GETs and PUTs and the bytes it downloads,
its DynamoDB reads and writes, and its KMS calls. The rest of a round (transitions, the function, the
server's S3 and DynamoDB calls, the publish) is shared equally among the round's participants. What
belongs to no round (the run's start and end, a cold start, KMS of the function) is the server's.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from fedstep.core.machine import State
from fedstep.costs.prices import BY_KEY, PRICES

MIB = 2**20
GB = 10**9
"""AWS prices data by the GB; a decimal GB is assumed (AWS's GB is 2^30 bytes on some pages: <8% apart)."""

ROUND_PATH = (
    State.PREPARE_ROUND,
    State.NOTIFY_AND_WAIT,
    State.NEXT_SECURE_PHASE,
    State.AGGREGATED_BY_SLICES,
    State.REPORT_IS_OURS,
    State.ROUND_AGGREGATED,
    State.MORE_ROUNDS,
)
"""States of a round aggregated once every selected client's update is in (infra/state_machine.py)."""
DEADLINE_PATH = (
    State.PREPARE_ROUND,
    State.NOTIFY_AND_WAIT,
    State.AGGREGATE_AT_DEADLINE,
    State.NEXT_SECURE_PHASE,
    State.AGGREGATED_BY_SLICES,
    State.REPORT_IS_OURS,
    State.ROUND_AGGREGATED,
    State.MORE_ROUNDS,
)
"""States of a round aggregated at its deadline."""
SECURE_PATH = (
    State.SHARE_KEYS,
    State.NEXT_SECURE_PHASE,
    State.UPLOAD_MASKED_INPUTS,
    State.NEXT_SECURE_PHASE,
    State.REVEAL_SHARES,
    State.NEXT_SECURE_PHASE,
)
"""States a secure round adds after its first "Next secure-aggregation phase?": each later phase and
the Choice after it (a phase closed at its deadline adds its "at deadline" state: counted as one,
`RoundFacts.at_deadline`, whichever phase it was)."""
SECURE_PHASES = 3
"""The later phases of a secure round (share keys, upload masked inputs, reveal shares): one
publication and one message to each member apiece."""
SLICED_STATES = (State.AGGREGATE_SLICES, State.ASSEMBLE_GLOBAL_MODEL)
"""States a round aggregated by slices adds, between "Aggregated by slices?" and "Report is for this round?"."""
SLICE_TRANSITIONS = 2
"""Transitions billed per slice: its child execution of the Distributed Map (one task state) and its start."""
RETRY_PATH = (State.AGGREGATE_AT_DEADLINE, State.RETRY_ROUND_CHOICE, State.RETRY_ROUND, State.NOTIFY_AND_WAIT)
"""States a round's retry adds (its attempt missed the quorum at the deadline, and it is published again)."""
SUCCEEDED_END = (State.ALL_ROUNDS_DONE, State.NOTIFY_RUN_ENDED, State.WRITE_MODEL_CARD, State.TRAINING_FINISHED)
"""States after the last round of a run that succeeded (one that reached its target or privacy budget
passes "Target reached" / "Privacy budget spent" instead of "All rounds done": the same count)."""
FAILED_END = (
    State.PREPARE_ROUND,
    State.NOTIFY_AND_WAIT,
    State.AGGREGATE_AT_DEADLINE,
    State.RETRY_ROUND_CHOICE,
    State.TRAINING_FAILED,
)
"""States of the round that failed a run."""
WAITING_END = (State.PREPARE_ROUND, State.NOTIFY_AND_WAIT)
"""States of the round a stopped (or still running) run was waiting for."""
END_LAMBDA_TASKS = (State.WRITE_MODEL_CARD,)
"""States of the succeeded end that invoke the aggregation function."""


@dataclass(frozen=True)
class Paths:
    """The states each part of a run passes through, from the state machine's definition (by default,
    fedstep's own: `paths_from_definition` checks them against a deployed one and reads its end)."""

    round: tuple[str, ...] = ROUND_PATH
    deadline: tuple[str, ...] = DEADLINE_PATH
    retry: tuple[str, ...] = RETRY_PATH
    secure: tuple[str, ...] = SECURE_PATH
    succeeded: tuple[str, ...] = SUCCEEDED_END
    failed: tuple[str, ...] = FAILED_END
    waiting: tuple[str, ...] = WAITING_END
    end_invocations: int = len(END_LAMBDA_TASKS)
    """Invocations of the aggregation function after the last round of a run that succeeded."""
    source: str = "state machine definition (fedstep's own)"

    def end(self, ended: str) -> tuple[str, ...]:
        """The states after the last completed round, by how the run ended (`RunFacts.ended`)."""
        return {"succeeded": self.succeeded, "failed": self.failed, "not started": ()}.get(ended, self.waiting)


def _successors(state: Mapping[str, Any]) -> set[str]:
    nexts = {state.get("Next"), state.get("Default")}
    nexts |= {c.get("Next") for c in state.get("Choices", [])}
    nexts |= {c.get("Next") for c in state.get("Catch", [])}
    return {n for n in nexts if n}


def _check(states: Mapping[str, Any], path: tuple[str, ...], then: str | None = None) -> None:
    steps = [*path, then] if then else list(path)
    for here, there in itertools.pairwise(steps):
        if here not in states or there not in _successors(states[here]):
            raise ValueError(f"the state machine has no transition {here!r} -> {there!r}")


def _invokes_lambda(state: Mapping[str, Any]) -> bool:
    """A Task state that invokes a function: through the Lambda integration (`...:::lambda:invoke`), or
    naming the function's ARN (as `payload_response_only` tasks do; a CDK template shows a reference)."""
    resource = str(state.get("Resource", ""))
    return state.get("Type") == "Task" and ("lambda:invoke" in resource or ":function:" in resource)


def paths_from_definition(definition: Mapping[str, Any]) -> Paths:
    """The paths of fedstep's own definition, checked against `definition` (Amazon States Language);
    the succeeded end read from it (every state from "All rounds done" to the end). ValueError names a
    transition the definition does not have."""
    states = definition.get("States", {})
    _check(states, ROUND_PATH, ROUND_PATH[0])
    _check(states, DEADLINE_PATH, DEADLINE_PATH[0])
    _check(states, RETRY_PATH)
    _check(states, (State.NEXT_SECURE_PHASE, *SECURE_PATH), State.AGGREGATED_BY_SLICES)
    _check(states, FAILED_END)
    end: list[str] = []
    name: str | None = SUCCEEDED_END[0]
    while name is not None and len(end) < len(states):
        if name not in states:
            raise ValueError(f"the state machine has no state {name!r}")
        end.append(name)
        state = states[name]
        name = None if state.get("End") or state.get("Type") in ("Succeed", "Fail") else state.get("Next")
    invocations = sum(_invokes_lambda(states[n]) for n in end)
    return Paths(succeeded=tuple(end), end_invocations=invocations, source="deployed state machine definition")


class Usage(dict[str, float]):
    """Quantities by price key (`fedstep.costs.prices`): requests, GB-seconds, GB, GB-months."""

    def add(self, key: str, quantity: float) -> Usage:
        if key not in BY_KEY:
            raise KeyError(f"no price {key!r}")
        if quantity:
            self[key] = self.get(key, 0.0) + quantity
        return self

    def plus(self, other: Mapping[str, float]) -> Usage:
        out = Usage(self)
        for key, quantity in other.items():
            out.add(key, quantity)
        return out

    def scaled(self, factor: float) -> Usage:
        return Usage({k: v * factor for k, v in self.items()})

    def usd(self) -> float:
        return sum(quantity * BY_KEY[key].usd for key, quantity in self.items())

    def by_service(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for key, quantity in self.items():
            service = BY_KEY[key].service
            out[service] = out.get(service, 0.0) + quantity * BY_KEY[key].usd
        return out


@dataclass(frozen=True)
class RoundFacts:
    """One completed round, as its round record tells it. Bytes are file sizes; seconds as measured."""

    round: int
    selected: tuple[str, ...]
    participants: tuple[str, ...]
    rejected: tuple[str, ...] = ()
    declined: tuple[str, ...] = ()
    duration_s: float = 0.0
    """From the round's first publication to the end of aggregation."""
    aggregation_s: float = 0.0
    """The aggregating invocation's own time."""
    model_bytes: int = 0
    """The global model file (the round's input is the previous one, of the same size)."""
    update_bytes: int = 0
    """One client's update file (the accepted updates' bytes over their number)."""
    state_bytes: int = 0
    """The strategy's state file after the round (0: a stateless strategy)."""
    record_bytes: int = 1024
    """The round record once aggregated (its JSON size)."""
    at_deadline: bool = False
    """Aggregated by the deadline invocation (some selected client sent nothing)."""
    retries: int = 0
    """Times the round was published again after missing its quorum."""
    slices: int = 0
    """Slices it was aggregated in (its `slices` measurement; 0: in one invocation)."""

    @property
    def uploaders(self) -> tuple[str, ...]:
        """Clients that uploaded an update (accepted or rejected): one stream invocation each."""
        return self.participants + tuple(c for c in self.rejected if c not in self.participants)


@dataclass(frozen=True)
class RunFacts:
    run_id: str
    clients: tuple[str, ...]
    """The run's clients (each receives the run-ended message)."""
    rounds: tuple[RoundFacts, ...]
    run_s: float
    """The execution's duration, start to stop (or to now while it runs)."""
    lambda_memory_mb: int
    """The aggregation function's memory (infra.config.aggregation_memory_mb of the stack's max_model_mb)."""
    ended: str = "succeeded"
    """succeeded, failed, stopped, running or not started (see `Paths.end`)."""
    architecture_bytes: int = 0
    initial_model_bytes: int = 0
    run_record_bytes: int = 2048
    select_online: bool = True
    """Whether each publication reads the run's clients' heartbeats (the run's `select_online`)."""
    secure_aggregation: bool = False
    """Whether the run's rounds are secure (the run record's `secagg`): three more phases each."""
    secagg_neighbours: int = 0
    """Under secure aggregation, the others each client shares its keys with (`--secagg-neighbours`;
    0: every other client of the round)."""
    observed_transitions: int | None = None
    """State transitions counted in the execution's history; None: count them from the definition."""
    paths: Paths = field(default_factory=Paths)
    audit: bool = False
    """Whether the stack's audit trail records data events (deployment config `audit`, stack output
    `AuditTrailArn`): each recorded request is then priced as a CloudTrail data event too."""


@dataclass(frozen=True)
class Assumptions:
    """What the round records do not say; each is a default of the agent or the stack, or a guess
    stated as one (docs/cost.md)."""

    short_invocation_s: float = 0.2
    """A function invocation that aggregates nothing: publishing, or finding updates missing (guess)."""
    cold_starts: int = 1
    init_s: float = 1.0
    """Billed init time per cold start (numpy, boto3, Powertools imports; guess)."""
    poll_wait_s: int = 20
    """The agent's long poll (`poll_wait_s`, default 20): one ReceiveMessage per 20 s while idle."""
    heartbeat_s: int = 60
    """The agent's heartbeat interval (default 60), plus a write when it starts and ends a round."""
    visibility_extend_s: int = 20
    """The agent renews a message's visibility every 20 s (`visibility_extend_s`) while it serves it."""
    kms_reuse_s: int = 300
    """SQS reuses a data key 5 min (its default), DynamoDB caches a table key about 5 min, S3 bucket keys
    are reused for a limited time: one KMS request per principal and service per 5 min of activity."""
    multipart_bytes: int = 8 * MIB
    """boto3's multipart threshold and part size: uploads above it are 2 + parts PUT-class requests."""
    small_item_bytes: int = 1024
    """An update item, a heartbeat, a feedback item: one write request unit."""
    open_record_bytes: int = 2048
    """A round record while open (it holds the task token)."""
    read_mib_s: float = 50.0
    """How fast one invocation reads and aggregates a sliced round's bytes (MiB/s; infra.config's
    conservative AGGREGATION_MB_PER_S): the slices' compute time, which runs in parallel."""
    storage_months: float = 1.0
    """S3 and DynamoDB storage is priced for this many months (updates expire after 30 days by default)."""


@dataclass(frozen=True)
class Line:
    """One priced item of an estimate: `quantity` of `unit` cost `usd`."""

    service: str
    item: str
    quantity: float
    unit: str
    usd: float
    key: str


@dataclass
class Party:
    """One participant's cost: its own requests (`direct`) and its share of the rounds it took part in."""

    name: str
    direct: Usage = field(default_factory=Usage)
    share: Usage = field(default_factory=Usage)
    rounds: int = 0

    @property
    def usd(self) -> float:
        return self.direct.usd() + self.share.usd()


@dataclass(frozen=True)
class Estimate:
    run_id: str
    clients: dict[str, Party]
    server: Usage
    """The server's part that belongs to no round (start, end, cold starts, the function's KMS calls)."""
    transitions: float
    transitions_source: str
    """"execution history", or which state machine definition the count comes from."""
    defined_transitions: int
    """The count from the definition's paths (equal to the history's when the model is right)."""
    lambda_memory_mb: int
    assumptions: Assumptions
    ended: str = "succeeded"
    """How the run ended (`RunFacts.ended`): a running run's estimate is of its cost so far."""

    @property
    def usage(self) -> Usage:
        total = Usage(self.server)
        for party in self.clients.values():
            total = total.plus(party.direct).plus(party.share)
        return total

    @property
    def usd(self) -> float:
        return self.usage.usd()

    def lines(self) -> list[Line]:
        """One line per priced item used, in the price table's order."""
        usage = self.usage
        return [
            Line(p.service, p.item, usage[p.key], p.unit, usage[p.key] * p.usd, p.key) for p in PRICES if p.key in usage
        ]

    def to_dict(self) -> dict[str, object]:
        return {
            "run_id": self.run_id,
            "total_usd": self.usd,
            "ended": self.ended,
            "transitions": self.transitions,
            "transitions_source": self.transitions_source,
            "transitions_from_definition": self.defined_transitions,
            "lambda_memory_mb": self.lambda_memory_mb,
            "by_service": self.usage.by_service(),
            "lines": [asdict(line) for line in self.lines()],
            "participants": {
                name: {
                    "rounds": p.rounds,
                    "direct_usd": p.direct.usd(),
                    "share_usd": p.share.usd(),
                    "total_usd": p.usd,
                    "direct": dict(p.direct),
                    "share": dict(p.share),
                }
                for name, p in sorted(self.clients.items())
            },
            "server": {"usd": self.server.usd(), "usage": dict(self.server)},
            "assumptions": asdict(self.assumptions),
        }


def _units(size_bytes: float, unit_bytes: int) -> int:
    """Request units of an item: one per `unit_bytes` started (at least one)."""
    return max(1, math.ceil(size_bytes / unit_bytes))


def _windows(seconds: float, every_s: float) -> int:
    """Periods of `every_s` an activity of `seconds` spans (at least one)."""
    return max(1, math.ceil(seconds / every_s))


def put_requests(size_bytes: int, a: Assumptions) -> int:
    """PUT-class requests of one upload with boto3's defaults: 1, or create + parts + complete."""
    if size_bytes <= a.multipart_bytes:
        return 1
    return 2 + math.ceil(size_bytes / a.multipart_bytes)


def round_transitions(r: RoundFacts, paths: Paths, secure: bool = False) -> int:
    """State transitions of one round, from the definition's paths (`secure`: the round's later phases
    too; a retried attempt is counted as one that missed its first phase's deadline)."""
    sliced = len(SLICED_STATES) + SLICE_TRANSITIONS * r.slices if r.slices else 0
    phases = len(paths.secure) if secure else 0
    return len(paths.deadline if r.at_deadline else paths.round) + phases + r.retries * len(paths.retry) + sliced


def definition_transitions(run: RunFacts) -> int:
    rounds = sum(round_transitions(r, run.paths, run.secure_aggregation) for r in run.rounds)
    return rounds + len(run.paths.end(run.ended))


def secagg_neighbours(members: int, neighbours: int) -> int:
    """The others each of a secure round's `members` shares its keys with: `neighbours` (0: all)."""
    others = max(0, members - 1)
    return others if neighbours == 0 else min(neighbours, others)


def secure_round_shared(r: RoundFacts, run: RunFacts, a: Assumptions) -> Usage:
    """What a secure round's later phases cost the server, besides `round_shared`. Its members are the
    clients that uploaded, each sharing its keys with k others. Each phase is published (the run and
    its stop marker read, the phase's record with its task token written, its message sent to each
    member). Each keys, share and reveal item (1 + k + 1 per member) invokes the function from the
    stream, as an update item does: it reads the phase's record, the run, the stop marker and the
    phase's items (`reveal_bytes` each reveal item, 1 KB the others). The roster is written once, each
    member's k shares are relayed into their recipients' inboxes, the survivors record written once."""
    members = len(r.uploaders)
    k = secagg_neighbours(members, run.secagg_neighbours)
    items = {"keys": (members, members), "share": (members * k, members * k), "reveal": (members, members)}
    size = {"keys": a.small_item_bytes, "share": a.small_item_bytes, "reveal": reveal_bytes(k, a)}
    run_rru = _units(run.run_record_bytes, 4096)
    invocations = SECURE_PHASES + sum(count for count, _ in items.values())
    u = Usage().add("lambda.request", invocations)
    u.add("lambda.gb_s", run.lambda_memory_mb / 1024 * invocations * a.short_invocation_s)
    rru = SECURE_PHASES * (run_rru + 1)  # each publication: the run and the stop marker
    for kind, (count, read) in items.items():
        rru += count * (_units(a.open_record_bytes, 4096) + run_rru + 1 + _units(read * size[kind], 4096))
    phase_records = SECURE_PHASES * _units(a.open_record_bytes, 1024)
    relayed = members * k
    wru = phase_records + relayed + _units(a.small_item_bytes, 1024)  # + the survivors record
    u.add("ddb.rru", rru).add("ddb.wru", wru).add("ddb.stream_read_lambda", invocations - SECURE_PHASES)
    u.add("s3.put", 1)  # the roster
    u.add("ddb.storage_gb_month", (SECURE_PHASES + relayed + 1) * a.small_item_bytes / GB * a.storage_months)
    u.add("sns.publish", SECURE_PHASES).add("sns.sqs_delivery", SECURE_PHASES * members)
    if run.audit:  # its writes: the phase records, the inbox items, the survivors record, the roster
        u.add("cloudtrail.data_event", SECURE_PHASES + relayed + 1 + 1)
    return u


def reveal_bytes(k: int, a: Assumptions) -> int:
    """A reveal item: a small item, and a 34-byte share with its owner's name for itself and each of
    its k neighbours (64 bytes each)."""
    return a.small_item_bytes + 64 * (k + 1)


def secure_client_direct(k: int, a: Assumptions) -> Usage:
    """What one member of a secure round does in its phases, besides `client_direct`: each phase's
    message (delivered, received, deleted), the roster's GET (under `runs/`), its keys item, its k
    sealed shares and its reveal item (k + 2 writes, the reveal's size growing with k), and the query
    of its inbox (k relayed shares)."""
    u = Usage().add("sqs.request", 3 * SECURE_PHASES).add("s3.get", 1)
    u.add("ddb.wru", 1 + k + _units(reveal_bytes(k, a), 1024))
    u.add("ddb.rru", _units(k * a.small_item_bytes, 4096))
    u.add("ddb.storage_gb_month", (k + 2) * a.small_item_bytes / GB * a.storage_months)
    return u


def round_shared(r: RoundFacts, run: RunFacts, a: Assumptions, transitions: float) -> Usage:
    """What one round costs the server: transitions, the function, its S3, DynamoDB and SNS calls."""
    u = Usage().add("sfn.transition", transitions)
    attempts = 1 + r.retries
    uploads = len(r.uploaders)
    invocations = attempts + uploads + (1 if r.at_deadline else 0) + r.retries  # each missed attempt's deadline
    seconds = invocations * a.short_invocation_s + r.aggregation_s
    if r.slices:  # the slices (each reads its share of every update) and the assembly (reads the model)
        invocations += r.slices + 1
        seconds += (len(r.participants) * r.update_bytes + r.model_bytes) / MIB / a.read_mib_s
    u.add("lambda.request", invocations).add("lambda.gb_s", run.lambda_memory_mb / 1024 * seconds)
    # DynamoDB, all strongly consistent reads (1 RRU per 4 KB) and item writes (1 WRU per KB).
    run_rru = _units(run.run_record_bytes, 4096)
    # publish: the run, the previous round, the run's stop marker (absent: 1 unit)
    rru = attempts * (run_rru + (_units(r.record_bytes, 4096) if r.round > 1 else 0) + 1)
    if run.select_online:  # publish: each run client's heartbeat item (under 4 KB), to skip offline clients
        rru += attempts * len(run.clients)
    wru = attempts * _units(a.open_record_bytes, 1024)  # open the round
    checks = uploads + (1 if r.at_deadline else 0)  # each stream or deadline invocation reads the round, run,
    rru += checks * (_units(a.open_record_bytes, 4096) + run_rru + 1 + len(r.selected))  # stop marker, updates
    wru += _units(a.open_record_bytes, 1024)  # claim
    # complete: a transaction (2 units per KB) of the summary and the stop marker's check; + mark reported
    wru += 2 * _units(r.record_bytes, 1024) + 2 + (0 if r.at_deadline else _units(r.record_bytes, 1024))
    wru += 2 * len(r.rejected)  # feedback items: the run's, and the copy as the client's latest
    u.add("ddb.rru", rru).add("ddb.wru", wru).add("ddb.stream_read_lambda", uploads)
    # write requests: open (each attempt), claim, complete (one transaction), mark reported, feedback items
    ddb_writes = attempts + 1 + 1 + (0 if r.at_deadline else 1) + 2 * len(r.rejected)
    # S3: the input model's header and body, each update's header and body, the state; then the writes.
    stateful = 1 if r.state_bytes else 0
    update_gets = 2 * uploads
    run_gets = 2 + stateful * (1 + attempts)  # the model; the state read to aggregate, its header to publish
    puts = 1 + stateful
    if r.slices:  # the plan's streamed checks, the plan, the slices' ranged reads and parts, the assembly
        update_gets += uploads * math.ceil(r.update_bytes / (16 * MIB)) + r.slices * len(r.participants)
        run_gets += r.slices * 2 + math.ceil(r.model_bytes / (16 * MIB))
        puts += 1 + r.slices + 2  # the plan, the parts, creating and completing the upload
    u.add("s3.get", update_gets + run_gets).add("s3.put", puts)
    if run.audit:  # every write is recorded; of the reads, those under runs/ (not the updates)
        u.add("cloudtrail.data_event", ddb_writes + puts + run_gets)
    u.add("s3.storage_gb_month", (r.model_bytes + r.state_bytes) / GB * a.storage_months)
    u.add("sns.publish", attempts).add("sns.sqs_delivery", attempts * len(r.selected))
    return u.plus(secure_round_shared(r, run, a)) if run.secure_aggregation else u


def client_direct(client: str, run: RunFacts, a: Assumptions) -> tuple[Usage, int]:
    """One client's own requests over the run, and the number of rounds it took part in."""
    u = Usage()
    busy_s = 0.0
    fetched_architecture = False
    took_part = 0
    for r in run.rounds:
        if client not in r.selected:
            continue
        attempts = 1 + r.retries
        u.add("sqs.request", attempts)  # SNS delivers each publication into its queue
        served = client in r.uploaders or client in r.declined
        if not served:
            continue
        busy_s += r.duration_s
        u.add("sqs.request", 2 + math.floor(r.duration_s / a.visibility_extend_s))  # receive, delete, extensions
        u.add("ddb.rru", 1 + 1)  # the run's stop marker (before training), its feedback item
        u.add("ddb.wru", 1 + 2)  # its update (or decline) item; heartbeats at the start and end of the round
        if client in r.declined:
            continue
        u.add("ddb.rru", 1)  # the run's stop marker again, before the upload
        took_part += 1 if client in r.participants else 0
        u.add("s3.get", 2)  # its update of an earlier attempt (usually absent), the global model
        downloaded = r.model_bytes
        if not fetched_architecture:
            u.add("s3.get", 1)
            downloaded += run.architecture_bytes
            fetched_architecture = True
        u.add("s3.transfer_out_gb", downloaded / GB)
        u.add("s3.put", put_requests(r.update_bytes, a))
        u.add("s3.storage_gb_month", r.update_bytes / GB * a.storage_months)
        u.add("ddb.storage_gb_month", a.small_item_bytes / GB * a.storage_months)
        if run.secure_aggregation:
            u = u.plus(secure_client_direct(secagg_neighbours(len(r.uploaders), run.secagg_neighbours), a))
    idle_s = max(0.0, run.run_s - busy_s)
    u.add("sqs.request", math.ceil(idle_s / a.poll_wait_s))  # empty long polls while idle
    if run.ended == "succeeded" and client in run.clients:
        u.add("sqs.request", 3)  # the run-ended message: delivered, received, deleted
        u.add("ddb.rru", 1)  # its feedback item for the run, read when the run ends
    heartbeats = math.floor(run.run_s / a.heartbeat_s)
    u.add("ddb.wru", heartbeats)  # periodic heartbeats
    if run.audit:  # its recorded requests: every write, and its reads of models and the architecture
        u.add("cloudtrail.data_event", audited_client_events(client, run, a) + heartbeats)
    # KMS: its own S3, SQS (decrypt) and DynamoDB calls, and SNS's data keys for its queue.
    u.add("kms.request", 4 * _windows(run.run_s, a.kms_reuse_s))
    return u, took_part


def audited_client_events(client: str, run: RunFacts, a: Assumptions) -> int:
    """A client's requests the audit trail records over its rounds (`client_direct` counts the same
    requests): its item writes (an update or a decline, a heartbeat at the start and at the end of the
    round; in a secure round its keys, share and reveal items), its update's PUT requests, and its
    reads of the global model, (once) the architecture and a secure round's roster; not its read of
    its own earlier update (under `updates/`)."""
    events = 0
    fetched_architecture = False
    for r in run.rounds:
        if client not in r.selected or not (client in r.uploaders or client in r.declined):
            continue
        events += 3
        if client in r.declined:
            continue
        events += put_requests(r.update_bytes, a) + 1 + (0 if fetched_architecture else 1)
        fetched_architecture = True
        if run.secure_aggregation:  # its keys, share and reveal items; its read of the roster
            events += secagg_neighbours(len(r.uploaders), run.secagg_neighbours) + 2 + 1
    return events


def server_run(run: RunFacts, a: Assumptions, transitions: float) -> Usage:
    """The server's part of the run outside its rounds."""
    u = Usage().add("sfn.transition", transitions)
    invocations = run.paths.end_invocations if run.ended == "succeeded" else 0  # e.g. the model card
    u.add("lambda.request", invocations)
    u.add("lambda.gb_s", run.lambda_memory_mb / 1024 * (a.cold_starts * a.init_s + invocations * a.short_invocation_s))
    u.add("s3.put", put_requests(run.architecture_bytes, a) + put_requests(run.initial_model_bytes, a))  # start
    u.add("s3.storage_gb_month", (run.architecture_bytes + run.initial_model_bytes) / GB * a.storage_months)
    u.add("ddb.wru", _units(run.run_record_bytes, 1024))
    if run.audit:  # the start's writes: the architecture, the initial model, the run record
        starts = put_requests(run.architecture_bytes, a) + put_requests(run.initial_model_bytes, a)
        u.add("cloudtrail.data_event", starts + 1)
    records = run.run_record_bytes + sum(r.record_bytes for r in run.rounds)
    u.add("ddb.storage_gb_month", records / GB * a.storage_months)
    if run.ended == "succeeded":
        u.add("sns.publish", 1).add("sns.sqs_delivery", len(run.clients))
    # KMS: the function's S3, DynamoDB and SNS calls; the operator's start (S3, DynamoDB).
    u.add("kms.request", 3 * _windows(run.run_s, a.kms_reuse_s) + 2)
    return u


def estimate(run: RunFacts, a: Assumptions | None = None) -> Estimate:
    """The run's cost, per participant and for the server."""
    a = a or Assumptions()
    defined = definition_transitions(run)
    # With the history's count, each part's transitions are scaled so that they add up to it.
    observed = run.observed_transitions
    scale = observed / defined if observed is not None and defined else 1.0
    clients: dict[str, Party] = {}
    for client in _clients(run):
        direct, took_part = client_direct(client, run, a)
        clients[client] = Party(client, direct=direct, rounds=took_part)
    end_transitions = len(run.paths.end(run.ended)) * scale if defined else float(observed or 0)
    server = server_run(run, a, end_transitions)
    for r in run.rounds:
        shared = round_shared(r, run, a, round_transitions(r, run.paths, run.secure_aggregation) * scale)
        sharers = [c for c in r.participants if c in clients]
        if not sharers:
            server = server.plus(shared)
            continue
        part = shared.scaled(1 / len(sharers))
        for c in sharers:
            clients[c].share = clients[c].share.plus(part)
    return Estimate(
        run_id=run.run_id,
        clients=clients,
        server=server,
        transitions=observed if observed is not None else defined,
        transitions_source="execution history" if observed is not None else run.paths.source,
        defined_transitions=defined,
        ended=run.ended,
        lambda_memory_mb=run.lambda_memory_mb,
        assumptions=a,
    )


def _clients(run: RunFacts) -> list[str]:
    seen: dict[str, None] = dict.fromkeys(run.clients)
    for r in run.rounds:
        seen.update(dict.fromkeys(r.selected + r.participants + r.rejected + r.declined))
    return list(seen)


def history_transitions(events: Iterable[Mapping[str, object]]) -> int:
    """Billed state transitions in an execution's history events: every state entered, plus each
    retry of a task (a task scheduled again without entering its state again)."""
    entered = tasks_entered = scheduled = 0
    for event in events:
        kind = str(event.get("type", ""))
        if kind.endswith("StateEntered"):
            entered += 1
            tasks_entered += kind == "TaskStateEntered"
        elif kind in ("TaskScheduled", "LambdaFunctionScheduled", "ActivityScheduled"):
            scheduled += 1
    return entered + max(0, scheduled - tasks_entered)
