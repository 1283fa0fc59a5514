"""Evaluation requests (what `fedstep evaluate` does; its docstring describes them): ask the clients to
evaluate a run's global model on their test splits and judge their answers, or evaluate it here on
the operator's own data."""

from __future__ import annotations

import secrets
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fedstep.aws.adapters import DynamoRoundTable, S3ModelStore, SnsPublisher
from fedstep.aws.stack import StackOutputs
from fedstep.core import keys, tensors
from fedstep.core.clock import duration, utc_now
from fedstep.core.errors import FedstepError
from fedstep.core.imports import load_callable
from fedstep.core.schemas import MAX_EVAL_DEADLINE_S, EvalItem, EvaluateMessage, InvalidMessage, ObjectRef
from fedstep.core.statistics import Standardization, StatisticsError
from fedstep.operator.operate import download_model
from fedstep.operator.start import model_of_round
from fedstep.operator.statistics import run_statistics
from fedstep.operator.views import RunView

DEFAULT_DEADLINE_S = 900
"""How long `fedstep evaluate` waits for the clients' answers by default (15 minutes: an agent busy
with another run's round answers after it)."""
POLL_S = 1.0
"""How often the answers are read while waiting, s."""
PROGRESS_EVERY_S = 30.0
"""How often a line says who is still awaited, s."""

EVALUATED, CANNOT, REJECTED, NO_ANSWER = "evaluated", "cannot evaluate", "rejected", "no answer"


@dataclass(frozen=True)
class Answer:
    """One asked client: `status` evaluated, cannot evaluate (its reason in `detail`), rejected (its
    item failed validation; the reason in `detail`) or no answer; `weight` is the examples it counts
    with in the mean (its examples capped by the run's bound for it; 0 unless evaluated)."""

    client_id: str
    status: str
    num_examples: int | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    detail: str = ""
    weight: int = 0


@dataclass(frozen=True)
class Evaluation:
    """A finished request: the message sent and every asked client's answer, in the order asked."""

    message: EvaluateMessage
    answers: list[Answer]

    @property
    def complete(self) -> bool:
        """Every asked client answered (whatever its answer)."""
        return all(a.status != NO_ANSWER for a in self.answers)

    def mean(self) -> tuple[int, int, dict[str, float]]:
        """(clients, examples, metrics): each metric weighted by the examples of the evaluated clients
        that report it."""
        counted = [a for a in self.answers if a.status == EVALUATED and a.weight > 0]
        names = sorted({name for a in counted for name in a.metrics})
        means = {}
        for name in names:
            having = [a for a in counted if name in a.metrics]
            total = sum(a.weight for a in having)
            means[name] = sum(a.weight * a.metrics[name] for a in having) / total
        return len(counted), sum(a.weight for a in counted), means


# -- which model --------------------------------------------------------------------------------


def evaluated_round(view: RunView, round_number: int | None) -> int:
    """`round_number` if the run completed it (0: the initial weights), else the last completed round."""
    done = sorted(s.round for s in view.rounds)
    if round_number is None:
        if not done:
            raise FedstepError(f"run {view.run_id} has no aggregated round yet; --round 0 evaluates the initial model")
        return done[-1]
    if round_number != 0 and round_number not in done:
        known = ", ".join(str(r) for r in done) or "none"
        raise FedstepError(f"run {view.run_id} has no completed round {round_number} (completed: {known})")
    return round_number


def _ref_of(store: S3ModelStore, key: str) -> ObjectRef:
    data = store.get(key)
    return ObjectRef(key, tensors.sha256_hex(data), len(data))


def model_refs(
    view: RunView, round_number: int, store: S3ModelStore, table_: DynamoRoundTable
) -> tuple[ObjectRef, ObjectRef]:
    """(architecture, global weights after `round_number`) as the agents check them: the round
    summary's reference, or for round 0 (and a run record without one) the object's own sha256."""
    architecture = view.record.model or _ref_of(store, keys.model_key(view.run_id))
    if round_number == 0:
        return architecture, _ref_of(store, model_of_round(table_, view.record, 0))
    [summary] = [s for s in view.rounds if s.round == round_number]
    return architecture, summary.global_model


# -- asking and waiting -------------------------------------------------------------------------


