"""`fedstep local --engine memory`: the same run as the local cloud's, in one process and a worker pool.

The server side is the aggregation function's own code on the in-memory ports (`fedstep.memory`): each
round is published with `fedstep.core.rounds.publish_round` (the seeded selection of
`fedstep.core.selection`, the strategy's instructions, the codec's and the privacy settings), the
selected clients' updates are written as agents write them, and the round is completed with
`try_complete_round` (or `complete_round_at_deadline` when a client failed), which aggregates with the
run's strategy, bounds and privacy exactly as in the cloud. The loop around them is the state
machine's: a round that cannot be aggregated is published again up to `round_retries` times, and the
run stops early when its target is reached or its privacy budget is spent.

The clients are a pool of worker processes (`fedstep.local.memory_workers`), one per core by default,
each training any client with the agent's own trainer, data loading and client steps. Nothing is kept
per client but its privacy ledger and residuals on disk (as an agent's cache): memory grows with the
clients of one round, not with the population, and each round's update files are deleted once it is
aggregated (as the bucket's lifecycle rule deletes them).

**Secure aggregation** (a run record with `secagg`, SecAgg+: docs/privacy.md): the workers train and
run the client steps as in any round; then the engine plays each client's agent in process
(`fedstep.local.secure_clients`, in the client's own role: it decodes that client's own update file back
into its delta, which a simulation may do and a server never does), encodes it as the round's secure
input (`InputCodec.for_round`; its rounding and noise seeded from the run's seed, the round, the attempt
and the client, so a secure run is repeatable) and advertises its keys. The server side is driven as
the Lambda drives it, with the core's functions on the in-memory ports and the `SecAggServer` port: each
phase closed by the stream path once its members answered (`advance_secure_round`), or by the deadline
path when one is missing (`close_at_deadline`: a client whose training failed is a dropout at
advertise), each later phase opened with `publish_phase` and answered by its members' agents (shares,
masked inputs, reveals). Only masked inputs reach the bucket, deleted after the round as any update
file; a round that ends below the threshold fails as SecAggThresholdNotMet and is retried with fresh
keys like the other rounds that cannot be aggregated.

For the same seed, a run gives the same per-round metrics as `--engine cloud` (the same selection,
data splits, client seeds, aggregation order and thread settings; tests/test_kept_cloud.py compares
them). Not exercised: deployment, IAM roles and policies, SQS delivery and retries, SNS, Lambda's limits,
the Step Functions execution, heartbeats, model cards and federated statistics (`standardize federated`).
"""

from __future__ import annotations

import contextlib
import gc
import json
import multiprocessing
import os
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import replace
from pathlib import Path
from typing import Any

from fedstep.core import keys, limits, run_rules, tensors
from fedstep.core.clock import utc_now
from fedstep.core.dp import neighbouring
from fedstep.core.errors import FedstepError
from fedstep.core.imports import load_callable
from fedstep.core.rounds import (
    AggregationSettings,
    InvalidAggregate,
    QuorumNotMet,
    SecAggThresholdNotMet,
    StrategyFailed,
    TooFewParticipants,
    complete_round_at_deadline,
    try_complete_round,
)
from fedstep.core.rounds.secure import advance_secure_round, close_at_deadline, publish_phase
from fedstep.core.schemas import (
    PHASE_ADVERTISE,
    PHASE_INPUT,
    PHASE_SHARE,
    FailureItem,
    InvalidMessage,
    ObjectRef,
    RoundMessage,
    RoundSummary,
    RunRecord,
    SecAggPhaseMessage,
    UpdateItem,
    parse_client_item,
)
from fedstep.core.strategies.params import to_json as params_json
from fedstep.local.demo import (
    DemoConfig,
    HeldoutEvaluator,
    agent_threads_env,
    agents_forked,
    check_data_args,
    demo_summary,
    echo_partition,
    heldout_inputs,
    output_folder,
    partition_data,
    run_model,
    stop_line,
)
from fedstep.local.memory_workers import ClientData, ClientResult, ClientTask, ready, start_worker, train_client
from fedstep.local.processes import preload_agent
from fedstep.local.round_entries import round_entry, round_line
from fedstep.local.secure_clients import SecureClient, client_rng
from fedstep.memory import MemoryStore, MemoryTable, RecordingPublisher, RecordingReporter
from fedstep.memory.run import publish_in_memory, store_initial
from fedstep.operator.settings import RunSettings
from fedstep.operator.start import new_run_id, plan_run
from fedstep.privacy import lazy_client_epsilon, lazy_operator_epsilon
from fedstep.privacy.secagg.server import SecAggServer
from fedstep.render.status import strategy_text

