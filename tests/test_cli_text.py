"""`fedstep.render.text`: tables, and the one helper that makes client-written text safe to print (`clean`).

Every renderer of client-written strings is fed a value carrying terminal control sequences and
must print none of them (the attack on the local cloud, through the real commands, is
`tests/test_adversarial.py::test_20_9_control_sequences_in_a_heartbeat_and_a_decline_are_never_printed`)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from fedstep.render.text import clean, html_text, lines, table

EVIL = "\x1b[2J\x1b]0;pwned\x07"
"""Clear the screen, then set the window title (OSC 0, ended by BEL)."""


def printable(text: str) -> bool:
    """No control character but the newlines between lines."""
    return all(c == "\n" or c.isprintable() for c in text)


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("plain text, é 中", "plain text, é 中"),
        (EVIL, "\\x1b[2J\\x1b]0;pwned\\x07"),
        ("two\nlines\r\tand a tab", "two\\nlines\\r\\tand a tab"),
        ("\x00\x7f\x85\x9b", "\\x00\\x7f\\x85\\x9b"),  # NUL, DEL, C1 NEL and CSI
        ("abc\u202edef\u2028", "abc\\u202edef\\u2028"),  # a bidirectional override, a line separator
    ],
)
def test_clean_replaces_every_control_character_with_a_visible_escape(raw, shown):
    assert clean(raw) == shown
    assert printable(clean(raw))


def test_a_table_cell_and_a_line_cannot_add_lines_or_break_the_alignment():
    rows = table(("CLIENT", "REASON"), [("a", f"x{EVIL}\ny"), ("b", "short")])
    assert len(rows) == 3 and all(printable(r) for r in rows)
    assert rows[1].index("x\\x1b") == rows[2].index("short")  # the widths are those of what is shown
    assert lines(["one", "two\nforged line"]) == "one\ntwo\\nforged line"
    assert html_text(f"<b>{EVIL}</b>") == "&lt;b&gt;\\x1b[2J\\x1b]0;pwned\\x07&lt;/b&gt;"


def _view():
    from fedstep.core.schemas import Feedback, ObjectRef, Rejection, RoundSummary, RunRecord, TrainingConfig
    from fedstep.operator.views import Execution, RunView
    from fedstep.render.client_metrics import ClientRound

    summary = RoundSummary(
        run_id="run-x",
        round=1,
        selected=["a", "b", "c"],
        participants=["a"],
        num_examples=10,
        rejected=[Rejection("b", f"rejected {EVIL}")],
        metrics={"test_accuracy": 0.5},
        global_model=ObjectRef("runs/run-x/rounds/00001/global-v.safetensors", "0" * 64, 1),
        duration_s=1.0,
        aggregation_s=0.1,
        completed_at="2026-11-30T12:00:00Z",
        declined=[Rejection("c", f"declined {EVIL}")],
    )
    started = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
    execution = Execution("FAILED", started, started, {}, "QuorumNotMet", f"1 of 2: b {EVIL}")
    record = RunRecord("run-x", ["a", "b", "c"], 2, TrainingConfig(), "fedavg", "2026-11-30T12:00:00Z")
    feedback = {"b": Feedback("b", "run-x", 1, "0" * 64, f"told {EVIL}", "2026-11-30T12:00:00Z")}
    clients = {1: [ClientRound(1, "b", "rejected", detail=f"item {EVIL}")]}
    return RunView("run-x", record, execution, [summary], feedback, clients=clients)


def test_status_and_its_watch_print_no_control_character_of_a_reason_or_a_cause():
    from fedstep.render.status import render_status, watch

    view = _view()
    text = render_status(view)
    assert printable(text) and "declined \\x1b[2J" in text and "rejected \\x1b[2J" in text
    assert "told \\x1b" in text and "item \\x1b" in text and "b \\x1b" in text  # feedback, per client, cause
    said: list[str] = []
    watch(lambda: view, said.append)
    assert said and all(printable(line) and "\n" not in line for line in said)


def test_clients_prints_no_control_character_of_a_heartbeat():
    from fedstep.core.schemas import Heartbeat
    from fedstep.render.clients import render_table, statuses

    hardware = {"os": f"linux{EVIL}", "arch": "x86_64", "cpus": 2, "gpus": [f"A10{EVIL}"]}
    beat = Heartbeat("a", f"0.1{EVIL}", "idle", "2026-11-30T12:00:00+00:00", 60, hardware).to_item()
    text = render_table(statuses(["a"], {"a": beat}, datetime(2026, 11, 30, 12, 0, 5, tzinfo=UTC)))
    assert printable(text) and "0.1\\x1b[2J" in text and "linux\\x1b" in text and "A10\\x1b" in text


def test_evaluate_prints_no_control_character_of_an_answer():
    from fedstep.cli.evaluate import CANNOT, EVALUATED, Answer, Evaluation, render
    from fedstep.core.schemas import EvaluateMessage, ObjectRef

    ref = ObjectRef("runs/run-x/model.keras", "0" * 64, 1)
    message = EvaluateMessage("run-x", 1, "r" * 12, ref, ref, "2026-11-30T12:00:00Z", 60)
    answers = [Answer("a", EVALUATED, 10, {"test_accuracy": 0.5}, weight=10), Answer("b", CANNOT, detail=EVIL)]
    text = render(Evaluation(message, answers))
    assert printable(text) and "b cannot evaluate: \\x1b[2J" in text


def test_the_report_shows_no_control_character_of_a_reason(tmp_path):
    from fedstep.report import write_report

    page = write_report(_view(), tmp_path).read_text()
    assert printable(page.replace("\t", "")) and "declined \\x1b[2J" not in page  # declines are not listed
    assert "rejected \\x1b[2J" in page and "item \\x1b[2J" in page


def test_the_round_in_progress_prints_no_control_character_of_a_decline_and_watch_names_it_once():
    from dataclasses import replace

    from fedstep.operator.views import OpenRound
    from fedstep.render.status import render_status, watch

    deadline = datetime(2999, 1, 1, tzinfo=UTC)
    current = OpenRound(
        2,
        0,
        "open",
        "2998-12-31T23:00:00+00:00",
        deadline,
        ["a", "b", "c"],
        ["a"],
        {"c": f"budget {EVIL}"},
        {"b": "offline"},
        {"d": "stopped"},
    )
    view = replace(_view(), current=current)
    text = render_status(view)
    assert printable(text) and "declined  c (budget \\x1b[2J" in text
    assert "round 2 in progress: 1 of 3 selected client(s) sent, deadline 2999-01-01 00:00:00 UTC (in " in text
    assert "  pending   b (offline)" in text and "  left out  d (stopped)" in text and "  failed    -" in text
    running = replace(view, execution=replace(view.execution, status="RUNNING", stopped=None))
    views = iter([running, running, view])
    said: list[str] = []
    watch(lambda: next(views), said.append, interval_s=0)
    opened = [line for line in said if line.startswith("round 2 sent to")]
    assert opened == ["round 2 sent to a, b, c (left out as offline: d (stopped)), deadline 2999-01-01 00:00:00 UTC"]
