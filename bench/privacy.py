"""Differential privacy: held-out accuracy against epsilon, on heart and digits. Runs outside CI,
in-process, in a few minutes on 2 cores (most of it the Keras DP-SGD rows).

    .venv/bin/python bench/privacy.py                 # the full benchmark (30 rounds, seeds 0-2)
    .venv/bin/python bench/privacy.py --quick         # a smoke run (3 rounds, seed 0)
    .venv/bin/python bench/privacy.py --write-docs    # also rewrite docs/benchmarks.md and the plot

Data (`client_agent.datasets`, exactly as the agent loads it):
- heart: UCI Heart Disease, 4 clients, one hospital each (the natural split: Cleveland, Hungary,
  VA Long Beach, Switzerland);
- digits: scikit-learn's digits, 10 clients, IID (`client_agent.partitions`, scheme iid).
A seed makes the held-out 20 % (`datasets.heldout`, the global evaluation), the pool and each
client's part; each client trains on the train split of its part (`datasets.local_split`, 80 %),
as the agent does, so the n its DP-SGD is accounted with is the agent's n.

Settings (a run each, per data set and seed), all with FedAvg on the server:
- no DP;
- central DP (`--dp central`: the server clips each update to C, adds Gaussian noise of std z C to
  the sum and divides by the clients per round) with z 0.5, 1, 2, 4 and 8 and a fixed C: the median
  L2 norm of the honest updates of the no-DP runs of the same data set (printed; `--clip` sets it);
- central DP with adaptive clipping (Andrew et al. 2021: `--dp-clip adaptive`, the defaults:
  initial C 0.1, target quantile 0.5, learning rate 0.2) and z 1;
- DP-SGD (`--dp dp-sgd`): record-level DP on each client, z 1.1, per-example clip 1.0, batch 32;
  and on heart also z 3 (a Keras DP-SGD row takes about a minute on heart, three on digits).
Each run's settings are checked as `fedstep start` checks them (`RunSettings.validated()` and
`for_clients`), and its run record's `dp` is what `fedstep start` writes.

Clients: without DP and under central DP, the numpy trainer of `bench/strategies.py` (minibatch SGD
on the cross-entropy of Dense(hidden, relu) -> Dense(classes, softmax), the tensor names of the
built-in Keras models). Under DP-SGD, the agent's own DP-SGD: `client_agent.dp_sgd.fit` on the
data set's built-in Keras model (`client_agent.models`), with the round's instructions parsed by
`dp_sgd.DpSgdParams.of` from the round message; each client's record-level epsilon is the agent's
ledger arithmetic (`client_agent.privacy_ledger.run_privacy` over one `Spend` per round served:
`epsilon_poisson`, q = batch / n, epochs x ceil(n / batch) steps per round), reported in the update
item's `privacy` as the agent reports it. The initial weights are the same for every setting.

Server: a real run's code path on in-memory ports (`fedstep.memory`): `publish_round`, then
`try_complete_round` with `AggregationSettings(accountant=epsilon_fixed)`, as the aggregation
function has it. Epsilon is read from the round summaries: client-level (central) or the largest
participant's record-level epsilon (DP-SGD), at delta 1e-5. The client-level figure is for
replace-one neighbours (one client's data replaced by another's): one client's clipped update can
move the sum by 2C, so `epsilon_fixed` accounts the Gaussian mechanism at noise multiplier z / 2.

Randomness: a seed fixes the split, the initial weights, the clients' shuffling and the DP-SGD
Poisson sampling (`sampling_seed`); the noise (the server's, and the clients' under DP-SGD) comes
from the operating system's entropy, so runs of a seed differ. Every figure is the mean over 3
seeds.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # tiny matrices: threads cost more than they give
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TF_NUM_INTRAOP_THREADS", "1")
os.environ.setdefault("TF_NUM_INTEROP_THREADS", "1")

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the repository: fedstep, client_agent, tests and bench

from bench.strategies import (  # noqa: E402
    NAMES,
    Data,
    accuracy,
    publish_in_memory,
    start_in_memory,
    train,
    upload,
)
from client_agent import datasets, dp_sgd  # noqa: E402
from client_agent.privacy_ledger import Spend, run_privacy  # noqa: E402
from fedstep.core import keys, strategies, tensors  # noqa: E402
from fedstep.core.errors import FedstepError  # noqa: E402
from fedstep.core.rounds import AggregationSettings, try_complete_round  # noqa: E402
from fedstep.core.schemas import ObjectRef, RunRecord, TrainingConfig  # noqa: E402
from fedstep.memory import RecordingReporter  # noqa: E402
from fedstep.operator.settings import RunSettings  # noqa: E402
from fedstep.privacy.accounting import epsilon_fixed  # noqa: E402

RUN = "bench-privacy"
ISSUED_AT = "2026-12-01T00:00:00Z"
DELTA = 1e-5
SEEDS = 3
SERVER = AggregationSettings(accountant=epsilon_fixed)


@dataclass(frozen=True)
class DataSet:
    """A data set's federation: its clients, partition scheme, model and training config."""

    name: str
    label: str
    clients: int
    scheme: str
    features: int
    hidden: int
    classes: int
    training: TrainingConfig
    rounds: int


