"""fedstep's in-process simulation engine against Flower's Simulation Engine (fedstep issue 24, point 4).

Two tasks, the same on both sides, each run once per side in one run of this script:

- A: mnist (`client_agent.datasets`: 5,000 MNIST images, 20 % held out), 100 clients, the pool
  divided by Dirichlet label skew alpha 0.5 (`client_agent.partitions`, seed 0), 10 clients a
  round, 20 rounds, `mnist_mlp` (`client_agent.models.DEFAULT_FOR_DATASET`);
- B: digits (1,797 images, 1,437 in the pool), 1,000 clients, IID, 20 a round, 20 rounds,
  `digits_mlp`. Each client holds 1 or 2 examples (563 of them 1): a client of 2 splits them into 1
  to train on and 1 for its local test split; a client of 1 trains on it and has no local test
  split, so it reports train metrics only (`client_agent.datasets`, rule 3; the round's test
  metrics are the mean over the participants that have one). Both sides train the same splits.
  Should fedstep refuse or fail a task, the script prints fedstep's own message and runs no Flower
  side for it; it never changes the task.

Both sides: `fedstep local`'s run defaults (`fedstep.local.demo.LOCAL_SETTINGS`: 1 local epoch,
batch 32, the model's own learning rate), seed 0 (data, partition, initial weights), FedAvg
weighted by the clients' training examples, `clients per round` of N each round, every round's
global model scored on fedstep's held-out set (`client_agent.datasets.load_heldout`). Flower's
FedAvg samples k of its N virtual nodes (`fraction_train` = k/N, `min_train_nodes` = k); by default
(`--flower-sampling fedstep`) the k sampled nodes then train the data of the k clients fedstep's
seeded selection picks for the round (`fedstep.core.selection`), so both sides do the same work
every round and their held-out accuracies must agree round by round (any difference is the
engines'). With `--flower-sampling flower` each node trains its own partition (`partition-id`):
the two sides then train different clients each round, and on A (non-IID, 10 of 100) the final
accuracies differ by several points either way from the sampling alone.

- fedstep: `fedstep.simulate(engine="memory", ...)` (`--fedstep-engine cloud` for the embedded
  local cloud, at most 50 clients) in a subprocess under fedstep's `.venv/bin/python` (this
  file, `_fedstep` mode), `workers` = the number of Ray actors Flower gets (CPUs // `--client-cpus`,
  `--workers` to change it).
- Flower 1.42: this script runs under `.venv-flower/bin/python` (Flower and Ray; no boto3, moto
  or mlxtend there). First a subprocess under fedstep's venv (`_export` mode) writes every
  client's local split exactly as a fedstep agent loads it (`client_agent.data.load_local_data`),
  the held-out set and the initial model as `fedstep local` builds it, into a folder (not timed:
  Flower users partition their data beforehand too). Then, as `bench/flower_baseline.py --engine
  simulation` runs it (its process helpers, imported): `flower-superlink --simulation --isolation
  subprocess` on a free port and `flwr run` of a generated app (`bench/simulation_app.py`) with
  `num-supernodes=N client-resources-num-cpus=1`: Ray actors, one CPU each. Its ClientApp trains
  with fedstep's own `client_agent.training.keras_fit` (seed, evaluate, fit, evaluate; the Keras
  model kept warm per actor as a fedstep agent keeps it), so the two sides train identically.

Timed (wall clock, seconds): start to final model = from launching a side's first process
(fedstep: the Python subprocess; Flower: `flower-superlink`) to the moment the framework's run
call returns with the last round's model aggregated and scored on the held-out set
(`fedstep.simulate` returning; Flower's `strategy.start` returning in the ServerApp). Process exit
and teardown are not timed. A round: fedstep's `duration_s`; Flower's from sending its train
messages to the aggregated model.

Goal (issue 24): fedstep's start to final model at most 0.5x Flower's, held-out accuracy at most
1 point below Flower's (being above is no loss).

    .venv-flower/bin/python bench/simulation.py                       # A and B (several minutes)
    .venv-flower/bin/python bench/simulation.py --tasks A --rounds 2 --clients 10   # a smoke run
    .venv-flower/bin/python bench/simulation.py --write-docs          # also the table in docs/benchmarks.md

`--rounds`, `--clients` and `--clients-per-round` change the tasks (printed as changed, and then
`--write-docs` writes nothing). `--fedstep-root PATH` takes fedstep's code (the fedstep side, the
export, the Flower app's trainer) from another checkout, e.g. a branch's worktree before it is
merged. Set-up of `.venv-flower`: see `bench/flower_baseline.py`.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if __name__ == "__main__" and str(ROOT) not in sys.path:  # not in the memory engine's spawned workers
    sys.path.insert(0, str(ROOT))  # bench.flower_baseline, client_agent, fedstep

FEDSTEP_PYTHON = ROOT / ".venv" / "bin" / "python"
SEED = 0
GOAL_RATIO = 0.5
"""fedstep's start to final model over Flower's, at most."""
GOAL_POINTS = 1.0
"""fedstep's final held-out accuracy at most this many points below Flower's."""
RUN_DEADLINE_S = 3600.0
"""Longest one side of one task may take (seconds)."""
APP_MODULE = "fedstep_simulation_app"
MARK = "<!-- bench/simulation.py {} -->"
DOCS = ROOT / "docs" / "benchmarks.md"


@dataclass(frozen=True)
class Task:
    """One task, run the same on both sides."""

    name: str
    dataset: str
    clients: int
    partition: str
    per_round: int
    rounds: int

    def describe(self) -> str:
        return (
            f"{self.dataset}, {self.clients} clients ({self.partition}), {self.per_round} a round, {self.rounds} rounds"
        )


TASKS = {
    "A": Task("A", "mnist", clients=100, partition="dirichlet:0.5", per_round=10, rounds=20),
    "B": Task("B", "digits", clients=1000, partition="iid", per_round=20, rounds=20),
}


@dataclass
class Side:
    """One side's figures for a task; `error` says why there are none."""

    engine: str
    start_to_final_s: float | None = None
    heldout_accuracy: list[float] = field(default_factory=list)
    round_s: list[float] = field(default_factory=list)
    participants: list[int] = field(default_factory=list)
    load_average: tuple[float, float] | None = None
    """The 1-minute load average when the side started and when it ended; None: the side did not run."""
    notes: dict[str, float] = field(default_factory=dict)
    error: str = ""
    runs_s: list[float] = field(default_factory=list)
    """With --repeat: the start to final model of every run of this side, in run order."""

    @property
    def final(self) -> float | None:
        return self.heldout_accuracy[-1] if self.heldout_accuracy else None


