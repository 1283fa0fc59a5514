"""`fedstep local`: a real federated training run on the embedded local cloud.

Deploys the stack into a moto server, starts one client agent process per client (each with its
own part of a built-in data set, or of the user's data set from a `module:function` loader, divided
IID or non-IID by `--partition`), starts a run, prints a line per round, evaluates every round's
global model on the data set's held-out test set, and writes `<out>/summary.json`. Each client's
label counts go to the run's `partition.json` (see `fedstep.core.label_counts`) and the summary.
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fedstep.aws.adapters import DynamoRoundTable, S3ModelStore
from fedstep.core import keys, tensors
from fedstep.core.dp import neighbouring
from fedstep.core.errors import FedstepError
from fedstep.core.imports import load_callable
from fedstep.core.label_counts import LabelCounts
from fedstep.core.schemas import FailureItem, RoundSummary, Target
from fedstep.core.statistics import FederatedStatistics, Standardization
from fedstep.core.strategies.params import to_json as params_json
from fedstep.local.cloud import LocalCloud, agent_credentials_env
from fedstep.local.iam.identities import OPERATOR
from fedstep.local.processes import ClientProcesses, fork_is_safe, preload_agent
from fedstep.local.round_entries import round_entry, round_line
from fedstep.operator.model import build_model, keras_payload
from fedstep.operator.paths import point_latest_at, run_folder
from fedstep.operator.settings import RunSettings, merge_settings
from fedstep.operator.start import new_run_id, start_run
from fedstep.operator.statistics import run_statistics
from fedstep.operator.views import failure_text, load_failures
from fedstep.render.status import strategy_text
from fedstep.render.text import clean

if TYPE_CHECKING:
    from client_agent.datasets import Prepared
    from client_agent.partitions import Scheme

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DemoConfig:
    """Defaults: digits, 3 clients (IID split), 5 rounds, the dataset's built-in model."""

    dataset: str = "digits"
    """A built-in data set (digits, mnist, heart, heart-raw) or a loader module:function returning the whole (x, y)."""
    partition: str = "iid"
    """How the pool is divided among the clients: iid, dirichlet:ALPHA, shards:K or quantity:ALPHA."""
    clients: int = 3
    out: Path | None = None
    """The output folder; None: runs/<run> (fedstep.operator.paths), with runs/latest pointing at it."""
    model: str | None = None
    """module:function returning a compiled Keras model; default the built-in data set's (required for custom data)."""
    seed: int = 0
    """Seeds the initial weights, the client selection and the data: held-out split, partition, local splits."""
    settings: RunSettings = field(default_factory=lambda: RunSettings(round_timeout_s=600))
    timeout_s: float = 1800.0
    """Give up on the whole run after this many seconds."""
    keep_running: bool = False
    """After the run, keep the local cloud and its client agents up (for `fedstep status`, `report`,
    `start`, ...) until Ctrl-C or SIGTERM."""
    engine: str = "cloud"
    """cloud (the embedded local cloud) or memory (in-process: `fedstep.local.memory_engine`)."""
    workers: int | None = None
    """The memory engine's worker processes (None: one per core)."""


LOCAL_SETTINGS = RunSettings(rounds=5, round_timeout_s=600)
"""`fedstep local`'s run settings before the run file and the flags: 5 rounds, a 10-minute deadline."""


def demo_config(
    *,
    dataset: str = "digits",
    partition: str = "iid",
    clients: int = 3,
    out: Path | str | None = None,
    model: str | None = None,
    seed: int | None = None,
    keep_running: bool = False,
    run_file: dict[str, Any] | None = None,
    settings: dict[str, Any] | None = None,
    engine: str = "cloud",
    workers: int | None = None,
) -> DemoConfig:
    """The options of `fedstep local` (the CLI) and `fedstep.simulate` (the Python API) as one config.

    `settings`: run settings by RunSettings field name (None: not given), over the run file's, over
    LOCAL_SETTINGS. `model` and `seed` default to the run file's; the seed to 0."""
    run_file = run_file or {}
    seed = seed if seed is not None else run_file.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise FedstepError(f"seed must be a whole number, got {seed!r}")
    return DemoConfig(
        dataset=dataset,
        partition=partition,
        clients=clients,
        out=Path(out) if out is not None else None,
        model=model or run_file.get("model"),
        seed=seed,
        settings=merge_settings(LOCAL_SETTINGS, run_file, {**(settings or {}), "seed": seed}),
        keep_running=keep_running,
        engine=engine,
        workers=workers,
    )