DATASETS = {
    "heart": DataSet(
        "heart",
        "heart, 4 hospitals",
        4,
        "iid",  # heart's only scheme: one hospital per client
        len(datasets.HEART_FEATURES),
        32,
        2,
        TrainingConfig(epochs=1, batch_size=32, learning_rate=0.05),  # heart_mlp's learning rate
        30,
    ),
    "digits": DataSet(
        "digits",
        "digits, 10 clients IID",
        10,
        "iid",
        64,
        64,
        10,
        TrainingConfig(epochs=2, batch_size=32, learning_rate=0.1),  # as bench/strategies.py
        30,
    ),
}
"""Both models are the built-in ones (`client_agent.models.heart_mlp`, `digits_mlp`): the hidden
width and learning rate are theirs. Heart trains 1 local epoch per round (its silos have 78-194
training records; a second epoch doubles the DP-SGD steps and so the epsilon), digits 2 epochs as
in bench/strategies.py."""

FIXED = "fixed"
"""A setting's clip that is the honest updates' median norm (see `honest_clip`)."""


@dataclass(frozen=True)
class Setting:
    """`mode` None (no DP), "central" or "dp-sgd"; `clip` a number, FIXED, or None (adaptive)."""

    key: str
    label: str
    mode: str | None = None
    z: float = 0.0
    clip: float | str | None = None
    datasets: tuple[str, ...] = ("heart", "digits")
    """The data sets it runs on."""

    def settings(self, clip: float, rounds: int, training: TrainingConfig) -> RunSettings:
        """The `fedstep start` settings of this setting (checked as `fedstep start` checks them)."""
        base = RunSettings(
            rounds=rounds,
            epochs=training.epochs,
            batch_size=training.batch_size,
            learning_rate=training.learning_rate,
            strategy="fedavg",
            quorum=1,
        )
        if self.mode is None:
            return base.validated()
        value = clip if self.clip == FIXED else self.clip
        return replace(
            base,
            dp=self.mode,
            dp_noise_multiplier=self.z,
            dp_clip="adaptive" if value is None else f"{value:g}",
            dp_delta=DELTA,
        ).validated()


