"""The Flower app of `bench/simulation.py`: fedstep's task on Flower's Simulation Engine.

Copied into a generated app folder and run by `flwr run` (Flower's venv, never imported by fedstep's
tests). Everything fedstep-specific comes from the folder `data-dir` (the run config) that
`bench/simulation.py` exported with fedstep's own code: every client's local split (`data.npz`,
`c<i>/x_train`, ... as `client_agent.data.load_local_data(dataset, "i/N", scheme, seed)` returns
it), the held-out set (`heldout/x`, `heldout/y`), the initial model as `fedstep local` builds it
(`model.keras`, `initial.npz`: `build_model(model, seed)` then `keras_payload`) and `meta.json`.

- ClientApp: trains the fedstep client its message's config names (`client`, 1-based), else its
  own node's (`partition-id` p, 0-based, is client p + 1), with fedstep's default trainer,
  `client_agent.training.keras_fit` (seed 0, evaluate, fit, evaluate), on a `RoundModel` whose
  Keras model stays warm across calls in the same Ray actor (`client_agent.warm_model.WarmModel`,
  as a fedstep agent keeps it); replies with the trained weights, `num-examples` (its local
  training examples) and its train metrics: Flower's FedAvg refuses replies whose metrics differ in
  their keys, and a client of one example (task B) has no local test split, so no test metrics.
- ServerApp: Flower's FedAvg (weighted by `num-examples`), sampling `clients-per-round` of the
  `num-clients` nodes each round (`fraction_train` = k/N, `min_train_nodes` = k), no federated
  evaluation. With `sampling = "fedstep"` the k sampled nodes train the k clients fedstep's seeded
  selection picks for the round (`fedstep.core.selection.select` over client-1..client-N, as
  `fedstep local` names them), so both sides train the same clients every round. Its `evaluate_fn`
  scores every round's global model on the held-out set as fedstep's `HeldoutEvaluator` does (the
  architecture loaded once, Keras `evaluate`, rounded to 4 digits), on the clock. When
  `strategy.start` returns, it writes the figures to `result-file`.
"""

from __future__ import annotations

import functools
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

from bench.flower_baseline import TimedFedAvg

# --- what the exported folder holds (read once per process) ----------------------------------


@functools.cache
def _meta(data_dir: str) -> dict[str, Any]:
    return json.loads((Path(data_dir) / "meta.json").read_text())


@functools.cache
def _architecture(data_dir: str) -> bytes:
    return (Path(data_dir) / "model.keras").read_bytes()


@functools.cache
def _arrays(data_dir: str) -> Any:
    return np.load(Path(data_dir) / "data.npz")


@functools.cache
def _warm() -> Any:
    from client_agent.warm_model import WarmModel

    return WarmModel()


@functools.lru_cache(maxsize=64)
def _client_data(data_dir: str, client: int) -> tuple[tuple[Any, Any], tuple[Any, Any]]:
    """Client `client`'s split, the last 64 clients' kept as the memory engine's workers keep them
    (`fedstep.local.memory_workers.CLIENT_CACHE`): the same arrays again, so Keras pipelines kept for
    them (`client_agent.keras_data`, keyed by the arrays) serve the next round as on fedstep's side."""
    arrays = _arrays(data_dir)
    return (
        (arrays[f"c{client}/x_train"], arrays[f"c{client}/y_train"]),
        (arrays[f"c{client}/x_test"], arrays[f"c{client}/y_test"]),
    )


# --- the ClientApp -----------------------------------------------------------------------------

client_app = ClientApp()


@client_app.train()
def train(message: Message, context: Context) -> Message:
    """One round of fedstep client `partition-id + 1`, with fedstep's `keras_fit`."""
    from client_agent.training import RoundModel, keras_fit
    from fedstep.core.schemas import TrainingConfig

    data_dir = str(context.run_config["data-dir"])
    meta = _meta(data_dir)
    names: list[str] = meta["tensor_names"]
    config = message.content["config"]
    client = int(config["client"]) if "client" in config else int(context.node_config["partition-id"]) + 1
    data = _client_data(data_dir, client)
    weights = dict(zip(names, message.content["arrays"].to_numpy_ndarrays(), strict=True))
    model = RoundModel(_architecture(data_dir), weights, seed=int(meta["agent_seed"]), warm=_warm())
    training = TrainingConfig(epochs=int(config["epochs"]), batch_size=int(config["batch-size"]))
    metrics = keras_fit(model, data, training)
    trained = model.tensors()
    trained_on = {k: float(v) for k, v in metrics.items() if k.startswith("train_")}  # every client has these
    record = MetricRecord({"num-examples": len(data[0][1]), **trained_on})
    content = RecordDict({"arrays": ArrayRecord([trained[n] for n in names]), "metrics": record})
    return Message(content=content, reply_to=message)