ENGINES = ("cloud", "memory")
"""`fedstep local --engine`: the embedded local cloud (default) or this in-process engine."""
MAX_WORKERS = 256
"""The most worker processes `--workers` may ask for."""
NOT_AGGREGATED = (QuorumNotMet, TooFewParticipants, InvalidAggregate, SecAggThresholdNotMet)
"""A round's failures the state machine retries (up to `round_retries`) before failing the run
(`infra.state_machine.NOT_AGGREGATED`)."""


def check_engine_options(engine: str, workers: int | None, keep_running: bool) -> None:
    """`--engine` and the options that only one engine takes; FedstepError naming the problem."""
    if engine not in ENGINES:
        raise FedstepError(f"--engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    if engine == "cloud" and workers is not None:
        raise FedstepError("--workers sets the memory engine's worker processes: use it with --engine memory")
    if engine == "memory" and keep_running:
        raise FedstepError(
            "--keep-running keeps the local cloud up, and --engine memory runs without one: use --engine cloud"
        )
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int)):
        raise FedstepError(f"--workers must be a whole number, got {workers!r}")
    if workers is not None and not 1 <= workers <= MAX_WORKERS:
        raise FedstepError(f"--workers must be 1 to {MAX_WORKERS}, got {workers}")


def worker_count(workers: int | None, per_round: int) -> int:
    """The pool's size: `workers`, default one per core; never more than a round's clients."""
    return max(1, min(workers or os.cpu_count() or 1, per_round))


class ClientPool:
    """The worker processes, started at once. Where forking is safe (`fork_is_safe`: no other thread
    yet), this process imports TensorFlow and the agent's modules first and forks the workers, which
    then share that import, as `fedstep local`'s agents do; elsewhere (a notebook) they are spawned,
    each importing TensorFlow while this process prepares the run."""

    def __init__(self, workers: int, data: ClientData, env: dict[str, str], logs: Path) -> None:
        self.workers = workers
        method = "fork" if agents_forked() else "spawn"
        self.frozen = method == "fork"
        if method == "fork":
            preload_agent()  # imported, not used: TensorFlow starts nothing before its first operation
            gc.freeze()  # never collected in the workers: they keep it all
        self.executor = ProcessPoolExecutor(
            max_workers=workers,
            mp_context=multiprocessing.get_context(method),
            initializer=start_worker,
            initargs=(data, env, os.getpid(), str(logs)),
        )
        self.started = [self.executor.submit(ready) for _ in range(workers)]  # one spawn per submit

    def run_round(
        self, tasks: list[ClientTask], on_result: Callable[[ClientResult], None], meanwhile: Callable[[], None]
    ) -> None:
        """Every task, `workers` at a time; `meanwhile` runs once they are submitted (the previous round's
        held-out evaluation), then `on_result` hears each result as it comes (main thread)."""
        pending: set[Future[ClientResult]] = {self.executor.submit(train_client, t) for t in tasks}
        meanwhile()
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                on_result(future.result())

    def close(self) -> None:
        """Stop the workers at once: they hold nothing to save (TensorFlow's exit takes seconds)."""
        if self.frozen:
            gc.unfreeze()
        workers = list((getattr(self.executor, "_processes", None) or {}).values())
        self.executor.shutdown(wait=False, cancel_futures=True)
        for process in workers:
            process.terminate()
        for process in workers:
            process.join(timeout=10)


@contextlib.contextmanager
def client_pool(workers: int, data: ClientData, env: dict[str, str], logs: Path) -> Iterator[ClientPool]:
    pool = ClientPool(workers, data, env, logs)
    try:
        yield pool
    finally:
        pool.close()