SETTINGS = (
    Setting("none", "no DP"),
    Setting("central-0.5", "central, z 0.5, fixed C", "central", 0.5, FIXED),
    Setting("central-1", "central, z 1, fixed C", "central", 1.0, FIXED),
    Setting("central-2", "central, z 2, fixed C", "central", 2.0, FIXED),
    Setting("central-4", "central, z 4, fixed C", "central", 4.0, FIXED),
    Setting("central-8", "central, z 8, fixed C", "central", 8.0, FIXED),
    Setting("central-1-adaptive", "central, z 1, adaptive C", "central", 1.0, None),
    Setting("dp-sgd", "DP-SGD, z 1.1, C 1.0, batch 32", "dp-sgd", 1.1, 1.0),
    Setting("dp-sgd-3", "DP-SGD, z 3, C 1.0, batch 32", "dp-sgd", 3.0, 1.0, ("heart",)),
)
"""z 4 and 8 (central) and DP-SGD at z 3 (on heart only) go beyond z 0.5-2 and 1.1 to show what a
single-digit epsilon costs."""


# -- data and model --------------------------------------------------------------------------------


def load_data(spec: DataSet, seed: int) -> Data:
    """Each client's local train split and the held-out set, as the agent and `fedstep` load them."""
    prepared = datasets.prepare(spec.name, seed)
    parts = [datasets.local_split(prepared, (i + 1, spec.clients), seed, spec.scheme)[0] for i in range(spec.clients)]
    return Data(parts, *datasets.heldout(prepared))


def initial_model(spec: DataSet, seed: int) -> tensors.Tensors:
    """Glorot-uniform kernels and zero biases, as Keras initializes the built-in MLPs."""
    rng = np.random.default_rng(seed)

    def glorot(fan_in: int, fan_out: int) -> np.ndarray:
        limit = np.sqrt(6.0 / (fan_in + fan_out))
        return rng.uniform(-limit, limit, size=(fan_in, fan_out)).astype(np.float32)

    arrays = (
        glorot(spec.features, spec.hidden),
        np.zeros(spec.hidden, np.float32),
        glorot(spec.hidden, spec.classes),
        np.zeros(spec.classes, np.float32),
    )
    return dict(zip(NAMES, arrays, strict=True))


def norm(delta: tensors.Tensors) -> float:
    return math.sqrt(sum(float(np.sum(np.square(v.astype(np.float64)))) for v in delta.values()))


class KerasDpSgd:
    """The agent's DP-SGD (`client_agent.dp_sgd.fit`) on the data set's built-in Keras model, one
    model reused by every client (its weights set each time; plain SGD keeps no optimizer state)."""

    def __init__(self, spec: DataSet) -> None:
        from client_agent import models

        self.model = {"heart": models.heart_mlp, "digits": models.digits_mlp}[spec.name]()

    def train(
        self,
        weights: tensors.Tensors,
        x: np.ndarray,
        y: np.ndarray,
        training: TrainingConfig,
        params: dp_sgd.DpSgdParams,
        sampling_seed: int,
    ) -> tuple[tensors.Tensors, float]:
        from client_agent.keras_model import get_tensors, set_tensors

        set_tensors(self.model, weights)
        self.model.optimizer.learning_rate.assign(training.learning_rate)  # as keras_fit does
        metrics = dp_sgd.fit(
            self.model,
            x,
            y,
            params,
            epochs=training.epochs,
            batch_size=training.batch_size,
            sampling_seed=sampling_seed,
        )
        trained = get_tensors(self.model)
        return {n: (trained[n] - weights[n]).astype(np.float32) for n in weights}, metrics.get("train_loss", math.nan)


# -- one run ---------------------------------------------------------------------------------------


@dataclass
class Result:
    dataset: str
    setting: str
    seed: int
    rounds: int
    accuracies: list[float] = field(default_factory=list)
    epsilons: list[float] = field(default_factory=list)
    """Epsilon after each round, from the round summary (nan: none)."""
    norms: list[float] = field(default_factory=list)
    """The L2 norms of the clients' updates as they left them (before the server's clipping)."""
    client_epsilons: dict[str, float] = field(default_factory=dict)
    """DP-SGD: each client's record-level epsilon after the run."""
    client_examples: dict[str, int] = field(default_factory=dict)
    clip: float | None = None
    """The clip of the last round (the server's `dp_clip` measurement): adaptive C's end value."""
    error: str = ""
    seconds: float = 0.0

    @property
    def epsilon(self) -> float:
        return self.epsilons[-1] if self.epsilons else math.nan


