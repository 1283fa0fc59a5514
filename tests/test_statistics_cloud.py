"""Federated statistics on the local cloud, as the operator and the sites see them: `fedstep stats`
asks the clients through their queues and reads their answers from their own partitions; a run with
`--standardize federated` asks before round 1 and every client trains on features standardized with
everybody's statistics. Two agents serve in threads of this process, with raw digits features (pixel
counts 0-16, one client's shifted by 5, some values missing). The commands that build a Keras model
(`start --model`, `stats <model>`) run in this process (`fedstep_here`: a process would import TensorFlow
again); the agents' sessions name their profiles, so the operator's environment meanwhile is not theirs."""

from __future__ import annotations

import json
import threading

import numpy as np

from client_agent.agent import Agent
from client_agent.training import FunctionTrainer
from fedstep.aws.adapters import DynamoRoundTable
from fedstep.aws.ddb import to_attributes
from fedstep.core import keys
from fedstep.core.clock import utc_now
from fedstep.core.schemas import StatsItem
from tests.cloud_helpers import agent_config, drain_queues, fedstep, fedstep_here, receive, serving

CLIENTS = ("client-1", "client-2")


def client_data() -> dict[str, tuple[tuple, tuple]]:
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = x.astype(np.float32)
    x[::11, 20] = np.nan  # missing values: counted per feature, and standardized to the mean (0)
    out = {}
    for i, cid in enumerate(CLIENTS):
        part = slice(200 * i, 200 * i + 200)
        xs, ys = x[part] + 5.0 * i, y[part]
        out[cid] = ((xs[:150], ys[:150]), (xs[150:], ys[150:]))
    return out


SEEN: dict[str, list[np.ndarray]] = {cid: [] for cid in CLIENTS}
"""The training features each client's train function was given, per round."""


def recorder(client_id: str):
    """A train function that keeps the features it was given and moves every weight a little (the
    protocol is under test, not the training)."""

    def train(model, data, training):
        (x_train, _), _ = data
        SEEN[client_id].append(np.array(x_train))
        model.set_weights([w * 0.9 + 0.01 for w in model.get_weights()])
        return {"train_loss": 1.0}

    return train


def stats_agent(cloud, client_id: str, tmp_path) -> Agent:
    config = agent_config(cloud, client_id, tmp_path, data="in-memory", heartbeat_s=0)
    return Agent(config, FunctionTrainer(recorder(client_id), client_data()[client_id], "tests:record"))


def pooled_train() -> np.ndarray:
    return np.concatenate([train[0] for train, _ in client_data().values()]).astype(np.float64)


