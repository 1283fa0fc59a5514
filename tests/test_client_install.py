"""`pip install ".[client]"` (the README's one command) installs a working agent and nothing of the server."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SERVER_ONLY = ("moto", "aws_cdk", "constructs", "jsii", "cdk_nag", "pytest", "cfnlint")


def test_the_client_extra_installs_a_working_agent_without_the_server_side(tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python, agent = venv / "bin" / "python", venv / "bin" / "fedstep-client"
    # uv (make installs it into the venv) installs the same requirement by the same metadata as the README's
    # `pip install ".[client]"`, from the wheels `make` cached: about 5 s of CPU where pip takes 25 (the suite's
    # budget); pip is the fallback. Neither compiles: the agent's one dry run compiles only what it imports.
    uv = Path(sys.executable).parent / "uv"
    installer = (
        [str(uv), "pip", "install", "--quiet", "--python", str(python)]
        if uv.exists()
        else [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-compile"]
    )
    install = subprocess.run([*installer, f"{REPO}[client]"], capture_output=True, text=True, timeout=900)
    assert install.returncode == 0, install.stderr[-3000:]
    probe = "import importlib.util as u, sys; print([m for m in sys.argv[1:] if u.find_spec(m)])"
    found = subprocess.run([str(python), "-c", probe, *SERVER_ONLY], capture_output=True, text=True, check=True)
    assert found.stdout.strip() == "[]"

    with socket.socket() as s:  # a port nobody listens on: the checks must say so, not crash
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = {
        "client_id": "client-1",
        "region": "us-east-1",
        "queue_url": "https://sqs.us-east-1.amazonaws.com/123456789012/fedstep-client-1",
        "bucket": "fedstep-models",
        "table": "fedstep-rounds",
        "endpoint_url": f"http://127.0.0.1:{port}",
        "data": "digits",
        "partition": "1/3",
    }
    (tmp_path / "client.json").write_text(json.dumps(config))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run(
        [str(agent), "run", "--config", "client.json", "--dry-run"],
        cwd=tmp_path,  # not the repository: the installed package must be complete
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    lines = {line.split()[1]: line for line in result.stdout.splitlines() if line.startswith("  ")}
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stdout + result.stderr
    assert lines["data"].split()[0] == "ok" and "383 training" in lines["data"]  # scikit-learn came with it
    assert f"cannot reach http://127.0.0.1:{port}" in lines["identity"]
