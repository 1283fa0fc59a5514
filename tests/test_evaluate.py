"""Evaluation: each client's own metrics per round (status, report) and `fedstep evaluate`, which asks
the clients to evaluate a run's global model on their test splits (or evaluates it here on the
operator's data with --data). Clients' answers are claims: bounded before they are shown.

The cloud tests share one finished run of the digits model, served by two agents in threads of this
process: a numpy train function (the protocol is under test) and the default Keras evaluation. The
commands that build or load the Keras model (start, download, evaluate --data) run in this process
(`fedstep_here`: a `fedstep` process would import TensorFlow again), unless a test checks what the
process itself prints."""

from __future__ import annotations

import json
import math
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import boto3
import numpy as np
import pytest

from client_agent.agent import Agent, Outcome
from client_agent.config import AgentConfig
from client_agent.training import FunctionTrainer, keras_evaluate
from fedstep.aws.adapters import DynamoRoundTable
from fedstep.aws.ddb import to_attributes
from fedstep.cli.evaluate import CANNOT, EVALUATED, NO_ANSWER, REJECTED, Evaluation, judge, render
from fedstep.core import keys, limits
from fedstep.core.clock import utc_now
from fedstep.core.schemas import (
    EvalItem,
    EvaluateMessage,
    InvalidMessage,
    ObjectRef,
    RunEndedMessage,
    UpdateItem,
    parse_message,
)
from fedstep.local import gaps
from fedstep.operator import evaluation as requests_
from tests.cloud_helpers import (
    agent,
    agent_config,
    drain_queues,
    fedstep,
    fedstep_here,
    published_round,
    receive,
    serve_run,
    serving,
    start,
)

REF = ObjectRef("runs/r/model.keras", "0" * 64, 1)
SIZES = {"client-1": (60, 20), "client-2": (90, 30)}  # (train, test) examples
"""Each client's slice of scikit-learn's digits."""


def client_data() -> dict[str, tuple[tuple, tuple]]:
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = (x / 16).astype(np.float32)
    out, at = {}, 0
    for cid, (n_train, n_test) in SIZES.items():
        train, test = slice(at, at + n_train), slice(at + n_train, at + n_train + n_test)
        out[cid] = ((x[train], y[train]), (x[test], y[test]))
        at += n_train + n_test
    return out


REPORTED = {  # what each client's train function reports for every round
    "client-1": {"train_loss": 1.5, "test_loss_before": 2.25, "test_accuracy_before": 0.25, "test_accuracy": 0.5},
    "client-2": {"train_loss": 1.0, "test_loss_before": 2.0, "test_accuracy_before": 0.75, "test_accuracy": 0.875},
}


def nudge(model, data, training):
    """Moves every weight a little (the digits model: no Keras training, the protocol is under test)."""
    client = "client-1" if len(data[0][0]) == SIZES["client-1"][0] else "client-2"
    model.set_weights([w * 0.9 + 0.01 for w in model.get_weights()])
    return REPORTED[client]


def keras_agent(cloud, client_id: str, tmp_path, evaluates: bool = True) -> Agent:
    config = agent_config(cloud, client_id, tmp_path, data="in-memory", heartbeat_s=0)
    trainer = FunctionTrainer(
        nudge, client_data()[client_id], "tests:nudge", evaluate_with=keras_evaluate if evaluates else None
    )
    return Agent(config, trainer)


@pytest.fixture(scope="module")
def finished_run(local_cloud, tmp_path_factory) -> str:
    """Two rounds of the digits model, finished; the agents stopped with it."""
    tmp = tmp_path_factory.mktemp("agents")
    drain_queues(local_cloud)
    agents = [keras_agent(local_cloud, cid, tmp) for cid in SIZES]
    with serving(agents):
        result = fedstep_here(
            local_cloud, "start", "--model", "client_agent.models:digits_mlp", "--rounds", "2", "--seed", "3", "--watch"
        )
    assert result.returncode == 0, result.stderr
    return result.stdout.split("started run ", 1)[1].split()[0]


def table_of(cloud) -> DynamoRoundTable:
    return DynamoRoundTable(cloud.outputs.table, cloud.client("dynamodb"))


# -- per-client metrics: status and report ------------------------------------------------------


