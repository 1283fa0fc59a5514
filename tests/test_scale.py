"""Hundreds of clients: 200 clients deployed into the local cloud (their queues and roles in 4 nested
stacks of 50), and a run of 3 rounds that all of them serve.

The agents run in this process, one after another, each with its own queue, its own role (assumed
through STS, so its own credentials) and a numpy trainer that shifts every weight. Slow (a few
minutes): it runs with `make test-scale` (FEDSTEP_SCALE=1), not with `make test`.
"""

from __future__ import annotations

import json
import os
import time

import numpy as np
import pytest

from client_agent.agent import Agent, Outcome
from fedstep.aws.adapters import S3ModelStore
from fedstep.core import tensors
from tests.cloud_helpers import INITIAL, ShiftTrainer, agent_config, serve, start, summaries, wait_for_execution

CLIENTS = 200
ROUNDS = 3

pytestmark = [
    pytest.mark.skipif(os.environ.get("FEDSTEP_SCALE") != "1", reason="slow: run `make test-scale`"),
    pytest.mark.timeout(1800),
]


@pytest.fixture(scope="module")
def cloud():
    from fedstep.local.cloud import LocalCloud
    from infra.config import ClientConfig, DeploymentConfig

    config = DeploymentConfig(clients=tuple(ClientConfig(f"site-{i:03d}") for i in range(CLIENTS)), trial=True)
    started = time.monotonic()
    with LocalCloud(config) as cloud:
        print(f"\n{CLIENTS} clients deployed in {time.monotonic() - started:.0f} s")
        yield cloud


def test_200_clients_each_with_its_own_queue_and_role_serve_3_rounds(cloud, tmp_path):
    out = cloud.outputs
    assert len(out.queues) == len(out.roles) == CLIENTS
    assert len(set(out.queues.values())) == len(set(out.roles.values())) == CLIENTS
    started = time.monotonic()
    agents = [
        Agent(
            agent_config(cloud, cid, tmp_path, role_arn=out.roles[cid], heartbeat_s=0),
            ShiftTrainer(1.0 + i % 2, 10),  # shifts 1 and 2, equally weighted: 1.5 a round
        )
        for i, cid in enumerate(sorted(out.queues))
    ]
    keys = {a.session.get_credentials().get_frozen_credentials().access_key for a in agents}
    assert len(keys) == CLIENTS  # each agent acts with its own role's credentials
    print(f"{CLIENTS} agents (roles assumed) in {time.monotonic() - started:.0f} s")

    run = start(cloud, rounds=ROUNDS, round_timeout_s=900, min_participants=CLIENTS)
    for number in range(1, ROUNDS + 1):
        round_started = time.monotonic()
        for a in agents:
            serve(a)
        print(f"round {number}: {CLIENTS} updates served and aggregated in {time.monotonic() - round_started:.0f} s")
    for a in agents:
        serve(a, expect=Outcome.RUN_ENDED)

    desc = wait_for_execution(cloud, run.execution_arn, timeout_s=300)
    assert desc["status"] == "SUCCEEDED", desc.get("cause")
    history = summaries(cloud, run.run_id)
    assert [h.round for h in history] == list(range(1, ROUNDS + 1))
    for h in history:
        assert sorted(h.participants) == sorted(out.queues) and h.num_examples == 10 * CLIENTS
        print(f"round {h.round}: {h.duration_s:.1f} s from publication, aggregation {h.aggregation_s:.2f} s")
    final = tensors.decode(
        S3ModelStore(out.bucket, cloud.client("s3")).get(json.loads(desc["output"])["global_model"]["key"])
    )
    for name in INITIAL:
        np.testing.assert_allclose(final[name], 1.5 * ROUNDS, rtol=1e-6)
