"""Helpers shared by the tests that run against the embedded local cloud: a small numpy trainer,
agents that run in the test's process, `fedstep` commands (as a process, or in this one), and reading
a run's results back.

The agents use a trainer that shifts every weight (the protocol is under test, not Keras; the
server never reads the architecture file). `fedstep local` with Keras clients is in test_demo*.py.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from client_agent.agent import Agent, Outcome
from client_agent.config import AgentConfig
from client_agent.training import TrainResult
from fedstep.aws.adapters import DynamoRoundTable, S3ModelStore
from fedstep.core.schemas import RoundSummary
from fedstep.local import gaps
from fedstep.operator.settings import RunSettings
from fedstep.operator.start import start_run


@contextmanager
def cloud_of(clients: tuple[str, ...], round_timeout_s: int) -> Iterator[Any]:
    """The real stack for `clients`, deployed into a local cloud (the conftest's has two clients)."""
    from fedstep.local.cloud import LocalCloud
    from infra.config import ClientConfig, DeploymentConfig

    config = DeploymentConfig(clients=tuple(ClientConfig(c) for c in clients), round_timeout_s=round_timeout_s)
    with LocalCloud(config) as cloud:
        yield cloud


def wait_for_execution(cloud: Any, arn: str, timeout_s: float = 30) -> dict:
    """Poll until the execution is no longer RUNNING; its description."""
    sfn = cloud.client("stepfunctions")
    deadline = time.monotonic() + timeout_s
    while (desc := sfn.describe_execution(executionArn=arn))["status"] == "RUNNING":
        assert time.monotonic() < deadline, "execution still running"
        time.sleep(0.2)
    return desc


def drain_queues(cloud: Any) -> None:
    """Empty every client queue (PurgeQueue is limited to once a minute)."""
    sqs = cloud.client("sqs")
    for url in cloud.outputs.queues.values():
        while messages := sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10).get("Messages"):
            for m in messages:
                sqs.delete_message(QueueUrl=url, ReceiptHandle=m["ReceiptHandle"])


INITIAL = {"000/d/kernel": np.zeros((4, 3), np.float32), "001/d/bias": np.zeros(3, np.float32)}
SHIFTS = {"client-1": (1.0, 10), "client-2": (3.0, 30)}  # weighted mean shift per round: 2.5


class ShiftTrainer:
    """Adds a constant to every weight and reports `n` examples."""

    def __init__(self, shift: float, n: int) -> None:
        self.shift, self.n = shift, n

    def fit(self, architecture, weights, training):
        return TrainResult({k: v + self.shift for k, v in weights.items()}, self.n, {"train_loss": 1 / self.shift})


def agent_config(cloud, client_id, workdir, **fields) -> AgentConfig:
    """An agent's config for `client_id` of the local cloud's stack, caching under `workdir/<id>`; it
    acts under the client's role, assumed with its organisation's keys (the cloud's profile of that
    name); `fields` override the defaults (e.g. `heartbeat_s`)."""
    out = cloud.outputs
    defaults = {
        "client_id": client_id,
        "queue_url": out.queues[client_id],
        "bucket": out.bucket,
        "table": out.table,
        "region": "us-east-1",
        "endpoint_url": cloud.endpoint,
        "role_arn": out.roles[client_id],
        "profile": client_id,
        "data": "unused",
        "poll_wait_s": 1,
        "cache_dir": str(workdir / client_id),
    }
    return AgentConfig(**{**defaults, **fields})


def agent(cloud, client_id, tmp_path, trainer=None):
    """An agent of `client_id` in this process, acting under its client role (the cloud's session of it,
    assumed once: an agent's own `role_arn`/`profile` path is tested in test_local_cloud.py)."""
    config = agent_config(cloud, client_id, tmp_path)
    return Agent(config, trainer or ShiftTrainer(*SHIFTS[client_id]), session=cloud.session(client_id))


