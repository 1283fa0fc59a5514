"""Rounds on the local cloud, measured from inside its process: for benches that put one way of running a
round beside another (`bench/secure_aggregation.py --cloud`).

- `Meter`, installed on a running `LocalCloud`, records every request its in-process transport answers
  (`fedstep.local.in_process`: the runner, the state machine's executor, the Lambda handlers and the
  agents of this process all go through it): who made it (the principal whose access key signed it),
  the service and operation, what it touched (an update file, a secure round's keys item, the roster,
  an inbox ...) and the bytes of its request and response bodies (headers not counted); and every
  invocation of the aggregation function, with its wall and CPU (thread) time. Each is tagged with the
  round and phase the state machine last published (a round's "publish" invocation moves the tag on to
  its "advertise" phase, a secure round's "secagg_publish" to its later phase; a run's model-card
  invocation to `END`): in a steady round, what a round's tail leaves to the next is what the previous
  round left to it.
- `serving` runs agents of this process (`agents`: under their client roles, with `DeltaTrainer`, a
  numpy trainer) in threads, as `fedstep-client run --follow` polls.
- `run_rounds` starts a run with the operator's role and waits for its execution to end: its round
  summaries and execution history (`transitions_by_round`).
"""

from __future__ import annotations

import re
import threading
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import numpy as np

from client_agent.agent import Agent
from client_agent.config import AgentConfig
from client_agent.training import TrainResult
from fedstep.aws.adapters import DynamoRoundTable
from fedstep.core import tensors
from fedstep.core.machine import State
from fedstep.core.schemas import RoundSummary
from fedstep.costs.model import history_transitions
from fedstep.local import gaps
from fedstep.local.iam.identities import ADMIN, AGGREGATION, OPERATOR, STATE_MACHINE
from fedstep.operator.settings import RunSettings
from fedstep.operator.start import start_run

START, END = 0, -1
"""The round tag of what happens before a run's first publication, and after its model card was asked for."""
ARCHITECTURE = b"an architecture file the server never reads"


@dataclass(frozen=True)
class Request:
    run: str
    round: int
    phase: str
    """The phase of a secure round the state machine last published ("advertise": the round itself)."""
    principal: str
    """A client id, "aggregation" (the function), "state-machine", "operator", "admin", or "other"."""
    service: str
    action: str
    what: str
    """What it touched (`what_of`): "update file", "keys item", "roster", "inbox", "message" ..."""
    sent: int
    """Request body bytes."""
    received: int
    """Response body bytes."""


@dataclass(frozen=True)
class Invocation:
    run: str
    round: int
    phase: str
    """As `Request.phase`; the event's phase for a later phase's publication or deadline."""
    mode: str
    """The event's mode ("publish", "secagg_publish", "deadline", "card" ...), or "stream" for a stream batch."""
    records: int
    """A stream batch's records (0 for the state machine's calls)."""
    wall_s: float
    cpu_s: float


_CREDENTIAL = re.compile(r"Credential=([^/,\s]+)/\d{8}/[^/]+/([^/]+)/")


ITEM_KINDS = (
    (b"INBOX#", "inbox"),
    (b"#FROM#", "inbox"),
    (b"#KEYS", "keys item"),
    (b"#SHARE#", "share item"),
    (b"#REVEAL", "reveal item"),
    (b"#SURVIVORS", "survivors record"),
    (b"#PHASE#", "phase record"),
    (b"UPDATE#", "update item"),
    (b"HEARTBEAT", "heartbeat"),
    (b"STOP#", "stop marker"),
    (b"ROUND#", "round record"),
    (b"FEEDBACK#", "feedback"),
)
"""A DynamoDB request's kind: the first of these marks of `fedstep.core.keys` in its body (its keys,
conditions and values); else the run record (sort key `RUN`), else "item"."""
_RUN = re.compile(rb'"S":\s*"RUN"')

OBJECT_KINDS = (
    ("updates/", "update file"),
    ("/roster.json", "roster"),
    ("/global-", "global model"),
    ("/model.keras", "architecture"),
    ("/state-", "strategy state"),
    ("/manifest-", "manifest"),
    ("/card-", "model card"),
)


def what_of(service: str, action: str, path: str, body: bytes, answer: bytes) -> str:
    """What a request touched, from its service, operation, path and bodies (see `Request.what`)."""
    if service == "s3":
        key = path.lstrip("/").partition("/")[2]
        return next((kind for mark, kind in OBJECT_KINDS if mark in f"/{key}"), "object" if key else "bucket")
    if service == "dynamodb":  # the body as sent (searched, not parsed: the meter runs in the callers' threads)
        return next((kind for mark, kind in ITEM_KINDS if mark in body), "run record" if _RUN.search(body) else "item")
    if service == "sqs" and action == "ReceiveMessage":
        return "message" if (b'"Messages"' in answer or b"<Message>" in answer) else "empty poll"
    return ""


