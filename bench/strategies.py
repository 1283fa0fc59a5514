"""Strategies on digits: final held-out accuracy and rounds to 90 %, with and without attackers
(fedstep issue 11). Runs outside CI, in-process, in a few minutes on 2 cores.

    .venv/bin/python bench/strategies.py                 # the full benchmark (30 rounds, seeds 0-2)
    .venv/bin/python bench/strategies.py --quick         # a smoke run (3 rounds, seed 0, alpha 1.0 only)
    .venv/bin/python bench/strategies.py --write-docs    # also replace the tables in the docs

Data: scikit-learn's `load_digits` (1,797 8x8 images, features / 16), 20 % held out (stratified,
seeded) for the global evaluation; the rest divided among 10 clients by Dirichlet label skew
(`client_agent.partitions.split`, `dirichlet:0.1` and `dirichlet:1.0`, each client >= 20 examples).

Clients: a numpy trainer of the model `client_agent.models.digits_mlp` builds for digits
(Dense(64, relu) -> Dense(10, softmax), the same tensor names), minibatch SGD on the cross-entropy
with the round's training config (2 epochs, batch 32, learning rate 0.1, the same every round);
when the round's instructions carry `proximal_mu` (FedProx), mu * (w - w_global) is added to the
gradient. Each uploads its delta (trained minus global weights) as a client does: a safetensors
file with the update item's metadata (`fedstep.core.updates.encode_update`)
and an update item.

Server: exactly a real run's code path on in-memory ports (fedstep.memory): each round is
published with `fedstep.core.rounds.publish_round` (the strategy's instructions go out in the round
message, which the clients parse) and completed with `try_complete_round` (the updates read and
checked by `UpdateSource`, the strategy built from the run record's `strategy` and
`strategy_params`, its state written and read back between rounds). Strategies come from the
registry (`fedstep.core.strategies.STRATEGIES`); a name not registered is skipped with a note.

Attack: two of the ten clients attack in every round: one trains honestly and sends its update
scaled x10 ("scaled"), one trains on flipped labels y -> 9 - y ("flipped"); both report their true
example counts. Two stronger variants, clearly labelled, scale the update by -10 or x100 instead.

Each cell of the tables is the mean over 3 seeds (`--seeds`); a seed sets the held-out split, the
partition, the initial weights and the clients' shuffling, and a run is deterministic for its seed.
The script ends with the issue's acceptance check, one verdict line per alpha and attack.
"""

from __future__ import annotations

import argparse
import functools
import os
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # tiny matrices: threads cost 3x more than they give
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the repository: fedstep, client_agent and tests

from fedstep.core import keys, limits, strategies, tensors  # noqa: E402
from fedstep.core.errors import FedstepError  # noqa: E402
from fedstep.core.rounds import try_complete_round  # noqa: E402
from fedstep.core.schemas import (  # noqa: E402
    ObjectRef,
    RunRecord,
    TrainingConfig,
)
from fedstep.core.updates import encode_update  # noqa: E402
from fedstep.memory import MemoryStore, MemoryTable, RecordingReporter  # noqa: E402
from fedstep.memory.run import publish_in_memory as publish_in_memory_at  # noqa: E402
from fedstep.memory.run import start_in_memory  # noqa: E402

RUN = "bench-strategies"
ISSUED_AT = "2026-12-01T00:00:00Z"


publish_in_memory = functools.partial(publish_in_memory_at, issued_at=ISSUED_AT)
"""`fedstep.memory.run.publish_in_memory` at the benchmarks' fixed time (their runs are reproducible)."""


CLIENTS = 10
ALPHAS = (0.1, 1.0)
ROUNDS = 30
TARGET = 0.90
SEEDS = 3
HOLDOUT = 0.2
MIN_EXAMPLES = 20
HIDDEN = 64
TRAINING = TrainingConfig(epochs=2, batch_size=32, learning_rate=0.1)