def start(
    cloud,
    rounds,
    round_timeout_s=120,
    quorum=None,
    target=None,
    clients_per_round=None,
    round_retries=0,
    min_participants=2,
    initial=None,
    **settings_,
):
    settings = RunSettings(
        rounds=rounds,
        round_timeout_s=round_timeout_s,
        quorum=quorum,
        target=target,
        clients_per_round=clients_per_round,
        round_retries=round_retries,
        min_participants=min_participants,
        **settings_,
    )
    return start_run(
        b"an architecture file the server never reads",
        INITIAL if initial is None else initial,
        settings,
        cloud.outputs,
        **operator_clients(cloud),
    )


def operator_clients(cloud) -> dict[str, Any]:
    """The clients `start_run` and `resume_run` take, acting as the operator (its role)."""
    return {service: cloud.client(service, "operator") for service in ("s3", "dynamodb", "stepfunctions")}


def as_the_function(cloud):
    """A block in which this thread acts as the aggregation function does (its role's credentials), to
    call its handler directly."""
    from fedstep.local.gaps.lambda_in_process import acting_as

    return acting_as(cloud.keys("aggregation"))


def summaries(cloud, run_id) -> list[RoundSummary]:
    """The run's completed rounds, from the table (where the history lives, not in the execution)."""
    table = DynamoRoundTable(cloud.outputs.table, cloud.client("dynamodb"))
    return [RoundSummary.parse(r) for r in table.list_rounds(run_id)]


def published_round(cloud, run_id, round_number=1, timeout_s=60.0) -> dict:
    """The round record once the state machine has published the round (it does so asynchronously).
    Complete, with its `status`: moto applies an UpdateItem's SETs one by one, so a read racing the
    publication can see the item half written (AWS never shows that; docs/local-cloud.md)."""
    table = DynamoRoundTable(cloud.outputs.table, cloud.client("dynamodb"))
    deadline = time.monotonic() + timeout_s
    while (record := table.get_round(run_id, round_number)) is None or "status" not in record:
        assert time.monotonic() < deadline, f"round {round_number} of {run_id} was not published in {timeout_s} s"
        time.sleep(0.2)
    return record


def global_after(cloud, run_id, round_number) -> bytes:
    """The global model file a round published."""
    [summary] = [s for s in summaries(cloud, run_id) if s.round == round_number]
    return S3ModelStore(cloud.outputs.bucket, cloud.client("s3")).get(summary.global_model.key)


def serve(a, expect=Outcome.SERVED, tries=30):
    """Poll until a message arrives (the state machine publishes asynchronously); serve it."""
    for _ in range(tries):
        outcome = a.poll_once()
        if outcome is not None:
            gaps.wait_for_stream_batches()
            assert outcome is expect
            return outcome
    raise AssertionError(f"no message for {a.config.client_id}")


def serve_run(agents, rounds: int) -> None:
    """Each agent serves `rounds` rounds in turn, then the run-ended message."""
    for _ in range(rounds):
        for a in agents:
            serve(a)
    for a in agents:
        serve(a, expect=Outcome.RUN_ENDED)


def receive(cloud, client_id):
    """The next message on a client's queue, received by the test itself as that client (not by an agent)."""
    sqs = cloud.client("sqs", client_id)
    for _ in range(30):
        messages = sqs.receive_message(QueueUrl=cloud.outputs.queues[client_id], WaitTimeSeconds=1).get("Messages")
        if messages:
            return messages[0]
    raise AssertionError(f"no message for {client_id}")


REPO = Path(__file__).resolve().parent.parent


def fedstep(cloud, *args: str, timeout: int = 240, **run: Any) -> subprocess.CompletedProcess[str]:
    """`fedstep <args>` as an operator runs it, against the local cloud, in the checkout (`run`: other
    subprocess.run arguments, e.g. `cwd=` another folder, `stdout=` a pipe)."""
    env = {**os.environ, **cloud.env(), "TF_CPP_MIN_LOG_LEVEL": "3"}
    options = {"cwd": REPO, "stdout": subprocess.PIPE, "stderr": subprocess.PIPE, **run}
    return subprocess.run(
        [sys.executable, "-m", "fedstep", *args, "--endpoint-url", cloud.endpoint],
        env=env,
        text=True,
        timeout=timeout,
        **options,
    )


