"""Federated statistics: heart-raw, local vs federated standardization (issue 21 finding 6). Runs outside
CI; the in-process engine takes a few seconds.

    .venv/bin/python bench/federated_statistics.py                      # in-process, 5 seeds, 20 rounds
    .venv/bin/python bench/federated_statistics.py --engine local       # fedstep.simulate on the local cloud
    .venv/bin/python bench/federated_statistics.py --seeds 0 1 --rounds 30

Data: `heart-raw` (`client_agent.datasets`, exactly as the agent loads it): UCI Heart Disease, 4 clients,
one hospital each (Cleveland, Hungary, VA Long Beach, Switzerland), raw features with NaN where missing.
A seed makes the held-out 20 % (within each hospital), each hospital's part and its 80/20 local split;
each client trains on its local train split, as the agent does.

Settings, each standardizing every feature as `fedstep.core.statistics.Standardization` does
(`(x - mean) / std`, a missing value becomes 0, the mean):
- local: each hospital with its own train split's statistics (`Standardization.local`); the held-out
  examples of hospital h with hospital h's statistics, as FLamby evaluates each centre's test set
  with that centre's preprocessing;
- federated: every hospital and the held-out set with the statistics the 4 hospitals' train splits
  combine into (`site_statistics` of each, `combine`);
- pooled: the statistics of the 4 train splits put together, computed centrally (`np.nanmean`,
  `np.nanstd`): the reference, equal to federated up to float error.

Engines:
- inprocess (default): FedAvg of the default model of heart-raw (`client_agent.models:heart_logreg`,
  FLamby's Fed-Heart-Disease baseline: Dense(2, softmax) on the 22 features, sparse categorical
  cross-entropy, SGD lr 0.1) written in numpy: Glorot-uniform kernel and zero bias (Keras' defaults,
  the same initial weights for every setting of a seed), each round every client trains 1 epoch of
  minibatches of 32 (shuffled with the seed; the last batch partial, as Keras' fit), and the server
  takes the example-weighted mean (FedAvg). Held-out accuracy of the global model after the last round.
- local: `fedstep.simulate(dataset="heart-raw", clients=4, partition="natural", rounds=R,
  standardize=..., seed=s, verbose=False)` on the embedded local cloud (settings local and federated;
  the run setting `standardize` must exist), reading `history.attrs["summary"]["final"]`.
"""

from __future__ import annotations

import argparse
import statistics as stats
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from client_agent import datasets  # noqa: E402
from fedstep.core.errors import FedstepError  # noqa: E402
from fedstep.core.statistics import Standardization, StatsRequest, combine, site_statistics  # noqa: E402

DATASET = "heart-raw"
SETTINGS = ("local", "federated", "pooled")
LEARNING_RATE = 0.1
BATCH = 32
EPOCHS = 1
CLASSES = 2


@dataclass(frozen=True)
class Site:
    """One hospital: its train split (standardized by the setting), and its held-out examples."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_held: np.ndarray
    y_held: np.ndarray


def hospitals(seed: int) -> list[Site]:
    """The 4 hospitals' raw train splits and held-out examples, as the agents and the evaluation load them."""
    prepared = datasets.prepare(DATASET, seed)
    held_groups = prepared.groups[prepared.heldout]
    x_held, y_held = datasets.heldout(prepared)
    sites = []
    for i, name in enumerate(prepared.sites, start=1):
        (x_train, y_train), _ = datasets.local_split(prepared, (i, len(prepared.sites)), seed)
        mine = held_groups == i
        sites.append(Site(name, x_train, y_train, x_held[mine], y_held[mine]))
    return sites


def standardizations(setting: str, sites: list[Site]) -> list[Standardization]:
    """The standardization each hospital applies (to its train split and its held-out examples)."""
    if setting == "local":
        return [Standardization.local(s.x_train) for s in sites]
    if setting == "federated":
        request = StatsRequest()
        answers = {s.name: site_statistics(s.x_train, request) for s in sites}
        for answer in answers.values():
            answer.check(request)
        shared = combine(answers, request).standardization()
    elif setting == "pooled":
        pool = np.concatenate([s.x_train for s in sites]).astype(np.float64)
        mean, std = np.nanmean(pool, axis=0), np.nanstd(pool, axis=0)
        shared = Standardization(np.nan_to_num(mean), np.where(np.nan_to_num(std) < 1e-12, 1.0, std))
    else:
        raise ValueError(f"unknown setting {setting!r}")
    return [shared] * len(sites)


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(shifted)
    return e / e.sum(axis=1, keepdims=True)