ORDER = (
    "fedavg",
    "fedavgm",
    "fedadam",
    "fedyogi",
    "fedadagrad",
    "fedprox",
    "median",
    "trimmed_mean",
    "krum",
    "multikrum",
    "fedavg_normbound",
)
"""The strategies the benchmark covers, in the tables' order (those not registered are skipped)."""
PARAMS: dict[str, dict[str, Any]] = {
    "trimmed_mean": {"beta": 0.2},
    "krum": {"num_malicious": 2},
    "multikrum": {"num_malicious": 2},
}
"""Parameters other than the defaults, the same with and without attackers (a server does not know
whether it is attacked): the robust strategies are told the number of attackers (trimmed mean cuts
2 of 10 from each end). Every learning rate, server rate and mu is the strategy's default: they all
converge here (FedAdam's default eta 0.1 as well as 0.01), and fedavg_normbound's default max_norm
1.0 lies just above the honest updates' norms (0.2-1.6 in this setting)."""
ROBUST = ("median", "trimmed_mean", "krum", "multikrum", "fedavg_normbound")
"""The strategies the issue's acceptance asks about: one of them must hold up under the attack."""


# -- the attacks -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Attack:
    """`scaled` (client index -> the factor its honest delta is multiplied by) and `flipped` (client
    indices training on y -> 9 - y)."""

    name: str
    label: str
    scaled: dict[int, float] = field(default_factory=dict)
    flipped: tuple[int, ...] = ()


ATTACKERS = (0, 1)
"""Which clients attack: client 0 sends a scaled update, client 1 trains on flipped labels."""
ATTACKS = {
    "none": Attack("none", "no attack"),
    "x10": Attack("x10", "x10 + flip", {ATTACKERS[0]: 10.0}, (ATTACKERS[1],)),
    "neg10": Attack("neg10", "-x10 + flip (stronger)", {ATTACKERS[0]: -10.0}, (ATTACKERS[1],)),
    "x100": Attack("x100", "x100 + flip (stronger)", {ATTACKERS[0]: 100.0}, (ATTACKERS[1],)),
}
"""The issue's attack (`x10`) and two stronger variants, labelled as such: the scaled update
sign-flipped (`neg10`), or scaled x100 (`x100`); the label-flipping client is the same in all three."""


# -- data ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Data:
    """The clients' training data and the held-out set."""

    parts: list[tuple[np.ndarray, np.ndarray]]
    x_test: np.ndarray
    y_test: np.ndarray


def dirichlet_split(labels: np.ndarray, clients: int, alpha: float, seed: int) -> list[np.ndarray]:
    """The client agent's Dirichlet label partition; a small one of the same kind while
    `client_agent.partitions` is not there yet."""
    try:
        from client_agent.partitions import split
    except ImportError:
        split = None
    if split is not None:
        return split(labels, clients, f"dirichlet:{alpha:g}", seed=seed, min_examples=MIN_EXAMPLES)
    rng = np.random.default_rng(seed)
    for _ in range(100):
        chunks: list[list[np.ndarray]] = [[] for _ in range(clients)]
        for label in np.unique(labels):
            members = rng.permutation(np.flatnonzero(labels == label))
            cuts = (np.cumsum(rng.dirichlet(np.full(clients, alpha)))[:-1] * len(members)).astype(np.int64)
            for client, chunk in enumerate(np.split(members, cuts)):
                chunks[client].append(chunk)
        parts = [np.sort(np.concatenate(c)) for c in chunks]
        if min(len(p) for p in parts) >= MIN_EXAMPLES:
            return parts
    raise ValueError(f"no Dirichlet({alpha}) partition gives every client {MIN_EXAMPLES} examples")


def load_data(alpha: float, seed: int) -> Data:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    x = (bunch.data / 16.0).astype(np.float32)
    y = bunch.target.astype(np.int64)
    x_pool, x_test, y_pool, y_test = train_test_split(x, y, test_size=HOLDOUT, stratify=y, random_state=seed)
    parts = dirichlet_split(y_pool, CLIENTS, alpha, seed)
    return Data([(x_pool[p], y_pool[p]) for p in parts], x_test, y_test)


# -- the model and its numpy trainer ---------------------------------------------------------------