def test_status_json_gives_every_clients_own_metrics_per_round(local_cloud, finished_run):
    result = fedstep(local_cloud, "status", finished_run, "--json")
    assert result.returncode == 0, result.stderr
    rounds = json.loads(result.stdout)["rounds"]
    assert [r["round"] for r in rounds] == [1, 2]
    for r in rounds:
        by_client = {c["client_id"]: c for c in r["clients"]}
        assert set(by_client) == set(SIZES)
        for cid, (n_train, _) in SIZES.items():
            assert by_client[cid]["status"] == "aggregated"
            assert by_client[cid]["num_examples"] == n_train
            assert by_client[cid]["metrics"] == REPORTED[cid]
        # the round's weighted mean is still there, beside its parts: (60 x 0.25 + 90 x 0.75) / 150
        assert r["metrics"]["test_accuracy_before"] == pytest.approx(0.55)


def test_status_clients_and_round_print_a_per_client_table(local_cloud, finished_run):
    every = fedstep(local_cloud, "status", finished_run, "--clients")
    assert every.returncode == 0, every.stderr
    header = "ROUND  CLIENT    STATUS      EXAMPLES  LOSS BEFORE  ACCURACY BEFORE  LOSS    ACCURACY"
    assert header in every.stdout
    rows = [line.split() for line in every.stdout.split(header, 1)[1].splitlines() if line.strip()]
    assert rows == [  # LOSS is the test loss after training, else (as here) the train loss
        row
        for r in ("1", "2")
        for row in (
            [r, "client-1", "aggregated", "60", "2.2500", "0.2500", "1.5000", "0.5000"],
            [r, "client-2", "aggregated", "90", "2.0000", "0.7500", "1.0000", "0.8750"],
        )
    ]
    one = fedstep(local_cloud, "status", finished_run, "--round", "2")
    assert one.returncode == 0, one.stderr
    assert [line.split()[:3] for line in one.stdout.split(header, 1)[1].splitlines() if line.strip()] == [
        ["2", "client-1", "aggregated"],
        ["2", "client-2", "aggregated"],
    ]
    missing = fedstep(local_cloud, "status", finished_run, "--round", "7")
    assert missing.returncode == 2 and f"run {finished_run} has no completed round 7" in missing.stderr


