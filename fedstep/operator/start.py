"""Starting a run: publish the architecture and the round-0 weights, record the run, start an execution."""

from __future__ import annotations

import json
import math
import secrets
from collections.abc import Callable, Collection
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from typing import Any

from fedstep.aws.adapters import DynamoRoundTable, S3ModelStore
from fedstep.aws.stack import StackOutputs
from fedstep.core import keys, limits, run_rules, strategies, tensors
from fedstep.core.clock import duration, utc_now
from fedstep.core.errors import FedstepError
from fedstep.core.presence import away
from fedstep.core.rounds import choose_clients, round_history
from fedstep.core.schemas import (
    ObjectRef,
    RoundSummary,
    RunRecord,
    Target,
)
from fedstep.core.schemas.run_record import DEFAULT_SECAGG_PHASE_TIMEOUT_S
from fedstep.core.version import SCHEMA_VERSION
from fedstep.operator.clients import statuses
from fedstep.operator.model import build_model, keras_payload
from fedstep.operator.settings import (
    RUN_FILE_FIELDS,
    RunSettings,
)
from fedstep.operator.stack import Stack
from fedstep.operator.statistics import statistics_for_run
from fedstep.operator.views import execution_arn


def offline_warning(
    table: DynamoRoundTable, clients: list[str], quorum: int, round_timeout_s: int, round_retries: int = 0
) -> str | None:
    """The warning `fedstep start` gives before starting a run when fewer of its clients are online
    (by their heartbeats, as `fedstep clients` shows them) than its quorum; None when enough are."""

    rows = statuses(clients, table.get_heartbeats(clients))
    online = sum(r.status == "online" for r in rows)
    if online >= quorum:
        return None
    away = ", ".join(f"{r.client_id} ({r.status})" for r in rows if r.status != "online")
    retries = f", after {round_retries} retries," if round_retries else ""
    return (
        f"only {online} of {len(clients)} client(s) online, fewer than the run's quorum of {quorum}: {away}. "
        f"Unless enough agents come online, round 1 waits until its deadline ({duration(round_timeout_s)}) and "
        f"then{retries} the run fails with QuorumNotMet. `fedstep clients` shows who is online."
    )


def selection_notes(table: DynamoRoundTable, run: RunRecord, round_number: int = 1) -> tuple[list[str], list[str]]:
    """(warnings, notes) `fedstep start` gives about the first round's selection, as the aggregation
    function will make it from the heartbeats now: a warning for each selected client whose heartbeat
    says offline or stopped (the round waits for it up to its deadline), a note for those left out."""

    items = table.get_heartbeats(run.clients)
    chosen = choose_clients(run, round_number, items)
    gone = away(run.clients, items, datetime.now(UTC))
    waiting = {c: gone[c] for c in chosen.selected if c in gone}
    warnings, notes = [], []
    if waiting:
        named = ", ".join(f"{c} ({status})" for c, status in waiting.items())
        why = (
            "too few of its clients are online to leave them out"
            if chosen.kept_offline
            else "select_online is off"
            if not run.select_online
            else "they are selected"
        )
        warnings.append(
            f"round {round_number} is sent to {named}, whose heartbeat says offline ({why}): unless its agent "
            f"comes back, the round waits for it until its deadline ({duration(run.round_timeout_s)}). Start the "
            f"agent, or leave the client out (--exclude {','.join(waiting)})."
        )
    if chosen.skipped:
        named = ", ".join(f"{c} ({status})" for c, status in chosen.skipped.items())
        notes.append(
            f"round {round_number} leaves out {named}: its heartbeat says offline (select_online; a later round "
            "selects it again once it is online; --no-select-online waits for every selected client)"
        )
    return warnings, notes