NAMES = ("000/hidden/kernel", "001/hidden/bias", "002/output/kernel", "003/output/bias")
"""`digits_mlp`'s tensor names (`client_agent.keras_model`)."""


def initial_model(seed: int, inputs: int = 64, hidden: int = HIDDEN) -> tensors.Tensors:
    """Glorot-uniform kernels and zero biases, as Keras initializes `digits_mlp` (by default: 64
    inputs, Dense(64)) or another Dense(hidden) -> Dense(10) MLP on `inputs` features (`mnist_mlp`:
    784, 128)."""
    rng = np.random.default_rng(seed)

    def glorot(fan_in: int, fan_out: int) -> np.ndarray:
        limit = np.sqrt(6.0 / (fan_in + fan_out))
        return rng.uniform(-limit, limit, size=(fan_in, fan_out)).astype(np.float32)

    shapes = (glorot(inputs, hidden), np.zeros(hidden, np.float32), glorot(hidden, 10), np.zeros(10, np.float32))
    return dict(zip(NAMES, shapes, strict=True))


def logits(w: list[np.ndarray], x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    hidden = np.maximum(x @ w[0] + w[1], 0.0)
    return hidden, hidden @ w[2] + w[3]


def accuracy(weights: tensors.Tensors, x: np.ndarray, y: np.ndarray) -> float:
    w = [weights[n].astype(np.float64) for n in NAMES]
    return float((logits(w, x)[1].argmax(axis=1) == y).mean())


def train(
    weights: tensors.Tensors, x: np.ndarray, y: np.ndarray, training: TrainingConfig, mu: float, seed: list[int]
) -> tuple[tensors.Tensors, float]:
    """Minibatch SGD on the softmax cross-entropy from the global weights (float64 inside), with
    FedProx's proximal term mu * (w - w_global) in the gradient when mu > 0; the delta (float32) and
    the last epoch's mean loss."""
    rng = np.random.default_rng(seed)
    start = [weights[n].astype(np.float64) for n in NAMES]
    w = [a.copy() for a in start]
    lr, loss = training.learning_rate, 0.0
    for _ in range(training.epochs):
        order, losses = rng.permutation(len(y)), []
        for begin in range(0, len(y), training.batch_size):
            batch = order[begin : begin + training.batch_size]
            xb, yb = x[batch].astype(np.float64), y[batch]
            hidden, out = logits(w, xb)
            out -= out.max(axis=1, keepdims=True)
            log_p = out - np.log(np.exp(out).sum(axis=1, keepdims=True))
            losses.append(-log_p[np.arange(len(yb)), yb].mean())
            g_out = np.exp(log_p)
            g_out[np.arange(len(yb)), yb] -= 1.0
            g_out /= len(yb)
            g_hidden = (g_out @ w[2].T) * (hidden > 0)
            grads = [xb.T @ g_hidden, g_hidden.sum(axis=0), hidden.T @ g_out, g_out.sum(axis=0)]
            for i, g in enumerate(grads):
                if mu:
                    g = g + mu * (w[i] - start[i])
                w[i] -= lr * g
        loss = float(np.mean(losses))
    return {n: (w[i] - start[i]).astype(np.float32) for i, n in enumerate(NAMES)}, loss


# -- one run ---------------------------------------------------------------------------------------


@dataclass
class Result:
    strategy: str
    alpha: float
    attack: str
    rounds: int
    accuracies: list[float] = field(default_factory=list)
    error: str = ""
    seconds: float = 0.0
    instructions: dict[str, Any] = field(default_factory=dict)
    measurements: dict[str, float] = field(default_factory=dict)
    rejected: int = 0
    """Updates the server rejected, over all rounds."""
    clipped: int = 0


def run(name: str, params: dict[str, Any], data: Data, alpha: float, attack: Attack, rounds: int, seed: int) -> Result:
    """One federated run of `rounds` rounds through the real server path; the held-out accuracy of
    the global model after each round."""
    started = time.perf_counter()
    result = Result(name, alpha, attack.name, rounds)
    ids = [f"c{i:02d}" for i in range(CLIENTS)]
    strategy = strategies.build(name, params)
    architecture = ObjectRef(keys.model_key(RUN), "0" * 64, 1)  # the clients never read it here
    record = RunRecord(
        RUN,
        ids,
        rounds,
        TRAINING,
        name,
        ISSUED_AT,
        quorum=1,
        min_participants=2,
        seed=seed,
        model=architecture,
        strategy_params=strategies.params.to_json(strategy.params),
    )
    store, table, global_ref = start_in_memory(record, initial_model(seed))
    for round_number in range(1, rounds + 1):
        reporter = RecordingReporter()
        try:
            message, recipients = publish_in_memory(store, table, record.run_id, round_number, global_ref)
            result.instructions = dict(message.instructions)
            weights = tensors.decode(store.get(message.global_model.key))
            mu = float(message.instructions.get("proximal_mu", 0.0))
            for client in recipients:
                i = ids.index(client)
                x, y = data.parts[i]
                if i in attack.flipped:
                    y = 9 - y
                delta, loss = train(weights, x, y, message.training, mu, [seed, round_number, i])
                if i in attack.scaled:
                    delta = {k: (v * np.float32(attack.scaled[i])).astype(np.float32) for k, v in delta.items()}
                upload(store, table, RUN, round_number, client, len(y), delta, loss)
            summary = try_complete_round(RUN, round_number, store=store, table=table, reporter=reporter)
        except FedstepError as exc:
            result.error = f"round {round_number}: {type(exc).__name__}: {str(exc)[:300]}"
            break
        if summary is None:  # the round was failed by name (QuorumNotMet, StrategyFailed, ...)
            failures = "; ".join(f"{e}: {c[:300]}" for _, e, c in reporter.failures) or "not aggregated"
            result.error = f"round {round_number}: {failures}"
            break
        global_ref = summary.global_model
        result.measurements = dict(summary.measurements)
        result.rejected += len(summary.rejected)
        result.clipped += len(summary.clipped)
        result.accuracies.append(accuracy(tensors.decode(store.get(global_ref.key)), data.x_test, data.y_test))
    result.seconds = time.perf_counter() - started
    return result


def upload(
    store: MemoryStore,
    table: MemoryTable,
    run_id: str,
    round_number: int,
    client: str,
    examples: int,
    delta: tensors.Tensors,
    loss: float,
    privacy: dict[str, float] | None = None,
) -> None:
    """What a client does after training: the update file, then the update item naming it."""
    metrics = {"train_loss": loss} if not limits.metric_problem("train_loss", loss) else {}  # as the agent drops it
    data, item = encode_update(
        delta,
        run_id=run_id,
        round_number=round_number,
        client_id=client,
        num_examples=examples,
        metrics=metrics,
        created_at=ISSUED_AT,
        privacy=privacy,
    )
    store.put(item.update.key, data)
    table.put(item.to_item())


# -- the table and the verdict ---------------------------------------------------------------------

Key = tuple[str, float, str]
"""(strategy, alpha, attack)"""


@dataclass(frozen=True)
class Figures:
    """A configuration over the seeds: the mean final accuracy, its range, the first round at which
    the seeds' mean accuracy reached the target (None: never), and the runs that failed. A failed
    run keeps the last global model it published (what its operator would hold)."""

    final: float
    low: float
    high: float
    to_target: int | None
    failed: int = 0


def figures(runs: list[Result]) -> Figures:
    rounds = max(r.rounds for r in runs)
    curves = [(r.accuracies or [0.0]) + [(r.accuracies or [0.0])[-1]] * (rounds - len(r.accuracies)) for r in runs]
    finals = [c[-1] for c in curves]
    mean_curve = np.mean(curves, axis=0)
    reached = next((i + 1 for i, a in enumerate(mean_curve) if a >= TARGET), None)
    return Figures(float(np.mean(finals)), min(finals), max(finals), reached, sum(bool(r.error) for r in runs))


def cell(runs: list[Result] | None) -> str:
    if not runs:
        return "n/a"
    f = figures(runs)
    spread = f" [{100 * f.low:.0f}-{100 * f.high:.0f}]" if len(runs) > 1 else ""
    failed = f" †{f.failed}" if f.failed else ""
    return f"{100 * f.final:.1f}{spread} ({f.to_target or '—'}){failed}"


def params_text(name: str) -> str:
    """The parameters the benchmark set (not the defaults)."""
    return ", ".join(f"{k}={v}" for k, v in PARAMS.get(name, {}).items()) or "defaults"


def tables(results: dict[Key, list[Result]], names: list[str], alphas: tuple[float, ...], attacks: list[str]) -> str:
    """One markdown table per alpha: a row per strategy, a column per attack."""
    out = []
    for alpha in alphas:
        out += [
            f"Dirichlet alpha = {alpha:g}:",
            "",
            "| strategy | parameters | " + " | ".join(ATTACKS[a].label for a in attacks) + " |",
            "|---|---|" + "---|" * len(attacks),
        ]
        for name in names:
            cells = [cell(results.get((name, alpha, attack))) for attack in attacks]
            out.append(f"| {name} | {params_text(name)} | " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out).rstrip()


def verdict(results: dict[Key, list[Result]], names: list[str], alpha: float, attack: str) -> tuple[bool, str]:
    """The issue's acceptance for one alpha and attack, on the seeds' means: FedAvg under attack
    falls by more than 20 points while at least one robust strategy under attack stays within 5
    points of FedAvg without it."""
    label = f"alpha={alpha:g}, {ATTACKS[attack].label}"
    clean, hit = results.get(("fedavg", alpha, "none")), results.get(("fedavg", alpha, attack))
    if not clean or not hit:
        return False, f"{label}: no verdict (attack-free FedAvg was not measured)"
    base = figures(clean).final
    drop = 100 * (base - figures(hit).final)
    held = {}
    for name in names:
        runs = results.get((name, alpha, attack))
        if name in ROBUST and runs:
            f = figures(runs)
            held[name] = None if f.failed else 100 * (f.final - base)
    within = [n for n, d in held.items() if d is not None and d >= -5.0]
    ok = drop > 20.0 and bool(within)
    robust = ", ".join(f"{n} {'failed' if d is None else f'{d:+.1f}'}" for n, d in held.items()) or "none measured"
    return ok, (
        f"{label}: {'PASS' if ok else 'FAIL'} - attack-free FedAvg {100 * base:.1f} %, FedAvg under attack "
        f"falls {drop:.1f} points ({'more' if drop > 20 else 'not more'} than 20); robust strategies under "
        f"attack vs attack-free FedAvg: {robust} points (within 5: {', '.join(within) or 'none'})"
    )


MARK = "<!-- bench/strategies.py {} -->"


def write_docs(text: str) -> None:
    """Replace the text between the benchmark's markers in the docs that carry them."""
    start, end = MARK.format("start"), MARK.format("end")
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.S)
    for doc in ("docs/benchmarks.md", "docs/strategies.md"):
        path = ROOT / doc
        old = path.read_text() if path.exists() else ""
        if not pattern.search(old):
            print(f"note: {doc} has no {start} ... {end} markers; not written")
            continue
        path.write_text(pattern.sub(lambda _: f"{start}\n{text}\n{end}", old, count=1))
        print(f"wrote the tables into {doc}")