def run(
    spec: DataSet,
    setting: Setting,
    data: Data,
    rounds: int,
    seed: int,
    clip: float,
    keras: KerasDpSgd | None,
) -> Result:
    """One federated run through the real server path; accuracy and epsilon after each round."""
    started = time.perf_counter()
    result = Result(spec.name, setting.key, seed, rounds)
    ids = [f"c{i:02d}" for i in range(spec.clients)]
    run_settings = setting.settings(clip, rounds, spec.training)
    run_settings.for_clients(ids)  # fedstep start's checks against the consortium (delta < 1/clients, ...)
    strategy = strategies.build(run_settings.strategy)
    record = RunRecord(
        RUN,
        ids,
        rounds,
        run_settings.training(),
        run_settings.strategy,
        ISSUED_AT,
        quorum=1,
        min_participants=2,
        seed=seed,
        model=ObjectRef(keys.model_key(RUN), "0" * 64, 1),  # the clients never read it here
        strategy_params=strategies.params.to_json(strategy.params),
        dp=run_settings.privacy(),
    )
    store, table, global_ref = start_in_memory(record, initial_model(spec, seed))
    spends: dict[str, list[Spend]] = {client: [] for client in ids}
    for round_number in range(1, rounds + 1):
        reporter = RecordingReporter()
        try:
            message, recipients = publish_in_memory(store, table, record.run_id, round_number, global_ref)
            weights = tensors.decode(store.get(message.global_model.key))
            mode = dp_sgd.dp_mode(message.instructions)
            for client in recipients:
                i = ids.index(client)
                x, y = data.parts[i]
                privacy: dict[str, float] = {}
                if mode == dp_sgd.DP_SGD:
                    if keras is None:
                        raise FedstepError("a DP-SGD round without the Keras trainer")
                    params = dp_sgd.DpSgdParams.of(message.instructions)
                    sampling = seed * 1_000_000 + round_number * 1_000 + i
                    delta, loss = keras.train(weights, x, y, message.training, params, sampling)
                    t = message.training
                    spends[client].append(
                        Spend(
                            round_number,
                            dp_sgd.steps_per_round(t.epochs, t.batch_size, len(y)),
                            dp_sgd.sampling_rate(t.batch_size, len(y)),
                            params.noise_multiplier,
                            params.delta,
                        )
                    )
                    privacy = run_privacy(spends[client]).report()
                else:
                    delta, loss = train(weights, x, y, message.training, 0.0, [seed, round_number, i])
                result.norms.append(norm(delta))
                upload(store, table, RUN, round_number, client, len(y), delta, loss, privacy)
            summary = try_complete_round(
                RUN, round_number, store=store, table=table, reporter=reporter, settings=SERVER
            )
        except (FedstepError, ValueError) as exc:
            result.error = f"round {round_number}: {type(exc).__name__}: {str(exc)[:300]}"
            break
        if summary is None:
            failures = "; ".join(f"{e}: {c[:300]}" for _, e, c in reporter.failures) or "not aggregated"
            result.error = f"round {round_number}: {failures}"
            break
        global_ref = summary.global_model
        result.epsilons.append(math.nan if summary.epsilon is None else summary.epsilon)
        result.clip = summary.measurements.get("dp_clip")
        result.accuracies.append(accuracy(tensors.decode(store.get(global_ref.key)), data.x_test, data.y_test))
    for i, client in enumerate(ids):
        result.client_examples[client] = len(data.parts[i][1])
        if spends[client]:
            result.client_epsilons[client] = run_privacy(spends[client]).epsilon or math.nan
    result.seconds = time.perf_counter() - started
    return result


def honest_clip(runs: list[Result]) -> float:
    """The median L2 norm of the honest (no-DP) updates, to 2 significant digits."""
    median = float(np.median(np.concatenate([r.norms for r in runs])))
    return float(f"{median:.2g}")