def poisson_warning(run: RunRecord) -> str | None:
    """Under Poisson selection, the warning `fedstep start` gives when some round of the run may well
    select fewer clients than it needs (its quorum and min_participants): the chance of that over the
    run's rounds, when 1 % or more; None otherwise."""
    per_round, population = run.clients_per_round or len(run.clients), len(run.clients)
    needs = max(run.quorum, run.min_participants)
    if run.selection != "poisson" or per_round >= population:
        return None
    q = per_round / population
    short = sum(math.comb(population, k) * q**k * (1 - q) ** (population - k) for k in range(needs))
    anywhere = 1 - (1 - short) ** run.rounds
    if anywhere < 0.01:
        return None
    return (
        f"with --selection poisson each round selects each of the {population} clients with probability "
        f"{q:.3g}: a round selects fewer than the {needs} it needs (quorum {run.quorum}, min_participants "
        f"{run.min_participants}) with probability {short:.2%}, some round of the {run.rounds} with probability "
        f"{anywhere:.0%}. Such a round fails at its deadline (QuorumNotMet or TooFewParticipants) and its retries "
        "select the same clients. Select more clients per round, or lower --min-participants and --quorum (1 is "
        "safe under central DP; docs/privacy.md, Two conventions)."
    )


@dataclass(frozen=True)
class StartedRun:
    run_id: str
    execution_arn: str
    clients: list[str]


def new_run_id() -> str:
    return f"run-{datetime.now(UTC):%Y%m%d-%H%M%S}-{secrets.token_hex(2)}"


def start_run(
    architecture: bytes,
    initial_weights: tensors.Tensors,
    settings: RunSettings,
    outputs: StackOutputs,
    *,
    s3: Any,
    dynamodb: Any,
    stepfunctions: Any,
    sns: Any = None,
    run_id: str | None = None,
    progress: Callable[[str], None] | None = None,
) -> StartedRun:
    """Upload the architecture and round-0 weights, write the run record, start the state machine. A run
    with `standardize: federated` first asks its clients for their statistics (`sns` publishes the
    request; `progress` hears how it goes, default stderr)."""
    settings = settings.validated()
    run_id = keys.check_id("run id", run_id or new_run_id())
    record = plan_run(settings, sorted(outputs.queues), run_id, outputs.revoked)
    weights = tensors.encode(
        initial_weights, {"schema": SCHEMA_VERSION, "run_id": run_id, "round": 0, "kind": "global"}
    )
    if len(weights) > outputs.max_model_bytes:
        raise FedstepError(
            f"the model is {len(weights)} bytes; the stack aggregates models of at most {outputs.max_model_bytes} "
            "bytes (deployment config max_model_mb)"
        )
    run_rules.check_sliceable(
        settings.strategy_instance(), record.dp, len(weights), outputs.slice_bytes, record.secagg is not None
    )
    run_rules.check_codec(
        settings.codec_instance(), settings.strategy_instance(), record.dp, len(weights), outputs.slice_bytes
    )
    if settings.standardize == "federated":
        record = _with_statistics(record, outputs, s3, dynamodb, sns, progress)
    launched = launch_run(record, architecture, weights, 0, keys.INITIAL_VERSION, outputs, s3, dynamodb, stepfunctions)
    if launched is None:
        raise FedstepError(f"run {run_id} exists already; choose another run id")
    return launched


def _with_statistics(
    record: RunRecord, outputs: StackOutputs, s3: Any, dynamodb: Any, sns: Any, progress: Callable[[str], None] | None
) -> RunRecord:
    """The run record with its federated statistics, asked from its clients and written once."""
    if sns is None:
        raise FedstepError("standardize federated asks the clients for their statistics: it needs an SNS client")
    table = DynamoRoundTable(outputs.table, dynamodb)
    if table.get_run(record.run_id) is not None:
        raise FedstepError(f"run {record.run_id} exists already; choose another run id")
    say = progress or (lambda line: None)
    ref = statistics_for_run(record, outputs, s3, sns, table, say)
    return replace(record, training=replace(record.training, standardization=ref))


def plan_run(settings: RunSettings, stack_clients: list[str], run_id: str, revoked: Collection[str] = ()) -> RunRecord:
    """The run record `settings` give a run of the stack's clients (its model not yet written; `revoked`:
    the stack's revoked clients, which it never takes); FedstepError when they cannot work with those clients."""
    if not stack_clients:
        raise FedstepError("the stack has no clients; add them to the deployment config and deploy")
    clients = settings.run_clients(stack_clients, revoked)
    per_round, quorum = settings.for_clients(clients)
    return RunRecord(
        run_id=run_id,
        clients=clients,
        rounds=settings.rounds,
        training=settings.training(),
        strategy=settings.strategy,
        strategy_params=strategies.params.to_json(settings.strategy_instance().params),
        created_at=utc_now(),
        quorum=quorum,
        target=Target.parse_text(settings.target) if settings.target else None,
        clients_per_round=per_round,
        seed=settings.seed,
        round_timeout_s=settings.round_timeout_s,
        round_retries=settings.round_retries,
        min_participants=settings.min_participants,
        bounds=settings.bounds(),
        dp=settings.privacy(),
        select_online=settings.select_online,
        selection=settings.selection,
        codec=settings.codec_instance().name,
        secagg=settings.secagg(per_round, quorum),
    )