def selected_strategies(wanted: list[str]) -> list[str]:
    """The wanted strategies that are registered and take the benchmark's parameters."""
    names = []
    for name in wanted:
        if name not in strategies.STRATEGIES:
            print(f"note: strategy {name!r} is not registered; skipped")
            continue
        try:
            strategies.build(name, PARAMS.get(name))
        except ValueError as exc:
            print(f"note: strategy {name!r} refused the benchmark's parameters ({exc}); skipped")
            continue
        names.append(name)
    return names


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: 3 rounds, 1 seed, alpha 1.0, no stronger attacks"
    )
    parser.add_argument("--seeds", type=int, default=SEEDS, help="seeds per configuration (default %(default)s)")
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--strategies", help=f"comma-separated subset of {','.join(ORDER)}")
    parser.add_argument(
        "--attacks", help=f"comma-separated subset of {','.join(ATTACKS)} (default: all; with --quick none,x10)"
    )
    parser.add_argument("--write-docs", action="store_true", help="replace the tables in docs/ (not with --quick)")
    args = parser.parse_args()
    rounds = min(args.rounds, 3) if args.quick else args.rounds
    seeds = list(range(args.first_seed, args.first_seed + (1 if args.quick else args.seeds)))
    alphas = (1.0,) if args.quick else ALPHAS
    attacks = [a.strip() for a in (args.attacks or ("none,x10" if args.quick else ",".join(ATTACKS))).split(",")]
    unknown = sorted(set(attacks) - set(ATTACKS))
    if unknown or rounds < 1 or not seeds:
        parser.error(f"unknown attack(s) {unknown}; known: {', '.join(ATTACKS)}" if unknown else "rounds, seeds >= 1")
    names = selected_strategies([n.strip() for n in args.strategies.split(",")] if args.strategies else list(ORDER))
    started = time.perf_counter()
    print(
        f"digits, {CLIENTS} clients, {rounds} rounds, {TRAINING.epochs} local epochs, batch {TRAINING.batch_size}, "
        f"lr {TRAINING.learning_rate:g}, seeds {seeds}; attackers: client {ATTACKERS[0]} (scaled update), "
        f"client {ATTACKERS[1]} (flipped labels)"
    )
    results: dict[Key, list[Result]] = {}
    total, done = len(names) * len(alphas) * len(attacks), 0
    for alpha in alphas:
        data = {seed: load_data(alpha, seed) for seed in seeds}
        for seed, d in data.items():
            sizes = [len(y) for _, y in d.parts]
            labels = [len(np.unique(y)) for _, y in d.parts]
            print(f"alpha={alpha:g} seed {seed}: client sizes {sizes}, labels per client {labels}")
        for attack in attacks:
            for name in names:
                runs = [run(name, PARAMS.get(name, {}), data[s], alpha, ATTACKS[attack], rounds, s) for s in seeds]
                results[(name, alpha, attack)] = runs
                done += 1
                finals = " ".join(f"{100 * r.accuracies[-1]:.1f}" if r.accuracies else "-" for r in runs)
                notes = [f"instructions {runs[0].instructions}"] if runs[0].instructions else []
                notes += [
                    f"{k} {sum(getattr(r, k) for r in runs)}"
                    for k in ("rejected", "clipped")
                    if any(getattr(r, k) for r in runs)
                ]
                print(
                    f"[{done:2d}/{total}] {name:16s} alpha={alpha:<4g} {ATTACKS[attack].label:22s} {cell(runs)}; "
                    f"per seed {finals}{''.join('; ' + n for n in notes)} ({sum(r.seconds for r in runs):.1f} s)",
                    flush=True,
                )
                for seed, r in zip(seeds, runs, strict=True):
                    if r.error:
                        print(f"    † seed {seed} failed in {r.error}")
    elapsed = time.perf_counter() - started
    text = tables(results, names, alphas, attacks)
    which = (
        f"the mean over seeds {seeds[0]}-{seeds[-1]} [lowest-highest seed]" if len(seeds) > 1 else f"seed {seeds[0]}"
    )
    mean = "seeds' mean " if len(seeds) > 1 else ""
    legend = (
        f"Each cell: final held-out accuracy (%) after {rounds} rounds, {which}, and (in parentheses) the first "
        f"round at which the {mean}held-out accuracy reached "
        f"{100 * TARGET:.0f} %, or — if it never did. †n: n of the seeds' runs failed (a round could not be "
        "aggregated); such a run counts with the last global model it published."
    )
    print()
    print(text)
    print()
    print(legend)
    for attack in attacks:
        if attack != "none" and "none" in attacks and "fedavg" in names:
            for alpha in alphas:
                print("verdict:", verdict(results, names, alpha, attack)[1])
    print(f"total {elapsed:.0f} s")
    if args.write_docs and not args.quick:
        write_docs(f"{text}\n\n{legend}")


if __name__ == "__main__":
    main()