# -- figures, table, plot --------------------------------------------------------------------------

Key = tuple[str, str]
"""(data set, setting)"""


def curve(runs: list[Result], attribute: str) -> np.ndarray:
    """The runs' mean per round of `accuracies` or `epsilons` (a failed run holds its last value)."""
    rounds = max(r.rounds for r in runs)
    rows = []
    for r in runs:
        values = getattr(r, attribute) or [math.nan]
        rows.append(values + [values[-1]] * (rounds - len(values)))
    return np.mean(rows, axis=0)


def cell(runs: list[Result]) -> tuple[str, str]:
    """(accuracy "mean [low-high]" in %, epsilon) of the runs' final rounds."""
    finals = [100 * (r.accuracies or [0.0])[-1] for r in runs]
    spread = f" [{min(finals):.1f}-{max(finals):.1f}]" if len(runs) > 1 else ""
    failed = f" †{sum(bool(r.error) for r in runs)}" if any(r.error for r in runs) else ""
    epsilons = [r.epsilon for r in runs]
    if all(math.isnan(e) for e in epsilons):
        eps = "∞ (no DP)"
    else:
        mean = float(np.nanmean(epsilons))
        eps = (
            f"{mean:.1f}"
            if max(epsilons) - min(epsilons) < 0.05
            else f"{mean:.1f} [{min(epsilons):.1f}-{max(epsilons):.1f}]"
        )
    return f"{np.mean(finals):.1f}{spread}{failed}", eps


def clip_text(setting: Setting, runs: list[Result], clip: float) -> str:
    if setting.mode is None:
        return "-"
    if setting.mode == "dp-sgd":
        return f"{setting.clip:g} per example"
    if setting.clip is None:
        ends = [r.clip for r in runs if r.clip is not None]
        return f"adaptive (0.1 -> {np.mean(ends):.2g})" if ends else "adaptive"
    return f"{clip:g}"


def table(results: dict[Key, list[Result]], names: list[str], settings: list[Setting], clips: dict[str, float]) -> str:
    out = [
        "| data set | setting | clip C | held-out accuracy (%) | epsilon, delta 1e-5 |",
        "|---|---|---|---|---|",
    ]
    for name in names:
        for setting in settings:
            runs = results.get((name, setting.key))
            if not runs:
                continue
            accuracy_text, eps = cell(runs)
            row = (
                DATASETS[name].label,
                setting.label,
                clip_text(setting, runs, clips[name]),
                accuracy_text,
                eps,
            )
            out.append("| " + " | ".join(row) + " |")
    return "\n".join(out)