def asked_clients(view: RunView, outputs: StackOutputs, named: str | None) -> list[str]:
    """The clients `--clients a,b` names (each must be one of the stack's), else the run's."""
    if not named:
        return list(view.record.clients)
    wanted = [c.strip() for c in named.split(",") if c.strip()]
    unknown = [c for c in wanted if c not in outputs.queues]
    if unknown or not wanted:
        raise FedstepError(
            f"--clients: {', '.join(unknown) or 'none given'} not among the stack's clients "
            f"({', '.join(sorted(outputs.queues))})"
        )
    return list(dict.fromkeys(wanted))


def send_request(
    view: RunView,
    round_number: int,
    clients: list[str],
    deadline_s: int,
    outputs: StackOutputs,
    s3: Any,
    sns: Any,
    table_: DynamoRoundTable,
) -> EvaluateMessage:
    """Publish the evaluate message to `clients` on the run's topic (needs `sns:Publish` on it)."""
    if not 1 <= deadline_s <= MAX_EVAL_DEADLINE_S:
        raise FedstepError(f"--deadline must be from 1 to {MAX_EVAL_DEADLINE_S} s, got {deadline_s}")
    model, global_model = model_refs(view, round_number, S3ModelStore(outputs.bucket, s3), table_)
    message = EvaluateMessage(
        run_id=view.run_id,
        round=round_number,
        request_id=secrets.token_hex(6),
        model=model,
        global_model=global_model,
        issued_at=utc_now(),
        deadline_s=deadline_s,
        training=view.record.training,
    )
    SnsPublisher(outputs.topic_arn, sns).publish(message.to_dict(), clients)
    return message


def judge(client_id: str, item: dict[str, Any] | None, cap: int) -> Answer:
    """An asked client's answer, validated: its item parsed and bounded, or why it is rejected."""
    if item is None:
        return Answer(client_id, NO_ANSWER)
    try:
        parsed = EvalItem.parse(item)
    except InvalidMessage as exc:
        return Answer(client_id, REJECTED, detail=str(exc))
    if parsed.error:
        return Answer(client_id, CANNOT, detail=parsed.error)
    return Answer(client_id, EVALUATED, parsed.num_examples, parsed.metrics, weight=min(parsed.num_examples, cap))


def read_answers(table_: DynamoRoundTable, message: EvaluateMessage, clients: list[str]) -> dict[str, dict[str, Any]]:
    """The evaluation items written so far for `message`, by client id (strongly consistent)."""
    return table_.get_client_items(
        [keys.eval_item_key(message.run_id, message.round, message.request_id, c) for c in clients]
    )


