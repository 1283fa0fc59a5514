"""Flower baseline: the `make demo` task run with Flower on this machine (fedstep issue 14).

The task is the one fedstep's demo runs: scikit-learn's digits, 3 clients with an IID third each
(fedstep's own split: `client_agent.data.load_local_data("digits", "i/3")`, seed 0), the digits
model (`client_agent.models.digits_mlp`: Dense(64, relu) -> Dense(10, softmax), SGD lr 0.1,
initial weights seeded with 0 as `fedstep start` seeds them), 1 local epoch at batch 32, 5 rounds
of FedAvg weighted by the clients' training examples. Each client does what fedstep's default
trainer does in a round (`client_agent.training.keras_fit`): seed Keras with 0, evaluate the
global model on its local test split, fit, evaluate again. The final global model is scored on
fedstep's held-out split (`client_agent.datasets.load_heldout("digits")`).

By default (`--engine deployment`) Flower runs with its Deployment Engine, its recommended way
to run real clients: one
`flower-superlink`, 3 `flower-supernode` processes (each its own OS process; each runs the
ClientApp in a `flwr-clientapp` subprocess, Flower's default isolation) and `flwr run`, all on
127.0.0.1, insecure (no TLS), runtime dependency installation off (offline). Nothing else
(no Ray, no simulation engine). The Flower app is generated into a temporary directory: a
pyproject.toml and a copy of this file, whose `server_app` and `client_app` are the components.
SuperNode i gets `--node-config "partition-id=i num-partitions=3"`, i = 1..3 (1-based, as
fedstep's "i/n" partitions). Flower 1.42's SuperNode starts a new `flwr-clientapp` process for
every message, so every round pays a Python, Flower and TensorFlow import on every client; the
per-phase breakdown printed for each run shows how much.

With `--engine simulation` the same app runs on Flower's Simulation Engine (Ray), the way `flwr
run` runs a local simulation in Flower 1.42: one `flower-superlink --simulation --isolation
subprocess` (what `flwr run` starts itself for a `:local:` SuperLink connection; here on a free
port, without the deprecated `--control-api-address`, and stopped after the run) and `flwr run
<app> <connection> --federation-config "num-supernodes=3 client-resources-num-cpus=1"`. The
SuperLink's `flwr-simulation` process runs the ServerApp and starts Ray, whose actors (one CPU
each, so 2 at a time on 2 cores) run the ClientApps of the 3 virtual SuperNodes in long-lived
processes. Flower numbers simulated partitions 0..2, so the run config's `partition-offset = 1`
gives node i partition i (1-based): the same data as the Deployment Engine's SuperNodes. Flower
1.42's own default is 2 CPUs per client (`client-resources-num-cpus`); the benchmark asks for 1
(`--client-cpus` to change it).

With `--engine grpc` Flower runs through its legacy gRPC API, its fastest path on one machine
(`bench/flower_grpc.py`): one `flwr.server.start_server` process (deprecated since Flower 1.13,
present in 1.42) running FedAvg, and 3 long-lived `flwr.client.start_client` processes, each a
`NumPyClient` built as Flower's quickstart-tensorflow builds it (data loaded and model created
once per process, kept across rounds), on 127.0.0.1, insecure. Client i trains on partition i/3,
its `fit` doing what `train()` below does. Every round's aggregated model is kept (`evaluate_fn`)
and scored after the last round, as with the other engines.

Beside Flower, by default, the benchmark runs `fedstep local --dataset digits --clients 3 --rounds
5` as a subprocess under fedstep's own `.venv/bin/python` (timed and parsed by
`bench/round_overhead.py`), before each Flower run: fedstep and Flower alternate, `--repeat` times
each, under about the same load. `--no-fedstep` runs Flower only.

Set-up (once; a separate virtualenv, so fedstep's .venv is untouched), from the repository root:

    python3 -m venv .venv-flower && .venv-flower/bin/pip install -r bench/requirements-flower.txt

(bench/requirements-flower.txt includes Flower's `simulation` extra, i.e. Ray, needed only by
`--engine simulation`; to add it to an older .venv-flower:
`.venv-flower/bin/pip install "flwr[simulation]==1.42.0" ray==2.55.1`.)

Run (outside CI; fedstep's .venv set up too, unless `--no-fedstep`; each repetition starts fresh
processes: a Deployment Engine run takes about a minute on a quiet 2-core machine, a gRPC or
simulation run about 20 s, a `fedstep local` run about 25 s):

    .venv-flower/bin/python bench/flower_baseline.py                # one run of each
    .venv-flower/bin/python bench/flower_baseline.py --repeat 5     # 5 runs of each; min and median
    .venv-flower/bin/python bench/flower_baseline.py --engine simulation --repeat 3
    .venv-flower/bin/python bench/flower_baseline.py --engine grpc --repeat 3
    .venv-flower/bin/python bench/flower_baseline.py --engine grpc --no-fedstep   # Flower only

Printed per Flower run, all wall-clock times in seconds:
- `start-to-final-model`: from launching the first process (the SuperLink, or the gRPC server;
  nothing of Flower running yet) to the moment the server holds round 5's aggregated model (with
  `simulation`, this includes the `flwr-simulation` process's start and Ray's), and when round
  1's instructions went out (all clients connected);
- `submit-to-final-model` (not with `grpc`, which has no submission): from `flwr run` (SuperLink
  and, with `deployment`, SuperNodes already started) to the same;
- each round's time, from the server's sending the round's train (fit) messages (after sampling
  the nodes) to its aggregated model, as fedstep times a round (publication to aggregated model);
- the steady-state round time, the median of rounds 2-5;
- the held-out accuracy of every round's global model and of the final one (computed after the
  clock stops);
- a per-phase breakdown of the steady-state round (ENGINE_PHASES: PHASES for `deployment`,
  SIMULATION_PHASES for `simulation`, whose ClientApps run in Ray actors started once, not in a
  process per message, GRPC_PHASES for `grpc`).

Printed per fedstep run: the start (launch) to round 5's model, its round line's arrival (the
comparable figure: the model aggregated, then scored on the held-out set by the runner), the start
to the final model's line (later: after the run-ended message and the model card), each round's
time and the steady-state round (from `summary.json`: publication to aggregated model), the
agents' part of the steady round and the rest (orchestration), the held-out accuracy per round.
Then the ratios fedstep/Flower of each pair (issue 24's goals: steady-state round <= 1.00x, start
to final model <= 1.25x, the latter fedstep's start to round 5's model over Flower's
start-to-final-model) and, with `--repeat`, the min and median of each side, the ratio of the
medians and the median of the pairs' ratios. `--json` writes every Flower run's figures, each with
its fedstep pair under "fedstep".
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # fedstep's data helpers and model (client_agent)

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import flwr  # noqa: E402
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict  # noqa: E402
from flwr.clientapp import ClientApp  # noqa: E402
from flwr.serverapp import Grid, ServerApp  # noqa: E402
from flwr.serverapp.strategy import FedAvg  # noqa: E402

DATASET = "digits"
CLIENTS = 3
ROUNDS = 5
EPOCHS = 1
BATCH_SIZE = 32
SEED = 0
RUN_DEADLINE_S = 600.0
"""Longest a run may take before the benchmark gives up on it (seconds)."""
APP_MODULE = "flower_baseline"
ENGINES = ("deployment", "simulation", "grpc")
CLIENT_CPUS = 1
"""`client-resources-num-cpus` of a simulation run (Flower 1.42's default is 2)."""


# --- the Flower app (runs in flwr-serverapp and flwr-clientapp processes) ---------------------


@functools.cache
def keras() -> Any:
    """The Keras module, imported once per process (fedstep's way: `client_agent.keras_model`)."""
    from client_agent.keras_model import import_keras

    return import_keras()


def new_model() -> Any:
    """The demo's digits model, compiled (`client_agent.models.digits_mlp`)."""
    from client_agent.models import digits_mlp

    return digits_mlp()


def accuracy(weights: list[Any], x: Any, y: Any) -> float:
    """The digits model's accuracy on (x, y) with these weights (a fraction)."""
    model = new_model()
    model.set_weights(weights)
    return float(model.evaluate(x, y, batch_size=BATCH_SIZE, verbose=0, return_dict=True)["accuracy"])


def process_started() -> float:
    """When this process started (epoch seconds, 10 ms resolution; Linux /proc); -1.0 elsewhere."""
    try:
        with open("/proc/self/stat") as stat:
            ticks = int(stat.read().rsplit(")", 1)[1].split()[19])  # field 22, starttime since boot
        return time.time() - (time.clock_gettime(time.CLOCK_BOOTTIME) - ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError, AttributeError):
        return -1.0


client_app = ClientApp()


@client_app.train()
def train(message: Message, context: Context) -> Message:
    """One round on this SuperNode's partition, as fedstep's `keras_fit`: seed, evaluate the
    global model on the local test split, fit (epochs and batch size from the round's config),
    evaluate again. Replies with the trained weights and `num-examples` (training examples)."""
    entered = time.time()
    from client_agent.data import load_local_data

    # the Simulation Engine numbers partitions from 0, the benchmark's SuperNodes from 1 (fedstep's "i/n")
    index = int(context.node_config["partition-id"]) + int(context.run_config["partition-offset"])
    partition = f"{index}/{int(context.node_config['num-partitions'])}"
    (x_train, y_train), (x_test, y_test) = load_local_data(DATASET, partition, seed=SEED)
    config = message.content["config"]
    keras().utils.set_random_seed(SEED)
    model = new_model()
    model.set_weights(message.content["arrays"].to_numpy_ndarrays())
    ready = time.time()
    before = model.evaluate(x_test, y_test, verbose=0, return_dict=True)
    history = model.fit(
        x_train, y_train, epochs=int(config["epochs"]), batch_size=int(config["batch-size"]), shuffle=True, verbose=0
    )
    after = model.evaluate(x_test, y_test, verbose=0, return_dict=True)
    metrics = MetricRecord(
        {
            "num-examples": len(x_train),
            "train_loss": float(history.history["loss"][-1]),
            "test_accuracy_before": float(before["accuracy"]),
            "test_accuracy": float(after["accuracy"]),
            # wall-clock times (epoch seconds) for the benchmark's breakdown of a round
            "t_process_start": process_started(),
            "t_train_entered": entered,
            "t_model_ready": ready,
            "t_train_done": time.time(),
        }
    )
    content = RecordDict({"arrays": ArrayRecord(model.get_weights()), "metrics": metrics})
    return Message(content=content, reply_to=message)


class TimedFedAvg(FedAvg):
    """Flower's FedAvg, recording when each round's train messages go out and when its model is aggregated."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.sent: dict[int, float] = {}
        self.aggregated: dict[int, float] = {}
        self.clients: dict[int, list[dict[str, float]]] = {}

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid) -> Any:
        messages = super().configure_train(server_round, arrays, config, grid)  # samples the nodes first
        self.sent[server_round] = time.time()
        return messages

    def aggregate_train(self, server_round: int, replies: Any) -> Any:
        replies = list(replies)
        self.clients[server_round] = [
            {k: float(v) for k, v in reply.content["metrics"].items() if k.startswith("t_")}
            for reply in replies
            if reply.has_content()
        ]
        result = super().aggregate_train(server_round, replies)
        self.aggregated[server_round] = time.time()
        return result


server_app = ServerApp()


@server_app.main()
def main(grid: Grid, context: Context) -> None:
    """Seed and build the digits model, run `num-server-rounds` of FedAvg over `num-clients` nodes,
    then score every round's global model on the held-out split and write the figures as JSON to
    `result-file`."""
    from client_agent.datasets import load_heldout

    rounds = int(context.run_config["num-server-rounds"])
    clients = int(context.run_config["num-clients"])
    keras().utils.set_random_seed(SEED)  # as `fedstep start` seeds the initial model
    initial = new_model().get_weights()
    strategy = TimedFedAvg(
        fraction_train=1.0,
        fraction_evaluate=0.0,  # the clients evaluate inside their train step, as fedstep's do
        min_train_nodes=clients,
        min_available_nodes=clients,
    )
    models: dict[int, list[Any]] = {}

    def keep(server_round: int, arrays: ArrayRecord) -> None:
        models[server_round] = arrays.to_numpy_ndarrays()  # scored after the clock stops

    strategy.start(
        grid=grid,
        initial_arrays=ArrayRecord(initial),
        num_rounds=rounds,
        train_config=ConfigRecord({"epochs": EPOCHS, "batch-size": BATCH_SIZE}),
        evaluate_fn=keep,
    )
    x, y = load_heldout(DATASET, seed=SEED)
    result = {
        "flower_version": flwr.__version__,
        "sent": strategy.sent,
        "aggregated": strategy.aggregated,
        "clients": strategy.clients,
        "heldout_accuracy": {r: accuracy(models[r], x, y) for r in sorted(models) if r > 0},
        "heldout_examples": len(y),
    }
    target = Path(str(context.run_config["result-file"]))
    partial = target.with_suffix(".partial")
    partial.write_text(json.dumps(result))
    partial.replace(target)  # the driver waits for the file: it appears whole


# --- the driver: start SuperLink, SuperNodes, `flwr run`; collect the figures ------------------

PYPROJECT = """\
[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "fedstep-flower-baseline"
version = "1.0.0"
description = "fedstep issue 14: the digits demo task on Flower"
license = "Apache-2.0"
dependencies = ["flwr=={version}"]

[tool.hatch.build.targets.wheel]
packages = ["."]

[tool.flwr.app]
publisher = "fedstep"

[tool.flwr.app.components]
serverapp = "{module}:server_app"
clientapp = "{module}:client_app"

[tool.flwr.app.config]
num-server-rounds = {rounds}
num-clients = {clients}
partition-offset = 0
result-file = ""
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _flower_bin(name: str) -> str:
    path = Path(sys.executable).parent / name
    if not path.exists():
        raise SystemExit(f"{path} not found: run this script with the Flower venv's python (see the set-up above)")
    return str(path)


def _wait_for_port(port: int, processes: Processes, since: float) -> None:
    """Wait until the SuperLink accepts connections on ``port`` (`flwr run` does not retry)."""
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            processes.check_alive()
            if time.time() - since > RUN_DEADLINE_S:
                raise RuntimeError(f"the SuperLink did not listen on port {port} in {RUN_DEADLINE_S:.0f} s") from None
            time.sleep(0.05)


class Processes:
    """Processes this benchmark starts, each in its own session, so stopping one stops its children
    (flwr-serverapp, flwr-clientapp) too."""

    def __init__(self, logs: Path, env: dict[str, str]) -> None:
        self.logs, self.env, self.started = logs, env, []

    def start(self, name: str, args: list[str]) -> subprocess.Popen:
        log = (self.logs / f"{name}.log").open("wb")
        process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=self.env, start_new_session=True)
        self.started.append(process)
        return process

    def check_alive(self) -> None:
        for process in self.started:
            if process.poll() is not None and process.returncode != 0:
                raise RuntimeError(f"{process.args[0]} exited with {process.returncode}; see {self.logs}")

    def stop(self) -> None:
        # flower-superexec starts flwr-serverapp/flwr-simulation (and Ray's processes) in a session of
        # its own, which ends when it sees its parent gone: note the whole tree now, wait for it below
        tree = [pid for process in self.started for pid in _descendants(process.pid)]
        for process in reversed(self.started):
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        deadline = time.time() + 15
        for process in self.started:
            try:
                process.wait(timeout=max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        deadline = time.time() + 30  # so that the next run starts on an idle machine
        for pid in tree:
            try:
                while time.time() < deadline:
                    os.kill(pid, 0)
                    time.sleep(0.1)
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def wait_for_result(result_file: Path, processes: Processes, launched: float, work: Path) -> dict[str, Any]:
    """The run's result, once its server app has written `result_file` (whole), while every process
    started lives; RuntimeError after RUN_DEADLINE_S from `launched` (epoch seconds)."""
    while not result_file.exists():
        processes.check_alive()
        if time.time() - launched > RUN_DEADLINE_S:
            raise RuntimeError(f"no result after {RUN_DEADLINE_S:.0f} s; see the logs in {work}")
        time.sleep(0.1)
    return json.loads(result_file.read_text())


def _descendants(pid: int) -> list[int]:
    """The processes started, directly or not, by process ``pid`` (Linux /proc; [] elsewhere)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], list(children.get(pid, []))
    while todo:
        child = todo.pop()
        found.append(child)
        todo.extend(children.get(child, []))
    return found


def run_once(
    rounds: int, clients: int, keep_logs: Path | None, engine: str = "deployment", client_cpus: int = CLIENT_CPUS
) -> dict[str, Any]:
    """One federated run on fresh processes (`engine`: "deployment" or "simulation"); returns the
    figures (seconds, epoch wall-clock times)."""
    work = Path(tempfile.mkdtemp(prefix="flower-baseline-"))
    app = work / "app"
    app.mkdir()
    shutil.copy(Path(__file__), app / f"{APP_MODULE}.py")
    (app / "pyproject.toml").write_text(
        PYPROJECT.format(version=flwr.__version__, module=APP_MODULE, rounds=rounds, clients=clients)
    )
    home = work / "flwr-home"
    home.mkdir()
    port = _free_port()
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "bench"\n\n[superlink.bench]\naddress = "127.0.0.1:{port}"\ninsecure = true\n'
    )
    result_file = work / "result.json"
    env = {
        **os.environ,
        "FLWR_HOME": str(home),  # Flower's config, apps and state stay in the temporary directory
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
        "TF_CPP_MIN_LOG_LEVEL": "3",
        # the SuperLink and SuperNodes start flower-superexec, flwr-serverapp, flwr-clientapp from PATH
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
    }
    processes = Processes(work, env)
    superlink = [
        _flower_bin("flower-superlink"),
        "--insecure",
        "--disable-runtime-dependency-installation",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    run_config = f'result-file="{result_file}"'
    federation_config: list[str] = []
    if engine == "simulation":
        # as `flwr run` starts a local SuperLink for a `:local:` connection, on free ports
        superlink += ["--simulation", "--isolation", "subprocess"]
        run_config += " partition-offset=1"
        federation_config = [
            "--federation-config",
            f"num-supernodes={clients} client-resources-num-cpus={client_cpus}",
        ]
    try:
        launched = time.time()
        processes.start("superlink", superlink)
        for index in range(1, clients + 1 if engine == "deployment" else 1):
            processes.start(
                f"supernode-{index}",
                [
                    _flower_bin("flower-supernode"),
                    "--insecure",
                    "--superlink",
                    f"127.0.0.1:{port}",
                    "--port",
                    str(_free_port()),
                    "--node-config",
                    f"partition-id={index} num-partitions={clients}",
                ],
            )
        _wait_for_port(port, processes, launched)
        submitted = time.time()
        subprocess.run(
            [_flower_bin("flwr"), "run", str(app), "bench", "--run-config", run_config, *federation_config],
            env=env,
            check=True,
            cwd=work,
            stdout=(work / "flwr-run.log").open("wb"),
            stderr=subprocess.STDOUT,
            timeout=RUN_DEADLINE_S,
        )
        result = wait_for_result(result_file, processes, launched, work)
    finally:
        processes.stop()
        if keep_logs is not None:
            shutil.copytree(work, keep_logs / work.name, ignore=shutil.ignore_patterns("flwr-home"))
        shutil.rmtree(work, ignore_errors=True)
    return figures_of(result, rounds, engine, launched, submitted)


def figures_of(
    result: dict[str, Any], rounds: int, engine: str, launched: float, submitted: float | None
) -> dict[str, Any]:
    """A run's figures (seconds) from the server's result (JSON as written: string round keys; epoch
    times) and the driver's `launched` (the first process launched) and `submitted` (`flwr run`;
    None with `grpc`, which has no submission) times."""
    sent = {int(k): v for k, v in result["sent"].items()}
    aggregated = {int(k): v for k, v in result["aggregated"].items()}
    final = aggregated[rounds]
    round_times = [aggregated[r] - sent[r] for r in range(1, rounds + 1)]
    return {
        "load_average_1min": os.getloadavg()[0],
        "engine": engine,
        "steady_breakdown_s": breakdown(sent, aggregated, result["clients"], rounds, engine),
        "flower_version": result["flower_version"],
        "start_to_final_s": final - launched,
        "start_to_first_sent_s": sent[1] - launched,
        "submit_to_final_s": None if submitted is None else final - submitted,
        "round_times_s": round_times,
        "steady_round_s": statistics.median(round_times[1:]) if rounds > 1 else round_times[0],
        "heldout_accuracy": [result["heldout_accuracy"][str(r)] for r in range(1, rounds + 1)],
        "heldout_examples": result["heldout_examples"],
    }


def run_grpc_once(rounds: int, clients: int, keep_logs: Path | None) -> dict[str, Any]:
    """One run on Flower's legacy gRPC API (`bench/flower_grpc.py`): a `start_server` process and
    `clients` long-lived `start_client` processes, launched together on fresh processes; returns the
    figures (seconds)."""
    work = Path(tempfile.mkdtemp(prefix="flower-grpc-"))
    result_file = work / "result.json"
    port = _free_port()
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
        "TF_CPP_MIN_LOG_LEVEL": "3",
    }
    script = [sys.executable, str(Path(__file__).with_name("flower_grpc.py"))]
    server = ["server", "--port", str(port), "--rounds", str(rounds), "--clients", str(clients)]
    processes = Processes(work, env)
    try:
        launched = time.time()
        processes.start("server", [*script, *server, "--result-file", str(result_file)])
        for index in range(1, clients + 1):
            processes.start(
                f"client-{index}", [*script, "client", "--port", str(port), "--partition", f"{index}/{clients}"]
            )
        result = wait_for_result(result_file, processes, launched, work)
    finally:
        processes.stop()
        if keep_logs is not None:
            shutil.copytree(work, keep_logs / work.name)
        shutil.rmtree(work, ignore_errors=True)
    return figures_of(result, rounds, "grpc", launched, None)


PHASES = {
    "pull": "sent -> flwr-clientapp process started (SuperNode's pull + spawn)",
    "clientapp_start": "process start -> train() called (Python, Flower, app load)",
    "setup": "train() -> model ready (TensorFlow import, data, model build)",
    "compute": "evaluate + fit + evaluate",
    "reply": "train() done -> aggregated model (reply, server pick-up, FedAvg)",
}
SIMULATION_PHASES = {
    "dispatch": "sent -> train() called (Simulation Engine hands the message to a Ray actor)",
    "setup": "train() -> model ready (data, model build; TensorFlow imported once per actor)",
    "compute": "evaluate + fit + evaluate",
    "reply": "train() done -> aggregated model (reply, server pick-up, FedAvg)",
}
GRPC_PHASES = {
    "dispatch": "sent -> fit() called (serialize, gRPC stream to the long-lived client, deserialize)",
    "setup": "fit() -> model ready (seed, set the global weights on the client's kept model)",
    "compute": "evaluate + fit + evaluate",
    "reply": "fit() done -> aggregated model (reply over gRPC, the server's thread pool, FedAvg)",
}
ENGINE_PHASES = {"deployment": PHASES, "simulation": SIMULATION_PHASES, "grpc": GRPC_PHASES}


def breakdown(
    sent: dict[int, float],
    aggregated: dict[int, float],
    clients: dict[str, list[dict[str, float]]],
    rounds: int,
    engine: str = "deployment",
) -> dict[str, float]:
    """Each phase of a round (the engine's ENGINE_PHASES), mean over the clients, median over
    rounds 2..rounds (seconds). `clients`: round (a string, as JSON has it) -> each client's `t_*`
    timestamps (epoch seconds)."""
    per_round: dict[str, list[float]] = {phase: [] for phase in ENGINE_PHASES[engine]}
    for r in range(2, rounds + 1):
        replies = clients[str(r)]
        if engine == "deployment":
            starts = {
                "pull": [c["t_process_start"] - sent[r] for c in replies],
                "clientapp_start": [c["t_train_entered"] - c["t_process_start"] for c in replies],
            }
        else:
            starts = {"dispatch": [c["t_train_entered"] - sent[r] for c in replies]}
        phases = {
            **starts,
            "setup": [c["t_model_ready"] - c["t_train_entered"] for c in replies],
            "compute": [c["t_train_done"] - c["t_model_ready"] for c in replies],
            "reply": [aggregated[r] - c["t_train_done"] for c in replies],
        }
        for phase, values in phases.items():
            per_round[phase].append(statistics.fmean(values))
    return {phase: statistics.median(values) for phase, values in per_round.items()}


def _fmt(values: list[float], digits: int = 2) -> str:
    return ", ".join(f"{v:.{digits}f}" for v in values)


FEDSTEP_PYTHON = ROOT / ".venv" / "bin" / "python"
"""fedstep's own interpreter, which runs `fedstep local` beside Flower (`--fedstep-python`)."""


def run_fedstep(rounds: int, python: Path) -> dict[str, Any]:
    """One `fedstep local --dataset digits --clients 3 --rounds <rounds>` run with fedstep's own
    `python`, timed and parsed by `bench/round_overhead.py`; its figures (seconds from launch)."""
    import round_overhead  # bench/ is this script's sys.path[0]; not needed by the Flower app's processes

    with tempfile.TemporaryDirectory(prefix="fedstep-local-") as tmp:
        out = Path(tmp) / "run"
        run = round_overhead.run_fedstep_local(rounds, out, python=str(python))
        figures = round_overhead.summarize(run["stamps"], out)
    steady_phase = figures["steady_phase"]
    return {
        "start_to_last_round_s": figures["last_round"],
        "start_to_final_line_s": figures["final"],
        "round_times_s": [figures["rounds"][r] for r in sorted(figures["rounds"])],
        "steady_round_s": figures["steady"],
        "steady_agent_s": steady_phase,
        "steady_orchestration_s": figures["steady"] - sum(steady_phase.values()),
        "heldout_accuracy": figures["heldout_accuracy"],
        "load_average_1min": os.getloadavg()[0],
    }


def ratios(fedstep: dict[str, Any], flower: dict[str, Any]) -> dict[str, float]:
    """fedstep's figures over Flower's (issue 24's goals: `steady_round` <= 1.0, `start_to_final_model`
    <= 1.25). The start compares like with like: fedstep's launch to round N's model (its round line)
    against Flower's launch to round N's aggregated model."""
    return {
        "steady_round": fedstep["steady_round_s"] / flower["steady_round_s"],
        "start_to_final_model": fedstep["start_to_last_round_s"] / flower["start_to_final_s"],
    }


def _print_flower_run(number: int, figures: dict[str, Any], rounds: int) -> None:
    submit = figures["submit_to_final_s"]
    print(
        f"run {number} Flower: start-to-final-model {figures['start_to_final_s']:.2f} s (round 1 sent at "
        f"{figures['start_to_first_sent_s']:.2f} s), "
        + ("" if submit is None else f"submit-to-final-model {submit:.2f} s, ")
        + f"rounds [{_fmt(figures['round_times_s'])}] s, steady-state round (median of 2-{rounds}) "
        f"{figures['steady_round_s']:.2f} s, held-out accuracy per round [{_fmt(figures['heldout_accuracy'], 4)}] "
        f"-> final {figures['heldout_accuracy'][-1]:.4f} ({figures['heldout_examples']} examples)",
        flush=True,
    )
    parts = ", ".join(f"{phase} {seconds:.2f}" for phase, seconds in figures["steady_breakdown_s"].items())
    print(
        f"  steady-state round by phase (s; mean of clients, median of rounds 2-{rounds}): {parts}; "
        f"load average at the end {figures['load_average_1min']:.1f}",
        flush=True,
    )


def _print_fedstep_run(number: int, figures: dict[str, Any], rounds: int) -> None:
    agent = figures["steady_agent_s"]
    print(
        f"run {number} fedstep: start to round {rounds}'s model {figures['start_to_last_round_s']:.2f} s "
        f"(the comparable figure), start to the final model's line {figures['start_to_final_line_s']:.2f} s "
        f"(after the run-ended message and the model card), rounds [{_fmt(figures['round_times_s'])}] s, "
        f"steady-state round (median of 2-{rounds}) {figures['steady_round_s']:.2f} s, held-out accuracy per "
        f"round [{_fmt(figures['heldout_accuracy'], 4)}]",
        flush=True,
    )
    print(
        f"  steady-state round: agent (mean per client) download {agent['download']:.2f}, train "
        f"{agent['train']:.2f}, upload {agent['upload']:.2f} s; orchestration "
        f"{figures['steady_orchestration_s']:.2f} s; load average at the end {figures['load_average_1min']:.1f}",
        flush=True,
    )


def _print_ratios(label: str, values: dict[str, float]) -> None:
    print(
        f"{label} fedstep/Flower: steady-state round {values['steady_round']:.2f}x (goal <= 1.00x), "
        f"start to final model {values['start_to_final_model']:.2f}x (goal <= 1.25x; fedstep's launch to "
        "round N's model against Flower's launch to round N's aggregated model)",
        flush=True,
    )


def main_cli(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=1, help="independent runs, fresh processes each (default 1)")
    parser.add_argument("--rounds", type=int, default=ROUNDS, help=f"federated rounds (default {ROUNDS})")
    parser.add_argument("--json", type=Path, help="also write every run's figures to this JSON file")
    parser.add_argument("--keep-logs", type=Path, help="copy each run's process logs into this directory")
    parser.add_argument(
        "--engine",
        choices=ENGINES,
        default="deployment",
        help="Flower's Deployment Engine (SuperLink + SuperNodes, default), its Simulation Engine (Ray) "
        "or its legacy gRPC API (start_server + start_client)",
    )
    parser.add_argument(
        "--client-cpus",
        type=int,
        default=CLIENT_CPUS,
        help=f"with --engine simulation: CPUs per client, client-resources-num-cpus (default {CLIENT_CPUS})",
    )
    parser.add_argument(
        "--no-fedstep",
        dest="fedstep",
        action="store_false",
        help="run Flower only (default: `fedstep local` on the same task before each Flower run, alternating)",
    )
    parser.add_argument(
        "--fedstep-python",
        type=Path,
        default=FEDSTEP_PYTHON,
        help=f"fedstep's interpreter for `fedstep local` (default {FEDSTEP_PYTHON.relative_to(ROOT)})",
    )
    args = parser.parse_args(argv)
    if args.repeat < 1 or args.rounds < 2 or args.client_cpus < 1:
        parser.error("--repeat and --client-cpus must be >= 1 and --rounds >= 2")
    if args.fedstep and not args.fedstep_python.exists():
        parser.error(f"{args.fedstep_python} not found: fedstep's venv (`make`), or --no-fedstep")
    if args.keep_logs:
        args.keep_logs.mkdir(parents=True, exist_ok=True)
    if args.engine == "deployment":
        print(f"Flower {flwr.__version__}, Deployment Engine: flower-superlink + {CLIENTS} flower-supernode processes")
        print("+ flwr run, on 127.0.0.1 (insecure, subprocess isolation, no Ray, no simulation engine)")
    elif args.engine == "simulation":
        import ray  # only the simulation needs it (flwr[simulation])

        print(f"Flower {flwr.__version__}, Simulation Engine (Ray {ray.__version__}): flower-superlink --simulation")
        print(f"+ flwr run, {CLIENTS} virtual SuperNodes, client-resources-num-cpus={args.client_cpus}, on 127.0.0.1")
    else:
        print(f"Flower {flwr.__version__}, legacy gRPC API: a start_server process (FedAvg) + {CLIENTS} long-lived")
        print("start_client processes (NumPyClient, model kept across rounds), on 127.0.0.1 (insecure)")
    print(f"task: {DATASET}, {CLIENTS} clients (IID thirds, fedstep's split), digits_mlp, {EPOCHS} epoch,")
    print(f"batch {BATCH_SIZE}, {args.rounds} rounds of FedAvg; Python {sys.version.split()[0]}, {os.cpu_count()} CPUs")
    if args.fedstep:
        print(f"alternating with `fedstep local --dataset digits --clients {CLIENTS} --rounds {args.rounds}` under")
        print(f"{args.fedstep_python} (fedstep first in each repetition)")
    runs = []
    for number in range(1, args.repeat + 1):
        fedstep = run_fedstep(args.rounds, args.fedstep_python) if args.fedstep else None
        if fedstep is not None:
            _print_fedstep_run(number, fedstep, args.rounds)
        if args.engine == "grpc":
            figures = run_grpc_once(args.rounds, CLIENTS, args.keep_logs)
        else:
            figures = run_once(args.rounds, CLIENTS, args.keep_logs, args.engine, args.client_cpus)
        _print_flower_run(number, figures, args.rounds)
        if fedstep is not None:
            figures["fedstep"] = fedstep
            _print_ratios(f"run {number}", ratios(fedstep, figures))
        runs.append(figures)
    print("phases: " + "; ".join(f"{phase} = {text}" for phase, text in ENGINE_PHASES[args.engine].items()))
    if args.repeat > 1:
        for key, label in (
            ("start_to_final_s", "start-to-final-model"),
            ("submit_to_final_s", "submit-to-final-model"),
            ("steady_round_s", "steady-state round"),
        ):
            values = [run[key] for run in runs if run[key] is not None]
            if values:
                print(
                    f"Flower {label}: min {min(values):.2f} s, median {statistics.median(values):.2f} s "
                    f"over {len(values)} runs"
                )
        if args.fedstep:
            for key, label in (
                ("start_to_last_round_s", f"start to round {args.rounds}'s model"),
                ("start_to_final_line_s", "start to the final model's line"),
                ("steady_round_s", "steady-state round"),
            ):
                values = [run["fedstep"][key] for run in runs]
                print(
                    f"fedstep {label}: min {min(values):.2f} s, median {statistics.median(values):.2f} s "
                    f"over {len(values)} runs"
                )
    if args.fedstep and len(runs) > 1:
        median = {
            "steady_round_s": statistics.median(run["steady_round_s"] for run in runs),
            "start_to_final_s": statistics.median(run["start_to_final_s"] for run in runs),
        }
        median_fedstep = {
            key: statistics.median(run["fedstep"][key] for run in runs)
            for key in ("steady_round_s", "start_to_last_round_s")
        }
        _print_ratios(f"ratio of the medians of {len(runs)} runs,", ratios(median_fedstep, median))
        paired = [ratios(run["fedstep"], run) for run in runs]  # each pair ran under about the same load
        _print_ratios(
            f"median of the {len(runs)} paired runs' ratios,",
            {key: statistics.median(pair[key] for pair in paired) for key in paired[0]},
        )
    if args.json:
        args.json.write_text(json.dumps(runs, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main_cli())
