"""Secure aggregation on the local cloud (issue 25's acceptance): the state machine runs the phases,
the agents act under their client roles, the aggregation function relays, fixes the survivors and
decodes only the unmasked sum; a missed phase fails the attempt, which is retried with fresh keys."""

from __future__ import annotations

import time

import numpy as np
import pytest

from client_agent.agent import Outcome
from fedstep.aws.adapters import DynamoRoundTable
from fedstep.core import tensors, update_source
from fedstep.core.rounds import secure
from fedstep.privacy.secagg.inputs import InputCodec
from tests.cloud_helpers import (
    SHIFTS,
    agent,
    global_after,
    serve,
    serving,
    start,
    summaries,
    wait_for_execution,
)

SECURE = {"secure_aggregation": True, "secagg_threshold": 2, "secagg_clip": 20.0}
PHASES = (Outcome.ADVANCED, Outcome.ADVANCED, Outcome.ADVANCED, Outcome.SERVED)
"""What an agent's serving of a secure round's four messages gives: train and advertise, share, upload
the masked input, reveal."""


def test_a_secure_run_decodes_only_sums_and_its_model_is_fedavgs_within_quantisation(cloud, tmp_path, monkeypatch):
    def no_single_update(*args, **kwargs):
        raise AssertionError("the aggregation path decoded a single update")

    monkeypatch.setattr(update_source, "read_update", no_single_update)
    sums: list[int] = []
    real_mean = InputCodec.mean_delta

    def decoded(self, total, survivors):
        sums.append(survivors)
        return real_mean(self, total, survivors)

    monkeypatch.setattr(InputCodec, "mean_delta", decoded)
    masked_reads: list[int] = []
    real_read = secure.read_masked

    def read(store, ref, size, version=None):
        masked_reads.append(size)
        return real_read(store, ref, size, version)

    monkeypatch.setattr(secure, "read_masked", read)

    run = start(cloud, rounds=2, **SECURE)
    agents = [agent(cloud, c, tmp_path) for c in SHIFTS]
    for _ in range(2):
        for expected in PHASES:
            for a in agents:
                serve(a, expect=expected)
    for a in agents:
        serve(a, expect=Outcome.RUN_ENDED)
    desc = wait_for_execution(cloud, run.execution_arn, timeout_s=60)
    assert desc["status"] == "SUCCEEDED", desc.get("cause")
    assert sums == [2, 2]  # one sum of two inputs a round, and nothing else decoded into floats
    assert masked_reads and set(masked_reads) == {4 * 3 + 3 + 1}  # uint32, the model's elements + the weight
    rounds = summaries(cloud, run.run_id)
    assert [s.participants for s in rounds] == [["client-1", "client-2"]] * 2
    assert [s.num_examples for s in rounds] == [40, 40]
    model = tensors.decode(global_after(cloud, run.run_id, 2))
    # FedAvg of shifts 1 (10 examples) and 3 (30): 2.5 a round, within the fixed point's steps
    for name, values in model.items():
        np.testing.assert_allclose(values, 5.0, atol=1e-3, err_msg=name)


def test_a_client_missing_a_phase_fails_the_attempt_which_is_retried_with_fresh_keys(cloud, tmp_path):
    """The second client is silent in the reveal phase: the attempt fails (SecAggThresholdNotMet) after
    both uploaded masked inputs, and the retry's masked inputs supersede them under the client roles."""
    run = start(cloud, rounds=1, round_retries=1, secagg_phase_timeout_s=8, **SECURE)
    first, second = (agent(cloud, c, tmp_path) for c in SHIFTS)
    for expected in PHASES[:-1]:  # train and advertise, share, upload
        serve(first, expect=expected)
        serve(second, expect=expected)
    serve(first, expect=Outcome.SERVED)  # reveals; the second client is silent past the deadline
    table = DynamoRoundTable(cloud.outputs.table, cloud.client("dynamodb"))
    deadline = time.monotonic() + 90
    while (table.get_round(run.run_id, 1) or {}).get("attempt") != 1:  # SecAggThresholdNotMet, retried
        assert time.monotonic() < deadline, "the attempt was not retried"
        time.sleep(0.2)
    with serving([first, second]):
        desc = wait_for_execution(cloud, run.execution_arn, timeout_s=120)
    assert desc["status"] == "SUCCEEDED", desc.get("cause")
    [summary] = summaries(cloud, run.run_id)
    assert summary.attempt == 1 and summary.participants == ["client-1", "client-2"]
    model = tensors.decode(global_after(cloud, run.run_id, 1))
    assert float(np.mean(model["001/d/bias"])) == pytest.approx(2.5, abs=1e-3)