def heldout_inputs(
    prepared: Prepared,
    standardize: str,
    statistics: FederatedStatistics | None,
    clients: int,
    scheme: Scheme,
    seed: int,
) -> tuple[np.ndarray, np.ndarray]:
    """The held-out test set as the run's model sees inputs: as it is (standardize none), standardized
    with the run's federated statistics, or (local) as each site would standardize it: the examples of
    a site (natural split, one client per site) with that client's own training statistics, else
    with client 1's."""
    from client_agent import datasets

    x, y = datasets.heldout(prepared)
    if standardize == "federated":
        assert statistics is not None
        return statistics.standardization().apply(x), y
    if standardize != "local":
        return x, y

    def own(index: int) -> Standardization:
        (x_train, _), _ = datasets.local_split(prepared, (index, clients), seed, scheme)
        return Standardization.local(x_train)

    if prepared.groups is None or clients == 1:
        return own(1).apply(x), y
    sites = prepared.groups[prepared.heldout]
    out = np.empty(x.shape, dtype=np.float32)
    for index in range(1, clients + 1):
        members = sites == index
        out[members] = own(index).apply(x[members])
    return out, y


class HeldoutEvaluator:
    """Evaluates a run's global models on the data set's held-out test set (never seen by a client)."""

    def __init__(self, heldout: tuple[np.ndarray, np.ndarray], architecture: bytes) -> None:
        from client_agent.keras_model import model_from_bytes

        self.x, self.y = heldout
        self.model = model_from_bytes(architecture)

    def evaluate(self, weights: tensors.Tensors) -> dict[str, float]:
        """Keras's `evaluate` of `weights` on the held-out set: its first call builds the model's test
        step, later calls run that step on the kept batches (`keras_data.evaluate_batches`, the same
        numbers without `evaluate`'s per-call pipeline: a few ms instead of some 30 in a round)."""
        from client_agent.keras_data import evaluate_batches, evaluate_data
        from client_agent.keras_model import set_tensors

        set_tensors(self.model, weights)
        data = evaluate_data(self.x, self.y)
        if self.model.test_function is None:
            result = self.model.evaluate(data.dataset(), verbose=0, return_dict=True)
        else:
            result = evaluate_batches(self.model, data)
        return {"test_accuracy": round(float(result["accuracy"]), 4), "test_loss": round(float(result["loss"]), 4)}


THREAD_SETTINGS = ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS", "OMP_NUM_THREADS")


