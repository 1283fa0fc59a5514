"""Issue 23, the codecs' trade-off: bench/compression.py measures the update files the real client steps
wrote and the real server aggregated (it prints the figures over 3 seeds; docs/benchmarks.md keeps
them). A smoke run of two rounds on digits."""

from __future__ import annotations

import pytest
from bench_modules import load_bench

from fedstep.core import codecs, tensors


@pytest.fixture(scope="module")
def bench():
    return load_bench("compression")


def test_the_compression_bench_counts_the_bytes_of_the_files_each_codec_wrote(bench):
    digits = bench.DATASETS["digits"]
    data = digits.load(seed=0)
    model = tensors.TensorSpec.of(bench.initial_model(0, digits.features, digits.hidden))
    results = {}
    for name in ("float32", "int8", "topk:0.1+int8"):
        result = bench.run(name, digits, data, rounds=2, seed=0)
        assert not result.error and result.rejected == 0 and len(result.accuracies) == 2
        assert result.tensor_bytes == [codecs.get(name).layout(model).data_bytes] * 2
        assert all(f > t for f, t in zip(result.file_bytes, result.tensor_bytes, strict=True))  # the header counts
        results[("digits", name)] = [result]
    assert results[("digits", "topk:0.1+int8")][0].norm_bound is not None  # error feedback got the round's bound
    assert results[("digits", "float32")][0].norm_bound is None
    [int8_goal, _] = bench.GOALS
    line = bench.verdict(results, int8_goal)
    assert line.startswith("int8: no verdict")  # mnist was not measured