def test_the_report_has_a_per_client_plot_and_table(local_cloud, finished_run, tmp_path):
    result = fedstep(local_cloud, "report", finished_run, "-o", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert "clients.png" in result.stdout and (tmp_path / "clients.png").stat().st_size > 1000
    page = (tmp_path / "report.html").read_text()
    section = page.split('<table id="clients">', 1)[1].split("</table>", 1)[0]
    assert "<td>client-1</td><td>aggregated</td><td>60</td><td>2.2500</td><td>0.2500</td>" in section
    assert "<td>client-2</td><td>aggregated</td><td>90</td><td>2.0000</td><td>0.7500</td>" in section
    # the data behind the plot: each client's previous global model accuracy, per round
    from fedstep.operator.views import load_run, with_clients
    from fedstep.render.client_metrics import accuracy_series

    view = load_run(finished_run, local_cloud.outputs, table_of(local_cloud), local_cloud.client("stepfunctions"))
    series = accuracy_series(with_clients(view, table_of(local_cloud)).clients)
    assert series == {"client-1": [(1, 0.25), (2, 0.25)], "client-2": [(1, 0.75), (2, 0.75)]}


def test_a_rejected_clients_metrics_are_not_shown():
    from fedstep.core.schemas import Rejection, RoundSummary
    from fedstep.render.client_metrics import client_rounds

    summary = RoundSummary(
        "run-1", 1, ["a", "b"], ["a"], 10, [Rejection("b", "update norm 1e9 > 10")], {}, REF, 1.0, 0.1, utc_now()
    )

    def update(client: str) -> dict:
        ref = ObjectRef(keys.update_key("run-1", 1, client), "0" * 64, 100)
        return UpdateItem("run-1", 1, client, 10, ref, {"test_accuracy": 0.5}, utc_now()).to_item()

    rows = client_rounds(summary, {"a": update("a"), "b": update("b")})
    assert [(r.client_id, r.status, r.metrics, r.detail) for r in rows] == [
        ("a", "aggregated", {"test_accuracy": 0.5}, ""),
        ("b", "rejected", {}, "update norm 1e9 > 10"),
    ]


# -- fedstep evaluate: the clients evaluate ------------------------------------------------------


def test_evaluate_asks_each_client_of_a_finished_run_and_reports_what_keras_gives_directly(
    local_cloud, finished_run, tmp_path
):
    drain_queues(local_cloud)
    agents = [keras_agent(local_cloud, cid, tmp_path) for cid in SIZES]
    with serving(agents) as outcomes:
        result = fedstep(local_cloud, "evaluate", finished_run, "--json", "--deadline", "120")
    assert result.returncode == 0, result.stderr
    assert outcomes.count(Outcome.EVALUATED) == 2  # the run has ended, and yet they evaluate
    assert "asked 2 client(s) to evaluate round 2" in result.stderr and "client-1: evaluated" in result.stderr
    answer = json.loads(result.stdout)
    assert answer["round"] == 2
    by_client = {c["client_id"]: c for c in answer["clients"]}

    # the same model, downloaded and evaluated here on each client's test split
    out = tmp_path / "model.keras"
    assert fedstep_here(local_cloud, "download", finished_run, "-o", str(out)).returncode == 0
    from client_agent.keras_model import import_keras

    model = import_keras().models.load_model(out, safe_mode=True)
    expected = {}
    for cid, (_, (x_test, y_test)) in client_data().items():
        direct = model.evaluate(x_test, y_test, verbose=0, return_dict=True)
        expected[cid] = direct
        assert by_client[cid]["status"] == EVALUATED and by_client[cid]["num_examples"] == len(x_test)
        assert by_client[cid]["metrics"]["test_loss"] == pytest.approx(direct["loss"], rel=1e-5)
        assert by_client[cid]["metrics"]["test_accuracy"] == pytest.approx(direct["accuracy"], rel=1e-6)
    mean = answer["mean"]
    assert mean["clients"] == 2 and mean["num_examples"] == 50
    weighted = (20 * expected["client-1"]["accuracy"] + 30 * expected["client-2"]["accuracy"]) / 50
    assert mean["metrics"]["test_accuracy"] == pytest.approx(weighted, rel=1e-6)


def test_evaluate_table_names_a_client_that_cannot_evaluate_and_round_zero_works(local_cloud, finished_run, tmp_path):
    drain_queues(local_cloud)
    agents = [keras_agent(local_cloud, "client-1", tmp_path), keras_agent(local_cloud, "client-2", tmp_path, False)]
    with serving(agents):
        result = fedstep(local_cloud, "evaluate", finished_run, "--round", "0", "--deadline", "120")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert (
        lines[0].startswith(f"evaluation of round 0 of run {finished_run}") and "2 of 2 client(s) answered" in lines[0]
    )
    rows = {line.split()[0]: line for line in lines if line.startswith("client-")}
    assert rows["client-1"].split()[1:3] == ["evaluated", "20"]
    assert rows["client-2"].split()[1:3] == ["cannot", "evaluate"]
    assert "client-2 cannot evaluate: trainer tests:nudge has no evaluate function" in result.stdout
    assert lines[-1].startswith("weighted mean of 1 client(s), 20 examples: test_accuracy ")


def test_only_the_clients_named_are_asked_and_an_unknown_one_is_refused(local_cloud, finished_run, tmp_path):
    drain_queues(local_cloud)
    with serving([keras_agent(local_cloud, "client-1", tmp_path)]):
        result = fedstep(local_cloud, "evaluate", finished_run, "--clients", "client-1", "--deadline", "120")
    assert result.returncode == 0, result.stderr
    assert [line.split()[0] for line in result.stdout.splitlines() if line.startswith("client-")] == ["client-1"]
    sqs = local_cloud.client("sqs")
    assert not sqs.receive_message(QueueUrl=local_cloud.outputs.queues["client-2"]).get("Messages")
    refused = fedstep(local_cloud, "evaluate", finished_run, "--clients", "client-1,hospital-x")
    assert refused.returncode == 2 and "--clients: hospital-x not among the stack's clients" in refused.stderr


def test_a_client_that_does_not_answer_by_the_deadline_is_listed_and_the_exit_code_says_so(local_cloud, finished_run):
    drain_queues(local_cloud)
    result = fedstep(local_cloud, "evaluate", finished_run, "--deadline", "2")  # no agent is serving
    assert result.returncode == 1
    assert "0 of 2 client(s) answered" in result.stdout and "no client evaluated the model" in result.stdout
    assert [line.split()[1:3] for line in result.stdout.splitlines() if line.startswith("client-")] == [
        ["no", "answer"],
        ["no", "answer"],
    ]
    drain_queues(local_cloud)


def test_malicious_answers_are_shown_as_rejected_never_displayed(local_cloud, finished_run, tmp_path):
    """A client writes what it likes into its own partition: an accuracy of 5, or 10^15 examples
    (which would swamp the mean). Both are named as rejected; neither value is shown or averaged."""
    drain_queues(local_cloud)
    ddb = local_cloud.client("dynamodb")
    out: dict = {}

    def operator() -> None:
        out["result"] = fedstep(local_cloud, "evaluate", finished_run, "--deadline", "60")

    thread = threading.Thread(target=operator)
    thread.start()
    forged = {"client-1": ({"test_accuracy": 5.0}, 20), "client-2": ({"test_accuracy": 0.5}, 10**15)}
    for cid, (metrics, n) in forged.items():
        msg = parse_message(json.loads(receive(local_cloud, cid)["Body"]))
        assert isinstance(msg, EvaluateMessage)
        item = EvalItem(msg.run_id, msg.round, msg.request_id, cid, 1, {}, utc_now()).to_item()
        item |= {"num_examples": n, "metrics": metrics}
        ddb.put_item(TableName=local_cloud.outputs.table, Item=to_attributes(item))
    thread.join(timeout=120)
    result = out["result"]
    assert result.returncode == 0, result.stderr
    rows = {line.split()[0]: line.split() for line in result.stdout.splitlines() if line.startswith("client-")}
    assert rows == {cid: [cid, "rejected", "-", "-", "-", "-"] for cid in forged}  # no value shown as a metric
    assert "client-1 rejected: evaluation item: metric 'test_accuracy' is an accuracy and must lie in [0, 1]" in (
        result.stdout
    )
    assert "client-2 rejected: evaluation item: field 'num_examples' must be from 1 to" in result.stdout
    assert result.stdout.splitlines()[-1] == "no client evaluated the model"  # nothing averaged
    drain_queues(local_cloud)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"metrics": {"test_accuracy": 5.0}}, "is an accuracy and must lie in [0, 1], got 5"),
        ({"metrics": {"test_loss": math.nan}}, "must be a finite number"),
        ({"metrics": {"test_loss": math.inf}}, "must be a finite number"),
        ({"num_examples": 10**15}, f"'num_examples' must be from 1 to {limits.MAX_EXAMPLES}"),
        ({"num_examples": 0}, "'num_examples' must be from 1 to"),
        ({"client_id": "client-2"}, "its key does not match"),
        ({"metrics": {}}, "no metrics and no error"),
        ({"metrics": {f"m{i}": 1.0 for i in range(40)}}, "40 metrics, at most 32 allowed"),
    ],
)
def test_an_answer_outside_the_bounds_is_rejected_with_its_reason(change, reason):
    item = EvalItem("run-1", 3, "abc123", "client-1", 20, {"test_accuracy": 0.5}, utc_now()).to_item() | change
    answer = judge("client-1", item, cap=100_000)
    assert answer.status == REJECTED and reason in answer.detail
    assert answer.metrics == {} and answer.weight == 0 and answer.num_examples is None