@contextmanager
def environ(changes: dict[str, str], also: tuple[str, ...] = ()) -> Iterator[None]:
    """This process's environment with `changes` until the block ends; then these names (and `also`) are
    put back as they were, and no others (an in-process Lambda may have set its own meanwhile)."""
    saved = {name: os.environ.get(name) for name in (*changes, *also)}
    os.environ.update(changes)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


class _ThisThreadsOutput:
    """Stands in for sys.stdout or sys.stderr: the writes of the thread that made it are kept in `text`,
    other threads' (agents serving meanwhile) go to the stream it replaces."""

    def __init__(self, original: Any) -> None:
        self.original, self.text, self.thread = original, io.StringIO(), threading.get_ident()

    def _target(self) -> Any:
        return self.text if threading.get_ident() == self.thread else self.original

    def write(self, text: str) -> int:
        return self._target().write(text)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._target(), name)


class _ThisThread(logging.Filter):
    """Passes the records of the thread that made it."""

    def __init__(self) -> None:
        super().__init__()
        self.thread = threading.get_ident()

    def filter(self, record: logging.LogRecord) -> bool:
        return record.thread == self.thread


def fedstep_here(cloud, *args: str, cwd: Path | str = REPO) -> subprocess.CompletedProcess[str]:
    """`fedstep(cloud, *args)` in this process: `fedstep.cli.main` in the operator's environment, its
    output and warnings captured as a process prints them (this thread's only: agents may serve
    meanwhile). For commands that build or load a Keras model, which a process would spend 6-8 s of
    CPU importing TensorFlow for; not for what only a process shows (signals, the real entry point's
    exit, its whole stderr)."""
    from fedstep.cli import main

    argv = [*args, "--endpoint-url", cloud.endpoint]
    env = {**cloud.env(), "TF_CPP_MIN_LOG_LEVEL": "3"}
    out, err = _ThisThreadsOutput(sys.stdout), _ThisThreadsOutput(sys.stderr)
    log = logging.StreamHandler(err)
    log.setLevel(logging.WARNING)
    log.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))  # as main's basicConfig
    log.addFilter(_ThisThread())
    root = logging.getLogger()
    root.addHandler(log)
    try:
        with (
            environ(env, also=("JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION",)),  # main() sets it
            contextlib.chdir(cwd),
            contextlib.redirect_stdout(out),
            contextlib.redirect_stderr(err),
        ):
            try:
                code = main(argv)
            except SystemExit as exc:  # argparse's usage errors, --help; exits as the interpreter does
                code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
                if exc.code is not None and not isinstance(exc.code, int):
                    print(exc.code, file=sys.stderr)
            except Exception:  # as the interpreter ends a process on an uncaught exception
                traceback.print_exc()
                code = 1
    finally:
        root.removeHandler(log)
    return subprocess.CompletedProcess(["fedstep", *argv], code, out.text.getvalue(), err.text.getvalue())


def agent_processes(out: Path) -> dict[str, int]:
    """The pids of the live client agents `fedstep local` started with output folder `out`, by client id:
    the processes whose output goes to `<out>/logs/<id>.log` (a spawned agent's and a forked one's
    alike; a relative `out` is relative to this process's folder)."""
    logs = (Path.cwd() / out / "logs").resolve()
    found = {}
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                target = Path(os.readlink(proc / "fd" / "1"))
            except OSError:  # gone, a zombie (no descriptors left), or not ours to read
                continue
            if target.parent == logs and target.suffix == ".log" and target.stem.startswith("client-"):
                found[target.stem] = int(proc.name)
    return found


@contextmanager
def serving(agents: list[Agent]) -> Iterator[list[Outcome]]:
    """The agents poll their queues in threads (as `fedstep-client run --follow` does) until the block ends."""
    stop = threading.Event()
    outcomes: list[Outcome] = []

    def loop(a: Agent) -> None:
        while not stop.is_set():
            if (outcome := a.poll_once()) is not None:
                outcomes.append(outcome)

    from client_agent.keras_model import import_keras

    import_keras()  # once, here: two threads importing Keras at once can see it half-initialized
    threads = [threading.Thread(target=loop, args=(a,), daemon=True) for a in agents]
    for thread in threads:
        thread.start()
    try:
        yield outcomes
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
