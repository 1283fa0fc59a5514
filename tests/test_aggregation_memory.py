"""DESIGN invariant 5: the real aggregation path holds at most 2x one model plus one update, whatever
the number of clients (bench/aggregation_memory.py prints the figures; docs/benchmarks.md keeps them)."""

from __future__ import annotations

import pytest
from bench_modules import load_bench


@pytest.fixture(scope="module")
def bench():
    return load_bench("aggregation_memory")


@pytest.mark.parametrize("clients", [2, 12])
def test_aggregation_holds_the_float32_sum_and_one_update_whatever_the_clients(bench, clients):
    store, table, _, global_bytes = bench.make_round(clients, 1_000_000)
    _, peak_mib, _ = bench.measure(bench.real_path, store, table)
    models = peak_mib * 2**20 / len(global_bytes)
    # the float32 sum (1x) and one update (1x), then the global model and its encoding; DESIGN
    # invariant 5 allows 3x (2x one model plus one update)
    assert models <= 2.5, f"peak {models:.2f}x one model"