def test_the_mean_weights_by_examples_capped_like_updates_and_skips_other_answers():
    good = EvalItem("run-1", 3, "abc123", "a", 10, {"test_accuracy": 0.2}, utc_now()).to_item()
    big = EvalItem("run-1", 3, "abc123", "b", 90_000, {"test_accuracy": 0.8}, utc_now()).to_item()
    unable = EvalItem("run-1", 3, "abc123", "c", 0, {}, utc_now(), "no local test split").to_item()
    answers = [judge("a", good, 100_000), judge("b", big, 30), judge("c", unable, 100_000), judge("d", None, 1)]
    assert [a.status for a in answers] == [EVALUATED, EVALUATED, CANNOT, NO_ANSWER]
    message = EvaluateMessage("run-1", 3, "abc123", REF, REF, utc_now())
    evaluation = Evaluation(message, answers)
    clients, examples, means = evaluation.mean()
    assert (clients, examples) == (2, 40) and means["test_accuracy"] == pytest.approx((10 * 0.2 + 30 * 0.8) / 40)
    assert not evaluation.complete
    text = render(evaluation)
    assert "c cannot evaluate: no local test split" in text and "90000" in text  # its claim, its weight capped


# -- the message and the agent ----------------------------------------------------------------


def test_the_evaluate_message_round_trips_and_stays_far_below_the_sns_limit():
    longest = ObjectRef("k" * 1024, "f" * 64, 2**40)
    when = "2026-11-30T12:00:00.123456+00:00"
    message = EvaluateMessage("r" * 64, limits.MAX_ROUNDS, "a" * 32, longest, longest, when, 604_800)
    assert parse_message(json.loads(json.dumps(message.to_dict()))) == message
    assert len(json.dumps(message.to_dict()).encode()) < limits.SNS_MESSAGE_BYTES / 50
    for bad, why in (
        ({"request_id": "UPPER"}, "request id"),
        ({"deadline_s": 0}, "deadline_s"),
        ({"issued_at": "t" * 40}, "'issued_at' must be an ISO 8601 time"),
    ):
        with pytest.raises(InvalidMessage, match=why):
            parse_message(message.to_dict() | bad)