def accountant_table(rounds: list[int]) -> str:
    """Client-level epsilon by selection and noise multiplier z, the accountant alone: every client in
    every round (any number of clients: no amplification), or a fixed-size sample of them; each cell
    as `epsilon_fixed` reports it (replace-one neighbours, sensitivity 2C)."""
    zs = (0.5, 1.0, 2.0, 4.0, 8.0)
    selections = (
        (0, 0, "every client (4 of 4, 10 of 10, ...)"),
        (2, 4, "half (2 of 4, 5 of 10, ...)"),
        (2, 10, "2 of 10"),
    )
    out = [
        "| clients per round | rounds | " + " | ".join(f"z {z:g}" for z in zs) + " |",
        "|---|---|" + "---|" * len(zs),
    ]
    for sample, population, label in selections:
        for count in rounds:
            cells = [f"{epsilon_fixed(z, sample or 1, population or 1, count, DELTA):.1f}" for z in zs]
            out.append(f"| {label} | {count} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def plot(results: dict[Key, list[Result]], names: list[str], settings: list[Setting], path: Path) -> None:
    """Accuracy against epsilon: per data set, a line per DP setting through its rounds (mean of the
    seeds), its final round marked; the no-DP accuracy as a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(names), figsize=(6 * len(names), 4.2), dpi=110, squeeze=False)
    colors = dict(zip([s.key for s in settings if s.mode], plt.get_cmap("tab10").colors, strict=False))
    for ax, name in zip(axes[0], names, strict=True):
        for setting in settings:
            runs = results.get((name, setting.key))
            if not runs:
                continue
            acc = 100 * curve(runs, "accuracies")
            if setting.mode is None:
                ax.axhline(
                    acc[-1], color="black", linestyle="--", linewidth=1, label=f"{setting.label} ({acc[-1]:.1f} %)"
                )
                continue
            eps = curve(runs, "epsilons")
            color = colors[setting.key]
            ax.plot(eps, acc, color=color, linewidth=1, alpha=0.6)
            marker, level = ("s", "record-level") if setting.mode == "dp-sgd" else ("o", "client-level")
            ax.plot(eps[-1], acc[-1], marker=marker, color=color, linestyle="", label=f"{setting.label} ({level})")
        ax.set_xscale("log")
        ax.set_xlabel("epsilon at delta 1e-5 after each round (marker: the last)")
        ax.set_ylabel("held-out accuracy (%)")
        ax.set_title(f"{DATASETS[name].label}, {max(r.rounds for r in results[(name, 'none')])} rounds")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    print(f"wrote {path}")


MARK = "<!-- bench/privacy.py {} -->"


def write_docs(text: str) -> None:
    """Replace the text between the benchmark's markers in docs/benchmarks.md."""
    start, end = MARK.format("start"), MARK.format("end")
    path = ROOT / "docs/benchmarks.md"
    old = path.read_text()
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.S)
    if not pattern.search(old):
        print(f"note: docs/benchmarks.md has no {start} ... {end} markers; not written")
        return
    path.write_text(pattern.sub(lambda _: f"{start}\n{text}\n{end}", old, count=1))
    print("wrote the tables into docs/benchmarks.md")