def test_stats_asks_every_client_and_gives_the_statistics_of_the_pooled_data(cloud, tmp_path):
    with serving([stats_agent(cloud, cid, tmp_path) for cid in CLIENTS]):
        result = fedstep(cloud, "stats", "--json", "--bins", "4", "--deadline", "120")
    assert result.returncode == 0, result.stderr
    assert "asked 2 client(s) for statistics" in result.stderr and "client-2: answered" in result.stderr
    assert "asking again for the histograms, over the global min and max" in result.stderr
    stats = json.loads(result.stdout)
    pooled = pooled_train()
    assert stats["features"] == 64 and stats["clients"] == list(CLIENTS)
    np.testing.assert_allclose(stats["count"], (~np.isnan(pooled)).sum(axis=0))
    np.testing.assert_allclose(stats["mean"], np.nanmean(pooled, axis=0), rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(stats["std"], np.nanstd(pooled, axis=0), rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(stats["min"], np.nanmin(pooled, axis=0))
    np.testing.assert_allclose(stats["max"], np.nanmax(pooled, axis=0))
    assert [sum(h) for h in stats["histogram"]["counts"]] == stats["count"]
    table = fedstep(cloud, "stats", "--bins", "0", "--clients", "client-1", "--deadline", "2")
    assert table.returncode == 2  # nobody serves now: client-1 gives no answer, there is nothing to show
    assert "0 of 1 client(s) answered usably, 1 needed (client-1: no answer)" in table.stderr


def test_stats_for_a_model_asks_for_its_input_width_and_sites_of_another_width_say_so(cloud, tmp_path):
    with serving([stats_agent(cloud, cid, tmp_path) for cid in CLIENTS]):
        result = fedstep_here(cloud, "stats", "client_agent.models:heart_logreg", "--deadline", "120")
    assert result.returncode == 2
    assert "client-1: cannot answer: this site's data has 64 features, the request asks 22" in result.stderr
    assert "0 of 2 client(s) answered usably" in result.stderr and "Traceback" not in result.stderr


def test_noise_needs_a_range_and_noisy_statistics_release_no_min_or_max(cloud, tmp_path):
    refused = fedstep(cloud, "stats", "--dp-epsilon", "1")
    assert refused.returncode == 2 and "noise needs a range for every feature (--range)" in refused.stderr
    with serving([stats_agent(cloud, cid, tmp_path) for cid in CLIENTS]):
        result = fedstep(
            cloud, "stats", "--range", "0:25", "--dp-epsilon", "8", "--bins", "5", "--deadline", "120", "--json"
        )
    assert result.returncode == 0, result.stderr
    stats = json.loads(result.stdout)
    assert stats["min"] is None and stats["max"] is None
    assert stats["noise"]["epsilon"] == 8 and stats["noise"]["std"] > 0
    pooled = np.clip(pooled_train(), 0, 25)
    assert abs(float(np.mean(stats["mean"])) - float(np.nanmean(pooled))) < 1.0  # noisy, not wild


def test_a_forged_answer_is_shown_as_rejected_and_never_combined(cloud, tmp_path):
    """client-2 writes what it likes into its own partition: a billion rows. It is named as rejected
    with the reason, and the statistics are client-1's alone."""
    out: dict = {}

    def operator() -> None:
        out["result"] = fedstep(cloud, "stats", "--bins", "0", "--json", "--deadline", "60")

    with serving([stats_agent(cloud, "client-1", tmp_path)]):
        thread = threading.Thread(target=operator)
        thread.start()
        message = json.loads(receive(cloud, "client-2")["Body"])  # the request, as client-2 gets it
        forged = np.zeros((64, 5))
        forged[:, 0] = 1e9
        item = StatsItem(message["request_id"], "client-2", 64, 0, forged.tobytes(), utc_now()).to_item()
        cloud.client("dynamodb", "client-2").put_item(TableName=cloud.outputs.table, Item=to_attributes(item))
        thread.join(timeout=120)
    result = out["result"]
    assert result.returncode == 1, result.stderr
    assert "client-2: rejected: counts must be whole numbers from 0 to max_examples 100000" in result.stderr
    stats = json.loads(result.stdout)
    assert stats["clients"] == ["client-1"]
    (x1, _), _ = client_data()["client-1"]
    np.testing.assert_allclose(stats["count"], (~np.isnan(x1)).sum(axis=0))


def start_standardized(cloud, tmp_path, how: str) -> str:
    """A one-round run of the digits model with `--standardize how`, served by both agents: its id."""
    for seen in SEEN.values():
        seen.clear()
    with serving([stats_agent(cloud, cid, tmp_path) for cid in CLIENTS]):
        result = fedstep_here(
            cloud,
            *("start", "--model", "client_agent.models:digits_mlp", "--rounds", "1", "--seed", "3"),
            *("--standardize", how, "--watch"),
        )
    assert result.returncode == 0, result.stderr
    if how == "federated":
        assert "federated statistics of 2 client(s), 64 features" in result.stderr
    return result.stdout.split("started run ", 1)[1].split()[0]


def test_a_run_standardized_federated_trains_every_client_on_the_pooled_statistics(cloud, tmp_path):
    run_id = start_standardized(cloud, tmp_path, "federated")
    record = DynamoRoundTable(cloud.outputs.table, cloud.client("dynamodb")).get_run(run_id)
    assert record.training.standardize == "federated"
    assert record.training.standardization.key == keys.statistics_key(run_id)
    trained = np.concatenate([SEEN[cid][-1] for cid in CLIENTS])
    pooled = pooled_train()
    varies = np.nanstd(pooled, axis=0) > 0
    assert not np.isnan(trained).any()
    np.testing.assert_allclose(trained.mean(axis=0), 0, atol=1e-3)  # a missing value is the mean, 0
    present = ~np.isnan(pooled)
    spread = [trained[present[:, j], j].std() for j in np.flatnonzero(varies)]  # of the values measured
    np.testing.assert_allclose(spread, 1, atol=1e-3)
    shown = fedstep(cloud, "stats", run_id, "--json")
    assert shown.returncode == 0, shown.stderr
    np.testing.assert_allclose(json.loads(shown.stdout)["mean"], np.nanmean(pooled, axis=0), rtol=1e-6, atol=1e-9)


def test_with_standardize_local_each_client_uses_its_own_statistics(cloud, tmp_path):
    start_standardized(cloud, tmp_path, "local")
    for cid in CLIENTS:
        np.testing.assert_allclose(SEEN[cid][-1].mean(axis=0), 0, atol=1e-3)  # each centred on its own mean


def test_a_federated_run_whose_clients_do_not_answer_never_starts(cloud):
    drain_queues(cloud)
    result = fedstep_here(
        cloud,
        *("start", "--model", "client_agent.models:digits_mlp", "--run-id", "never-started"),
        *("--standardize", "federated", "--round-timeout", "3"),
    )
    assert result.returncode == 2
    assert "federated statistics: 0 of 2 client(s) answered usably, 1 needed" in result.stderr
    table = DynamoRoundTable(cloud.outputs.table, cloud.client("dynamodb"))
    assert table.get_run("never-started") is None
    drain_queues(cloud)


def test_an_agent_whose_trainer_holds_no_data_answers_that_it_cannot(cloud, tmp_path):
    class Opaque:  # a trainer of its own that does not expose its data
        def fit(self, architecture, weights, training):
            raise AssertionError("not called")

    config = agent_config(cloud, "client-1", tmp_path, data="in-memory", heartbeat_s=0)
    with serving([Agent(config, Opaque())]):
        result = fedstep(cloud, "stats", "--clients", "client-1", "--deadline", "60")
    assert result.returncode == 2
    assert "client-1: cannot answer: this agent's trainer does not expose its data" in result.stderr
