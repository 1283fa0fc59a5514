"""A 1 GiB model aggregated by slices on the local cloud, by functions whose memory is below the
model's size: each Lambda invocation runs in its own process with the function's MemorySize enforced
(`LocalCloud(enforce_lambda_memory=True)`), and the result is compared with the aggregation in one
process, byte for byte. A few minutes: `make test-scale` (FEDSTEP_SCALE=1), not `make test`.
"""

from __future__ import annotations

import os
import time

import numpy as np
import pytest

from client_agent.agent import Agent
from fedstep.core import tensors
from fedstep.local import gaps
from tests.cloud_helpers import ShiftTrainer, agent_config
from tests.test_sliced_cloud import EXAMPLES, deployment, in_one_process, run_sliced_round


@pytest.mark.skipif(os.environ.get("FEDSTEP_SCALE") != "1", reason="slow: run `make test-scale`")
@pytest.mark.timeout(3600)
def test_a_1_gib_model_is_aggregated_by_functions_with_less_memory_than_the_model(tmp_path):
    from fedstep.local.cloud import LocalCloud

    config = deployment(max_model_mb=1100, slice_mb=64)
    started = time.monotonic()
    with LocalCloud(config, enforce_lambda_memory=True) as cloud:
        params = 2**28  # 1 GiB of float32
        rng = np.random.default_rng(1)
        initial = {"000/huge/kernel": rng.standard_normal(params, dtype=np.float32).reshape(2**14, 2**14)}
        delta = {"000/huge/kernel": rng.standard_normal(params, dtype=np.float32).reshape(2**14, 2**14)}
        agent = Agent(agent_config(cloud, "client-1", tmp_path), ShiftTrainer(1.0, EXAMPLES["client-1"]))
        run, _, final = run_sliced_round(cloud, initial, {"client-2": delta}, agents=[agent])
        del delta, initial
        model_mb = len(final) / 2**20
        print(
            f"\n1 GiB round (one agent, one direct update) aggregated by slices in {time.monotonic() - started:.0f} s"
        )
        expected = in_one_process(cloud, run.run_id)
        assert final == tensors.encode(tensors.decode(expected, max_bytes=len(expected)), tensors.read_metadata(final))
        uses = gaps.LAMBDA_IN_PROCESS.memory_uses
        assert len([u for u in uses if u.mode == "slice"]) == 16  # 1 GiB / 64 MiB (the header goes with the first)
        peaks: dict[str, float] = {}
        for use in uses:
            assert use.peak_mb <= use.memory_mb < model_mb, use
            peaks[use.mode or "stream"] = max(peaks.get(use.mode or "stream", 0.0), use.peak_mb)
        print("peak memory by invocation (MB):", {m: round(p) for m, p in peaks.items()}, "of", uses[0].memory_mb)
