"""The Python API (`fedstep.simulate`, `fedstep.Operator`, `fedstep.Client`): light to import, the CLIs'
checks and messages. The API against a running cloud: tests/test_kept_cloud.py (Operator, Client) and
tests/test_notebook.py (simulate)."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

import fedstep
from fedstep.api import history_frame
from fedstep.core.errors import FedstepError

HEAVY = ("tensorflow", "keras", "boto3", "botocore", "moto", "pandas", "matplotlib", "aws_cdk")


def test_importing_fedstep_and_naming_the_api_imports_nothing_heavy():
    code = (
        "import sys, json, fedstep; fedstep.simulate, fedstep.Operator, fedstep.Client; "
        f"print(json.dumps([m for m in {list(HEAVY)!r} if m in sys.modules]))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert json.loads(result.stdout) == []


def test_an_unknown_name_of_the_package_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'simulat'"):
        fedstep.simulat  # noqa: B018


def test_simulate_refuses_a_setting_it_does_not_know_naming_it_before_anything_starts():
    with pytest.raises(FedstepError, match=r"simulate: unknown run setting\(s\) learning_rat; known: batch_size"):
        fedstep.simulate(rounds=2, learning_rat=0.1)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"dataset": "cifar"}, "unknown data set 'cifar'"),
        ({"rounds": 0}, "rounds must be 1 to 99999, got 0"),
        ({"clients": 1}, "min_participants 2 is more than the 1 client(s) selected per round"),
        ({"strategy": "fedadam", "strategy_params": {"etta": 1}}, "etta"),
        ({"seed": "7"}, "seed must be a whole number, got '7'"),
        ({"engine": "memory", "workers": 0}, "--workers must be 1 to 256, got 0"),
        ({"engine": "memory", "keep_running": True}, "--keep-running keeps the local cloud up"),
        ({"engine": "memory", "clients": 1}, "min_participants 2 is more than the 1 client(s) selected per round"),
    ],
)
def test_simulate_gives_the_same_errors_as_fedstep_local(kwargs, message, tmp_path):
    with pytest.raises(FedstepError, match=re.escape(message)):
        fedstep.simulate(out=tmp_path, verbose=False, **kwargs)


def test_the_history_has_one_row_per_round_with_the_round_summarys_metrics():
    rounds = [
        {
            "round": r,
            "participants": 3,
            "accuracy": acc,
            "loss": 1 / r,
            "heldout_accuracy": acc + 0.01,
            "heldout_loss": 1.0,
            "metrics": {"test_accuracy": acc, "train_loss": 0.5},
            "rejected": [{"client_id": "client-2", "reason": "norm"}] if r == 2 else [],
            "duration_s": 1.5,
            "measurements": {"step_norm": 0.6},
            "epsilon": None,
            "delta": None,
        }
        for r, acc in ((1, 0.4), (2, 0.6))
    ]
    history = history_frame(rounds)
    assert list(history.index) == [1, 2] and history.index.name == "round"
    assert list(history["rejected"]) == [0, 1]
    assert list(history["test_accuracy"]) == [0.4, 0.6] and list(history["step_norm"]) == [0.6, 0.6]
    assert {"accuracy", "loss", "heldout_accuracy", "train_loss", "duration_s", "epsilon"} <= set(history.columns)


def test_operator_start_needs_a_model_or_a_run_to_resume():
    with pytest.raises(FedstepError, match="give a model"):
        fedstep.Operator(endpoint_url="http://127.0.0.1:9").start()
    with pytest.raises(FedstepError, match=r"start: unknown run setting\(s\) roundz"):
        fedstep.Operator(endpoint_url="http://127.0.0.1:9").start("m:f", roundz=3)


def test_client_refuses_a_config_field_it_does_not_know(tmp_path):
    with pytest.raises(FedstepError, match=r"Client: unknown config field\(s\) queue; known: bucket"):
        fedstep.Client(tmp_path / "c.json", queue="x")
    config = tmp_path / "c.json"
    config.write_text(json.dumps({"client_id": "client-1"}))
    with pytest.raises(FedstepError, match="queue_url"):
        fedstep.Client(config).config  # noqa: B018