QUIET = AgentConfig(
    client_id="c1", queue_url="https://sqs.us-east-1.amazonaws.com/1/q", bucket="b", table="t", data="d", heartbeat_s=0
)


def quiet_agent() -> tuple[Agent, list[str], list[str]]:
    """An agent whose deletes and evaluations are recorded instead of done."""
    a = Agent(QUIET, trainer=None, session=boto3.Session(region_name="us-east-1"))
    deleted: list[str] = []
    evaluated: list[str] = []
    a._delete = lambda message: deleted.append(message["MessageId"])
    a._release = lambda message: pytest.fail(f"message {message['MessageId']} released")
    a.serve_evaluation = lambda msg: evaluated.append(msg.request_id) or Outcome.EVALUATED
    return a, deleted, evaluated


def sqs_message(body: dict, message_id: str) -> dict:
    return {
        "Body": json.dumps(body),
        "MessageId": message_id,
        "ReceiptHandle": "r",
        "Attributes": {"SentTimestamp": str(int(time.time() * 1000))},
    }


def evaluate_message(request_id: str, issued_s_ago: float, deadline_s: int) -> dict:
    issued = (datetime.now(UTC) - timedelta(seconds=issued_s_ago)).isoformat()
    msg = EvaluateMessage("run-9", 2, request_id, REF, REF, issued, deadline_s)
    return sqs_message(msg.to_dict(), request_id)


def test_an_evaluate_message_past_its_deadline_is_deleted_without_evaluating():
    a, deleted, evaluated = quiet_agent()
    late = limits.MAX_CLOCK_SKEW_S + 60 + 1
    assert a.handle(evaluate_message("late", issued_s_ago=late, deadline_s=60)) is Outcome.STALE
    assert evaluated == [] and deleted == ["late"]
    assert a.handle(evaluate_message("fresh", issued_s_ago=5, deadline_s=60)) is Outcome.EVALUATED
    assert evaluated == ["fresh"] and deleted == ["late", "fresh"]


def test_an_evaluate_message_of_a_run_that_ended_is_still_served():
    a, deleted, evaluated = quiet_agent()
    ended = RunEndedMessage("run-9", "max_rounds", 2).to_dict()
    assert a.handle(sqs_message(ended, "end")) is Outcome.RUN_ENDED
    assert a.handle(evaluate_message("afterend", issued_s_ago=1, deadline_s=900)) is Outcome.EVALUATED
    assert evaluated == ["afterend"] and deleted == ["end", "afterend"]


def test_an_agent_whose_trainer_cannot_evaluate_answers_so(cloud, tmp_path):
    """The numpy ShiftTrainer has no `evaluate`: the agent writes an answer saying so, and deletes the message."""
    run = start(cloud, rounds=1)
    agents = [agent(cloud, cid, tmp_path) for cid in ("client-1", "client-2")]
    serve_run(agents, 1)
    table = table_of(cloud)
    view = _view(cloud, run.run_id)
    sns = cloud.client("sns")
    message = requests_.send_request(view, 1, ["client-1"], 60, cloud.outputs, cloud.client("s3"), sns, table)
    assert agents[0].poll_once() is Outcome.EVALUATED
    [item] = requests_.read_answers(table, message, ["client-1"]).values()
    answer = judge("client-1", item, 100)
    assert answer.status == CANNOT and "this agent's trainer has no evaluate function" in answer.detail


def _view(cloud, run_id):
    from fedstep.operator.views import load_run

    return load_run(run_id, cloud.outputs, table_of(cloud), cloud.client("stepfunctions"))


# -- the aggregation function ignores evaluation items -------------------------------------------