def model_of_round(
    table: DynamoRoundTable, run: RunRecord, round_number: int, history: list[RoundSummary] | None = None
) -> str:
    """The S3 key of a run's global model after `round_number` (0: the initial weights of the run
    that began the lineage); FedstepError if that round is not completed. `history`: the run's
    `round_history`, when the caller has read it already."""
    if round_number == 0:
        root = run
        while root.resumed_from:
            earlier = table.get_run(root.resumed_from)
            if earlier is None:
                break
            root = earlier
        return keys.global_key(root.run_id, 0, keys.INITIAL_VERSION)
    for summary in history if history is not None else round_history(table, run.run_id, round_number, run):
        if summary.round == round_number:
            return summary.global_model.key
    raise FedstepError(f"run {run.run_id} has no completed round {round_number}")


def _flag(name: str) -> str:
    return {
        "round_timeout_s": "--round-timeout",
        "strategy_params": "--strategy-param",
        "secagg_phase_timeout_s": "--secagg-phase-timeout",
    }.get(name, "--" + name.replace("_", "-"))


def resume_rounds(run_id: str, flags: dict[str, Any], run_file: dict[str, Any]) -> int | None:
    """The `--rounds` of `fedstep start --resume RUN_ID` (None: the run's own). A continuation keeps
    the run's settings: any other run setting given as a flag (`flags`: the parsed arguments) or in
    the run file is refused by name, and so is `--run-id` (the continuation is `<run id>-r<n>`)."""
    given = [
        _flag(name) for name in RUN_FILE_FIELDS - {"model", "rounds", "strategy_params"} if flags.get(name) is not None
    ]
    given += ["--strategy-param"] if flags.get("strategy_param") else []
    given += [f"{name} (run file)" for name in run_file if name not in ("model", "rounds")]
    if given:
        names = ", ".join(sorted(given))
        raise FedstepError(
            f"--resume continues run {run_id} with its own settings; {names} cannot be changed "
            "(only --rounds can: the total the continuation runs up to)"
        )
    if flags.get("run_id") is not None:
        raise FedstepError(f"--resume names the continuation of run {run_id} itself ({run_id}-r1, ...); drop --run-id")
    rounds = flags.get("rounds")
    return rounds if rounds is not None else run_file.get("rounds")


