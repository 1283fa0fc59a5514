"""Aggregation memory and speed: the real aggregation path's peak as a multiple of one model, against
loading every update first (the baseline), and FedAvg's accumulation against an in-place float32
sum of the same bytes, in the same process.

    .venv/bin/python bench/aggregation_memory.py [--clients 20] [--params 2000000] [--speed-clients 40]

Two ratios answer issue 14's goals: accumulation speed / in-place float32 sum (goal >= 0.5), and
peak / (2x one model + one update) (goal <= 1).

The real path is `fedstep.core.rounds.try_complete_round` on in-memory ports (fedstep.memory): it
claims the round, reads each update's header and then its data into one buffer, checks it, bounds
it, adds it to FedAvg's float64 accumulator, reads the global model once the updates are in, and
writes the new model once. DESIGN invariant 5 asks for at most 2x one model plus one update: the
float64 accumulator (2x) and one update (1x). The baseline decodes every update with
`safetensors` and averages them with numpy. Peak Python-heap memory comes from tracemalloc (numpy's
buffers are traced); the stored files themselves are not counted, as they would be in S3.
"""

from __future__ import annotations

import argparse
import sys
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository: fedstep and tests

from fedstep.core import keys, tensors
from fedstep.core.rounds import publish_round, try_complete_round
from fedstep.core.schemas import ObjectRef, RunRecord, TrainingConfig
from fedstep.core.updates import encode_update
from fedstep.memory import MemoryStore, MemoryTable, RecordingPublisher, RecordingReporter

RUN = "bench"


