"""`fedstep local` says why a run stopped early and records it in summary.json (fedstep issue 13)."""

from __future__ import annotations

import json

from fedstep.core.label_counts import LabelCounts
from fedstep.local.demo import DemoConfig, demo_summary, stop_line
from fedstep.operator.settings import RunSettings

COUNTS = LabelCounts.of("digits", "iid", 0, [0, 1], {"client-1": [3, 4], "client-2": [4, 3]})


def _summary(settings: RunSettings, output: dict) -> tuple[str | None, dict]:
    """What run_demo prints and writes when the execution ends with `output` after round 3."""
    reason = output.get("stop_reason")
    rounds = [{"round": r} for r in (1, 2, 3)]
    summary = demo_summary(
        "run-1",
        rounds,
        {"test_accuracy": 0.93},
        reason,
        DemoConfig(settings=settings),
        "iid",
        "m:f",
        settings,
        {},
        COUNTS,
    )
    return stop_line(reason, settings, 3), json.loads(json.dumps(summary))


def test_a_run_that_meets_its_target_says_so_and_records_why_it_stopped():
    settings = RunSettings(rounds=10, target="test_accuracy>=0.9")
    line, summary = _summary(settings, {"stop_reason": "target_reached", "rounds_completed": 3})
    assert line == (
        "target test_accuracy>=0.9 reached: round 2's global model met it in the clients' federated "
        "evaluation during round 3; the run stops"
    )
    assert summary["stop_reason"] == "target_reached" and len(summary["rounds"]) == 3
    assert summary["target_met_by_round"] == 2
    assert summary["config"]["rounds"] == 10 and summary["config"]["target"] == "test_accuracy>=0.9"


def test_a_spent_privacy_budget_is_named_as_the_reason():
    settings = RunSettings(rounds=10, dp="central", dp_noise_multiplier=1.0, dp_epsilon=2.0)
    line, summary = _summary(settings, {"stop_reason": "privacy_budget"})
    assert line is not None and line.startswith("privacy budget reached after round 3") and "--dp-epsilon 2" in line
    assert summary["stop_reason"] == "privacy_budget"


def test_a_run_of_all_its_rounds_prints_no_stop_line_and_records_max_rounds():
    line, summary = _summary(RunSettings(rounds=3), {"stop_reason": "max_rounds"})
    assert line is None and summary["stop_reason"] == "max_rounds"
    assert summary["config"]["learning_rate"] is None  # the model's own optimizer setting


def test_any_other_stop_reason_is_printed_as_it_is():
    assert stop_line("stopped", RunSettings(), 2) == "the run stopped after round 2: stopped"


def test_summary_json_names_the_neighbouring_relation_its_epsilons_are_for():
    """Issue 21, finding 7: replace-one for a fixed-size sample, add/remove under --selection poisson."""
    central = {"dp": "central", "dp_noise_multiplier": 1.0}
    cases = [({}, None), (central, "replace-one"), ({**central, "selection": "poisson"}, "add-remove")]
    for settings, relation in cases:
        _, summary = _summary(RunSettings(**settings), {"stop_reason": "max_rounds"})
        assert summary["neighbouring"] == relation
    assert summary["config"]["selection"] == "poisson"
