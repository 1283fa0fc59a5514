"""Issue 24, point 4: bench/simulation.py measures the memory engine against Flower's Simulation Engine
(outside CI: it needs Flower's venv). Its pure parts: the verdict, the table and the docs section."""

from __future__ import annotations

import pytest
from bench_modules import load_bench


@pytest.fixture(scope="module")
def bench():
    return load_bench("simulation", "simulation_bench")


def side(bench, seconds, accuracies, engine="fedstep memory", error=""):
    return bench.Side(
        engine=engine, start_to_final_s=seconds, heldout_accuracy=accuracies, round_s=[2.0, 1.0], error=error
    )


def test_simulation_bench_passes_at_half_flowers_time_and_at_most_one_point_below(bench):
    task = bench.TASKS["A"]
    flower = side(bench, 100.0, [0.70, 0.80])
    assert bench.verdict(task, side(bench, 50.0, [0.70, 0.791]), flower).startswith("A: PASS")
    assert bench.verdict(task, side(bench, 40.0, [0.70, 0.85]), flower).startswith("A: PASS")  # above is no loss
    slow = bench.verdict(task, side(bench, 60.0, [0.70, 0.80]), flower)
    assert slow.startswith("A: FAIL (0.60x > 0.5x)")
    worse = bench.verdict(task, side(bench, 30.0, [0.70, 0.78]), flower)
    assert worse.startswith("A: FAIL (2.0 points below Flower)")


def test_simulation_bench_reports_a_refusal_by_fedsteps_own_words_not_a_figure(bench):
    task = bench.TASKS["B"]
    message = "data set digits: client-438 would get 1 example(s) of a pool of 1437; each client needs at least 2"
    refused = side(bench, None, [], error=message)
    flower = side(bench, None, [], engine="Flower", error="not run")
    assert bench.verdict(task, refused, flower) == f"B: no verdict - fedstep refused or failed: {message}"
    row = bench.table([(task, refused, flower)]).splitlines()[-1]
    assert row.startswith("| B: digits, 1000 clients (iid), 20 a round, 20 rounds | refused: " + message)
    assert bench.ratio(refused, flower) is None


def test_simulation_bench_writes_between_its_markers_only(bench):
    start, end = bench.MARK.format("start"), bench.MARK.format("end")
    document = f"# Benchmarks\n\nbefore\n{start}\nold table\n{end}\nafter\n"
    assert bench.replace_marked(document, "new table") == f"# Benchmarks\n\nbefore\n{start}\nnew table\n{end}\nafter\n"
    assert bench.replace_marked("# Benchmarks\n", "new table") is None
    assert start in bench.DOCS.read_text() and end in bench.DOCS.read_text()  # docs/benchmarks.md has its section


def test_simulation_bench_reports_each_sides_median_run_of_those_that_finished(bench):
    runs = [side(bench, 70.0, [0.7]), side(bench, None, [], error="RuntimeError: killed"), side(bench, 60.0, [0.7])]
    runs.append(side(bench, 90.0, [0.7]))
    median = bench.median_run(runs)
    assert median.start_to_final_s == 70.0 and median.runs_s == [70.0, 60.0, 90.0]
    assert bench.median_run(runs[1:2]).error == "RuntimeError: killed"
    task = bench.TASKS["A"]
    text = bench.runs_text([(task, median, bench.median_run([side(bench, 150.0, [0.7], engine="Flower 1.42.0")]))], 3)
    assert text == "the median of 3 alternating runs of each side (A: fedstep 70.0 / 60.0 / 90.0 s, Flower 150.0 s)"
    assert bench.runs_text([], 1) == "one run of each side"