# --- pure functions: the verdict and the docs table ------------------------------------------


def ratio(fedstep: Side, flower: Side) -> float | None:
    """fedstep's start to final model over Flower's; None unless both ran."""
    if fedstep.start_to_final_s is None or not flower.start_to_final_s:
        return None
    return fedstep.start_to_final_s / flower.start_to_final_s


def median_run(runs: list[Side]) -> Side:
    """Of a side's runs, the one with the median start to final model (the lower of the two middle
    ones), with every run's time in `runs_s`; the first failed run when none has a time."""
    timed = sorted(
        (r for r in runs if r.start_to_final_s is not None and not r.error), key=lambda r: r.start_to_final_s
    )
    if not timed:
        return runs[0]
    return replace(timed[(len(timed) - 1) // 2], runs_s=[r.start_to_final_s for r in runs if r in timed])


def verdict(task: Task, fedstep: Side, flower: Side) -> str:
    """One line: PASS or FAIL against the goal (GOAL_RATIO, GOAL_POINTS), or why there is no verdict."""
    if fedstep.error:
        return f"{task.name}: no verdict - fedstep refused or failed: {fedstep.error}"
    if flower.error:
        return f"{task.name}: no verdict - Flower failed: {flower.error}"
    times = ratio(fedstep, flower)
    if times is None or fedstep.final is None or flower.final is None:
        return f"{task.name}: no verdict - a side has no figures"
    points = 100 * (fedstep.final - flower.final)
    time_met, accuracy_met = times <= GOAL_RATIO, points >= -GOAL_POINTS
    misses = ([] if time_met else [f"{times:.2f}x > {GOAL_RATIO:g}x"]) + (
        [] if accuracy_met else [f"{-points:.1f} points below Flower"]
    )
    status = "PASS" if time_met and accuracy_met else "FAIL (" + "; ".join(misses) + ")"
    return (
        f"{task.name}: {status} - start to final model {times:.2f}x Flower's (goal <= {GOAL_RATIO:g}x), "
        f"held-out accuracy {points:+.1f} points (goal at least -{GOAL_POINTS:g})"
    )


def _seconds(side: Side) -> str:
    return "-" if side.start_to_final_s is None else f"{side.start_to_final_s:.1f} s"


def _accuracy(side: Side) -> str:
    return "-" if side.final is None else f"{side.final:.4f}"


def _round(side: Side) -> str:
    if not side.round_s:
        return "-"
    later = sorted(side.round_s[1:] or side.round_s)
    return f"{side.round_s[0]:.2f} / {later[len(later) // 2]:.2f} s"


def table(results: list[tuple[Task, Side, Side]]) -> str:
    """The markdown table of every task's figures, both sides."""
    lines = [
        "| task | fedstep start to final model | Flower start to final model | ratio | fedstep held-out accuracy "
        "| Flower held-out accuracy | round 1 / median later round, fedstep | the same, Flower |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for task, fedstep, flower in results:
        times = ratio(fedstep, flower)
        first = f"{task.name}: {task.describe()}"
        if fedstep.error:
            lines.append(f"| {first} | refused: {fedstep.error} | not run | - | - | - | - | - |")
            continue
        lines.append(
            f"| {first} | {_seconds(fedstep)} | {_seconds(flower) if not flower.error else 'failed'} "
            f"| {'-' if times is None else f'**{times:.2f}x**'} | {_accuracy(fedstep)} | {_accuracy(flower)} "
            f"| {_round(fedstep)} | {_round(flower)} |"
        )
    return "\n".join(lines)


def runs_text(results: list[tuple[Task, Side, Side]], repeat: int) -> str:
    """How many runs the figures are, and with --repeat every run's start to final model."""
    if repeat == 1:
        return "one run of each side"
    times = "; ".join(
        f"{task.name}: "
        + ", ".join(
            f"{side.engine.split()[0]} " + " / ".join(f"{v:.1f}" for v in side.runs_s) + " s"
            for side in (fedstep, flower)
            if side.runs_s
        )
        for task, fedstep, flower in results
        if fedstep.runs_s
    )
    which = "the faster" if repeat == 2 else "the median"  # median_run: the lower middle one
    return f"{which} of {repeat} alternating runs of each side" + (f" ({times})" if times else "")


def replace_marked(document: str, text: str) -> str | None:
    """`document` with the text between this benchmark's markers replaced by `text`; None without markers."""
    start, end = MARK.format("start"), MARK.format("end")
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.S)
    if not pattern.search(document):
        return None
    return pattern.sub(lambda _: f"{start}\n{text}\n{end}", document, count=1)


def write_docs(text: str) -> None:
    """Replace the text between the benchmark's markers in docs/benchmarks.md."""
    new = replace_marked(DOCS.read_text(), text)
    if new is None:
        print(f"note: {DOCS.name} has no {MARK.format('start')} ... {MARK.format('end')} markers; not written")
        return
    DOCS.write_text(new)
    print(f"wrote the table into {DOCS.relative_to(ROOT)}")


# --- fedstep's venv: the export for Flower, and the fedstep side ------------------------------


def export(task: Task, directory: Path) -> None:
    """Every client's local split, the held-out set and the initial model, as fedstep makes them,
    into `directory` (what `bench/simulation_app.py` reads); raises what fedstep raises."""
    import inspect

    import numpy as np

    from client_agent import datasets
    from client_agent.data import load_local_data
    from client_agent.models import DEFAULT_FOR_DATASET
    from client_agent.training import FunctionTrainer
    from fedstep.local.demo import LOCAL_SETTINGS
    from fedstep.operator.model import build_model, keras_payload

    arrays: dict[str, Any] = {}
    for i in range(1, task.clients + 1):
        (x_train, y_train), (x_test, y_test) = load_local_data(
            task.dataset, f"{i}/{task.clients}", task.partition, SEED
        )
        arrays.update({f"c{i}/x_train": x_train, f"c{i}/y_train": y_train})
        arrays.update({f"c{i}/x_test": x_test, f"c{i}/y_test": y_test})
    arrays["heldout/x"], arrays["heldout/y"] = datasets.load_heldout(task.dataset, SEED)
    np.savez(directory / "data.npz", **arrays)
    model_ref = DEFAULT_FOR_DATASET[task.dataset]
    architecture, initial = keras_payload(build_model(model_ref, SEED))  # as `fedstep local` builds it
    (directory / "model.keras").write_bytes(architecture)
    np.savez(directory / "initial.npz", **initial)
    meta = {
        "model": model_ref,
        "tensor_names": sorted(initial),  # the run's tensor order (`RoundModel`)
        "epochs": LOCAL_SETTINGS.epochs,
        "batch_size": LOCAL_SETTINGS.batch_size,
        "learning_rate": LOCAL_SETTINGS.learning_rate,
        # the seed an agent trains with: FunctionTrainer's, which the agent leaves at its default
        "agent_seed": inspect.signature(FunctionTrainer).parameters["seed"].default,
        "train_examples": [len(arrays[f"c{i}/y_train"]) for i in range(1, task.clients + 1)],
    }
    (directory / "meta.json").write_text(json.dumps(meta))


def fedstep_side(spec: dict[str, Any]) -> dict[str, Any]:
    """Run the task with `fedstep.simulate` (fedstep's venv); the figures, or {"error": ...}."""
    import inspect

    import fedstep
    from fedstep.core.errors import FedstepError

    task = Task(**spec["task"])
    kwargs: dict[str, Any] = {
        "dataset": task.dataset,
        "clients": task.clients,
        "partition": task.partition,
        "rounds": task.rounds,
        "clients_per_round": str(task.per_round),
        "seed": SEED,
        "out": spec["out"],
        "verbose": spec["verbose"],
    }
    if spec["engine"] != "cloud":
        if "engine" not in inspect.signature(fedstep.simulate).parameters:
            return {"error": "this fedstep.simulate has no engine= (the memory engine): use --fedstep-engine cloud"}
        kwargs["engine"] = spec["engine"]
        if spec.get("workers"):
            kwargs["workers"] = spec["workers"]
    try:
        history = fedstep.simulate(**kwargs)
    except FedstepError as exc:
        return {"error": str(exc)}
    finished = time.time()
    return {
        "finished": finished,
        "heldout_accuracy": [float(v) for v in history["heldout_accuracy"]],
        "round_s": [float(v) for v in history["duration_s"]],
        "participants": [int(v) for v in history["participants"]],
    }


def _in_fedstep_venv(
    mode: str, spec: dict[str, Any], out: Path, log: Path, root: Path = ROOT
) -> tuple[float, dict[str, Any]]:
    """Run this file in `mode` under fedstep's python, with the fedstep checkout `root` first on its
    path; (launch time, what it wrote to `out`)."""
    if not FEDSTEP_PYTHON.exists():
        raise SystemExit(f"{FEDSTEP_PYTHON} not found: fedstep's venv (make install)")
    env = {**os.environ, "PYTHONPATH": str(root), "TF_CPP_MIN_LOG_LEVEL": "3"}
    env.pop("VIRTUAL_ENV", None)
    spec = {**spec, "root": str(root)}
    command = [str(FEDSTEP_PYTHON), str(Path(__file__).resolve()), mode, json.dumps(spec), str(out)]
    launched = time.time()
    with log.open("wb") as output:
        done = subprocess.run(
            command, env=env, cwd=root, stdout=output, stderr=subprocess.STDOUT, timeout=RUN_DEADLINE_S
        )
    if done.returncode != 0 or not out.exists():
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
        raise RuntimeError(f"{mode} exited with {done.returncode}; {log} ends with:\n{tail}")
    return launched, json.loads(out.read_text())


def run_fedstep(task: Task, engine: str, workers: int, work: Path, verbose: bool, root: Path = ROOT) -> Side:
    start_load = os.getloadavg()[0]
    spec = {"task": asdict(task), "engine": engine, "workers": workers, "out": str(work / "run"), "verbose": verbose}
    side = Side(engine=f"fedstep {engine}")
    try:
        launched, result = _in_fedstep_venv("_fedstep", spec, work / "fedstep.json", work / "fedstep.log", root)
    except (RuntimeError, subprocess.SubprocessError) as exc:
        result = {"error": f"{type(exc).__name__}: {exc}"}
    side.load_average = (start_load, os.getloadavg()[0])
    if "error" in result:
        side.error = result["error"]
        return side
    side.start_to_final_s = result["finished"] - launched
    side.heldout_accuracy, side.round_s = result["heldout_accuracy"], result["round_s"]
    side.participants = result["participants"]
    return side


# --- Flower's venv: the Simulation Engine -----------------------------------------------------


def run_flower(
    task: Task, data: Path, client_cpus: int, work: Path, sampling: str = "fedstep", root: Path = ROOT
) -> Side:
    """The task on Flower's Simulation Engine, as `bench/flower_baseline.py --engine simulation` runs it;
    `sampling`: "flower" (FedAvg's own) or "fedstep" (the sampled nodes play fedstep's selected clients).
    The app imports fedstep's trainer from the checkout `root`, as the fedstep side does."""
    import flwr

    from bench import flower_baseline as baseline

    start_load = os.getloadavg()[0]
    app = work / "app"
    app.mkdir()
    shutil.copy(Path(__file__).with_name("simulation_app.py"), app / f"{APP_MODULE}.py")
    pyproject = baseline.PYPROJECT.format(
        version=flwr.__version__, module=APP_MODULE, rounds=task.rounds, clients=task.clients
    )
    extra = f'clients-per-round = {task.per_round}\ndata-dir = ""\nsampling = "{sampling}"\n'
    (app / "pyproject.toml").write_text(pyproject + extra)
    home = work / "flwr-home"
    home.mkdir()
    port = baseline._free_port()
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "bench"\n\n[superlink.bench]\naddress = "127.0.0.1:{port}"\ninsecure = true\n'
    )
    result_file = work / "flower.json"
    env = {
        **os.environ,
        "FLWR_HOME": str(home),
        "PYTHONPATH": os.pathsep.join([str(root), str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
        "TF_CPP_MIN_LOG_LEVEL": "3",
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
    }
    processes = baseline.Processes(work, env)
    superlink = [baseline._flower_bin("flower-superlink"), "--insecure", "--disable-runtime-dependency-installation"]
    superlink += ["--host", "127.0.0.1", "--port", str(port), "--simulation", "--isolation", "subprocess"]
    run_config = f'result-file="{result_file}" data-dir="{data}"'
    federation = f"num-supernodes={task.clients} client-resources-num-cpus={client_cpus}"
    try:
        launched = time.time()
        processes.start("superlink", superlink)
        baseline._wait_for_port(port, processes, launched)
        submit = [baseline._flower_bin("flwr"), "run", str(app), "bench", "--run-config", run_config]
        with (work / "flwr-run.log").open("wb") as log:
            subprocess.run(
                [*submit, "--federation-config", federation],
                env=env,
                check=True,
                cwd=work,
                stdout=log,
                stderr=subprocess.STDOUT,
                timeout=RUN_DEADLINE_S,
            )
        result = baseline.wait_for_result(result_file, processes, launched, work)
    finally:
        processes.stop()
    rounds = range(1, task.rounds + 1)
    sent, aggregated = result["sent"], result["aggregated"]
    return Side(
        engine=f"Flower {flwr.__version__} Simulation Engine",
        start_to_final_s=result["finished"] - launched,
        heldout_accuracy=[result["heldout_accuracy"][str(r)] for r in rounds],
        round_s=[aggregated[str(r)] - sent[str(r)] for r in rounds],
        participants=[result["participants"][str(r)] for r in rounds],
        load_average=(start_load, os.getloadavg()[0]),
        notes={
            "to_server_app_s": result["server_entered"] - launched,
            "to_last_aggregated_s": aggregated[str(task.rounds)] - launched,
        },
    )


# --- the driver --------------------------------------------------------------------------------


def _print_side(side: Side) -> None:
    if side.error:
        print(f"  {side.engine}: {side.error}", flush=True)
        return
    notes = "".join(f", {k.removesuffix('_s').replace('_', ' ')} {v:.1f} s" for k, v in side.notes.items())
    rounds = ", ".join(f"{s:.2f}" for s in side.round_s)
    accuracy = ", ".join(f"{a:.4f}" for a in side.heldout_accuracy)
    print(
        f"  {side.engine}: start to final model {side.start_to_final_s:.1f} s{notes}; rounds [{rounds}] s; "
        f"participants {side.participants}; held-out accuracy [{accuracy}]; "
        f"load average {side.load_average[0]:.1f} -> {side.load_average[1]:.1f}"
        if side.load_average
        else "",
        flush=True,
    )


def run_task(task: Task, args: argparse.Namespace, keep: Path | None) -> tuple[Task, Side, Side]:
    """`args.repeat` runs of each side, alternating (fedstep, Flower, fedstep, ...); each side's median run."""
    print(f"task {task.name}: {task.describe()}", flush=True)
    work = Path(tempfile.mkdtemp(prefix=f"simbench-{task.name}-"))
    not_run = Side(engine="Flower Simulation Engine", error="not run: fedstep gave no result (above)")
    fedsteps: list[Side] = []
    flowers: list[Side] = []
    data = work / "data"
    try:
        for number in range(1, args.repeat + 1):
            run = work / f"run-{number}"
            (run / "fedstep").mkdir(parents=True)
            fedstep = run_fedstep(
                task, args.fedstep_engine, args.workers, run / "fedstep", args.verbose, args.fedstep_root
            )
            fedsteps.append(fedstep)
            _print_side(fedstep)
            if fedstep.error:
                break
            if not data.exists():
                data.mkdir()
                _in_fedstep_venv(
                    "_export", {"task": asdict(task)}, data / "done.json", work / "export.log", args.fedstep_root
                )
            (run / "flower").mkdir()
            try:
                flower = run_flower(
                    task, data, args.client_cpus, run / "flower", args.flower_sampling, args.fedstep_root
                )
            except (RuntimeError, subprocess.SubprocessError, KeyError) as exc:
                flower = replace(not_run, error=f"{type(exc).__name__}: {exc}")
            flowers.append(flower)
            _print_side(flower)
    finally:
        if keep is not None:
            shutil.copytree(work, keep / work.name, ignore=shutil.ignore_patterns("flwr-home", "data.npz"))
        shutil.rmtree(work, ignore_errors=True)
    return task, median_run(fedsteps), median_run(flowers) if flowers else not_run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default=",".join(TASKS), help="comma-separated tasks (default %(default)s)")
    parser.add_argument(
        "--repeat", type=int, default=1, help="runs of each side per task, alternating; the medians (default 1)"
    )
    parser.add_argument("--rounds", type=int, help="change every task's rounds (development)")
    parser.add_argument("--clients", type=int, help="change every task's clients (development)")
    parser.add_argument("--clients-per-round", type=int, help="change every task's clients per round (development)")
    parser.add_argument("--fedstep-engine", default="memory", help="fedstep.simulate's engine (default %(default)s)")
    parser.add_argument("--client-cpus", type=int, default=1, help="Flower's client-resources-num-cpus (default 1)")
    parser.add_argument(
        "--workers", type=int, help="fedstep's workers (default: Flower's Ray actors, CPUs // --client-cpus)"
    )
    parser.add_argument(
        "--flower-sampling",
        choices=("flower", "fedstep"),
        default="fedstep",
        help="which clients Flower's sampled nodes train: fedstep's selection (default, the same work on both "
        "sides) or each node its own partition (Flower's own sampling)",
    )
    parser.add_argument(
        "--fedstep-root",
        type=Path,
        default=ROOT,
        help="the fedstep checkout the fedstep side and the export run (default this one; e.g. a branch's worktree)",
    )
    parser.add_argument("--verbose", action="store_true", help="let fedstep.simulate print its lines (to its log)")
    parser.add_argument("--keep-logs", type=Path, help="copy each task's logs and figures into this folder")
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    parser.add_argument("--write-docs", action="store_true", help="write the table into docs/benchmarks.md")
    args = parser.parse_args(argv)
    names = [n.strip().upper() for n in args.tasks.split(",") if n.strip()]
    unknown = sorted(set(names) - set(TASKS))
    if unknown or not names:
        parser.error(f"unknown task(s) {unknown}; known: {', '.join(TASKS)}")
    if min(args.client_cpus, args.repeat) < 1 or any(
        v is not None and v < 1 for v in (args.rounds, args.clients, args.workers)
    ):
        parser.error("--repeat, --client-cpus, --rounds, --clients and --workers must be at least 1")
    args.workers = args.workers or max(1, (os.cpu_count() or 1) // args.client_cpus)
    changes = {
        k: v
        for k, v in (("rounds", args.rounds), ("clients", args.clients), ("per_round", args.clients_per_round))
        if v is not None
    }
    tasks = [replace(TASKS[n], **changes) for n in names]
    if changes:
        print(f"note: the tasks are changed ({', '.join(f'{k} {v}' for k, v in changes.items())}): not the issue's")
    if args.keep_logs:
        args.keep_logs.mkdir(parents=True, exist_ok=True)
    print(
        f"fedstep engine {args.fedstep_engine} ({args.workers} workers) against Flower's Simulation Engine "
        f"(client-resources-num-cpus={args.client_cpus}, clients by {args.flower_sampling}'s sampling); "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}"
    )
    started = time.time()
    results = [run_task(task, args, args.keep_logs) for task in tasks]
    text = table(results)
    lines = [verdict(task, fedstep, flower) for task, fedstep, flower in results]
    print()
    print(text)
    print()
    for line in lines:
        print("verdict:", line)
    print(f"total {time.time() - started:.0f} s")
    if args.json:
        args.json.write_text(
            json.dumps(
                [{"task": asdict(t), "fedstep": asdict(f), "flower": asdict(w)} for t, f, w in results], indent=2
            )
        )
    if args.write_docs:
        if changes:
            print("note: --write-docs writes only the issue's tasks, unchanged; not written")
        else:
            when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(started))
            runs = runs_text(results, args.repeat)
            loads = "; ".join(
                f"{t.name}: "
                + ", ".join(f"{s.engine.split()[0]} {s.load_average[0]:.1f}" for s in (f, w) if s.load_average)
                for t, f, w in results
            )
            legend = (
                f"Measured {when}, {os.cpu_count()} cores, {runs}; fedstep engine {args.fedstep_engine} with "
                f"{args.workers} workers, Flower with client-resources-num-cpus={args.client_cpus}, its nodes training "
                f"the clients of {args.flower_sampling}'s sampling; 1-minute load "
                f"average at each side's start: {loads}."
            )
            write_docs(f"{text}\n\n{legend}\n\n" + "\n".join(f"- {line}" for line in lines))
    return 0


def _child(mode: str, spec_text: str, out: Path) -> int:
    """`_fedstep` or `_export` (fedstep's venv): do it, write the result to `out`."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    spec = json.loads(spec_text)
    sys.path[:] = [spec["root"], *(p for p in sys.path if p not in (str(ROOT), spec["root"]))]
    if mode == "_fedstep":
        result = fedstep_side(spec)
    else:
        export(Task(**spec["task"]), out.parent)
        result = {"done": True}
    out.write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] in ("_fedstep", "_export"):
        sys.exit(_child(sys.argv[1], sys.argv[2], Path(sys.argv[3])))
    sys.exit(main())