def test_an_evaluation_item_never_triggers_an_aggregation_or_a_rejection(cloud, tmp_path):
    run = start(cloud, rounds=1)
    published_round(cloud, run.run_id, 1)
    ddb, table = cloud.client("dynamodb"), table_of(cloud)
    for cid in ("client-1", "client-2"):  # every selected client "answers" for the open round
        item = EvalItem(run.run_id, 1, "abc123", cid, 20, {"test_accuracy": 0.5}, utc_now()).to_item()
        ddb.put_item(TableName=cloud.outputs.table, Item=to_attributes(item))
    forged = EvalItem(run.run_id, 1, "abc124", "client-1", 20, {"test_accuracy": 9.0}, utc_now()).to_item()
    ddb.put_item(TableName=cloud.outputs.table, Item=to_attributes(forged))
    gaps.wait_for_stream_batches()
    assert table.get_round(run.run_id, 1)["status"] == "open"  # not aggregated (nor claimed)
    assert table.list_rounds(run.run_id) == []
    assert table.get_feedback(["client-1", "client-2"], run_id=run.run_id) == {}  # nobody rejected
    agents = [agent(cloud, cid, tmp_path) for cid in ("client-1", "client-2")]
    serve_run(agents, 1)  # the real updates still aggregate the round
    assert [r["round"] for r in table.list_rounds(run.run_id)] == [1]


def test_the_stream_handler_sees_no_round_in_an_evaluation_record():
    from aws_lambda_powertools.utilities.data_classes.dynamo_db_stream_event import DynamoDBRecord

    from lambdas.aggregate import round_of

    def record(item: dict) -> DynamoDBRecord:
        key = {k: item[k] for k in (keys.PK, keys.SK)}
        return DynamoDBRecord(
            {"eventName": "INSERT", "dynamodb": {"Keys": to_attributes(key), "NewImage": to_attributes(item)}}
        )

    evaluation = EvalItem("run-1", 1, "abc123", "client-1", 20, {"test_accuracy": 0.5}, utc_now()).to_item()
    assert round_of(record(evaluation)) is None
    update_key = keys.update_item_key("run-1", 1, "client-1")
    assert round_of(record({**update_key, "kind": "update"})) == ("run-1", 1)


# -- fedstep evaluate --data: on the operator's machine ------------------------------------------

LOADERS = """
import numpy as np
from sklearn.datasets import load_digits


def load():
    x, y = load_digits(return_X_y=True)
    return (x / 16).astype(np.float32)[-200:], y[-200:]


def broken():
    raise ValueError("cohort.csv not found")


def three():
    return 1, 2, 3


def wrong_width():  # 10 features for a model of 64
    x, y = load()
    return x[:, :10], y
"""


@pytest.fixture
def operator_data(tmp_path, monkeypatch) -> Iterator[None]:
    (tmp_path / "operator_data.py").write_text(LOADERS)
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))  # for a `fedstep` process
    monkeypatch.syspath_prepend(tmp_path)  # for `fedstep_here`
    yield
    sys.modules.pop("operator_data", None)  # the next test's is another file


def test_evaluate_with_data_evaluates_the_global_model_here(local_cloud, finished_run, operator_data, tmp_path):
    result = fedstep_here(local_cloud, "evaluate", finished_run, "--data", "operator_data:load", "--json")
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    assert (answer["round"], answer["num_examples"]) == (2, 200)
    out = tmp_path / "model.keras"
    assert fedstep_here(local_cloud, "download", finished_run, "-o", str(out)).returncode == 0
    from sklearn.datasets import load_digits

    from client_agent.keras_model import import_keras

    x, y = load_digits(return_X_y=True)
    model = import_keras().models.load_model(out, safe_mode=True)
    direct = model.evaluate((x / 16).astype(np.float32)[-200:], y[-200:], verbose=0, return_dict=True)
    assert answer["metrics"]["accuracy"] == pytest.approx(direct["accuracy"], rel=1e-6)
    assert answer["metrics"]["loss"] == pytest.approx(direct["loss"], rel=1e-5)
    text = fedstep_here(local_cloud, "evaluate", finished_run, "--data", "operator_data:load", "--round", "1")
    assert text.returncode == 0, text.stderr
    assert text.stdout.startswith(f"round 1 of run {finished_run} on operator_data:load (200 examples): accuracy ")


