"""The memory engine's clients: a pool of worker processes that train a round's clients as their
agents would (`fedstep.local.memory_engine` drives it).

Each worker is forked from the main process once that has imported TensorFlow (before it runs an
operation), or spawned where forking is not safe (`fedstep.local.memory_engine.ClientPool`), sets its
thread pools to what a client agent of the same run gets (`fedstep.local.demo.agent_threads_env`),
imports TensorFlow once (a forked worker has it already), and then serves any client: it loads the
client's data itself, as the agent does,
from (data set, partition i/n, scheme, data seed) (`client_agent.data.load_local_data`'s path; the
whole data set is loaded once per worker and the last `CLIENT_CACHE` clients' splits kept), trains
with the agent's own trainer (`client_agent.training.load_trainer`: `keras_fit` on one warm model per
architecture, `client_agent.warm_model.WarmModel`) and runs the agent's client steps
(`client_agent.steps`: delta, clip, privacy accounting, encode). Only bytes and JSON-able values
cross between processes: the round message, the global model's and architecture's files in, the
update file and its item out.
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import sys
import time
from collections import OrderedDict
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

CLIENT_CACHE = 64
"""Clients whose local data a worker keeps after serving them (the whole data set is kept once)."""


@dataclass(frozen=True)
class ClientData:
    """How every client's data is made: the data set, the number of clients it is divided among, the
    partition scheme and the data seed (the agents' `data`, `partition` i/n, `partition_scheme`, `data_seed`)."""

    dataset: str
    clients: int
    scheme: str
    seed: int


@dataclass(frozen=True)
class ClientTask:
    """One client's round: its id and partition index (1-based), the round message as the client
    receives it (JSON), the global model's and the architecture's files, and its cache folder
    (privacy ledger, error-feedback residuals)."""

    client_id: str
    index: int
    message: dict[str, Any]
    global_model: bytes
    architecture: bytes
    cache_dir: str


@dataclass(frozen=True)
class ClientResult:
    """What a client sent: the update file and its item, or (`file` None) its decline item, or
    (`item` None) the error that failed its round. `seconds`: its time in the worker."""

    client_id: str
    file: bytes | None
    item: dict[str, Any] | None
    error: str | None = None
    seconds: float = 0.0


_DATA: ClientData | None = None
_SPLITS: OrderedDict[int, Any] = OrderedDict()
_WARM: Any = None


def start_worker(data: ClientData, env: dict[str, str], parent: int, logs: str) -> None:
    """A worker's initializer: it leaves Ctrl-C to its parent (which stops it) and gets SIGTERM when
    the parent dies (`parent`: its pid; Linux), writes its output (TensorFlow's and Keras's warnings)
    to `<logs>/worker-<pid>.log` as an agent writes its log (the console is the runner's), sets its
    thread settings (before TensorFlow is imported), then imports what training needs and loads the
    data set, so the pool's start-up overlaps the main process's preparation."""
    global _DATA, _WARM
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the parent died before prctl took effect
            raise SystemExit(143)
    Path(logs).mkdir(parents=True, exist_ok=True)
    with open(Path(logs) / f"worker-{os.getpid()}.log", "ab") as log:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
    os.environ.update(env)
    _DATA = data
    from client_agent.keras_model import import_keras
    from client_agent.warm_model import WarmModel

    import_keras()  # TensorFlow: seconds, once per worker, its start-up banner silenced
    # the whole data set, while the main process prepares the run; an error is not cached: a client's
    # task meets it again, and reports it
    with contextlib.suppress(Exception):
        _prepared(data.dataset, data.scheme, data.seed)

    _WARM = WarmModel()


def ready() -> int:
    """A no-op task: the pool's workers are up once each has answered one (their pid)."""
    return os.getpid()


@functools.lru_cache(maxsize=2)
def _prepared(dataset: str, scheme: str, seed: int) -> Any:
    """The whole data set, split into held-out set and pool, once per worker (`load_local_data`'s path)."""
    from client_agent import datasets, partitions
    from client_agent.data import load_prepared

    if dataset in datasets.BUILTIN:
        return datasets.prepare(dataset, seed)
    return load_prepared(dataset, partitions.parse_scheme(scheme), seed)


def client_split(data: ClientData, index: int) -> Any:
    """Client `index`'s local ((x_train, y_train), (x_test, y_test)), exactly as its agent loads them
    with `client_agent.data.load_local_data(dataset, "index/clients", scheme, seed)`."""
    from client_agent import datasets, partitions

    if index in _SPLITS:
        _SPLITS.move_to_end(index)
        return _SPLITS[index]
    scheme = partitions.parse_scheme(data.scheme)
    split = datasets.local_split(
        _prepared(data.dataset, data.scheme, data.seed), (index, data.clients), data.seed, scheme
    )
    _SPLITS[index] = split
    while len(_SPLITS) > CLIENT_CACHE:
        _SPLITS.popitem(last=False)
    return split


def round_privacy(msg: Any, examples: int) -> Any:
    """What the round's privacy instructions ask of a client with `examples` training examples, as
    the agent decides it with its default config (no `dp_epsilon_budget`, no `dp_max_delta`:
    `client_agent.agent.Agent._round_privacy`). Raises Declined when the agent would decline."""
    from client_agent.round_privacy import dp_sgd_spend, instructed
    from client_agent.steps import RoundPrivacy

    mode, clip, params = instructed(msg)
    if params is None:
        return RoundPrivacy(mode, clip)
    return RoundPrivacy(mode, None, dp_sgd_spend(msg, params, examples))


def train_client(task: ClientTask) -> ClientResult:
    """Serve one client's round as its agent does (the module doc); never raises: an error is the result's."""
    started = time.monotonic()
    try:
        file, item = _serve(task)
    except Exception as exc:  # the round failed at this client, as an agent's would: said, not raised
        detail = f"{type(exc).__name__}: {exc}"
        return ClientResult(task.client_id, None, None, detail, time.monotonic() - started)
    return ClientResult(task.client_id, file, item, None, time.monotonic() - started)


def _serve(task: ClientTask) -> tuple[bytes | None, dict[str, Any]]:
    from client_agent.privacy_ledger import PrivacyLedger
    from client_agent.residuals import ResidualStore
    from client_agent.round_privacy import Declined
    from client_agent.steps import RoundContext, run_steps, steps_for
    from client_agent.training import load_trainer
    from fedstep.core import tensors
    from fedstep.core.clock import utc_now
    from fedstep.core.schemas import DeclineItem, RoundMessage
    from fedstep.core.statistics import Standardization

    assert _DATA is not None, "start_worker was not run"
    msg = RoundMessage.parse(task.message)
    cache = Path(task.cache_dir)
    ledger = PrivacyLedger.for_client(cache, task.client_id)
    trainer = load_trainer(None, client_split(_DATA, task.index))  # the agent's default: keras_fit
    trainer.warm = _WARM
    try:
        privacy = round_privacy(msg, trainer.num_examples)
    except Declined as exc:
        known = ledger.privacy(msg.run_id).report() if ledger.spends(msg.run_id) else {}
        return None, DeclineItem(msg.run_id, msg.round, task.client_id, str(exc), utc_now(), known).to_item()
    standardize = msg.training.standardize
    if standardize == "local":
        trainer.use_standardization("local", lambda: Standardization.local(trainer.raw_data[0][0]))
    elif standardize != "none":
        raise ValueError(f"the memory engine cannot standardize {standardize!r}")
    global_weights = tensors.decode(task.global_model, max_bytes=len(task.global_model))
    result = trainer.fit(task.architecture, global_weights, replace(msg.training, instructions=msg.instructions))
    tensors.check_matches(result.weights, tensors.TensorSpec.of(global_weights))
    ctx = RoundContext(
        msg,
        task.client_id,
        privacy,
        global_weights,
        result.num_examples,
        result.metrics,
        ledger,
        residuals=ResidualStore.for_client(cache, task.client_id),
    )
    file, item = run_steps(steps_for(privacy), result.weights, ctx)
    return file, replace(item, created_at=utc_now()).to_item()
