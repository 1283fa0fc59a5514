"""Round overhead: how long `fedstep local` takes on the digits task, from start to the final model and
per steady-state round, with a breakdown, against the same Keras work done in one process.

    .venv/bin/python bench/round_overhead.py [--rounds 5] [--repeat 1]

The task is the one of Flower's FedAvg example and of `make demo`: scikit-learn's digits, 3 clients
with an IID third each, Dense(64, relu) -> Dense(10, softmax), SGD at 0.1, batch 32, 1 local epoch,
5 rounds. `fedstep local` runs as a subprocess, exactly as a user runs it; its console lines are
time-stamped as they arrive:
- start to final model: from launching the command to the line with the final model's evaluation
  (after the run ended: the run-ended message sent and the model card written);
- start to the last round's model: from launching the command to the last round's line (its model
  aggregated and evaluated on the held-out set): what `bench/flower_baseline.py` measures for Flower;
  split into preparing the data, starting the local cloud and deploying the stack, the agents
  coming online (they start first and import TensorFlow meanwhile; the run is started once their
  heartbeats are in), round 1 and the later rounds;
- a steady-state round: the median of rounds 2..N as the runner records them (publish to aggregated;
  `summary.json`'s `duration_s`, the console showing them to 0.1 s);
  split, from the client agents' own round lines, into download, train (evaluations included) and
  upload, each the mean over clients; what remains of the round is orchestration (SNS/SQS delivery,
  polling, the DynamoDB stream, the aggregation function, Step Functions).
The baseline does the same rounds' Keras work in this process: each client's `keras_fit` on its own
data one after another (warm models, as the agent keeps them), then FedAvg in numpy. Its round
time is the floor a federated round cannot beat on one machine without parallel clients.
`bench/flower_baseline.py` runs `fedstep local` beside Flower with `run_fedstep_local` and
`summarize` (under Flower's venv, so `run_fedstep_local` takes fedstep's interpreter).
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

ROUND_LINE = re.compile(r"^round (\d+)/\d+ .* ([0-9.]+) s$")
HELDOUT = re.compile(r"held-out accuracy ([0-9.]+)")
PHASES = re.compile(
    r"round (\d+) of \S+ \|.*\| [0-9.]+ s \(download ([0-9.]+) s, train ([0-9.]+) s, upload ([0-9.]+) s\)"
)


def run_fedstep_local(rounds: int, out: Path, python: str = sys.executable) -> dict[str, object]:
    """Run `fedstep local` on digits with `python` (fedstep's venv's; default this interpreter); the
    time each console line arrived (s since launch) and the time the command exited."""
    command = [python, "-m", "fedstep", "local", "--dataset", "digits", "--clients", "3"]
    command += ["--rounds", str(rounds), "--out", str(out)]
    started = time.perf_counter()
    stamps: list[tuple[float, str]] = []
    with subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            stamps.append((time.perf_counter() - started, line.rstrip()))
    if proc.returncode != 0:
        raise SystemExit("fedstep local failed:\n" + "\n".join(text for _, text in stamps[-30:]))
    return {"stamps": stamps, "exit": time.perf_counter() - started}


def first(stamps: list[tuple[float, str]], prefix: str) -> float:
    return next(t for t, text in stamps if text.startswith(prefix))


def summarize(stamps: list[tuple[float, str]], out: Path) -> dict[str, Any]:
    """The figures of one `fedstep local` run from its time-stamped console lines (seconds since
    launch) and its output folder `out` (the agents' logs; `summary.json`, whose round times have
    the full precision the console's 0.1 s lacks): `final` (the final model's line), `last_round`
    (round N's line: its model aggregated and scored on the held-out set), `deploy_start`,
    `cloud_up`, `online`, `round1` (when those lines arrived), `rounds` (round -> seconds, publication
    to aggregated model), `steady` (median of rounds 2..N), `steady_phase` (the agents'
    download/train/upload, mean of clients, median of rounds 2..N) and `heldout_accuracy` (per
    round, in order)."""
    lines = [(m, text) for _, text in stamps if (m := ROUND_LINE.match(text))]
    rounds = {int(m[1]): float(m[2]) for m, _ in lines}
    heldout = {int(m[1]): float(h[1]) for m, text in lines if (h := HELDOUT.search(text))}
    summary = out / "summary.json"
    if summary.exists():
        entries = json.loads(summary.read_text())["rounds"]
        rounds = {int(e["round"]): float(e["duration_s"]) for e in entries}
        heldout = {int(e["round"]): float(e["heldout_accuracy"]) for e in entries}
    phases = client_phases(out / "logs")
    steady = [rounds[r] for r in rounds if r >= 2]
    return {
        "final": first(stamps, "final global model"),
        "last_round": first(stamps, f"round {max(rounds)}/"),
        "deploy_start": first(stamps, "starting the local cloud"),
        "cloud_up": first(stamps, "local cloud at"),
        "online": next(t for t, text in stamps if "clients online" in text),
        "round1": first(stamps, "round 1/"),
        "rounds": rounds,
        "steady": statistics.median(steady),
        "steady_phase": {
            name: statistics.median(phases[r][name] for r in rounds if r >= 2 and r in phases)
            for name in ("download", "train", "upload")
        },
        "heldout_accuracy": [heldout[r] for r in sorted(heldout)],
    }


def client_phases(logs: Path) -> dict[int, dict[str, float]]:
    """Round -> mean seconds per phase over the clients, from their logs."""
    per_round: dict[int, list[tuple[float, float, float]]] = {}
    for log in logs.glob("client-*.log"):
        for match in PHASES.finditer(log.read_text(errors="replace")):
            per_round.setdefault(int(match[1]), []).append(tuple(float(match[i]) for i in (2, 3, 4)))
    return {
        r: dict(zip(("download", "train", "upload"), np.mean(np.array(v), axis=0).tolist(), strict=True))
        for r, v in per_round.items()
    }


def baseline_rounds(rounds: int) -> list[float]:
    """Seconds per round of the same Keras work in this process (clients one after another)."""
    from client_agent.data import load_local_data
    from client_agent.keras_model import get_tensors, import_keras, model_to_bytes
    from client_agent.models import digits_mlp
    from client_agent.training import FunctionTrainer, keras_fit
    from fedstep.core.schemas import TrainingConfig

    keras = import_keras()
    keras.utils.set_random_seed(0)
    net = digits_mlp()
    architecture, weights = model_to_bytes(net), get_tensors(net)
    trainers = [FunctionTrainer(keras_fit, load_local_data("digits", f"{i}/3")) for i in (1, 2, 3)]
    training = TrainingConfig(epochs=1, batch_size=32)
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        results = [t.fit(architecture, weights, training) for t in trainers]
        total = sum(r.num_examples for r in results)
        weights = {k: sum(r.weights[k] * (r.num_examples / total) for r in results) for k in weights}
        times.append(time.perf_counter() - started)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeat", type=int, default=1, help="runs of fedstep local (the median is printed)")
    args = parser.parse_args()
    results = []
    for i in range(args.repeat):
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "run"
            run = run_fedstep_local(args.rounds, out)
            figures = summarize(run["stamps"], out)
            results.append(figures)
            final, deploy_start, cloud_up = figures["final"], figures["deploy_start"], figures["cloud_up"]
            online, round1, rounds = figures["online"], figures["round1"], figures["rounds"]
            print(
                f"run {i + 1}: start to final model {final:.1f} s (data {deploy_start:.1f} s, local cloud and deploy "
                f"{cloud_up - deploy_start:.1f} s, agents online {online - cloud_up:.1f} s later, to the end of "
                f"round 1 {round1 - online:.1f} s, later rounds {final - round1:.1f} s); rounds "
                + " ".join(f"{rounds[r]:.2f}" for r in sorted(rounds))
            )
    results.sort(key=lambda figures: figures["final"])
    middle = results[len(results) // 2]
    final, steady, phase = middle["final"], middle["steady"], middle["steady_phase"]
    last_round = statistics.median(figures["last_round"] for figures in results)
    base = baseline_rounds(args.rounds)
    base_steady = statistics.median(base[1:])
    agent = sum(phase.values())
    print(f"fedstep local, digits, 3 clients, {args.rounds} rounds (median of {args.repeat} run(s)):")
    print(f"  start to final model       {final:6.2f} s (the run ended, its model card written, evaluated)")
    print(
        f"  start to round {args.rounds}'s model      {last_round:6.2f} s (Flower's figure: the last aggregated model)"
    )
    print(f"  steady-state round         {steady:6.2f} s")
    print(
        f"    agent (mean per client)  {agent:6.2f} s: download {phase['download']:.2f} s, "
        f"train {phase['train']:.2f} s, upload {phase['upload']:.2f} s"
    )
    print(f"    orchestration            {steady - agent:6.2f} s (the round's time less the agent's)")
    print(f"baseline, the same Keras work in one process, clients in turn: round {base_steady:.2f} s")
    print(f"ratio (steady-state round / baseline round): {steady / base_steady:.2f}x")


if __name__ == "__main__":
    main()