def agent_threads_env(agents: int, cores: int | None = None) -> dict[str, str | None]:
    """Each agent's share of this machine's cores (`cores`, default all) for TensorFlow's thread pools, so
    that `agents` processes training at once do not each start a pool of every core and spin against one
    another (on 2 cores, 3 agents: 7% less CPU for the demo, the same numbers). A variable the user set
    is kept."""
    share = str(max(1, (cores or os.cpu_count() or 1) // max(1, agents)))
    return {name: os.environ.get(name, share) for name in THREAD_SETTINGS}


def run_demo(config: DemoConfig, echo: Callable[[str], None] = print) -> dict[str, Any]:
    """The cloud engine's run (`fedstep.local.engines.run_local` picks the engine)."""
    from infra.config import ClientConfig, DeploymentConfig

    scheme = check_data_args(config)
    settings = config.settings.validated()
    client_ids = [f"client-{i}" for i in range(1, config.clients + 1)]
    settings.for_clients(client_ids)  # refused now, not after the local cloud is up
    if config.model:  # a model that cannot be imported is named before any agent starts
        load_callable(config.model, "model")
    run_id = new_run_id()
    out = output_folder(config, run_id)
    # With --keep-running the agents keep serving after the run's end (`--follow`), for the runs an
    # operator starts on the kept cloud; they stop with it (ClientProcesses, and the kernel if killed).
    agent_mode = ["--follow"] if config.keep_running else []
    config_paths = {cid: out / "clients" / f"{cid}.json" for cid in client_ids}
    credentials = out / "local-credentials"  # each organisation's keys, written once the cloud is up
    with contextlib.ExitStack() as stack:
        stack.enter_context(_lambda_logs_to(out / "logs" / "aggregate.log"))  # restored last: logs until the end
        # The agents start first, then wait for their config (written below, once the stack's queues and
        # roles exist). Forked (fedstep.local.processes), they share the runner's TensorFlow import;
        # spawned, each imports its own while the data is split and the stack deploys.
        fork = agents_forked()
        if fork:
            preload_agent()
        procs = stack.enter_context(ClientProcesses(fork=fork))
        for cid, path in config_paths.items():
            path.unlink(missing_ok=True)
            args = ["run", "--config", str(path), "--wait-for-config", str(AGENT_START_S), *agent_mode]
            env = {**agent_threads_env(config.clients), **agent_credentials_env(credentials)}
            procs.start(cid, args, env, out / "logs" / f"{cid}.log")
        prepared, counts = partition_data(config.dataset, client_ids, scheme, config.seed)
        echo_partition(prepared, counts, echo)
        model_ref, architecture, initial_weights = run_model(config, prepared, settings)
        deployment = DeploymentConfig(
            project="fedstep",
            clients=tuple(ClientConfig(c) for c in client_ids),
            round_timeout_s=settings.round_timeout_s,
        )
        echo(f"starting the local cloud and deploying the stack for {config.clients} clients ...")
        cloud = stack.enter_context(LocalCloud(deployment, credentials_path=credentials))
        stack.callback(procs.stop)  # the agents stop before the cloud does
        outputs = cloud.outputs
        assert outputs is not None
        for i, cid in enumerate(client_ids, start=1):
            client_config = outputs.client_config(
                cid,
                "us-east-1",
                endpoint_url=cloud.endpoint,
                data=config.dataset,
                partition=f"{i}/{config.clients}",
                partition_scheme=str(scheme),
                data_seed=config.seed,
                poll_wait_s=1,
                cache_dir=str(out / "cache" / cid),
                profile=cid,  # its organisation's keys, in the cloud's credentials file; it assumes its role
            )
            write_whole(config_paths[cid], json.dumps(client_config, indent=2))
        echo(f"local cloud at {cloud.endpoint}; client logs in {out / 'logs'}")
        table = DynamoRoundTable(outputs.table, cloud.client("dynamodb", OPERATOR))  # the runner acts as the operator
        # Everything made so far (TensorFlow, moto, the deployed stack) lives as long as the run: the
        # collector stops walking it, so that a full collection never stalls a round for a few tenths
        # (a digits round took 1.0-1.3 s instead of 0.5 s when one came). Given back at the end.
        gc.collect()
        gc.freeze()
        stack.callback(gc.unfreeze)
        waited = wait_until_online(table, procs, client_ids, AGENT_START_S)
        for cid, code in procs.failed().items():  # a client that could not start: say why, start nothing
            raise FedstepError(
                f"client {cid} exited with code {code} before the run started; its log "
                f"({procs.logs[cid]}) ends with:\n{procs.log_tail(cid, 8)}"
            )
        late = f"; not yet: {', '.join(waited)} (round 1 waits for them until its deadline)" if waited else ""
        echo(f"{len(client_ids) - len(waited)} of {len(client_ids)} clients online{late}")
        started = start_run(
            architecture,
            initial_weights,
            settings,
            outputs,
            s3=cloud.client("s3", OPERATOR),
            dynamodb=cloud.client("dynamodb", OPERATOR),
            stepfunctions=cloud.client("stepfunctions", OPERATOR),
            sns=cloud.client("sns", OPERATOR),
            run_id=run_id,
            progress=echo,
        )
        strategy_params = params_json(settings.strategy_instance().params)  # all of them, parsed
        echo(
            f"run {started.run_id}: {settings.rounds} rounds, {config.clients} clients, data set {config.dataset}, "
            f"strategy {strategy_text(settings.strategy, strategy_params)}"
            + ("" if settings.codec == "float32" else f", updates encoded {settings.codec_instance().name}")
        )
        store = S3ModelStore(outputs.bucket, cloud.client("s3", OPERATOR))
        store.put_once(keys.partition_key(started.run_id), json.dumps(counts.to_json()).encode())
        record = table.get_run(started.run_id)
        assert record is not None
        statistics = run_statistics(record, outputs, cloud.client("s3", OPERATOR))
        heldout = heldout_inputs(prepared, settings.standardize, statistics, config.clients, scheme, config.seed)
        evaluator = HeldoutEvaluator(heldout, architecture)
        rounds, output = _watch(
            cloud, procs, started.run_id, started.execution_arn, store, table, evaluator, config, echo
        )
        # the last round (before --rounds when the target stopped the run early)
        last = RoundSummary.parse(table.list_rounds(started.run_id)[-1])
        stop_reason = output.get("stop_reason")
        line = stop_line(stop_reason, settings, last.round)
        if line:
            echo(line)
        final_weights = tensors.decode(store.get(last.global_model.key))
        final = evaluator.evaluate(final_weights)
        if not config.keep_running:
            procs.wait(timeout_s=30)  # they exit on the run-ended message
        summary = demo_summary(
            started.run_id,
            rounds,
            final,
            stop_reason,
            config,
            str(scheme),
            model_ref,
            settings,
            strategy_params,
            counts,
        )
        (out / "summary.json").write_text(json.dumps(summary, indent=2))
        echo(
            f"final global model on the held-out test set: accuracy {final['test_accuracy']:.4f}, "
            f"loss {final['test_loss']:.4f}; summary in {out / 'summary.json'}"
        )
        if config.keep_running:
            _keep_running(cloud, started.run_id, model_ref, out, procs, echo)
    return summary


WATCH_INTERVAL_S = 0.2
"""How often the runner looks for new round summaries (one query for the rounds after the last it saw),
and, once every round is in, for the execution's end."""
LOOK_INTERVAL_S = 1.0
"""How often the runner looks at the clients' failures and the execution's status meanwhile."""
AGENT_START_S = 180.0
"""How long the runner waits for the agents: for their config file (they wait), then for their heartbeats."""


AGENTS_ENV = "FEDSTEP_LOCAL_AGENTS"
"""How `fedstep local` starts its agents: "fork" (the default where `fork_is_safe`) or "spawn"."""


def agents_forked() -> bool:
    """Whether this run forks its agents: unless FEDSTEP_LOCAL_AGENTS=spawn, where forking is safe."""
    wanted = os.environ.get(AGENTS_ENV, "fork").strip().lower()
    if wanted not in ("fork", "spawn"):
        raise FedstepError(f"{AGENTS_ENV} must be fork or spawn, got {wanted!r}")
    return wanted == "fork" and fork_is_safe()


def write_whole(path: Path, text: str) -> None:
    """Write `path` so that a reader sees all of it or nothing (a temporary file renamed into place)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text)
    os.replace(partial, path)


def wait_until_online(
    table: DynamoRoundTable, procs: ClientProcesses, client_ids: list[str], timeout_s: float
) -> list[str]:
    """Wait until every agent's heartbeat says it is online, so that round 1 takes a round's time rather
    than the agents' start-up; the clients still not online after `timeout_s` (or whose agent exited)."""
    from fedstep.operator.clients import statuses

    deadline = time.monotonic() + timeout_s
    while True:
        online = {s.client_id for s in statuses(client_ids, table.get_heartbeats(client_ids)) if s.status == "online"}
        waiting = [c for c in client_ids if c not in online and c not in procs.failed()]
        if not waiting or time.monotonic() > deadline:
            return [c for c in client_ids if c not in online]
        time.sleep(0.1)


def stop_line(reason: str | None, settings: RunSettings, rounds_completed: int) -> str | None:
    """The console line saying why the run stopped before --rounds; None when it ran them all."""
    if not reason or reason == "max_rounds":
        return None
    if reason == "target_reached":
        return (
            f"target {settings.target} reached: round {Target.met_by_round(rounds_completed)}'s global model met it "
            f"in the clients' federated evaluation during round {rounds_completed}; the run stops"
        )
    if reason == "privacy_budget":
        budget = f" {settings.dp_epsilon:g}" if settings.dp_epsilon is not None else ""
        return (
            f"privacy budget reached after round {rounds_completed}: one more round would take epsilon past "
            f"--dp-epsilon{budget}, so the run stops"
        )
    return f"the run stopped after round {rounds_completed}: {reason}"


def demo_summary(
    run_id: str,
    rounds: list[dict[str, Any]],
    final: dict[str, float],
    stop_reason: str | None,
    config: DemoConfig,
    scheme: str,
    model_ref: str,
    settings: RunSettings,
    strategy_params: dict[str, Any],
    counts: LabelCounts,
) -> dict[str, Any]:
    """What `<out>/summary.json` holds. `stop_reason` is the execution's: max_rounds, target_reached
    or privacy_budget; after target_reached, `target_met_by_round` is the round whose global model met
    the target in the clients' federated evaluation (the round before the last)."""
    return {
        "run_id": run_id,
        "stop_reason": stop_reason,
        "neighbouring": neighbouring(settings.privacy(), settings.selection),
        **({"target_met_by_round": Target.met_by_round(len(rounds))} if stop_reason == "target_reached" else {}),
        "rounds": rounds,
        "final": final,
        "config": {
            "dataset": config.dataset,
            "clients": config.clients,
            "partition": scheme,
            "model": model_ref,
            "seed": config.seed,
            **asdict(settings),
            "strategy_params": strategy_params,
        },
        "partition": counts.to_json(),
    }


def check_data_args(config: DemoConfig, max_clients: int = 50) -> Scheme:
    """The data arguments, checked before anything starts (at most `max_clients` clients: each is an
    agent process in the local cloud); the parsed partition scheme."""
    from client_agent.config import MAX_SEED
    from client_agent.datasets import BUILTIN, HEART_DATASETS
    from client_agent.partitions import parse_scheme

    custom = config.dataset not in BUILTIN
    if custom and ":" not in config.dataset:
        raise FedstepError(
            f"unknown data set {config.dataset!r}; available: {', '.join(sorted(BUILTIN))}, "
            "or your own loader as module:function"
        )
    if custom and not config.model:
        raise FedstepError(
            f"--dataset {config.dataset} is your own data, which has no default model: pass --model "
            "module:function returning a compiled Keras model for it (e.g. --model client_agent.models:digits_mlp "
            "for 64 features and 10 classes)"
        )
    try:
        scheme = parse_scheme(config.partition)
    except ValueError as exc:
        raise FedstepError(f"--partition: {exc}") from None
    if config.dataset in HEART_DATASETS and not (scheme.is_iid or scheme.is_natural):
        raise FedstepError(
            f"--partition {scheme}: the {config.dataset} data set keeps its natural split, one hospital per client "
            "(--partition natural, its default); other schemes apply to digits, mnist and your own data"
        )
    if config.dataset in HEART_DATASETS:
        scheme = parse_scheme("natural")
    if config.dataset in HEART_DATASETS and config.clients not in (1, 4):
        raise FedstepError(f"the {config.dataset} data set has 4 hospitals: use --clients 4 (one hospital per client)")
    if not 1 <= config.clients <= max_clients:
        more = " (up to 1000 with --engine memory)" if max_clients == 50 else ""
        raise FedstepError(f"--clients must be 1 to {max_clients}, got {config.clients}{more}")
    if not 0 <= config.seed <= MAX_SEED:
        raise FedstepError(f"--seed must be 0 to {MAX_SEED}, got {config.seed}")
    return scheme


def partition_data(dataset: str, client_ids: list[str], scheme: Scheme, seed: int) -> tuple[Prepared, LabelCounts]:
    """The data set split as every client agent will split it (same scheme and seed), and each
    client's label counts (and site, under a natural split). A loader `module:function` is checked
    first (`client_agent.data.load_prepared`)."""
    from client_agent import datasets
    from client_agent.data import load_prepared

    try:
        prepared = (
            datasets.prepare(dataset, seed) if dataset in datasets.BUILTIN else load_prepared(dataset, scheme, seed)
        )
        if prepared.sites and len(client_ids) not in (1, len(prepared.sites)):
            raise FedstepError(
                f"data set {dataset} has {len(prepared.sites)} sites ({', '.join(prepared.sites)}), one client "
                f"each: use --clients {len(prepared.sites)} (or 1 for all of them)"
            )
        parts = datasets.client_parts(prepared, len(client_ids), seed, scheme)
    except ValueError as exc:
        raise FedstepError(f"data set {dataset}: {exc}") from None
    for cid, part in zip(client_ids, parts, strict=True):
        if len(part) < datasets.MIN_CLIENT_EXAMPLES:
            raise FedstepError(
                f"data set {dataset}: {cid} would get {len(part)} example(s) of a pool of {len(prepared.pool)}; "
                f"each client needs at least {datasets.MIN_CLIENT_EXAMPLES} to train on: use fewer clients"
            )
    labels = np.unique(prepared.y)
    counts = {
        cid: np.bincount(np.searchsorted(labels, prepared.y[part]), minlength=len(labels)).tolist()
        for cid, part in zip(client_ids, parts, strict=True)
    }
    by_site = len(prepared.sites) == len(client_ids) > 1
    sites = dict(zip(client_ids, prepared.sites, strict=True)) if by_site else None
    return prepared, LabelCounts.of(dataset, str(scheme), seed, labels.tolist(), counts, sites)


def echo_partition(prepared: Prepared, counts: LabelCounts, echo: Callable[[str], None]) -> None:
    """One line for the split, then one per client: its examples and its most frequent labels."""
    echo(
        f"data set {counts.dataset}: {len(prepared.pool)} examples for {len(counts.clients)} clients "
        f"(partition {counts.scheme}, seed {counts.seed}), {len(prepared.heldout)} held out"
    )
    width = max(len(counts.name(c)) for c in counts.clients)
    for client in counts.clients:
        echo(f"  {counts.name(client).ljust(width)}  {counts.describe(client)}")


def output_folder(config: DemoConfig, run_id: str) -> Path:
    """The run's output folder, made: `config.out`, or runs/<run> with runs/latest pointing at it."""
    out = Path(config.out) if config.out is not None else run_folder(run_id)
    out.mkdir(parents=True, exist_ok=True)
    if config.out is None:
        point_latest_at(out)
    return out


def run_model(config: DemoConfig, prepared: Prepared, settings: RunSettings) -> tuple[str, bytes, tensors.Tensors]:
    """The run's model (`config.model` or the data set's own), seeded, checked against the data: its
    reference, its architecture (`.keras` bytes) and its initial weights."""
    from client_agent.models import DEFAULT_FOR_DATASET

    model_ref = config.model or DEFAULT_FOR_DATASET[config.dataset]
    model = build_model(model_ref, config.seed)
    check_model_fits(model, model_ref, prepared)
    architecture, initial_weights = keras_payload(model)
    if config.model is not None or config.dataset not in DEFAULT_FOR_DATASET:
        # a user's model or data; a built-in data set's own model trains on it (the suite runs each pair),
        # and the check's traced training step would cost the runner a second before the cloud starts
        check_model_trains(architecture, model_ref, prepared, settings.standardize)
    return model_ref, architecture, initial_weights


def check_model_fits(model: Any, model_ref: str, prepared: Prepared) -> None:
    """Refuse a model whose input shape differs from the examples', or with fewer outputs than labels."""
    try:
        inputs, outputs = model.input_shape, model.output_shape
    except (AttributeError, ValueError):  # not a built single-input Keras model: the clients will tell
        return
    have = tuple(prepared.x.shape[1:])
    if isinstance(inputs, tuple) and all(d is None or isinstance(d, int) for d in inputs):
        want = tuple(inputs[1:])
        if len(want) != len(have) or any(w is not None and w != h for w, h in zip(want, have, strict=False)):
            raise FedstepError(
                f"model {model_ref} takes inputs of shape {want}, but the examples of {prepared.name} have shape {have}"
            )
    top = int(prepared.y.max())
    if isinstance(outputs, tuple) and isinstance(outputs[-1], int) and 1 < outputs[-1] <= top:
        raise FedstepError(
            f"model {model_ref} has {outputs[-1]} outputs, but the labels of {prepared.name} go up to {top}: "
            f"it needs at least {top + 1} (one per class)"
        )


def check_model_trains(architecture: bytes, model_ref: str, prepared: Prepared, standardize: str = "none") -> None:
    """The clients' own check before the run starts (`fedstep-client check`'s "model fit"): the data's
    labels against the model's compiled loss and outputs, then one training batch, on a copy of the
    model loaded from `architecture` as the agents load it (the features standardized with the pool's
    own statistics unless the run standardizes none). FedstepError on one line naming the problem and
    its fix, e.g. class-index labels under `categorical_crossentropy`."""
    from client_agent import datasets
    from client_agent.checks import check_fit
    from client_agent.keras_model import model_from_bytes

    (x_pool, y_pool), (x_heldout, y_heldout) = datasets.pool(prepared), datasets.heldout(prepared)
    if standardize != "none":
        scale = Standardization.local(x_pool)
        x_pool, x_heldout = scale.apply(x_pool), scale.apply(x_heldout)
    data = ((x_pool, y_pool), (x_heldout, y_heldout))
    try:
        check_fit(model_from_bytes(architecture), data, f"model {model_ref}")
    except FedstepError as exc:
        raise FedstepError(f"model {model_ref} cannot train on data set {prepared.name}: {exc}") from None


def env_file_text(env: dict[str, str], bin_dir: Path) -> str:
    """What `local-cloud.env` holds: `bin_dir` (the environment's scripts, `fedstep` among them) put
    first on PATH, and `env`: the local cloud's endpoint and region, and the operator role's
    credentials (`LocalCloud.env`); for bash or zsh."""
    import shlex

    lines = [f'export PATH={shlex.quote(str(bin_dir.resolve()) + ":")}"$PATH"']
    lines += [f"export {k}={shlex.quote(v)}" for k, v in env.items()]
    return "\n".join(lines) + "\n"


def scripts_dir() -> Path:
    """The folder of this Python's console scripts (`fedstep`, `fedstep-client`): the venv's bin.
    Not resolved: a venv's python is a symlink to the base interpreter, whose folder has no fedstep."""
    import sys
    import sysconfig

    here = Path(sys.executable).parent
    return here if (here / "fedstep").exists() else Path(sysconfig.get_path("scripts"))


def _keep_running(
    cloud: LocalCloud, run_id: str, model_ref: str, out: Path, procs: ClientProcesses, echo: Callable[[str], None]
) -> None:
    """Leave the local cloud and its agents up until Ctrl-C (or SIGTERM, which the CLI turns into
    one); say how to reach it, in an env file with its endpoint, the operator role's credentials and
    the `fedstep` command on PATH. An agent that exits meanwhile is reported once."""
    endpoint = cloud.endpoint
    env_file = out / "local-cloud.env"
    env_file.write_text(env_file_text(cloud.env(OPERATOR), scripts_dir()))
    echo(f"the local cloud stays up at {endpoint} (stack fedstep), its clients serving. In another shell:")
    echo(f"  source {env_file}")
    echo(f"  fedstep status {run_id}")
    echo(f"  fedstep report {run_id} -o {out / 'report'}")
    echo(f"  fedstep start --model {model_ref} --rounds 3 --watch")
    echo("  fedstep runs | clients | download <run> | stop <run> (any command, against this cloud)")
    echo("press Ctrl-C to stop it")
    told: set[str] = set()
    try:
        while True:
            for cid, code in procs.failed().items():
                if cid not in told:
                    told.add(cid)
                    echo(f"client {cid} exited with code {code}; its log ends with:\n{procs.log_tail(cid, 5)}")
            time.sleep(1.0)
    except KeyboardInterrupt:
        echo("stopping the local cloud")


class FailureWatch:
    """The clients' failed rounds of a run as they happen: each poll reads their failure items (one
    BatchGetItem) and gives a console line for each failure not shown yet, with the client's log."""

    def __init__(self, table: DynamoRoundTable, run_id: str, client_ids: list[str], logs: dict[str, Path]) -> None:
        self.table, self.run_id, self.client_ids, self.logs = table, run_id, client_ids, logs
        self.shown: set[FailureItem] = set()

    def new_lines(self) -> list[str]:
        """A line per failure reported since the last call, `clean`ed (the error is the client's text)."""
        lines = []
        for client, failure in sorted(load_failures(self.table, self.run_id, self.client_ids).items()):
            if failure in self.shown:
                continue
            self.shown.add(failure)
            log_file = f" (its log: {self.logs[client]})" if client in self.logs else ""
            lines.append(clean(f"client {client}: {failure.line()}{log_file}"))
        return lines


@contextmanager
def _lambda_logs_to(path: Path) -> Iterator[None]:
    """The aggregation function's structured logs and its metrics (Powertools, both to stdout in AWS,
    where they land in its log group) go to a file here instead of the runner's terminal, until the
    block ends (a notebook's later output stays its own)."""
    import functools

    from aws_lambda_powertools.metrics.provider.cloudwatch_emf import cloudwatch

    from lambdas import aggregate

    path.parent.mkdir(parents=True, exist_ok=True)
    handler = aggregate.logger.registered_handler
    with open(path, "a") as stream:
        saved_stream = handler.setStream(stream)
        # The metrics provider print()s its embedded-metric-format lines; only its module's print changes.
        cloudwatch.print = functools.partial(print, file=stream, flush=True)  # type: ignore[attr-defined]
        try:
            yield
        finally:
            del cloudwatch.print  # type: ignore[attr-defined]  # the builtin again
            if saved_stream is not None:
                handler.setStream(saved_stream)


def _watch(
    cloud: LocalCloud,
    procs: ClientProcesses,
    run_id: str,
    execution_arn: str,
    store: S3ModelStore,
    table: DynamoRoundTable,
    evaluator: HeldoutEvaluator,
    config: DemoConfig,
    echo: Callable[[str], None],
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Print each round as its summary appears; return them and the execution's output when it succeeds."""
    sfn = cloud.client("stepfunctions", OPERATOR)
    deadline = time.monotonic() + config.timeout_s
    seen: list[dict[str, Any]] = []
    dead: set[str] = set()
    failures = FailureWatch(table, run_id, list(procs.logs), procs.logs)
    total = config.settings.rounds
    relation = neighbouring(config.settings.privacy(), config.settings.selection)  # what epsilon compares
    next_look = 0.0  # when to look at the clients' failures and the execution again (monotonic s)
    while True:
        looking = time.monotonic() >= next_look
        if looking:
            next_look = time.monotonic() + LOOK_INTERVAL_S
            for line in failures.new_lines():
                echo(line)
        for item in table.list_rounds(run_id, after=seen[-1]["round"] if seen else 0):
            summary = RoundSummary.parse(item)
            heldout = evaluator.evaluate(tensors.decode(store.get(summary.global_model.key)))
            entry = round_entry(summary, heldout, relation)
            seen.append(entry)
            echo(round_line(summary, entry, total, relation))
        if not looking and len(seen) < total:
            time.sleep(WATCH_INTERVAL_S)
            continue
        status = sfn.describe_execution(executionArn=execution_arn)
        # Listed again after reading the status: a round summary written since the listing above
        # would otherwise be missed when the execution succeeds in between.
        if status["status"] == "SUCCEEDED" and len(seen) == len(table.list_rounds(run_id)):
            # every round (fewer than --rounds if the target stopped the run early)
            return seen, json.loads(status.get("output") or "{}")
        if status["status"] in ("FAILED", "TIMED_OUT", "ABORTED"):
            failure = failure_text(status.get("error", ""), status.get("cause", ""))
            raise FedstepError(f"run {run_id} {status['status']}: {failure}")
        for cid, code in procs.failed().items():
            if cid not in dead:  # the run goes on without it while the quorum allows
                dead.add(cid)
                echo(f"client {cid} exited with code {code}; its log ends with:\n{procs.log_tail(cid, 5)}")
        if time.monotonic() > deadline:
            raise FedstepError(f"run {run_id} did not finish within {config.timeout_s:.0f} s")
        time.sleep(WATCH_INTERVAL_S)
