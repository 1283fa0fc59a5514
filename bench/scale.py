"""Scale: round time and aggregation time for 10, 50, 100 and 200 clients in the embedded local cloud.

    .venv/bin/python bench/scale.py [--clients 10 50 100 200] [--rounds 3] [--params 12]

For each number of clients the stack is deployed into a fresh local cloud (the clients' queues and
roles in nested stacks of 50), then a run of `--rounds` rounds is served by in-process agents, one
after another, each with its own queue and its own role's credentials (assumed through STS) and a
numpy trainer that shifts every weight (`--params` float32 weights). Printed at the end, after the
aggregation function's own logs: a Markdown table, a row per size with the deployment time (the
first includes building the Lambda bundle when its sources changed), the median round time (the
round record's `duration_s`: from the round's publication to its aggregation, so it includes every
agent's turn, served in sequence) and the median aggregation time (`aggregation_s`: the
aggregation function's work on the round's updates).

These are local-cloud figures: one process, moto over HTTP, agents taking turns. In AWS the agents
train in parallel on their own machines; the aggregation time is the part that grows with the clients.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository: fedstep and tests

from client_agent.agent import Agent, Outcome
from fedstep.local.cloud import LocalCloud
from infra.config import ClientConfig, DeploymentConfig
from tests.cloud_helpers import ShiftTrainer, agent_config, serve, start, summaries, wait_for_execution


def agents(cloud: LocalCloud, workdir: Path) -> list[Agent]:
    """One agent per client of the stack, with its own queue and role."""
    out = cloud.outputs
    assert out is not None
    return [
        Agent(agent_config(cloud, cid, workdir, role_arn=out.roles[cid], heartbeat_s=0), ShiftTrainer(1.0, 10))
        for cid in sorted(out.queues)
    ]


def measure(clients: int, rounds: int, params: int, workdir: Path) -> dict[str, float]:
    """Deploy `clients` clients, run `rounds` rounds; the figures of one table row (seconds)."""
    config = DeploymentConfig(clients=tuple(ClientConfig(f"site-{i:03d}") for i in range(clients)), trial=True)
    started = time.monotonic()
    with LocalCloud(config) as cloud:
        deployed = time.monotonic() - started
        crew = agents(cloud, workdir / str(clients))
        initial = {"000/d/kernel": np.zeros((params // 4, 4), np.float32), "001/d/bias": np.zeros(4, np.float32)}
        run = start(cloud, rounds=rounds, round_timeout_s=900, min_participants=clients, initial=initial)
        for _ in range(rounds):
            for a in crew:
                serve(a)
        for a in crew:
            serve(a, expect=Outcome.RUN_ENDED)
        desc = wait_for_execution(cloud, run.execution_arn, timeout_s=300)
        if desc["status"] != "SUCCEEDED":
            raise RuntimeError(f"run {run.run_id} ended {desc['status']}: {desc.get('cause')}")
        history = summaries(cloud, run.run_id)
    return {
        "deploy_s": deployed,
        "round_s": statistics.median(h.duration_s for h in history),
        "aggregation_s": statistics.median(h.aggregation_s for h in history),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[10, 50, 100, 200])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--params", type=int, default=12, help="float32 weights of the model (default 12)")
    args = parser.parse_args()
    header = "| clients | nested stacks | deploy (s) | round, median (s) | aggregation, median (s) |"
    rows = [header, "|---|---|---|---|---|"]
    with tempfile.TemporaryDirectory(prefix="fedstep-scale-") as tmp:
        for clients in args.clients:
            row = measure(clients, args.rounds, args.params, Path(tmp))
            groups = -(-clients // 50)
            rows.append(
                f"| {clients} | {groups} | {row['deploy_s']:.0f} | {row['round_s']:.1f} | {row['aggregation_s']:.2f} |"
            )
            print(rows[-1], file=sys.stderr, flush=True)  # progress; the function's own logs go to stdout
    print("\n".join(rows))  # the table, last


if __name__ == "__main__":
    main()