def make_round(
    clients: int, params: int, seed: int = 0, strategy: str = "fedavg"
) -> tuple[MemoryStore, MemoryTable, list[bytes], bytes]:
    """A published round 1 whose updates (deltas) are all in: the store, the table, the update files
    and the global model's file."""
    rng = np.random.default_rng(seed)
    shapes = {"000/dense/kernel": (params // 1000, 1000), "001/dense/bias": (1000,)}
    ids = [f"c{i:03d}" for i in range(clients)]
    architecture = ObjectRef(keys.model_key(RUN), "0" * 64, 1)
    run = RunRecord(RUN, ids, 1, TrainingConfig(), strategy, "t", quorum=1, min_participants=1, model=architecture)
    store, table = MemoryStore(), MemoryTable(run)
    global_bytes = tensors.encode({k: rng.normal(size=s).astype(np.float32) for k, s in shapes.items()})
    global_key = keys.global_key(RUN, 0, keys.INITIAL_VERSION)
    store.put(global_key, global_bytes)
    ref = ObjectRef(global_key, tensors.sha256_hex(global_bytes), len(global_bytes))
    publish_round(
        RUN,
        1,
        0,
        ref,
        "token",
        "t",
        store=store,
        table=table,
        publisher=RecordingPublisher(),
        reporter=RecordingReporter(),
    )
    files = []
    for i, client in enumerate(ids):
        delta = {k: rng.normal(size=s).astype(np.float32) for k, s in shapes.items()}
        data, item = encode_update(
            delta, run_id=RUN, round_number=1, client_id=client, num_examples=100 + i, metrics={}, created_at="t"
        )
        store.put(item.update.key, data)
        table.put(item.to_item())
        files.append(data)
    return store, table, files, global_bytes


def real_path(store: MemoryStore, table: MemoryTable) -> tensors.Tensors:
    summary = try_complete_round(RUN, 1, store=store, table=table, reporter=RecordingReporter())
    assert summary is not None and len(summary.participants) == len(summary.selected)
    return tensors.decode(store.get(summary.global_model.key))


def load_all_then_average(files: list[bytes], global_bytes: bytes) -> tensors.Tensors:
    decoded = [tensors.decode(data) for data in files]
    base = tensors.decode(global_bytes)
    n = np.array([100 + i for i in range(len(files))], dtype=np.float64)
    return {
        k: (base[k] + np.average(np.stack([d[k] for d in decoded]), axis=0, weights=n)).astype(np.float32) for k in base
    }


def measure(fn: Callable[..., tensors.Tensors], *args: object) -> tuple[float, float, tensors.Tensors]:
    """(seconds, peak MiB, result) of one call; the result's own decoding is outside the peak."""
    tracemalloc.start()
    started = time.perf_counter()
    result = fn(*args)
    seconds = time.perf_counter() - started
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return seconds, peak / 2**20, result


def best_of(repeat: int, fn: Callable[[], object]) -> float:
    """The fastest of `repeat` calls, in seconds (the least disturbed by other work)."""
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


def speed(clients: int, params: int, repeat: int = 5) -> float:
    """Prints FedAvg's accumulation (`fedstep.core.strategies.aggregation.weighted_mean` over
    updates already in memory) against an in-place float32 sum of the same arrays, and the checks'
    pass (sha256 + finite) against sha256 alone; returns the accumulation's ratio."""
    import hashlib

    from fedstep.core.strategies import ClientUpdate
    from fedstep.core.strategies.aggregation import weighted_mean
    from fedstep.core.strategies.update_list import UpdateList
    from fedstep.core.update_source import DataCheck

    rng = np.random.default_rng(1)
    arrays = [rng.normal(size=params).astype(np.float32) for _ in range(clients)]
    updates = [ClientUpdate(f"c{i}", 100 + i, {"w": a}) for i, a in enumerate(arrays)]
    mib = clients * 4 * params / 2**20

    def float32_sum() -> None:
        acc = np.zeros(params, dtype=np.float32)
        for a in arrays:
            np.add(acc, a, out=acc)

    def sha256_only() -> None:
        for a in arrays:
            hashlib.sha256(memoryview(a)).hexdigest()

    def checks() -> None:
        for a in arrays:
            DataCheck(hashlib.sha256()).feed(memoryview(a).cast("B"))  # a cached block at a time

    base = best_of(repeat, float32_sum)
    fused = best_of(repeat, lambda: weighted_mean(UpdateList(updates)))
    hashed, checked = best_of(repeat, sha256_only), best_of(repeat, checks)
    print(f"\n{clients} updates x {4 * params / 2**20:.1f} MiB in memory ({mib:.0f} MiB), best of {repeat}:")
    print(f"in-place float32 sum (baseline)   : {base:7.4f} s  {mib / 1024 / base:6.1f} GiB/s")
    print(f"FedAvg's weighted accumulation    : {fused:7.4f} s  {mib / 1024 / fused:6.1f} GiB/s")
    print(f"checks' pass (sha256 + finite)     : {checked:7.4f} s  {mib / 1024 / checked:6.1f} GiB/s")
    print(f"sha256 alone                      : {hashed:7.4f} s  {mib / 1024 / hashed:6.1f} GiB/s")
    print(f"ratio accumulation / float32 sum  : {base / fused:.2f} (goal >= 0.5)")
    print(f"ratio checks / sha256 alone       : {hashed / checked:.2f} (what the finiteness check adds)")
    return base / fused


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--params", type=int, default=2_000_000, help="parameters per model (float32)")
    parser.add_argument(
        "--strategy", default="fedavg", help="a strategy's peak besides FedAvg's (its first round; no comparison)"
    )
    parser.add_argument("--speed-clients", type=int, default=40, help="updates in the speed comparison")
    args = parser.parse_args()
    if args.strategy != "fedavg":
        store, table, _, global_bytes = make_round(args.clients, args.params, strategy=args.strategy)
        model_mib = len(global_bytes) / 2**20
        seconds, peak, _ = measure(real_path, store, table)
        print(f"{args.strategy}: {args.clients} clients, model {model_mib:.1f} MiB: peak {peak:.1f} MiB")
        print(f"{args.strategy}: peak {peak / model_mib:.2f} x one model, {seconds:.2f} s")
        return
    store, table, files, global_bytes = make_round(args.clients, args.params)
    model_mib = len(global_bytes) / 2**20
    print(f"{args.clients} clients, model {args.params:,} parameters ({model_mib:.1f} MiB per file)")
    base_s, base_mib, base = measure(load_all_then_average, files, global_bytes)
    real_s, real_mib, real = measure(real_path, store, table)
    for k in base:
        np.testing.assert_allclose(real[k], base[k], rtol=1e-5, atol=1e-5)
    print(f"load-all baseline     : peak {base_mib:8.1f} MiB ({base_mib / model_mib:5.1f}x the model)  {base_s:6.2f} s")
    print(f"real aggregation path : peak {real_mib:8.1f} MiB ({real_mib / model_mib:5.1f}x the model)  {real_s:6.2f} s")
    print(f"ratio (baseline / real path): memory {base_mib / real_mib:.1f}x, time {base_s / real_s:.2f}x")
    print(
        f"real path peak: {real_mib / model_mib:.2f} x one model, independent of the number of clients "
        "(DESIGN invariant 5: at most 2x one model plus one update = 3x)"
    )
    print(f"ratio peak / (2x one model + one update): {real_mib / (3 * model_mib):.2f} (goal <= 1)")
    speed(args.speed_clients, args.params)


if __name__ == "__main__":
    main()