def resume_run(
    run_id: str,
    outputs: StackOutputs,
    *,
    s3: Any,
    dynamodb: Any,
    stepfunctions: Any,
    rounds: int | None = None,
) -> StartedRun:
    """Continue a failed or stopped run from its last completed round's global model.

    The continuation is a new run, `<run id>-r1` (then -r2, ...): messages and update items still in
    flight for the old execution carry the old run id, so they can never mix into the new one. It
    reads the earlier rounds from the runs it continues; nothing of them is copied. It keeps the run's
    settings, except `rounds`: the total number of rounds it runs up to (default the run's own), which
    may also extend a run that completed all its rounds."""
    if rounds is not None and (isinstance(rounds, bool) or not isinstance(rounds, int)):
        raise FedstepError(f"run setting rounds must be int, got {rounds!r}")
    if rounds is not None and not 1 <= rounds <= limits.MAX_ROUNDS:
        raise FedstepError(f"rounds must be 1 to {limits.MAX_ROUNDS}, got {rounds}")
    table = DynamoRoundTable(outputs.table, dynamodb)
    old = table.get_run(run_id)
    if old is None:
        raise FedstepError(f"there is no run {run_id!r} in table {outputs.table}")
    status = stepfunctions.describe_execution(executionArn=execution_arn(outputs, run_id))["status"]
    if status == "RUNNING":
        raise FedstepError(f"run {run_id} is still running; stop it before resuming it")
    history = round_history(table, run_id, old.rounds, old)  # also the rounds of the runs it continues
    done = [s.round for s in history]
    last = next((i for i, r in enumerate(done) if r != i + 1), len(done))  # last of rounds 1..k all done
    if rounds is not None and last >= rounds:
        raise FedstepError(
            f"run {run_id} completed {last} rounds already; --rounds is the total to run up to, "
            f"so give more than {last}"
        )
    if last >= (rounds or old.rounds):
        raise FedstepError(
            f"run {run_id} completed all {old.rounds} rounds ({status}); nothing to resume "
            "(--rounds N continues it up to N rounds in total)"
        )
    secure = old.secagg is not None
    run_rules.check_fits_one_execution(rounds or old.rounds, old.round_retries, last, run_id, secure=secure)
    old = without_revoked(old, outputs)
    store = S3ModelStore(outputs.bucket, s3)
    architecture = store.get(keys.model_key(run_id))
    global_bytes = store.get(model_of_round(table, old, last, history))
    state_ref = next((h.state for h in history if h.round == last), None) if last else old.initial_state
    state_bytes = store.get(state_ref.key) if state_ref else None
    for attempt in range(1, 100):
        new_id = keys.check_id("run id", f"{run_id}-r{attempt}")
        record = replace(
            old,
            run_id=new_id,
            rounds=rounds or old.rounds,
            created_at=utc_now(),
            resumed_from=run_id,
            initial_state=None,
        )
        launched = launch_run(
            record,
            architecture,
            global_bytes,
            last,
            keys.RESUMED_VERSION,
            outputs,
            s3,
            dynamodb,
            stepfunctions,
            state_bytes=state_bytes,
        )
        if launched is not None:
            return launched
    raise FedstepError(f"run {run_id} was resumed 99 times already")


def without_revoked(run: RunRecord, outputs: StackOutputs) -> RunRecord:
    """`run` less the clients revoked since it started (`outputs.revoked`; docs/operations.md), for the
    run that continues it: a revoked client can no longer act, and a continuation is a new run. Its
    clients per round shrink to those left; FedstepError when too few are left for its quorum and
    `min_participants`, or when its client-level DP accounted for the run's population."""
    gone = [c for c in run.clients if c in outputs.revoked]
    if not gone:
        return run
    left = [c for c in run.clients if c not in outputs.revoked]
    named = ", ".join(gone)
    if run.dp is not None and run.dp.client_level:
        raise FedstepError(
            f"run {run.run_id}'s privacy guarantee was accounted over its {len(run.clients)} clients, and some are "
            f"revoked now ({named}): resuming without them would change the population of that guarantee. Start a "
            'new run (fedstep start), or reinstate them ("revoked": false and deploy)'
        )
    per_round = min(run.clients_per_round or len(left), len(left))
    needs = max(run.quorum, run.min_participants)
    if per_round < needs:
        raise FedstepError(
            f"revoked clients ({named}) leave run {run.run_id} {len(left)} client(s), fewer than its quorum and "
            f"min_participants ({needs}): no round could be aggregated. Start a new run with fitting settings"
        )
    return replace(run, clients=left, clients_per_round=0 if per_round == len(left) else per_round)


def launch_run(
    record: RunRecord,
    architecture: bytes,
    global_bytes: bytes,
    start_round: int,
    version: str,
    outputs: StackOutputs,
    s3: Any,
    dynamodb: Any,
    stepfunctions: Any,
    state_bytes: bytes | None = None,
) -> StartedRun | None:
    """Write the run record (None if that run id is taken), publish its models (and the strategy
    state it continues, `state_bytes`), start its execution after `start_round`. The execution's
    input holds no history: its size is the same for any round."""
    model_ref = ObjectRef(keys.model_key(record.run_id), tensors.sha256_hex(architecture), len(architecture))
    state_ref = None
    if state_bytes is not None:
        key = keys.state_key(record.run_id, start_round, version)
        state_ref = ObjectRef(key, tensors.sha256_hex(state_bytes), len(state_bytes))
    record = replace(record, model=model_ref, initial_state=state_ref)
    if not DynamoRoundTable(outputs.table, dynamodb).put_once(record.to_item()):
        return None
    store = S3ModelStore(outputs.bucket, s3)
    global_ref = ObjectRef(
        keys.global_key(record.run_id, start_round, version), tensors.sha256_hex(global_bytes), len(global_bytes)
    )
    store.put(model_ref.key, architecture)
    store.put(global_ref.key, global_bytes)
    if state_ref is not None and state_bytes is not None:
        store.put(state_ref.key, state_bytes)
    execution = stepfunctions.start_execution(
        stateMachineArn=outputs.state_machine_arn,
        name=record.run_id,
        input=json.dumps(execution_input(record, start_round, global_ref)),
    )
    return StartedRun(record.run_id, execution["executionArn"], record.clients)