def run_memory(config: DemoConfig, echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Run `config` on the memory engine (see the module doc); what `run_local` returns: the summary."""

    check_engine_options("memory", config.workers, config.keep_running)
    scheme = check_data_args(config, max_clients=limits.MAX_CLIENTS_PER_RUN)
    settings = config.settings.validated()
    if settings.standardize == "federated":
        raise FedstepError(
            "standardize federated asks the clients for their statistics through the cloud's queues: "
            "use --engine cloud (the memory engine takes standardize none or local)"
        )
    client_ids = [f"client-{i}" for i in range(1, config.clients + 1)]
    per_round, _ = settings.for_clients(sorted(client_ids))
    if config.model:
        load_callable(config.model, "model")
    run_id = new_run_id()
    out = output_folder(config, run_id)
    workers = worker_count(config.workers, per_round)
    threads = {k: v for k, v in agent_threads_env(config.clients).items() if v is not None}
    data = ClientData(config.dataset, config.clients, str(scheme), config.seed)
    with client_pool(workers, data, {**threads, "TF_CPP_MIN_LOG_LEVEL": "3"}, out / "logs") as pool:
        prepared, counts = partition_data(config.dataset, client_ids, scheme, config.seed)
        echo_partition(prepared, counts, echo)
        model_ref, architecture, initial_weights = run_model(config, prepared, settings)
        record = plan_run(settings, sorted(client_ids), run_id)
        model_file = ObjectRef(keys.model_key(run_id), tensors.sha256_hex(architecture), len(architecture))
        record = replace(record, model=model_file)
        run_rules.check_run(record, lazy_client_epsilon if record.dp is not None else None)
        store, table = MemoryStore(), MemoryTable(record)
        store.put(model_file.key, architecture)
        global_ref = store_initial(store, run_id, initial_weights)
        store.put_once(keys.partition_key(run_id), json.dumps(counts.to_json()).encode())
        for started in pool.started:
            started.result()  # a worker that cannot start says so here
        per_thread = threads.get("TF_NUM_INTRAOP_THREADS", "default")
        echo(
            f"memory engine: {workers} worker process(es), {per_thread} TensorFlow thread(s) each, logs in "
            f"{out / 'logs'}; no local cloud"
        )
        strategy_params = params_json(settings.strategy_instance().params)
        echo(
            f"run {run_id}: {settings.rounds} rounds, {config.clients} clients, data set {config.dataset}, "
            f"strategy {strategy_text(settings.strategy, strategy_params)}"
            + ("" if settings.codec == "float32" else f", updates encoded {settings.codec_instance().name}")
            + ("" if record.secagg is None else f", secure aggregation (threshold {record.secagg.threshold})")
        )
        heldout = heldout_inputs(prepared, settings.standardize, None, config.clients, scheme, config.seed)
        evaluator = HeldoutEvaluator(heldout, architecture)
        engine = RoundLoop(record, store, table, pool, architecture, out, config.settings, echo)
        rounds, stop_reason, last_model = engine.run(global_ref, evaluator)
    line = stop_line(stop_reason, settings, len(rounds))
    if line:
        echo(line)
    final = evaluator.evaluate(tensors.decode(store.get(last_model.key)))
    summary = demo_summary(
        run_id, rounds, final, stop_reason, config, str(scheme), model_ref, settings, strategy_params, counts
    )
    summary["engine"] = {"name": "memory", "workers": workers}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    echo(
        f"final global model on the held-out test set: accuracy {final['test_accuracy']:.4f}, "
        f"loss {final['test_loss']:.4f}; summary in {out / 'summary.json'}"
    )
    return summary


class RoundLoop:
    """The state machine's loop over a run's rounds, on the in-memory ports and the client pool."""

    def __init__(
        self,
        record: RunRecord,
        store: MemoryStore,
        table: MemoryTable,
        pool: ClientPool,
        architecture: bytes,
        out: Path,
        settings: RunSettings,
        echo: Callable[[str], None],
    ) -> None:
        self.record, self.store, self.table, self.pool = record, store, table, pool
        self.architecture, self.out, self.settings, self.echo = architecture, out, settings, echo
        self.index = {c: int(c.rsplit("-", 1)[1]) for c in record.clients}
        secure = SecAggServer() if record.secagg is not None else None
        self.aggregation = AggregationSettings(
            accountant=lazy_client_epsilon, secure=secure, operator_accountant=lazy_operator_epsilon
        )
        self.relation = neighbouring(settings.privacy(), settings.selection)

    def run(self, global_ref: ObjectRef, evaluator: HeldoutEvaluator) -> tuple[list[dict[str, Any]], str, ObjectRef]:
        """Every round until the last, the target or the privacy budget: the round entries (as
        `fedstep local` writes them), the stop reason and the last global model. A round's held-out
        evaluation and console line come while the workers train the next round."""
        entries: list[dict[str, Any]] = []
        waiting: list[RoundSummary] = []

        def report() -> None:
            while waiting:
                done = waiting.pop()
                heldout = evaluator.evaluate(tensors.decode(self.store.get(done.global_model.key)))
                entries.append(self.entry(done, heldout))

        run, reason = self.record, "max_rounds"
        try:
            for round_number in range(1, run.rounds + 1):
                summary, output = self.round(round_number, global_ref, report)
                global_ref = summary.global_model
                waiting.append(summary)
                if output.get("target_reached"):
                    reason = "target_reached"
                    break
                if output.get("privacy_budget_spent") and round_number < run.rounds:
                    reason = "privacy_budget"
                    break
        finally:
            report()  # the last round's, or the one before a failed round's
        return entries, reason, global_ref

    def round(
        self, round_number: int, global_ref: ObjectRef, meanwhile: Callable[[], None]
    ) -> tuple[RoundSummary, dict[str, Any]]:
        """One round, published again after a failure the state machine retries; its summary and task output."""
        run = self.record
        for attempt in range(run.round_retries + 1):
            try:
                return self.attempt(round_number, attempt, global_ref, meanwhile)
            except NOT_AGGREGATED as exc:
                if attempt == run.round_retries:
                    raise FedstepError(f"run {run.run_id} FAILED: {type(exc).__name__}: {exc}") from None
            except StrategyFailed as exc:
                raise FedstepError(f"run {run.run_id} FAILED: {type(exc).__name__}: {exc}") from None
        raise AssertionError("unreachable")

    def attempt(
        self, round_number: int, attempt: int, global_ref: ObjectRef, meanwhile: Callable[[], None]
    ) -> tuple[RoundSummary, dict[str, Any]]:
        run, store, table = self.record, self.store, self.table
        reporter = RecordingReporter()
        message, recipients = publish_in_memory(
            store, table, run.run_id, round_number, global_ref, attempt=attempt, reporter=reporter
        )
        global_bytes = store.get(message.global_model.key)
        body = message.to_dict()
        tasks = [
            ClientTask(
                client, self.index[client], body, global_bytes, self.architecture, str(self.out / "cache" / client)
            )
            for client in recipients
        ]
        written: list[str] = []
        secure: dict[str, SecureClient] = {}
        spec = tensors.spec_of_header(global_bytes) if run.secagg is not None else None

        def fail(client_id: str, error: str) -> None:  # what the agent writes when its round failed
            failure = FailureItem.of(run.run_id, round_number, client_id, error, 1, utc_now())
            table.put(failure.to_item())
            self.echo(f"client {client_id}: {failure.line()}")

        def deliver(result: ClientResult) -> None:  # what the client's agent writes
            if result.item is None:
                fail(result.client_id, result.error or "")
                return
            if result.file is not None and spec is not None:  # a secure round: it advertises its keys
                try:
                    secure[result.client_id] = self.secure_client(message, result.file, result.item, spec)
                except (ValueError, FedstepError) as exc:  # e.g. a delta that is not finite
                    fail(result.client_id, f"{type(exc).__name__}: {exc}")
                    return
                secure[result.client_id].advertise()
                return
            if result.file is not None:
                key = str(result.item["update"]["key"])
                store.put(key, result.file)
                written.append(key)
            table.put(result.item)

        try:
            self.pool.run_round(tasks, deliver, meanwhile)
            if run.secagg is not None:
                return self.secure_phases(round_number, attempt, reporter, secure, written)
            summary = try_complete_round(
                run.run_id, round_number, store=store, table=table, reporter=reporter, settings=self.aggregation
            )
            if summary is not None:
                return summary, reporter.successes[-1][1]
            raise_reported(reporter, 0)  # the stream path failed the round by name
            output = complete_round_at_deadline(
                run.run_id, round_number, store=store, table=table, settings=self.aggregation
            )
            return RoundSummary.parse(table.get_round(run.run_id, round_number) or {}), output
        finally:
            for key in written:  # the bucket's lifecycle rule: a round's update files do not outlive it
                store.delete(key)

    def secure_client(
        self, message: RoundMessage, file: bytes, raw: dict[str, Any], spec: tensors.TensorSpec
    ) -> SecureClient:
        """The agent of the client whose plain update this is, in a secure round (`secure_clients`),
        its input's randomness seeded from the run's seed, the round, the attempt and the client."""
        item = parse_client_item(raw)
        if not isinstance(item, UpdateItem):
            raise InvalidMessage(f"client {item.client_id} sent no update")
        rng = client_rng(self.record.seed, message.round, message.attempt, item.client_id)
        return SecureClient.of_update(self.store, self.table, message, file, item, spec, rng)

    def secure_phases(
        self,
        round_number: int,
        attempt: int,
        reporter: RecordingReporter,
        clients: dict[str, SecureClient],
        written: list[str],
    ) -> tuple[RoundSummary, dict[str, Any]]:
        """A secure round after its clients advertised (or failed): each later phase published as the
        state machine opens it, its members' agents answering it, and closed as the aggregation
        function closes it (the stream path once all answered, else the phase's deadline path); the
        last phase's close aggregates the round. Each masked input's key goes into `written`."""
        run, store, table = self.record, self.store, self.table
        publisher = RecordingPublisher()
        output = self.close_phase(round_number, PHASE_ADVERTISE, reporter)
        while "secagg" in output:
            phase = str(output["secagg"]["phase"])
            token = f"token-{round_number}-{attempt}-{phase}"
            sent = publish_phase(
                run.run_id, round_number, attempt, phase, token, utc_now(),
                store=store, table=table, publisher=publisher, reporter=reporter,
            )  # fmt: skip
            if sent is None:  # closed already: its outcome went to the token
                output = dict(reporter.successes[-1][1])
                continue
            message = SecAggPhaseMessage.parse(json.loads(json.dumps(sent.to_dict())))  # as a client receives it
            for client_id in message.members:
                client = clients.get(client_id)
                if client is None:
                    continue
                if phase == PHASE_SHARE:
                    client.share(message)
                elif phase == PHASE_INPUT:
                    key = client.upload(message)
                    if key is not None:
                        written.append(key)
                else:
                    client.reveal(message)
            output = self.close_phase(round_number, phase, reporter)
        return RoundSummary.parse(table.get_round(run.run_id, round_number) or {}), output

    def close_phase(self, round_number: int, phase: str, reporter: RecordingReporter) -> dict[str, Any]:
        """Close a secure round's `phase` once its members answered: the stream path's output, or (a
        member failed or dropped) the deadline path's. A failure by name is raised as that error."""
        run = self.record
        reported = len(reporter.failures)
        output = advance_secure_round(
            run, round_number, store=self.store, table=self.table, reporter=reporter, settings=self.aggregation
        )
        if output is not None:
            return output
        raise_reported(reporter, reported)
        return close_at_deadline(
            run.run_id, round_number, phase, store=self.store, table=self.table, settings=self.aggregation
        )

    def entry(self, summary: RoundSummary, heldout: dict[str, float]) -> dict[str, Any]:
        """The round's entry in summary.json, and its console line (as `fedstep local` prints them)."""
        entry = round_entry(summary, heldout, self.relation)
        self.echo(round_line(summary, entry, self.record.rounds, self.relation))
        return entry


def raise_reported(reporter: RecordingReporter, since: int) -> None:
    """A failure the stream path reported to a task token (after the first `since`), raised by its name."""
    for _, error, cause in reporter.failures[since:]:
        raise {e.__name__: e for e in (*NOT_AGGREGATED, StrategyFailed)}.get(error, FedstepError)(cause)