@pytest.mark.parametrize(
    ("loader", "message"),
    [
        ("operator_data:broken", "data loader operator_data:broken raised ValueError: cohort.csv not found"),
        ("operator_data:three", "data loader operator_data:three must return (x, y), got tuple"),
        ("operator_data:missing", "module 'operator_data' has no 'missing'"),
        ("operator_data:wrong_width", "evaluating the model on operator_data:wrong_width failed: ValueError: "),
    ],
)
def test_a_data_loader_that_fails_is_a_clear_error(local_cloud, finished_run, operator_data, loader, message):
    """Each a one-line error, as fedstep local gives: no traceback, no Keras colour codes or call dump (the
    process' whole stderr, so a `fedstep` process)."""
    result = fedstep(local_cloud, "evaluate", finished_run, "--data", loader)
    assert result.returncode == 2
    assert message in result.stderr.splitlines()[-1] and result.stderr.splitlines()[-1].startswith("fedstep: error: ")
    assert not any(noise in result.stderr for noise in ("Traceback", "\x1b", "Arguments received"))
    assert len(result.stderr.splitlines()) == 1


@pytest.fixture(scope="module")
def template():
    from infra.config import ClientConfig
    from tests.test_infra_template import synth

    return synth([ClientConfig("org-a"), ClientConfig("org-b")])


def test_a_clients_role_may_put_its_own_evaluation_items_only(template):
    """The synthesized policy, evaluated with IAM's semantics (moto does not check DynamoDB conditions)."""
    from dataclasses import replace

    from fedstep.local.iam.policy import ALLOW, IMPLICIT_DENY
    from tests.test_infra_template import evaluated_policy, put_item

    own = evaluated_policy(template, "org-a")
    answer = EvalItem("run-1", 2, "abc123", "org-a", 20, {"test_accuracy": 0.5}, utc_now())
    assert put_item(own, answer.to_item()) == ALLOW
    assert put_item(own, replace(answer, client_id="org-b").to_item()) == IMPLICIT_DENY
    assert put_item(own, {**answer.to_item(), "status": "aggregated"}) == IMPLICIT_DENY
    assert not any("sns:" in json.dumps(statement.get("Action")) for statement in own)  # clients cannot publish


def test_the_round_topics_policy_lets_the_operators_identity_publish_over_tls(template):
    """The operator publishes evaluate messages with its own identity's sns:Publish (README): the
    topic's policy has no Allow that could leave it out, only the TLS-only Deny."""
    policies = template.find_resources("AWS::SNS::TopicPolicy")
    [round_topic] = [p for p in policies.values() if "GlobalModelReady" in json.dumps(p["Properties"]["Topics"])]
    statements = round_topic["Properties"]["PolicyDocument"]["Statement"]
    assert statements and all(s["Effect"] == "Deny" for s in statements)
    assert all(s["Condition"] == {"Bool": {"aws:SecureTransport": "false"}} for s in statements)


CUSTOM_TRAINER = """
import numpy as np


def train(model, data, training):
    return {"train_loss": 1.0}


def evaluate(model, data, training):
    (_, _), (x_test, y_test) = data
    [kernel] = model.get_weights()
    predicted = np.argmax(x_test @ kernel, axis=1)
    return {"test_accuracy": float(np.mean(predicted == y_test)), "test_nan": float("nan")}
"""


def test_a_custom_trainer_evaluates_with_the_evaluate_function_of_its_module(tmp_path, monkeypatch):
    from client_agent.training import CannotEvaluate, load_trainer
    from fedstep.core.schemas import TrainingConfig

    (tmp_path / "site_trainer.py").write_text(CUSTOM_TRAINER)
    monkeypatch.syspath_prepend(str(tmp_path))
    x = np.eye(4, dtype=np.float32)
    data = ((x, np.arange(4)), (x[:3], np.array([0, 1, 3])))
    trainer = load_trainer("site_trainer:train", data)
    result = trainer.evaluate(b"", {"000/d/kernel": np.eye(4, dtype=np.float32)}, TrainingConfig())
    assert result.num_examples == 3 and result.metrics == {"test_accuracy": pytest.approx(2 / 3)}  # NaN dropped
    assert load_trainer(None, data).evaluate_with is keras_evaluate  # the default trainer's: Keras evaluate
    without = FunctionTrainer(lambda m, d, t: {}, data, "site:train_only")
    with pytest.raises(CannotEvaluate, match="site:train_only has no evaluate function"):
        without.evaluate(b"", {"000/d/kernel": x}, TrainingConfig())