def local_epochs(
    kernel: np.ndarray, bias: np.ndarray, x: np.ndarray, y: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """`EPOCHS` epochs of minibatch SGD on the mean sparse categorical cross-entropy."""
    kernel, bias = kernel.copy(), bias.copy()
    onehot = np.eye(CLASSES)[y]
    for _ in range(EPOCHS):
        order = rng.permutation(len(y))
        for start in range(0, len(y), BATCH):
            batch = order[start : start + BATCH]
            error = (_softmax(x[batch] @ kernel + bias) - onehot[batch]) / len(batch)
            kernel -= LEARNING_RATE * x[batch].T @ error
            bias -= LEARNING_RATE * error.sum(axis=0)
    return kernel, bias


def accuracy(kernel: np.ndarray, bias: np.ndarray, x: np.ndarray, y: np.ndarray) -> float:
    return float(((x @ kernel + bias).argmax(axis=1) == y).mean())


def fedavg(setting: str, seed: int, rounds: int) -> dict[str, float]:
    """Held-out accuracy (overall and per hospital) of the global model after `rounds` rounds."""
    sites = hospitals(seed)
    scalers = standardizations(setting, sites)
    train = [(sc.apply(s.x_train).astype(np.float64), s.y_train) for s, sc in zip(sites, scalers, strict=True)]
    held = [(sc.apply(s.x_held).astype(np.float64), s.y_held) for s, sc in zip(sites, scalers, strict=True)]
    features = train[0][0].shape[1]
    rng = np.random.default_rng(seed)
    limit = np.sqrt(6.0 / (features + CLASSES))  # Glorot uniform
    kernel, bias = rng.uniform(-limit, limit, size=(features, CLASSES)), np.zeros(CLASSES)
    shuffles = [np.random.default_rng([seed, i]) for i in range(len(sites))]
    sizes = np.array([len(y) for _, y in train], dtype=np.float64)
    for _ in range(rounds):
        updates = [local_epochs(kernel, bias, x, y, r) for (x, y), r in zip(train, shuffles, strict=True)]
        kernel = sum(w * k for w, (k, _) in zip(sizes, updates, strict=True)) / sizes.sum()
        bias = sum(w * b for w, (_, b) in zip(sizes, updates, strict=True)) / sizes.sum()
    result = {s.name: accuracy(kernel, bias, x, y) for s, (x, y) in zip(sites, held, strict=True)}
    x_all = np.concatenate([x for x, _ in held])
    y_all = np.concatenate([y for _, y in held])
    result["held-out"] = accuracy(kernel, bias, x_all, y_all)
    return result


def simulated(setting: str, seed: int, rounds: int) -> dict[str, float]:
    """Held-out accuracy of a `fedstep.simulate` run with the run setting `standardize`."""
    import fedstep

    if setting == "pooled":
        raise ValueError("the local engine runs local and federated only (pooled is what federated computes)")
    history = fedstep.simulate(
        dataset=DATASET,
        clients=4,
        partition="natural",
        rounds=rounds,
        seed=seed,
        standardize=setting,
        verbose=False,
    )
    final = history.attrs["summary"]["final"]
    return {"held-out": float(final["test_accuracy"])}


def mean_std(values: list[float]) -> str:
    spread = stats.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * stats.mean(values):5.1f} ± {100 * spread:3.1f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engine", choices=("inprocess", "local"), default="inprocess")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--settings", nargs="+", choices=SETTINGS, default=None)
    args = parser.parse_args(argv)
    settings = args.settings or (SETTINGS if args.engine == "inprocess" else ("local", "federated"))
    run = fedavg if args.engine == "inprocess" else simulated

    results: dict[str, list[dict[str, float]]] = {setting: [] for setting in settings}
    for seed in args.seeds:
        for setting in settings:
            try:
                result = run(setting, seed, args.rounds)
            except FedstepError as exc:  # e.g. a fedstep without the run setting standardize
                print(f"federated_statistics: {exc}", file=sys.stderr)
                return 2
            results[setting].append(result)
            shown = "  ".join(f"{k} {100 * v:5.1f}" for k, v in result.items())
            print(f"seed {seed} {setting:9s} {shown}", flush=True)

    print(
        f"\n{DATASET}, {args.engine}, {args.rounds} rounds, seeds {' '.join(map(str, args.seeds))}: "
        "held-out accuracy %, mean ± std over seeds"
    )
    columns = list(results[settings[0]][0])
    print(f"{'setting':10s}" + "".join(f"{c:>16s}" for c in columns))
    for setting in settings:
        row = "".join(f"{mean_std([r[c] for r in results[setting]]):>16s}" for c in columns)
        print(f"{setting:10s}{row}")
    if "local" in results and "federated" in results:
        gaps = [f["held-out"] - loc["held-out"] for f, loc in zip(results["federated"], results["local"], strict=True)]
        print(f"federated - local: {mean_std(gaps)} points (per seed: {' '.join(f'{100 * g:+.1f}' for g in gaps)})")
    if "pooled" in results and "federated" in results:
        same = all(p == f for p, f in zip(results["pooled"], results["federated"], strict=True))
        print(f"pooled and federated give the same accuracies: {same}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
