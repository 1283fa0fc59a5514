"""`fedstep local` on a user's own data split by its sites, kept running for the operator's commands until
Ctrl-C (tests/test_demo.py says how the end-to-end runs are split)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np

from tests.local_runs import REPO, clients_of, ctrl_c, env_of, wait_for_line

SITE_DATA = """
import numpy as np

from client_agent.models import mlp


def load():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 4, 400)
    return rng.normal(size=(400, 5)).astype("float32") + y[:, None], y


def load_sites():
    x, y = load()  # as its sites hold it: north has every 0, east every 1, south the 2s and 3s
    return x, y, np.array(["north", "east", "south"])[np.minimum(y, 2)]


def model():
    return mlp(5, 4, hidden=16)
"""


def test_own_data_split_by_its_sites_is_simulated_counted_reported_and_kept_for_the_operator_until_ctrl_c(tmp_path):
    """A user's loader and model from the working directory; the loader gives each example's site
    (x, y, groups) and `--partition natural` makes each site one client. Every client agent takes
    exactly its site's examples less the held-out share, as the operator counted, and `fedstep report`
    draws the label histogram from partition.json. (Dividing a whole (x, y) by a scheme such as
    dirichlet:0.5 is tested client by client in test_custom_data.py.)

    `--keep-running` leaves the cloud up for the operator's commands (`fedstep status`, `fedstep report`,
    with the env file it names) until Ctrl-C at the terminal, which stops it quietly. (The kept cloud's
    other uses are in test_kept_cloud.py.)"""
    site = tmp_path / "site"
    site.mkdir()
    (site / "site_data.py").write_text(SITE_DATA)
    out = tmp_path / "own"
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "fedstep", "local", "--out", str(out), "--dataset", "site_data:load_sites"),
            *("--model", "site_data:model", "--partition", "natural", "--rounds", "1", "--keep-running"),
            *("--strategy", "trimmed_mean", "--strategy-param", "beta=0.2"),
        ],
        cwd=site,  # the loader and the model are found in the working directory, by the clients too
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # as in a terminal: Ctrl-C signals the whole process group (`ctrl_c`)
    )
    try:
        lines = wait_for_line(proc, "press Ctrl-C to stop it", timeout_s=300)
        held_out = "data set site_data:load_sites: 319 examples for 3 clients (partition natural, seed 0), 81 held out"
        assert f"{held_out}\n" in lines  # 20% of each site held out, rounded up
        summary = json.loads((out / "summary.json").read_text())
        assert any("strategy trimmed_mean (beta=0.2)" in line for line in lines)  # fedstep local takes a strategy
        assert (summary["config"]["strategy"], summary["config"]["strategy_params"]) == (
            "trimmed_mean",
            {"beta": 0.2},
        )
        assert "step_norm" in summary["rounds"][0]["measurements"]
        counts = summary["partition"]
        assert summary["config"]["partition"] == "natural" and counts["scheme"] == "natural"
        sites = {"client-1": "east", "client-2": "north", "client-3": "south"}  # sorted by name
        assert counts["sites"] == sites
        y = np.random.default_rng(1).integers(0, 4, 400)  # the loader's labels
        group = {"north": y == 0, "east": y == 1, "south": y >= 2}
        for cid, per_label in counts["clients"].items():
            whole = np.bincount(y[group[sites[cid]]], minlength=4)
            held = whole - np.asarray(per_label)
            assert held.sum() == -(-whole.sum() // 5), cid  # its site less ceil(20%) held out ...
            assert (abs(held - 0.2 * whole) <= 1).all(), cid  # ... stratified by label: nobody else's examples
            config = json.loads((out / "clients" / f"{cid}.json").read_text())
            assert (config["partition_scheme"], config["data_seed"]) == ("natural", 0)
            total = sum(per_label)
            train = total - -(-total // 5)  # the local split holds out ceil(20%)
            assert f"| {train} examples |" in (out / "logs" / f"{cid}.log").read_text(), cid
            assert any(line.startswith(f"  {cid} ({sites[cid]}) ") and f" {total} examples, " in line for line in lines)
        run_id, env_file = summary["run_id"], out / "local-cloud.env"
        assert f"  source {env_file}\n" in lines and f"  fedstep status {run_id}\n" in lines
        env = env_of(out)
        status = subprocess.run(
            [sys.executable, "-m", "fedstep", "status", run_id], env=env, capture_output=True, text=True, timeout=60
        )
        assert status.returncode == 0, status.stderr
        assert status.stdout.startswith(f"run {run_id}: SUCCEEDED (max_rounds), round 1 of 1"), status.stdout
        assert "3 clients, 3 per round" in status.stdout and "trimmed_mean (beta=0.2)" in status.stdout
        report = subprocess.run(
            [sys.executable, "-m", "fedstep", "report", summary["run_id"], "-o", str(out / "report")],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert report.returncode == 0, report.stderr
        assert "labels.png" in report.stdout and (out / "report" / "labels.png").stat().st_size > 1000
        page = (out / "report" / "report.html").read_text()
        assert 'id="labels"' in page and "partition natural, seed 0" in page
        assert "<tr><td>client-2 (north)</td>" in page
    finally:
        ctrl_c(proc)
        rest, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0 and "stopping the local cloud" in rest, rest
    for noise in ("Exception ignored", "Traceback", "BrokenPipeError"):  # jsii's, when Node.js got the Ctrl-C
        assert noise not in rest, rest
    assert clients_of(out) == []