def action_of(service: str, environ: dict[str, Any], body: bytes) -> str:
    target = environ.get("HTTP_X_AMZ_TARGET", "")
    if target:
        return target.rpartition(".")[2]
    if service == "s3":
        method = environ["REQUEST_METHOD"]
        key = environ.get("PATH_INFO", "").lstrip("/").partition("/")[2]
        names = {"GET": "GetObject", "PUT": "PutObject", "HEAD": "HeadObject", "DELETE": "DeleteObject"}
        return names.get(method, method) if key else f"{method} bucket"
    if service == "lambda" and environ.get("PATH_INFO", "").endswith("/invocations"):
        return "Invoke"
    form = parse_qs(body.decode("latin1")) if body[:1] != b"{" else {}
    return (form.get("Action") or parse_qs(environ.get("QUERY_STRING", "")).get("Action") or ["?"])[0]


class Meter:
    """Records a local cloud's requests and the aggregation function's invocations (see the module doc)
    while installed: `with Meter(cloud) as meter:`."""

    def __init__(self, cloud: Any) -> None:
        self.cloud = cloud
        self.requests: list[Request] = []
        self.invocations: list[Invocation] = []
        self.current: tuple[str, int, str] = ("", START, "")
        self._principals: dict[str, str] = {}
        self._lock = threading.Lock()
        self._undo: list[Any] = []

    # -- installing ---------------------------------------------------------------------------------
    def __enter__(self) -> Meter:
        transport = self.cloud.transport
        if transport is None:
            raise RuntimeError("the meter reads the in-process transport: unset FEDSTEP_LOCAL_TRANSPORT=http")
        names = [ADMIN, OPERATOR, AGGREGATION, STATE_MACHINE, *self.cloud.outputs.roles]
        self._principals = {self.cloud.keys(name).access_key: name for name in names}
        answer = transport._answer

        def metered(environ: dict[str, Any], start_response: Any, method: str, app: Any = None) -> bytes:
            body = environ["wsgi.input"].getvalue()
            out = answer(environ, start_response, method, app)
            self._record(environ, body, out)
            return out

        transport._answer = metered
        self._undo.append(lambda: delattr(transport, "_answer"))

        import lambdas.aggregate as function

        handler = function.handler

        def timed(event: dict[str, Any], context: Any) -> dict[str, Any]:
            mode = event.get("mode") if isinstance(event, dict) else None
            if mode == "publish":
                self.current = (str(event["run_id"]), int(event["round"]), "advertise")
            elif mode == "secagg_publish":
                self.current = (str(event["run_id"]), int(event["round"]), str(event.get("phase", "")))
            elif mode == "card":
                self.current = (str(event["run_id"]), END, "")
            run, number, phase = self.current
            if mode is not None and mode != "card" and "round" in event:
                run, number = str(event["run_id"]), int(event["round"])
                phase = str(event.get("phase", "advertise"))
            wall, cpu = time.perf_counter(), time.thread_time()
            try:
                return handler(event, context)
            finally:
                self.invocations.append(
                    Invocation(
                        run,
                        number,
                        phase,
                        str(mode or "stream"),
                        len(event.get("Records") or []) if isinstance(event, dict) else 0,
                        time.perf_counter() - wall,
                        time.thread_time() - cpu,
                    )
                )

        function.handler = timed
        self._undo.append(lambda: setattr(function, "handler", handler))
        return self

    def __exit__(self, *exc: object) -> None:
        while self._undo:
            self._undo.pop()()

    def _record(self, environ: dict[str, Any], body: bytes, answer: bytes) -> None:
        signed = _CREDENTIAL.search(environ.get("HTTP_AUTHORIZATION", ""))
        access_key, service = signed.groups() if signed else ("", "?")
        action = action_of(service, environ, body)
        what = what_of(service, action, environ.get("PATH_INFO", ""), body, answer)
        run, number, phase = self.current
        principal = self._principals.get(access_key, "other")
        with self._lock:
            self.requests.append(Request(run, number, phase, principal, service, action, what, len(body), len(answer)))

    # -- reading ------------------------------------------------------------------------------------
    def of_round(self, run: str, number: int) -> tuple[list[Request], list[Invocation]]:
        return (
            [r for r in self.requests if r.run == run and r.round == number],
            [i for i in self.invocations if i.run == run and i.round == number],
        )


# -- agents of this process ---------------------------------------------------------------------------


class DeltaTrainer:
    """Adds a small random delta to every weight (normal, `scale`; its own stream per client) and reports
    `examples`: a round's numpy work of a few ms, so that many agents fit in one process."""

    def __init__(self, seed: int, examples: int, scale: float = 1e-3) -> None:
        self.rng, self.examples, self.scale = np.random.default_rng(seed), examples, scale

    def fit(self, architecture: bytes, weights: tensors.Tensors, training: Any) -> TrainResult:
        trained = {k: (v + self.rng.normal(0.0, self.scale, v.shape)).astype(np.float32) for k, v in weights.items()}
        return TrainResult(trained, self.examples, {"train_loss": 1.0})