# --- the ServerApp: its strategy when both sides train the same clients ----------------------

SELECTION_SEED = 0
"""The seed of fedstep's client selection (the run's seed, `RunSettings.seed`)."""


class SameClientsFedAvg(TimedFedAvg):
    """TimedFedAvg whose round-r train messages name fedstep's round-r clients, one per sampled node."""

    def __init__(self, clients: int, per_round: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.client_ids = [f"client-{i}" for i in range(1, clients + 1)]
        self.per_round = per_round

    def _construct_messages(self, record: RecordDict, node_ids: list[int], message_type: str) -> list[Message]:
        if message_type != MessageType.TRAIN:
            return list(super()._construct_messages(record, node_ids, message_type))
        from fedstep.core.selection import select

        config = record[self.configrecord_key]
        chosen = select(self.client_ids, self.per_round, SELECTION_SEED, int(config["server-round"]))
        messages = []
        for node_id, name in zip(node_ids, chosen, strict=True):
            own = ConfigRecord({**config, "client": int(name.removeprefix("client-"))})
            content = RecordDict({self.arrayrecord_key: record[self.arrayrecord_key], self.configrecord_key: own})
            messages.append(Message(content=content, message_type=message_type, dst_node_id=node_id))
        return messages


# --- the ServerApp entry ----------------------------------------------------------------------

server_app = ServerApp()


@server_app.main()
def main(grid: Grid, context: Context) -> None:
    """FedAvg over `num-clients` virtual nodes, `clients-per-round` a round, `num-server-rounds`
    rounds, every round's model scored on the held-out set; the figures as JSON to `result-file`."""
    from client_agent.keras_model import model_from_bytes, set_tensors

    entered = time.time()
    config = context.run_config
    data_dir = str(config["data-dir"])
    meta = _meta(data_dir)
    names: list[str] = meta["tensor_names"]
    rounds, clients, per_round = (int(config[k]) for k in ("num-server-rounds", "num-clients", "clients-per-round"))
    initial = np.load(Path(data_dir) / "initial.npz")
    heldout_x, heldout_y = _arrays(data_dir)["heldout/x"], _arrays(data_dir)["heldout/y"]
    evaluator = model_from_bytes(_architecture(data_dir))
    accuracy: dict[int, float] = {}
    evaluated: dict[int, float] = {}

    def evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        if server_round == 0:
            return None  # fedstep scores the rounds' models, not the initial one
        set_tensors(evaluator, dict(zip(names, arrays.to_numpy_ndarrays(), strict=True)))
        result = evaluator.evaluate(heldout_x, heldout_y, verbose=0, return_dict=True)
        accuracy[server_round] = round(float(result["accuracy"]), 4)
        evaluated[server_round] = time.time()
        return MetricRecord({"heldout_accuracy": accuracy[server_round]})

    sampling = str(config["sampling"])
    make = functools.partial(SameClientsFedAvg, clients, per_round) if sampling == "fedstep" else TimedFedAvg
    strategy = make(
        fraction_train=per_round / clients,
        fraction_evaluate=0.0,  # the clients evaluate inside their train step, as fedstep's do
        min_train_nodes=per_round,
        min_available_nodes=clients,
    )
    strategy.start(
        grid=grid,
        initial_arrays=ArrayRecord([initial[n] for n in names]),
        num_rounds=rounds,
        train_config=ConfigRecord({"epochs": int(meta["epochs"]), "batch-size": int(meta["batch_size"])}),
        evaluate_fn=evaluate,
    )
    finished = time.time()
    result = {
        "server_entered": entered,
        "finished": finished,
        "sent": strategy.sent,
        "aggregated": strategy.aggregated,
        "evaluated": evaluated,
        "participants": {r: len(replies) for r, replies in strategy.clients.items()},
        "heldout_accuracy": accuracy,
    }
    target = Path(str(config["result-file"]))
    partial = target.with_suffix(".partial")
    partial.write_text(json.dumps(result))
    partial.replace(target)  # the driver waits for the file: it appears whole
