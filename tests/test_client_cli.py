"""`fedstep-client` as a user runs it: configuration mistakes get a clear error, never a traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from client_agent import config as agent_config
from client_agent.data import load_local_data
from fedstep.core.errors import FedstepError

REPO = Path(__file__).resolve().parent.parent
GOOD = {"client_id": "client-1", "queue_url": "https://q", "bucket": "b", "table": "t", "data": "digits"}


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "client_agent.cli", *args], cwd=REPO, capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (None, "client config file .* does not exist"),
        ("{oops", "not valid JSON"),
        (json.dumps({**GOOD, "colour": "red"}), r"unknown field\(s\) \['colour'\]"),
        (json.dumps({k: v for k, v in GOOD.items() if k != "queue_url"}), "missing: queue_url"),
        (json.dumps({**GOOD, "client_id": "a/b"}), "invalid client id"),
    ],
)
def test_config_mistakes_are_named(tmp_path, config, message):
    path = tmp_path / "client.json"
    if config is not None:
        path.write_text(config)
    result = run_cli("run", "--config", str(path))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    import re

    assert re.search(message, result.stderr), result.stderr


def test_flags_override_the_file_and_environment(tmp_path, monkeypatch):
    path = tmp_path / "client.json"
    path.write_text(json.dumps(GOOD))
    monkeypatch.setenv("FEDSTEP_BUCKET", "from-env")
    config = agent_config.load(str(path), {"data": "mnist", "table": None})
    assert (config.bucket, config.data, config.table) == ("from-env", "mnist", "t")


def test_data_spec_errors_are_clear():
    with pytest.raises(FedstepError, match="neither a built-in data set"):
        load_local_data("imagenet")
    with pytest.raises(FedstepError, match="cannot import module"):
        load_local_data("no_such_module:load")
    with pytest.raises(FedstepError, match="must be between 1 and 3"):
        load_local_data("digits", "4/3")


def test_a_custom_loader_supplies_the_local_data(tmp_path, monkeypatch):
    (tmp_path / "my_site_data.py").write_text(
        "import numpy as np\n"
        "def load():\n"
        "    x = np.ones((8, 3), 'float32'); y = np.zeros(8, 'int64')\n"
        "    return (x, y), (x[:2], y[:2])\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    (x_train, y_train), (x_test, _) = load_local_data("my_site_data:load")
    assert x_train.shape == (8, 3) and len(x_test) == 2 and y_train.dtype == np.int64


def test_an_agent_waiting_for_its_config_gives_up_naming_the_file(tmp_path):
    missing = tmp_path / "not-yet.json"
    proc = subprocess.run(
        [sys.executable, "-m", "client_agent.cli", "run", "--config", str(missing), "--wait-for-config", "0.5"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    assert proc.returncode == 2, proc.stderr
    assert f"the config file {missing} did not appear within 0.5 s (--wait-for-config)" in proc.stderr
    assert "Traceback" not in proc.stderr