def wait_for_answers(
    view: RunView,
    message: EvaluateMessage,
    clients: list[str],
    table_: DynamoRoundTable,
    echo: Callable[[str], None],
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> Evaluation:
    """Read the answers every `POLL_S` until every client answered or `message.deadline_s` passed,
    saying each answer as it comes and, every `PROGRESS_EVERY_S`, who is still awaited."""
    started = clock()
    items: dict[str, dict[str, Any]] = {}
    said = started
    while True:
        fresh = read_answers(table_, message, [c for c in clients if c not in items])
        for client in clients:
            if client in fresh:
                items[client] = fresh[client]
                answer = judge(client, items[client], view.record.bounds.examples_cap(client))
                echo(f"  {client}: {answer.status} ({len(items)} of {len(clients)})")
        left = message.deadline_s - (clock() - started)
        if len(items) == len(clients) or left <= 0:
            break
        if clock() - said >= PROGRESS_EVERY_S:
            waiting = ", ".join(c for c in clients if c not in items)
            echo(f"  waiting for {waiting} ({duration(left)} left)")
            said = clock()
        sleep(min(POLL_S, max(left, 0.0)))
    answers = [judge(c, items.get(c), view.record.bounds.examples_cap(c)) for c in clients]
    return Evaluation(message, answers)


def to_json(evaluation: Evaluation) -> dict[str, Any]:
    """The evaluation as `--json` prints it: the request, every client's answer, the weighted mean."""
    msg = evaluation.message
    clients, examples, means = evaluation.mean()
    return {
        "run_id": msg.run_id,
        "round": msg.round,
        "request_id": msg.request_id,
        "issued_at": msg.issued_at,
        "deadline_s": msg.deadline_s,
        "clients": [asdict(a) for a in evaluation.answers],
        "mean": {"clients": clients, "num_examples": examples, "metrics": means},
    }


# -- server-side --------------------------------------------------------------------------------


def load_xy(ref: str) -> tuple[np.ndarray, np.ndarray]:
    """The operator's data set from the loader `module:function` (no arguments, returns `(x, y)`);
    FedstepError naming the loader and the problem otherwise."""
    loader = load_callable(ref, "data loader")
    try:
        data = loader()
    except Exception as exc:  # the user's code: any error is theirs to read
        raise FedstepError(f"data loader {ref} raised {type(exc).__name__}: {exc}") from None
    if not isinstance(data, (tuple, list)) or len(data) != 2:
        raise FedstepError(f"data loader {ref} must return (x, y), got {type(data).__name__}")
    try:
        x, y = np.asarray(data[0]), np.asarray(data[1])
    except (TypeError, ValueError) as exc:
        raise FedstepError(f"data loader {ref}: x and y must be arrays ({exc})") from None
    if x.ndim == 0 or y.ndim == 0 or len(x) != len(y) or len(x) == 0:
        raise FedstepError(
            f"data loader {ref} must return (x, y) of the same non-zero length, got shapes {x.shape} and {y.shape}"
        )
    return x, y


def evaluate_on_data(
    view: RunView, round_number: int, ref: str, outputs: StackOutputs, s3: Any, table_: DynamoRoundTable
) -> tuple[int, dict[str, float]]:
    """(examples, metrics) of the global model after `round_number` on the loader's data set, on
    this machine: the model as `fedstep download` writes it, loaded with Keras' safe mode."""
    x, y = load_xy(ref)
    x = _as_trained(view, x, outputs, s3)
    from client_agent.keras_model import import_keras

    with tempfile.TemporaryDirectory() as tmp:
        path = download_model(view, outputs, s3, table_, round_number, Path(tmp) / "model.keras")
        model = import_keras().models.load_model(path, safe_mode=True)
    try:
        result = model.evaluate(x, y, verbose=0, return_dict=True)
    except Exception as exc:  # Keras raises many types for data that does not fit the model
        from client_agent.errors import clean_error

        raise FedstepError(f"evaluating the model on {ref} failed: {clean_error(exc)}") from None
    return len(x), {k.replace("sparse_categorical_", ""): float(v) for k, v in result.items()}


def _as_trained(view: RunView, x: np.ndarray, outputs: StackOutputs, s3: Any) -> np.ndarray:
    """The operator's features scaled as the run's clients scaled theirs: with the run's federated
    statistics, or (local) with the data set's own statistics, as a site does; unchanged otherwise."""
    standardize = view.record.training.standardize
    if standardize == "none":
        return x
    if standardize == "local":
        return Standardization.local(x).apply(x)
    statistics = run_statistics(view.record, outputs, s3)
    assert statistics is not None  # a federated run has them
    try:
        return statistics.standardization().apply(x)
    except StatisticsError as exc:
        raise FedstepError(f"run {view.run_id} standardizes its features: {exc}") from None


@dataclass(frozen=True)
class Outcome:
    """What an evaluation found: `data` as `fedstep evaluate --json` prints it, the clients'
    `evaluation` (None with `--data`), and whether every asked client answered (always, with `--data`)."""

    data: dict[str, Any]
    evaluation: Evaluation | None
    complete: bool


def evaluate_run(
    view: RunView,
    round_arg: int | None,
    clients_arg: str | None,
    deadline_s: int,
    data: str | None,
    outputs: StackOutputs,
    client: Callable[[str], Any],
    progress: Callable[[str], None] = lambda line: None,
) -> Outcome:
    """Ask the clients (or evaluate on `data` here) and wait for their answers, saying so to `progress`."""
    round_number = evaluated_round(view, round_arg)
    table_ = DynamoRoundTable(outputs.table, client("dynamodb"))
    if data:
        if clients_arg:
            raise FedstepError("--data evaluates on this machine and asks no client: leave out --clients")
        examples, metrics = evaluate_on_data(view, round_number, data, outputs, client("s3"), table_)
        found = {"run_id": view.run_id, "round": round_number, "data": data, "num_examples": examples}
        return Outcome({**found, "metrics": metrics}, None, True)
    clients = asked_clients(view, outputs, clients_arg)
    message = send_request(view, round_number, clients, deadline_s, outputs, client("s3"), client("sns"), table_)
    progress(
        f"asked {len(clients)} client(s) to evaluate round {round_number} of run {view.run_id} "
        f"(request {message.request_id}); waiting up to {duration(message.deadline_s)}"
    )
    evaluation = wait_for_answers(view, message, clients, table_, progress)
    return Outcome(to_json(evaluation), evaluation, evaluation.complete)