def execution_input(record: RunRecord, start_round: int, global_ref: ObjectRef) -> dict[str, Any]:
    """The state machine's input for `record`'s execution, which starts after round `start_round`
    from the global model `global_ref` (infra/state_machine.py). Every run carries its secure-aggregation
    phase deadline (the default for a plain run, whose rounds never wait on a phase)."""
    phase_timeout_s = record.secagg.phase_timeout_s if record.secagg else DEFAULT_SECAGG_PHASE_TIMEOUT_S
    return {
        "run": {
            "run_id": record.run_id,
            "rounds": record.rounds,
            "clients": record.clients,
            "round_timeout_s": record.round_timeout_s,
            "round_retries": record.round_retries,
            "secagg_phase_timeout_s": phase_timeout_s,
        },
        "round": start_round,
        "attempt": 0,
        "global_model": asdict(global_ref),
        "round_summary": {},
    }


def launch(
    stack: Stack,
    settings: RunSettings | None,
    *,
    model: str | None,
    seed: int | None = None,
    run_id: str | None = None,
    resume: str | None = None,
    rounds: int | None = None,
    warn: Callable[[str], None] = lambda line: None,
    note: Callable[[str], None] = lambda line: None,
    progress: Callable[[str], None] | None = None,
) -> StartedRun:
    """Start a run of `model` (`module:function`) with `settings`, or resume the run `resume` (up to
    `rounds` in total, when given; `settings` is None then: a continuation keeps the run's own). First
    `warn` hears when fewer clients are online than the run's quorum, when its first round goes to a
    client whose heartbeat says offline, and when Poisson selection may select too few; `note` hears
    which offline clients it leaves out; `progress` hears how federated statistics go. What `fedstep
    start` and `fedstep.Operator.start` do."""
    client, outputs = stack.client, stack.outputs
    warnings, notes = start_warnings(stack, settings, resume)
    for line in warnings:
        warn(line)
    for line in notes:
        note(line)
    services = {"s3": client("s3"), "dynamodb": client("dynamodb"), "stepfunctions": client("stepfunctions")}
    if resume:
        return resume_run(resume, outputs, **services, rounds=rounds)
    if settings is None or model is None:
        raise FedstepError("a new run needs a model and its settings")
    payload = keras_payload(build_model(model, seed))
    return start_run(*payload, settings, outputs, **services, sns=client("sns"), run_id=run_id, progress=progress)


def start_warnings(stack: Stack, settings: RunSettings | None, resume: str | None) -> tuple[list[str], list[str]]:
    """(warnings, notes) before a run starts: fewer of its clients online than its quorum, its first
    round sent to a client whose heartbeat says offline, a Poisson selection that may select too few;
    which offline clients it leaves out."""
    table = stack.table
    if resume:
        record = table.get_run(resume)
        if record is None:  # resume_run names the problem
            return [], []
        first = max((int(r.get("round", 0)) for r in table.list_rounds(resume)), default=0) + 1
    else:
        if not stack.outputs.queues or settings is None:  # start_run names the problem
            return [], []
        record, first = plan_run(settings, sorted(stack.outputs.queues), "run-preview", stack.outputs.revoked), 1
    warning = offline_warning(table, record.clients, record.quorum, record.round_timeout_s, record.round_retries)
    warnings, notes = selection_notes(table, record, first)
    short = poisson_warning(record)
    return ([warning] if warning else []) + ([short] if short else []) + warnings, notes
