"""Issue 24: bench/round_overhead.py's reading of a `fedstep local` run, which bench/flower_baseline.py
(run under Flower's venv) shares to put fedstep beside Flower. Pure parsing: console lines, a
summary.json and the agents' round lines written here, no run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from bench_modules import load_bench

STAMPS = [
    (3.0, "preparing digits for 3 clients"),
    (6.0, "starting the local cloud"),
    (9.5, "local cloud at http://127.0.0.1:5000"),
    (9.8, "3 clients online"),
    (12.0, "round 1/3  participants 3  loss 1.9  accuracy 0.4000  held-out accuracy 0.3972  2.2 s"),
    (12.8, "round 2/3  participants 3  loss 1.1  accuracy 0.6500  held-out accuracy 0.6417  0.7 s"),
    (13.6, "round 3/3  participants 3  loss 0.8  accuracy 0.7500  held-out accuracy 0.7444  0.8 s"),
    (15.0, "final global model on the held-out test set: accuracy 0.7444, loss 0.8000; summary in x"),
]


@pytest.fixture(scope="module")
def bench():
    return load_bench("round_overhead")


def agent_logs(out: Path) -> None:
    """Two agents' round lines: download, train, upload per round (seconds)."""
    (out / "logs").mkdir(parents=True)
    for client, train in (("client-1", 0.40), ("client-2", 0.50)):
        lines = [
            f"round {r} of run-x | 400 examples | down 10 KiB up 10 KiB | 0.5 s "
            f"(download 0.01 s, train {train + r / 100:.2f} s, upload 0.03 s)"
            for r in (1, 2, 3)
        ]
        (out / "logs" / f"{client}.log").write_text("\n".join(lines) + "\n")


def test_a_fedstep_run_is_summarized_from_its_console_lines_and_agent_logs(bench, tmp_path):
    agent_logs(tmp_path)
    figures = bench.summarize(STAMPS, tmp_path)
    assert figures["last_round"] == 13.6  # round N's model, Flower's figure
    assert figures["final"] == 15.0  # the final model's line, after the run ended
    assert (figures["deploy_start"], figures["cloud_up"], figures["online"], figures["round1"]) == (6.0, 9.5, 9.8, 12.0)
    assert figures["rounds"] == {1: 2.2, 2: 0.7, 3: 0.8}
    assert figures["steady"] == pytest.approx(0.75)  # median of rounds 2..N
    assert figures["heldout_accuracy"] == [0.3972, 0.6417, 0.7444]
    # mean of the clients per round, median of rounds 2..N: train (0.42 + 0.52) / 2, (0.43 + 0.53) / 2
    assert figures["steady_phase"] == pytest.approx({"download": 0.01, "train": 0.475, "upload": 0.03})


def test_a_fedstep_runs_round_times_come_from_summary_json_at_full_precision(bench, tmp_path):
    agent_logs(tmp_path)
    rounds = [
        {"round": 1, "duration_s": 2.213, "heldout_accuracy": 0.39722},
        {"round": 2, "duration_s": 0.684, "heldout_accuracy": 0.64167},
        {"round": 3, "duration_s": 0.746, "heldout_accuracy": 0.74444},
    ]
    (tmp_path / "summary.json").write_text(json.dumps({"rounds": rounds}))
    figures = bench.summarize(STAMPS, tmp_path)
    assert figures["rounds"] == {1: 2.213, 2: 0.684, 3: 0.746}
    assert figures["steady"] == pytest.approx(0.715)
    assert figures["heldout_accuracy"] == [0.39722, 0.64167, 0.74444]
