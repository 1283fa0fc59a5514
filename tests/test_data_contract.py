"""A client's data checked against the run's model before any round: `fedstep-client run --dry-run` names
each data problem with its fix; a loader that raises, a placeholder loader and an ill-typed config file
get one clear line; a Keras error in the agent's log is one clean line."""

from __future__ import annotations

import hashlib
import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest

from client_agent import config as agent_config
from client_agent import data_contract
from client_agent.cli import main
from client_agent.data import load_local_data
from client_agent.data_contract import ModelContract
from client_agent.errors import clean_error
from fedstep.core import keys
from fedstep.core.errors import FedstepError

REPO = Path(__file__).resolve().parent.parent
MODULE = "fedstep_test_contract_data"  # a name no other test uses: modules are cached by name

LOADERS = """
import numpy as np

def _data(n=100, features=5, classes=3):
    rng = np.random.default_rng(0)
    y = rng.integers(0, classes, n)
    return rng.normal(size=(n, features)).astype("float32") + y[:, None], y

def _split(x, y):
    return (x[:80], y[:80]), (x[80:], y[80:])

def good():
    return _split(*_data())

def wrong_feature_count():
    return _split(*_data(features=6))

def labels_up_to_9():
    return _split(*_data(classes=10))

def one_hot_labels():
    x, y = _data()
    return _split(x, np.eye(3)[y])

def nan_features():
    x, y = _data()
    x[3, 1] = np.nan
    return _split(x, y)

def python_lists():
    (x, y), test = good()
    return (x.tolist(), y.tolist()), test

def raising():
    raise FileNotFoundError("/data/cohort-2026.parquet")

def empty_training_split():
    x, y = _data()
    return (x[:0], y[:0]), (x, y)

def short_labels():
    x, y = _data()
    return (x[:80], y[:70]), (x[80:], y[80:])

def text_labels():
    x, y = _data()
    return _split(x, np.array(["sick", "well", "unknown"])[y])

def train():
    return {}
"""


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The user's site folder: the loaders above, and the run's model (5 features, 3 classes) as a file."""
    from client_agent.keras_model import model_to_bytes
    from client_agent.models import mlp

    folder = tmp_path_factory.mktemp("site")
    (folder / f"{MODULE}.py").write_text(LOADERS)
    (folder / "model.keras").write_bytes(model_to_bytes(mlp(5, 3)))
    sys.path.insert(0, str(folder))
    yield folder
    sys.path.remove(str(folder))
    sys.modules.pop(MODULE, None)


def write_config(folder: Path, **fields) -> str:
    """A client config whose AWS endpoint is closed: the AWS checks fail fast, the data checks still run."""
    config = {
        "client_id": "client-1",
        "queue_url": "https://sqs.us-east-1.amazonaws.com/123456789012/fedstep-client-1",
        "bucket": "b",
        "table": "t",
        "region": "us-east-1",
        "endpoint_url": "http://127.0.0.1:9",
        **fields,
    }
    path = folder / "client.json"
    path.write_text(json.dumps(config))
    return str(path)


def dry_run(site: Path, capsys, loader: str, *flags: str) -> tuple[int, dict[str, str]]:
    """`fedstep-client run --config client.json --dry-run [flags]`, in this process; exit code and lines by check."""
    code = main(["run", "--config", write_config(site, data=loader), "--dry-run", *flags])
    out = capsys.readouterr().out
    assert "Traceback" not in out
    lines = {}
    for line in out.splitlines():
        if line.startswith("  "):
            _status, rest = line.split(None, 1)
            name = "model fit" if rest.startswith("model fit") else rest.split()[0]
            lines[name] = line
    return code, lines


def model_fit_line(site: Path, capsys, loader: str) -> str:
    code, lines = dry_run(site, capsys, f"{MODULE}:{loader}", "--model", str(site / "model.keras"))
    assert code == 1
    return lines["model fit"]


# -- the dry run against the model ------------------------------------------------------------------


def test_dry_run_with_data_that_fits_the_model_trains_one_batch_and_says_so(site, capsys):
    _code, lines = dry_run(site, capsys, f"{MODULE}:good", "--model", str(site / "model.keras"))
    assert lines["data"].split()[0] == "ok" and "80 training and 20 test examples" in lines["data"]
    line = lines["model fit"]
    assert line.split()[0] == "ok", line
    assert "inputs (5,), 3 output units, loss sparse_categorical_crossentropy" in line
    assert "one batch of 32 examples trained" in line and "(nothing kept)" in line


def test_dry_run_names_a_loader_with_the_wrong_feature_count(site, capsys):
    line = model_fit_line(site, capsys, "wrong_feature_count")
    assert line.split()[0] == "FAIL"
    assert "x_train rows have shape (6,) but the run's model takes inputs of shape (5,)" in line


def test_dry_run_names_labels_out_of_range_for_the_models_output_units(site, capsys):
    line = model_fit_line(site, capsys, "labels_up_to_9")
    assert "y_train has labels from 0 to 9 but the model has 3 output units (classes 0 to 2)" in line
    assert "renumber the labels" in line and "a model with 10 outputs" in line


def test_dry_run_names_one_hot_labels_where_the_loss_expects_class_indices(site, capsys):
    line = model_fit_line(site, capsys, "one_hot_labels")
    assert "y_train is one-hot (shape (80, 3)) but the model's loss sparse_categorical_crossentropy" in line
    assert "return y_train.argmax(axis=1)" in line


@pytest.mark.parametrize(
    ("loader", "message"),
    [
        ("nan_features", "x_train has NaN or Inf in 1 example(s), the first at row 3: drop or impute them"),
        ("python_lists", "x_train is a Python list, not a numpy array: return np.asarray(x_train, dtype=np.float32)"),
        ("empty_training_split", "the training split is empty"),
        ("short_labels", "x_train has 80 examples but y_train has 70: one label per example"),
        ("text_labels", "y_train has dtype <U7, not numbers: encode the labels as class indices"),
    ],
)
def test_dry_run_names_each_data_problem_before_the_model_is_loaded(site, capsys, loader, message):
    code, lines = dry_run(site, capsys, f"{MODULE}:{loader}", "--model", str(site / "model.keras"))
    assert code == 1
    assert lines["data"].split()[0] == "FAIL" and message in lines["data"], lines["data"]
    assert lines["model fit"].split()[0] == "skip"


def test_dry_run_names_a_loader_that_raises_without_a_traceback(site, capsys):
    code, lines = dry_run(site, capsys, f"{MODULE}:raising")
    assert code == 1
    assert lines["data"] == (
        f"  FAIL  data           data loader '{MODULE}:raising' raised FileNotFoundError: /data/cohort-2026.parquet"
    )


def test_dry_run_without_a_model_says_how_to_check_the_data_against_one(site, capsys):
    _code, lines = dry_run(site, capsys, f"{MODULE}:good")
    assert lines["model fit"].split()[0] == "skip"
    assert "pass --run RUN" in lines["model fit"] and "--model FILE.keras" in lines["model fit"]


def test_run_refuses_model_and_run_flags_without_dry_run(site, capsys):
    with pytest.raises(SystemExit) as exited:
        main(["run", "--config", write_config(site, data="digits"), "--model", "m.keras"])
    assert exited.value.code == 2 and "add --dry-run" in capsys.readouterr().err


# -- the contract's pure checks ---------------------------------------------------------------------

CATEGORICAL = ModelContract((5,), 3, "categorical_crossentropy")
BINARY = ModelContract((5,), 1, "binary_crossentropy")
IMAGES = ModelContract((28, 28), 10, "sparse_categorical_crossentropy")


def arrays(y: np.ndarray, x: np.ndarray | None = None) -> tuple:
    x = np.zeros((len(y), 5), np.float32) if x is None else x
    return (x, y), (x[:0], y[:0])


def test_class_indices_for_a_one_hot_loss_get_the_to_categorical_fix():
    (problem,) = data_contract.model_problems(arrays(np.array([0, 1, 2, 1])), CATEGORICAL)
    assert "y_train holds class indices (shape (4,)) but the model's loss categorical_crossentropy" in problem
    assert "keras.utils.to_categorical(y_train, 3)" in problem


def test_binary_labels_outside_0_and_1_are_named():
    (problem,) = data_contract.model_problems(arrays(np.array([0, 1, 2])), BINARY)
    assert "y_train has labels from 0 to 2 but the model's loss binary_crossentropy expects 0 or 1" in problem


def test_flat_images_get_the_reshape_that_fits_the_model():
    x = np.zeros((4, 784), np.float32)
    (problem,) = data_contract.model_problems(arrays(np.array([0, 1, 2, 3]), x), IMAGES)
    assert "x_train rows have shape (784,) but the run's model takes inputs of shape (28, 28)" in problem
    assert "x_train.reshape(-1, 28, 28)" in problem


def test_fractional_labels_for_a_sparse_loss_are_named():
    sparse = ModelContract((5,), 10, "sparse_categorical_crossentropy")
    (problem,) = data_contract.model_problems(arrays(np.array([0.0, 1.5, 2.0])), sparse)
    assert "y_train has fractional values (e.g. 1.5)" in problem


def test_a_test_split_with_other_features_is_named():
    x = np.zeros((4, 5), np.float32)
    problems = data_contract.split_problems(((x, np.zeros(4)), (np.zeros((2, 4)), np.zeros(2))))
    assert problems == ["x_test rows have shape (4,) but x_train rows (5,): both splits need the same features"]


def test_an_empty_test_split_is_allowed_and_said():
    x = np.zeros((4, 5), np.float32)
    assert data_contract.split_problems(((x, np.zeros(4)), (x[:0], np.zeros(0)))) == []


# -- placeholders ---------------------------------------------------------------------------------


def test_the_client_config_placeholder_loader_says_to_fill_it_in_not_that_a_module_is_missing():
    with pytest.raises(FedstepError) as raised:
        load_local_data("module:function")
    message = str(raised.value)
    assert message.startswith("data is 'module:function', the placeholder `fedstep client-config` writes")
    assert '"data": "my_site:load"' in message and "No module named" not in message


def test_an_unfilled_template_loader_is_named_a_placeholder_only_when_it_does_not_import():
    with pytest.raises(FedstepError, match=r"data is 'my_module:load', a placeholder, not a real module"):
        load_local_data("my_module:load")


def test_run_with_the_placeholder_loader_stops_with_how_to_fill_it_in(site, capsys):
    assert main(["run", "--config", write_config(site, data="module:function")]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert "fedstep-client: error: data is 'module:function', the placeholder `fedstep client-config`" in err


def test_dry_run_names_a_placeholder_trainer(site, capsys):
    path = write_config(site, data="digits", trainer="module:function")
    assert main(["run", "--config", path, "--dry-run"]) == 1
    out = capsys.readouterr().out
    assert "FAIL  data           trainer is 'module:function', a placeholder" in out
    assert "or remove it to train with Keras fit" in out


# -- a typed config file -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("poll_wait_s", "20", "poll_wait_s must be a whole number of seconds, got '20' (a string; write 20 without"),
        ("heartbeat_s", True, "heartbeat_s must be a whole number of seconds, got true (true/false)"),
        ("data_seed", 1.5, "data_seed must be a whole number, got 1.5 (a fractional number)"),
        ("dp_max_delta", "1e-5", "dp_max_delta must be a number, got '1e-5' (a string; write 1e-5 without quotes)"),
        ("bucket", ["b"], "bucket must be a string, got ['b'] (a list)"),
        ("trainer", {"name": "x"}, "trainer must be a string, got {'name': 'x'} (an object)"),
        ("queue_url", "sqs/fedstep-client-1", "queue_url must be a URL starting with https://"),
        ("role_arn", "fedstep-client-1", "role_arn must be an IAM role ARN"),
    ],
)
def test_a_config_file_value_of_the_wrong_type_is_named_with_the_type_expected(tmp_path, field, value, message):
    path = write_config(tmp_path, data="digits", **{field: value})
    with pytest.raises(FedstepError) as raised:
        agent_config.load(path, {})
    assert message in str(raised.value)


def test_a_config_file_type_error_is_printed_without_a_traceback(tmp_path, capsys):
    assert main(["run", "--config", write_config(tmp_path, data="digits", poll_wait_s="20")]) == 2
    err = capsys.readouterr().err
    assert re.search(r"fedstep-client: error: client config file .*client.json: poll_wait_s must be a whole", err)


def test_numbers_from_the_environment_are_still_converted(tmp_path, monkeypatch):
    monkeypatch.setenv("FEDSTEP_DATA_SEED", "7")
    assert agent_config.load(write_config(tmp_path, data="digits"), {}).data_seed == 7
    monkeypatch.setenv("FEDSTEP_DATA_SEED", "seven")
    with pytest.raises(FedstepError, match="environment variable FEDSTEP_DATA_SEED: data_seed must be a whole number"):
        agent_config.load(write_config(tmp_path, data="digits"), {})


# -- Keras errors as one line ----------------------------------------------------------------------


def test_a_keras_label_error_reaches_the_log_as_one_clean_line(site):
    from client_agent.keras_model import model_from_bytes

    model = model_from_bytes((site / "model.keras").read_bytes())
    with pytest.raises(Exception) as raised:  # what TensorFlow raises: InvalidArgumentError, graph trace and all
        model.train_on_batch(np.zeros((4, 5), np.float32), np.array([0, 1, 2, 7]))
    line = clean_error(raised.value)
    assert line == (
        "InvalidArgumentError: Received a label value of 7 which is outside the valid range of [0, 3). "
        "Label values: 0 1 2 7"
    )


def test_a_keras_shape_error_loses_its_ansi_codes_and_argument_dump(site):
    from client_agent.keras_model import model_from_bytes

    model = model_from_bytes((site / "model.keras").read_bytes())
    with pytest.raises(Exception) as raised:
        model.train_on_batch(np.zeros((4, 6), np.float32), np.array([0, 1, 2, 1]))
    line = clean_error(raised.value)
    assert "\x1b" not in line and "\n" not in line and "Arguments received" not in line
    assert line.startswith("ValueError: Input 0 with name")
    assert "expected axis -1 of input shape to have value 5" in line


def test_a_round_that_fails_in_keras_is_logged_as_one_clean_line(site, tmp_path, monkeypatch, caplog):
    import contextlib

    import boto3

    from client_agent.agent import Agent, Outcome
    from client_agent.keras_model import model_from_bytes
    from fedstep.core.schemas import ObjectRef, RoundMessage

    model = model_from_bytes((site / "model.keras").read_bytes())
    try:
        model.train_on_batch(np.zeros((4, 5), np.float32), np.array([0, 1, 2, 7]))
    except Exception as exc:  # the InvalidArgumentError a trainer would raise
        failure = exc
    config = agent_config.AgentConfig(
        client_id="c1",
        queue_url="https://sqs.us-east-1.amazonaws.com/1/q",
        bucket="b",
        table="t",
        data="d",
        cache_dir=str(tmp_path),
    )
    agent = Agent(config, trainer=None, session=boto3.Session(region_name="us-east-1"))
    monkeypatch.setattr(agent, "_stale", lambda msg: None)
    monkeypatch.setattr(agent, "_kept_invisible", lambda message: contextlib.nullcontext())

    def serve_round(msg):
        raise failure

    monkeypatch.setattr(agent, "serve_round", serve_round)
    released: list[str] = []
    monkeypatch.setattr(agent, "_release", lambda message: released.append(message["MessageId"]))
    ref = ObjectRef("runs/r/model.keras", "0" * 64, 1)
    body = json.dumps(RoundMessage("run-x", 2, 0, ref, "2026-11-30T00:00:00Z", model=ref).to_dict())
    with caplog.at_level("ERROR", logger="fedstep.client"):
        assert agent.handle({"Body": body, "ReceiptHandle": "h", "MessageId": "m"}) is Outcome.KEPT
    (record,) = [r for r in caplog.records if r.name == "fedstep.client"]
    assert record.getMessage() == (
        "round 2 of run run-x failed, the message stays queued and is released for another try: "
        "InvalidArgumentError: Received a label value of 7 which is outside the valid range of [0, 3). "
        "Label values: 0 1 2 7"
    )
    assert released == ["m"]  # tried again at once, not after the queue's visibility timeout


def test_an_exception_without_text_gives_its_type_and_message_attribute():
    class InvalidArgumentError(Exception):
        message = "indices[3] = 7 is not in [0, 3)"

    assert clean_error(InvalidArgumentError()) == "InvalidArgumentError: indices[3] = 7 is not in [0, 3)"
    assert clean_error(RuntimeError()) == "RuntimeError"
    assert len(clean_error(ValueError("x" * 5000))) == 400


# -- against the local cloud ----------------------------------------------------------------------


def test_dry_run_checks_the_data_against_the_model_of_a_round_waiting_in_the_queue(local_cloud, site, tmp_path, capsys):
    """A round of run-contract waits in client-1's queue; the dry run reads its model without taking the message."""
    from client_agent.keras_model import model_to_bytes
    from client_agent.models import mlp
    from fedstep.core.schemas import ObjectRef, RoundMessage
    from tests.cloud_helpers import drain_queues

    drain_queues(local_cloud)
    architecture = model_to_bytes(mlp(5, 3))
    key = keys.model_key("run-contract")
    local_cloud.client("s3").put_object(Bucket=local_cloud.outputs.bucket, Key=key, Body=architecture)
    ref = ObjectRef(key, hashlib.sha256(architecture).hexdigest(), len(architecture))
    message = RoundMessage("run-contract", 1, 0, ref, "2026-11-30T00:00:00Z", model=ref)
    queue = local_cloud.outputs.queues["client-1"]
    local_cloud.client("sqs").send_message(QueueUrl=queue, MessageBody=json.dumps(message.to_dict()))

    config = local_cloud.outputs.client_config("client-1", "us-east-1", data=f"{MODULE}:labels_up_to_9")
    path = tmp_path / "client.json"
    path.write_text(json.dumps({**config, "endpoint_url": local_cloud.endpoint, "profile": "client-1"}))
    assert main(["run", "--config", str(path), "--dry-run"]) == 1
    out = capsys.readouterr().out
    assert "Traceback" not in out
    lines = [line for line in out.splitlines() if line.startswith("  ")]
    assert all(line.split()[0] == "ok" for line in lines[:-1]), out  # every AWS check passed, with the role
    fit = lines[-1]
    assert fit.startswith("  FAIL  model fit"), out
    assert "run run-contract's model (its round 1 is waiting in the queue)" in fit
    assert "y_train has labels from 0 to 9 but the model has 3 output units" in fit
    waiting = local_cloud.client("sqs").receive_message(QueueUrl=queue, WaitTimeSeconds=1).get("Messages", [])
    assert len(waiting) == 1 and json.loads(waiting[0]["Body"])["run_id"] == "run-contract"  # still there
    drain_queues(local_cloud)


def test_loading_an_adam_model_says_nothing_about_its_unbuilt_optimizers_variables():
    """Every Adam run logged Keras' `Skipping variable loading for optimizer 'adam'` (issue 21, finding 10)."""
    import warnings

    from client_agent.keras_model import import_keras, model_from_bytes, model_to_bytes

    keras = import_keras()
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    model.compile(optimizer=keras.optimizers.Adam(0.003), loss="mse")  # saved unbuilt, as fedstep start saves it
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loaded = model_from_bytes(model_to_bytes(model))
    assert [w for w in caught if "optimizer" in str(w.message)] == []
    assert float(loaded.optimizer.learning_rate.numpy()) == pytest.approx(0.003)  # its settings kept