def agents(cloud: Any, cache: Path, seed: int = 0) -> list[Agent]:
    """One agent per client of the local cloud's stack, each under its client role (the cloud's session of
    it), caching under `cache/<id>`, with a `DeltaTrainer` (examples 100, 110, ...)."""
    out = cloud.outputs
    made = []
    for index, client_id in enumerate(sorted(out.queues)):
        config = AgentConfig(
            client_id=client_id,
            queue_url=out.queues[client_id],
            bucket=out.bucket,
            table=out.table,
            region="us-east-1",
            endpoint_url=cloud.endpoint,
            role_arn=out.roles[client_id],
            profile=client_id,
            data="unused",
            poll_wait_s=1,
            cache_dir=str(cache / client_id),
        )
        trainer = DeltaTrainer(seed * 1000 + index, 100 + 10 * index)
        made.append(Agent(config, trainer, session=cloud.session(client_id)))
    return made


@contextmanager
def serving(served: list[Agent]) -> Iterator[list[str]]:
    """The agents poll their queues in threads until the block ends; yields the failures (tracebacks) of
    any that raised (it stops polling)."""
    stop = threading.Event()
    failures: list[str] = []

    def loop(a: Agent) -> None:
        try:
            while not stop.is_set():
                a.poll_once()
        except Exception:
            failures.append(f"{a.config.client_id}: {traceback.format_exc()}")

    threads = [threading.Thread(target=loop, args=(a,), name=a.config.client_id, daemon=True) for a in served]
    for thread in threads:
        thread.start()
    try:
        yield failures
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=30)


# -- runs ---------------------------------------------------------------------------------------------


@dataclass
class RunResult:
    run_id: str
    status: str
    cause: str
    summaries: list[RoundSummary]
    events: list[dict[str, Any]] = field(default_factory=list)


def run_rounds(cloud: Any, settings: RunSettings, initial: tensors.Tensors, timeout_s: float = 1800) -> RunResult:
    """Start a run as the operator and wait for its execution to end (`timeout_s`, then RuntimeError)."""
    started = start_run(
        ARCHITECTURE,
        initial,
        settings,
        cloud.outputs,
        **{service: cloud.client(service, OPERATOR) for service in ("s3", "dynamodb", "stepfunctions")},
    )
    sfn = cloud.client("stepfunctions")
    deadline = time.monotonic() + timeout_s
    while (desc := sfn.describe_execution(executionArn=started.execution_arn))["status"] == "RUNNING":
        if time.monotonic() > deadline:
            raise RuntimeError(f"run {started.run_id} still running after {timeout_s:.0f} s")
        time.sleep(0.5)
    gaps.wait_for_stream_batches()
    table = DynamoRoundTable(cloud.outputs.table, cloud.client("dynamodb"))
    summaries = [RoundSummary.parse(r) for r in table.list_rounds(started.run_id)]
    events: list[dict[str, Any]] = []
    kwargs: dict[str, Any] = {"executionArn": started.execution_arn, "maxResults": 1000}
    while True:
        page = sfn.get_execution_history(**kwargs)
        events += page.get("events", [])
        if not page.get("nextToken"):
            break
        kwargs["nextToken"] = page["nextToken"]
    return RunResult(started.run_id, desc["status"], str(desc.get("cause", "")), summaries, events)


def round_blocks(events: list[dict[str, Any]]) -> dict[int, list[dict[str, Any]]]:
    """An execution's history cut where each round enters "Prepare round": round r's events run to round
    r + 1's (the last round's, to the end of the run)."""
    cuts = [
        i
        for i, e in enumerate(events)
        if str(e.get("type", "")).endswith("StateEntered")
        and (e.get("stateEnteredEventDetails") or {}).get("name") == State.PREPARE_ROUND
    ]
    return {
        number: events[start:end]
        for number, (start, end) in enumerate(zip(cuts, [*cuts[1:], len(events)], strict=True), start=1)
    }


def transitions_by_round(events: list[dict[str, Any]]) -> dict[int, int]:
    """Billed state transitions per round (`fedstep.costs.model.history_transitions`, `round_blocks`)."""
    return {number: history_transitions(block) for number, block in round_blocks(events).items()}


def seconds_in_states(events: list[dict[str, Any]]) -> dict[int, dict[str, float]]:
    """Per round (`round_blocks`), the seconds from entering each state to leaving it (added up when it
    is entered again), from the history's time stamps (ms)."""
    out = {}
    for number, block in round_blocks(events).items():
        entered: dict[str, Any] = {}
        spent: dict[str, float] = {}
        for e in block:
            kind = str(e.get("type", ""))
            if kind.endswith("StateEntered"):
                entered[e["stateEnteredEventDetails"]["name"]] = e["timestamp"]
            elif kind.endswith("StateExited") and e["stateExitedEventDetails"]["name"] in entered:
                name = e["stateExitedEventDetails"]["name"]
                spent[name] = spent.get(name, 0.0) + (e["timestamp"] - entered.pop(name)).total_seconds()
        out[number] = spent
    return out