# -- main ------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, help="rounds per run (default: 30 for both data sets)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 3 rounds, 1 seed")
    parser.add_argument("--seeds", type=int, default=SEEDS, help="seeds per setting (default %(default)s)")
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--datasets", default="heart,digits", help="comma-separated (default %(default)s)")
    parser.add_argument(
        "--settings", help=f"comma-separated subset of {','.join(s.key for s in SETTINGS)} (no DP always runs)"
    )
    parser.add_argument("--clip", type=float, help="the fixed clip C of the central rows (default: measured)")
    parser.add_argument("--plot", type=Path, help="write the plot here (with --write-docs: docs/images/privacy.png)")
    parser.add_argument("--write-docs", action="store_true", help="rewrite the table in docs/ and the plot")
    args = parser.parse_args()
    names = [n.strip() for n in args.datasets.split(",")]
    wanted = {s.strip() for s in args.settings.split(",")} if args.settings else {s.key for s in SETTINGS}
    settings = [s for s in SETTINGS if s.key in wanted | {"none"}]
    unknown = sorted(set(names) - set(DATASETS)) + sorted(wanted - {s.key for s in SETTINGS})
    seeds = list(range(args.first_seed, args.first_seed + (1 if args.quick else args.seeds)))
    if unknown or not seeds:
        parser.error(f"unknown data set(s) or setting(s): {unknown}" if unknown else "seeds >= 1")
    rounds = {n: 3 if args.quick else (args.rounds or DATASETS[n].rounds) for n in names}
    started, cpu = time.perf_counter(), time.process_time()
    results: dict[Key, list[Result]] = {}
    clips: dict[str, float] = {}
    for name in names:
        spec = DATASETS[name]
        t = spec.training
        data = {seed: load_data(spec, seed) for seed in seeds}
        keras = KerasDpSgd(spec) if any(s.mode == "dp-sgd" and name in s.datasets for s in settings) else None
        for seed, d in data.items():
            majority = np.bincount(d.y_test).max() / len(d.y_test)
            print(
                f"{spec.label} seed {seed}: train examples per client {[len(y) for _, y in d.parts]}, "
                f"held-out {len(d.y_test)} (majority class {100 * majority:.1f} %); {rounds[name]} rounds, "
                f"{t.epochs} local epoch(s), batch {t.batch_size}, lr {t.learning_rate:g}",
                flush=True,
            )
        for setting in settings:
            if name not in setting.datasets:
                continue
            if setting.mode == "central" and setting.clip == FIXED and name not in clips:
                clips[name] = args.clip or honest_clip(results[(name, "none")])
                norms = np.concatenate([r.norms for r in results[(name, "none")]])
                q = np.percentile(norms, [10, 25, 50, 75, 90])
                print(
                    f"  honest update norms (no DP, all rounds, clients and seeds): 10/25/50/75/90th percentiles "
                    f"{' / '.join(f'{v:.3g}' for v in q)}; first round median "
                    f"{np.median([r.norms[: spec.clients] for r in results[(name, 'none')]]):.3g}, last round "
                    f"median {np.median([r.norms[-spec.clients :] for r in results[(name, 'none')]]):.3g}; "
                    f"fixed C = {clips[name]:g}",
                    flush=True,
                )
            runs = [run(spec, setting, data[s], rounds[name], s, clips.get(name, 1.0), keras) for s in seeds]
            results[(name, setting.key)] = runs
            accuracy_text, eps = cell(runs)
            extra = ""
            if setting.mode == "dp-sgd":
                per_client = {
                    c: (float(np.mean([r.client_epsilons[c] for r in runs])), runs[0].client_examples[c])
                    for c in runs[0].client_epsilons
                }
                extra = "; per client epsilon (n): " + ", ".join(
                    f"{c} {e:.1f} ({n})" for c, (e, n) in per_client.items()
                )
            print(
                f"  {setting.label:32s} accuracy {accuracy_text} %, epsilon {eps}{extra} "
                f"({sum(r.seconds for r in runs):.1f} s)",
                flush=True,
            )
            for r in runs:
                if r.error:
                    print(f"    † seed {r.seed} failed in {r.error}")
    clips.update({n: clips.get(n, math.nan) for n in names})
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    which = f"the mean over seeds {seeds[0]}-{seeds[-1]} [lowest-highest]" if len(seeds) > 1 else f"seed {seeds[0]}"
    text = table(results, names, settings, clips)
    legend = (
        f"Final held-out accuracy after {', '.join(f'{rounds[n]} rounds ({n})' for n in names)}, {which}; "
        "epsilon after the last round, from the round summaries (central: client-level; DP-SGD: the largest "
        "client's record-level epsilon; [lowest-highest] where the seeds differ). †n: n runs failed. "
        "The client-level epsilon is for replace-one neighbours (one client's data replaced by another's): one "
        "client's clipped update can move the sum by 2C, so the accountant takes noise multiplier z / 2."
    )
    accountant = accountant_table(sorted({10, *rounds.values()}))
    print()
    print(text)
    print()
    print(legend)
    print()
    print("Client-level epsilon (delta 1e-5) by clients per round and z, as fedstep reports it:")
    print()
    print(accountant)
    print(f"total {elapsed:.0f} s wall, {cpu:.0f} s CPU")
    plot_path = args.plot or (ROOT / "docs/images/privacy.png" if args.write_docs and not args.quick else None)
    if plot_path is not None:
        plot(results, names, settings, plot_path)
    if args.write_docs and not args.quick:
        write_docs(
            f"{text}\n\n{legend}\n\nClient-level epsilon (delta 1e-5) by clients per round (fixed-size selection "
            "without replacement) and noise multiplier z, `epsilon_fixed` alone, as fedstep reports it (replace-one "
            f"neighbours, sensitivity 2C):\n\n{accountant}"
        )


if __name__ == "__main__":
    main()
