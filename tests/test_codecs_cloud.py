"""A run with `--codec topk:0.1+int8` on the local cloud, end to end: the agents encode (top-k then
8 bits, error feedback kept in their caches), the aggregation function reads the run's codec only,
and an agent restarted between rounds carries on from the residual it kept."""

from __future__ import annotations

import numpy as np

from client_agent.residuals import ResidualStore
from client_agent.training import TrainResult
from fedstep.aws.adapters import DynamoRoundTable, S3ModelStore
from fedstep.core import tensors
from fedstep.core.schemas import UpdateItem
from tests.cloud_helpers import SHIFTS, agent, serve, start, summaries, wait_for_execution

CODEC = "topk:0.1+int8"
MODEL = {"000/d/kernel": np.zeros((64, 40), np.float32), "001/d/bias": np.zeros(40, np.float32)}
"""2,600 parameters: three blocks of the kernel and one of the bias, so top-k leaves most out."""
ROUNDS = 3


def pattern(client_id: str, round_number: int) -> dict[str, np.ndarray]:
    """What the client learns in a round: a seeded pattern of its own, the same whatever the weights."""
    rng = np.random.default_rng([int(client_id.rsplit("-", 1)[1]), round_number])
    return {k: rng.normal(0, 0.01, v.shape).astype(np.float32) for k, v in MODEL.items()}


class PatternTrainer:
    """Adds this client's pattern of the round to the weights; counts the rounds it trained."""

    def __init__(self, client_id: str, n: int, first_round: int = 1) -> None:
        self.client_id, self.n, self.round = client_id, n, first_round

    def fit(self, architecture, weights, training) -> TrainResult:
        learned = pattern(self.client_id, self.round)
        self.round += 1
        return TrainResult({k: v + learned[k] for k, v in weights.items()}, self.n, {"train_loss": 1.0})


def test_a_topk_int8_run_sends_a_fifth_of_the_bytes_and_loses_nothing_to_error_feedback_across_a_restart(
    cloud, tmp_path
):
    run = start(cloud, rounds=ROUNDS, codec=CODEC, initial=MODEL)
    agents = [agent(cloud, c, tmp_path, PatternTrainer(c, n)) for c, (_, n) in SHIFTS.items()]
    for a in agents:
        serve(a)
    residuals = {c: ResidualStore.for_client(tmp_path / c, c) for c in SHIFTS}
    assert all(store.rounds(run.run_id) == [1] for store in residuals.values())  # written before the upload

    # client-1's agent stops and a new one starts from the same cache: it keeps round 1's residual
    agents[0] = agent(cloud, "client-1", tmp_path, PatternTrainer("client-1", SHIFTS["client-1"][1], first_round=2))
    for _ in range(ROUNDS - 1):
        for a in agents:
            serve(a)
    assert wait_for_execution(cloud, run.execution_arn)["status"] == "SUCCEEDED"

    rounds = summaries(cloud, run.run_id)
    assert [len(s.participants) for s in rounds] == [2] * ROUNDS and not any(s.rejected for s in rounds)
    float32_file = len(tensors.encode(MODEL))
    assert all(
        s.bytes_aggregated < 2 * float32_file / 5 for s in rounds
    )  # a small model: the header counts, [s.bytes_aggregated for s in rounds]
    table = DynamoRoundTable(cloud.outputs.table, cloud.client("dynamodb"))
    for s in rounds:
        items = table.get_updates(run.run_id, s.round, list(SHIFTS)).values()
        assert [UpdateItem.parse(i).encoding for i in items] == [CODEC, CODEC]

    # Error feedback loses nothing: what the clients learned over the run, weighted as FedAvg weighs
    # them, is the final global model plus what each client still holds back in its last residual.
    store = S3ModelStore(cloud.outputs.bucket, cloud.client("s3"))
    final = tensors.decode(store.get(rounds[-1].global_model.key))
    total = sum(n for _, n in SHIFTS.values())
    for name, shape in ((k, v.shape) for k, v in MODEL.items()):
        learned = np.zeros(shape, np.float64)
        held_back = np.zeros(shape, np.float64)
        for c, (_, n) in SHIFTS.items():
            learned += n / total * sum(pattern(c, r)[name] for r in range(1, ROUNDS + 1))
            last = residuals[c].latest_before(run.run_id, ROUNDS + 1, tensors.TensorSpec.of(MODEL))
            assert last is not None and np.abs(last[name]).max() > 0  # top-k left something out
            held_back += n / total * last[name]
        np.testing.assert_allclose(final[name] + held_back, learned, atol=2e-5)
        if name == "000/d/kernel":  # 2,560 elements: top-k sent a tenth of each block (the bias's 40 all went)
            assert np.abs(final[name] - learned).max() > 1e-3  # the residuals did hold part of it back
