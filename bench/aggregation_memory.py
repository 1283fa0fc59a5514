"""Aggregation memory and speed: streaming FedAvg vs. loading every update first (the baseline).

    .venv/bin/python bench/aggregation_memory.py [--clients 20] [--params 2000000]

Both decode the same safetensors files with full validation. The baseline holds every decoded
update at once and averages them with numpy. Streaming FedAvg (what the aggregation Lambda runs)
holds one update at a time. Peak Python-heap memory comes from tracemalloc; numpy's buffers are
traced.
"""

from __future__ import annotations

import argparse
import time
import tracemalloc
from collections.abc import Callable, Iterator

import numpy as np

from fedstep import tensors
from fedstep.strategies import ClientUpdate, FedAvg


def make_updates(clients: int, params: int, seed: int = 0) -> tuple[tensors.Tensors, list[bytes]]:
    rng = np.random.default_rng(seed)
    shapes = {"000/dense/kernel": (params // 1000, 1000), "001/dense/bias": (1000,)}
    global_weights = {k: np.zeros(s, np.float32) for k, s in shapes.items()}
    files = [
        tensors.encode({k: rng.normal(size=s).astype(np.float32) for k, s in shapes.items()}) for _ in range(clients)
    ]
    return global_weights, files


def streaming(global_weights: tensors.Tensors, files: list[bytes]) -> tensors.Tensors:
    spec = tensors.TensorSpec.of(global_weights)

    def updates() -> Iterator[ClientUpdate]:
        for i, data in enumerate(files):
            yield ClientUpdate(f"c{i}", 100 + i, tensors.decode(data, expected=spec))

    return FedAvg().aggregate(global_weights, updates())


def load_all_then_average(global_weights: tensors.Tensors, files: list[bytes]) -> tensors.Tensors:
    spec = tensors.TensorSpec.of(global_weights)
    decoded = [tensors.decode(data, expected=spec) for data in files]
    n = np.array([100 + i for i in range(len(files))], dtype=np.float64)
    return {k: np.average(np.stack([d[k] for d in decoded]), axis=0, weights=n).astype(np.float32) for k in spec.shapes}


def measure(fn: Callable[..., tensors.Tensors], *args: object) -> tuple[float, float, tensors.Tensors]:
    tracemalloc.start()
    started = time.perf_counter()
    result = fn(*args)
    seconds = time.perf_counter() - started
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return seconds, peak / 2**20, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--params", type=int, default=2_000_000, help="parameters per model (float32)")
    args = parser.parse_args()
    global_weights, files = make_updates(args.clients, args.params)
    model_mib = sum(len(f) for f in files) / len(files) / 2**20
    print(f"{args.clients} clients, model {args.params:,} parameters ({model_mib:.1f} MiB per update file)")
    base_s, base_mib, base = measure(load_all_then_average, global_weights, files)
    stream_s, stream_mib, stream = measure(streaming, global_weights, files)
    for k in base:
        np.testing.assert_allclose(stream[k], base[k], atol=1e-6)
    print(f"load-all baseline : peak {base_mib:8.1f} MiB  {base_s:6.2f} s")
    print(f"streaming FedAvg  : peak {stream_mib:8.1f} MiB  {stream_s:6.2f} s")
    print(f"ratio (baseline / streaming): memory {base_mib / stream_mib:.1f}x, time {base_s / stream_s:.2f}x")
    print(f"streaming peak / model size: {stream_mib / model_mib:.1f} (independent of the number of clients)")


if __name__ == "__main__":
    main()
