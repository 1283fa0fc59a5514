"""The Flower baseline's `--engine grpc` processes: Flower's legacy gRPC API (fedstep issue 24).

`bench/flower_baseline.py --engine grpc` starts one server and 3 client processes of this module,
all with the Flower venv's python, on 127.0.0.1, insecure:

    python bench/flower_grpc.py server --port P --rounds 5 --clients 3 --result-file F
    python bench/flower_grpc.py client --port P --partition i/3      (i = 1..3)

The server is `flwr.server.start_server` (deprecated since Flower 1.13, present in 1.42) with
`TimedFedAvg`, Flower's legacy FedAvg that timestamps each round; its initial model is the digits
model seeded with 0, built in `initialize_parameters` (after the gRPC server listens, so the
clients connect while the server imports TensorFlow). Every round's aggregated model is kept
through `evaluate_fn` and scored on the held-out split after the last round, as the other engines
score theirs; the figures go to F as JSON.

A client is `flwr.client.start_client` with `DigitsClient`, a `NumPyClient` built the way Flower's
quickstart-tensorflow builds its client: data loaded and model created once per process, reused
every round. Its `fit` does what the other engines' `train()` does: seed Keras with 0, set the
global weights, evaluate on the local test split, fit, evaluate again.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import time
from pathlib import Path
from typing import Any

import flower_baseline as task  # the task's constants and model helpers (bench/ is this script's path[0])
import flwr
from flwr.client import NumPyClient, start_client
from flwr.common import FitRes, Parameters, ndarrays_to_parameters
from flwr.server import ServerConfig, start_server
from flwr.server.client_manager import ClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.strategy import FedAvg

CONNECT_DEADLINE_S = 600.0
"""Longest a client waits for the server's port (seconds)."""


class TimedFedAvg(FedAvg):
    """Flower's legacy FedAvg, recording when each round's fit instructions go out and when its model
    is aggregated (epoch seconds), and the clients' own timestamps (their fit metrics `t_*`)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.sent: dict[int, float] = {}
        self.aggregated: dict[int, float] = {}
        self.clients: dict[int, list[dict[str, float]]] = {}

    def initialize_parameters(self, client_manager: ClientManager) -> Parameters | None:
        task.keras().utils.set_random_seed(task.SEED)  # as `fedstep start` seeds the initial model
        return ndarrays_to_parameters(task.new_model().get_weights())

    def configure_fit(self, server_round: int, parameters: Parameters, client_manager: ClientManager) -> Any:
        instructions = super().configure_fit(server_round, parameters, client_manager)  # samples the clients first
        self.sent[server_round] = time.time()
        return instructions

    def aggregate_fit(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, FitRes]],
        failures: list[Any],
    ) -> Any:
        self.clients[server_round] = [
            {k: float(v) for k, v in res.metrics.items() if k.startswith("t_")} for _, res in results
        ]
        aggregated = super().aggregate_fit(server_round, results, failures)
        self.aggregated[server_round] = time.time()
        return aggregated


def serve(port: int, rounds: int, clients: int, result_file: Path) -> None:
    """Run `rounds` of FedAvg over `clients` clients, then score every round's model on the held-out
    split and write the figures to `result_file` (whole: written aside, then renamed)."""
    models: dict[int, list[Any]] = {}

    def keep(server_round: int, weights: list[Any], config: dict[str, Any]) -> None:
        models[server_round] = weights  # scored after the clock stops

    strategy = TimedFedAvg(
        fraction_fit=1.0,
        fraction_evaluate=0.0,  # the clients evaluate inside their fit, as fedstep's do
        min_fit_clients=clients,
        min_available_clients=clients,
        evaluate_fn=keep,
        on_fit_config_fn=lambda server_round: {"epochs": task.EPOCHS, "batch-size": task.BATCH_SIZE},
    )
    start_server(server_address=f"127.0.0.1:{port}", config=ServerConfig(num_rounds=rounds), strategy=strategy)
    from client_agent.datasets import load_heldout

    x, y = load_heldout(task.DATASET, seed=task.SEED)
    result = {
        "flower_version": flwr.__version__,
        "sent": strategy.sent,
        "aggregated": strategy.aggregated,
        "clients": strategy.clients,
        "heldout_accuracy": {r: task.accuracy(models[r], x, y) for r in sorted(models) if r > 0},
        "heldout_examples": len(y),
    }
    partial = result_file.with_suffix(".partial")
    partial.write_text(json.dumps(result))
    partial.replace(result_file)


class DigitsClient(NumPyClient):
    """One client's data and Keras model, created once (Flower's quickstart-tensorflow way)."""

    def __init__(self, partition: str) -> None:
        from client_agent.data import load_local_data

        (self.x_train, self.y_train), (self.x_test, self.y_test) = load_local_data(
            task.DATASET, partition, seed=task.SEED
        )
        self.model = task.new_model()

    def get_parameters(self, config: dict[str, Any]) -> list[Any]:
        return self.model.get_weights()

    def fit(self, parameters: list[Any], config: dict[str, Any]) -> tuple[list[Any], int, dict[str, float]]:
        """Seed, set the global weights, evaluate, fit (the round's epochs and batch size), evaluate."""
        entered = time.time()
        task.keras().utils.set_random_seed(task.SEED)
        self.model.set_weights(parameters)
        ready = time.time()
        before = self.model.evaluate(self.x_test, self.y_test, verbose=0, return_dict=True)
        history = self.model.fit(
            self.x_train,
            self.y_train,
            epochs=int(config["epochs"]),
            batch_size=int(config["batch-size"]),
            shuffle=True,
            verbose=0,
        )
        after = self.model.evaluate(self.x_test, self.y_test, verbose=0, return_dict=True)
        metrics = {
            "train_loss": float(history.history["loss"][-1]),
            "test_accuracy_before": float(before["accuracy"]),
            "test_accuracy": float(after["accuracy"]),
            # wall-clock times (epoch seconds) for the benchmark's breakdown of a round
            "t_train_entered": entered,
            "t_model_ready": ready,
            "t_train_done": time.time(),
        }
        return self.model.get_weights(), len(self.x_train), metrics

    def evaluate(self, parameters: list[Any], config: dict[str, Any]) -> tuple[float, int, dict[str, float]]:
        self.model.set_weights(parameters)
        result = self.model.evaluate(self.x_test, self.y_test, verbose=0, return_dict=True)
        return float(result["loss"]), len(self.x_test), {"accuracy": float(result["accuracy"])}


def _wait_for_port(port: int) -> None:
    """Wait until the server listens: a legacy gRPC client does not retry a refused first connection."""
    deadline = time.time() + CONNECT_DEADLINE_S
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            if time.time() > deadline:
                raise SystemExit(f"no Flower server on port {port} after {CONNECT_DEADLINE_S:.0f} s") from None
            time.sleep(0.05)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("role", choices=("server", "client"))
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--rounds", type=int, default=task.ROUNDS)
    parser.add_argument("--clients", type=int, default=task.CLIENTS)
    parser.add_argument("--result-file", type=Path)
    parser.add_argument("--partition", help="the client's fedstep partition, i/n (1-based)")
    args = parser.parse_args(argv)
    if args.role == "server":
        if args.result_file is None:
            parser.error("server needs --result-file")
        serve(args.port, args.rounds, args.clients, args.result_file)
    else:
        if args.partition is None:
            parser.error("client needs --partition")
        client = DigitsClient(args.partition)  # TensorFlow import, data and model, before connecting
        _wait_for_port(args.port)
        start_client(server_address=f"127.0.0.1:{args.port}", client=client.to_client(), insecure=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
