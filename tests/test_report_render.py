"""`fedstep report` as a person sees it: the HTML page rendered in headless Chromium, every plot present and drawn.

Chromium comes from the machine (`make test` installs Debian's package when it can). Without it, the
HTML is parsed and the PNG files are checked instead, and the test says so.
"""

from __future__ import annotations

import base64
import io
import re
from datetime import UTC, datetime

import numpy as np
import pytest
from PIL import Image

from fedstep.core.schemas import ObjectRef, Rejection, RoundSummary, RunRecord, TrainingConfig
from fedstep.operator.views import Execution, RunView
from fedstep.report import PLOTS, participation, write_report
from scripts.screenshot import FLAGS, find_chromium

CLIENTS = ["hospital-a", "hospital-b", "hospital-c"]


def summary(r: int, participants: list[str], rejected: list[Rejection] = ()) -> RoundSummary:
    return RoundSummary(
        run_id="run-demo",
        round=r,
        selected=CLIENTS,
        participants=participants,
        num_examples=100 * len(participants),
        rejected=list(rejected),
        metrics={
            "test_accuracy": 0.5 + 0.1 * r,
            "test_accuracy_before": 0.4 + 0.1 * r,
            "train_accuracy": 0.55 + 0.1 * r,
            "test_loss": 2.0 - 0.3 * r,
            "test_loss_before": 2.1 - 0.3 * r,
            "train_loss": 1.9 - 0.3 * r,
        },
        global_model=ObjectRef(f"runs/run-demo/rounds/{r:05d}/global.safetensors", "0" * 64, 1),
        duration_s=3.0,
        aggregation_s=0.05,
        completed_at="2026-11-21T12:00:00Z",
    )


@pytest.fixture
def view() -> RunView:
    record = RunRecord("run-demo", CLIENTS, 4, TrainingConfig(learning_rate=0.1), "fedavg", "2026-11-21T12:00:00Z")
    rounds = [
        summary(1, CLIENTS),
        summary(2, ["hospital-a", "hospital-b"], [Rejection("hospital-c", "non-finite values in 000/dense/kernel")]),
        summary(3, ["hospital-a", "hospital-c"]),  # hospital-b sent nothing by the deadline
        summary(4, CLIENTS),
    ]
    started = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
    execution = Execution("SUCCEEDED", started, started.replace(minute=2), {"stop_reason": "max_rounds"})
    return RunView("run-demo", record, execution, rounds)


def test_participation_marks_aggregated_rejected_and_missing_updates(view):
    clients, rounds, matrix = participation(view)
    assert clients == CLIENTS and rounds == [1, 2, 3, 4]
    assert matrix == [[3, 3, 3, 3], [3, 3, 1, 3], [3, 2, 3, 3]]  # 3 aggregated, 2 rejected, 1 no update


def drawn(png: bytes) -> float:
    """How much an image varies (0 for a blank one)."""
    return float(np.asarray(Image.open(io.BytesIO(png)).convert("L"), dtype=np.float32).std())


def test_the_report_renders_in_headless_chromium_with_every_plot_drawn(view, tmp_path):
    page_path = write_report(view, tmp_path)
    chromium = find_chromium()
    if chromium is None:
        pytest.skip("no Chromium on this machine: test_the_report_html_and_pngs_are_valid checks the files")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=FLAGS)
        page = browser.new_page(viewport={"width": 1100, "height": 900})
        page.goto(page_path.as_uri())
        page.wait_for_load_state("load")
        images = page.eval_on_selector_all(
            "img", "els => els.map(e => [e.id, e.complete, e.naturalWidth, e.naturalHeight])"
        )
        shots = {name: page.locator(f"#{name}").screenshot() for name in PLOTS}
        headline = page.inner_text("#headline")
        rows = page.eval_on_selector_all("#rounds tbody tr", "rows => rows.length")
        page.screenshot(path=tmp_path / "page.png", full_page=True)
        browser.close()
    assert [i[0] for i in images] == list(PLOTS)
    assert all(complete and width > 300 and height > 100 for _, complete, width, height in images), images
    assert all(drawn(png) > 10 for png in shots.values()), {k: drawn(v) for k, v in shots.items()}
    assert headline.startswith("run run-demo: SUCCEEDED (max_rounds), round 4 of 4") and rows == 4


def test_the_report_html_and_pngs_are_valid(view, tmp_path):
    page = write_report(view, tmp_path).read_text()
    from html.parser import HTMLParser

    class Images(HTMLParser):
        found: dict[str, str] = {}

        def handle_starttag(self, tag, attrs):
            attrs = dict(attrs)
            if tag == "img":
                self.found[attrs["id"]] = attrs["src"]

    parser = Images()
    parser.feed(page)
    assert list(parser.found) == list(PLOTS)
    for name, src in parser.found.items():
        png = (tmp_path / f"{name}.png").read_bytes()
        assert base64.b64decode(src.removeprefix("data:image/png;base64,")) == png  # embedded = the file
        assert Image.open(io.BytesIO(png)).size[0] > 300 and drawn(png) > 10
    assert "round 2: hospital-c: non-finite values in 000/dense/kernel" in page
    assert re.search(r"<th>learning rate</th><td>0.1</td>", page)


def test_a_simulated_run_gets_a_label_histogram_per_client(view, tmp_path):
    from dataclasses import replace

    from fedstep.core.label_counts import LabelCounts
    from fedstep.report import LABELS_PLOT, plots

    counts = LabelCounts.of(
        "digits",
        "dirichlet:0.1",
        0,
        range(10),
        {
            "hospital-a": [120, 3, 0, 0, 0, 0, 0, 0, 40, 0],
            "hospital-b": [0, 0, 90, 90, 0, 1, 0, 0, 0, 0],
            "hospital-c": [10, 10, 10, 10, 10, 10, 10, 10, 10, 10],
        },
    )
    simulated = replace(view, partition=counts)
    assert plots(simulated) == (*PLOTS, LABELS_PLOT) and plots(view) == PLOTS
    page = write_report(simulated, tmp_path).read_text()
    png = (tmp_path / "labels.png").read_bytes()
    assert Image.open(io.BytesIO(png)).size[0] > 300 and drawn(png) > 10
    assert f'<img id="labels" alt="labels plot" src="data:image/png;base64,{base64.b64encode(png).decode()}">' in page
    assert "Data set digits, partition dirichlet:0.1, seed 0" in page
    assert "<tr><td>hospital-a</td><td>163</td><td>163 examples, 3 labels; top 0 74%, 8 25%, 1 2%</td></tr>" in page


def test_a_run_without_label_counts_has_no_histogram_section(view, tmp_path):
    page = write_report(view, tmp_path).read_text()
    assert "Data partition" not in page and 'id="labels"' not in page
    assert not (tmp_path / "labels.png").exists()


def test_a_dp_run_plots_epsilon_per_round_beside_accuracy_and_status_shows_it(view, tmp_path):
    import json
    from dataclasses import replace

    from fedstep.core.schemas import DPSettings
    from fedstep.render.status import render_status, render_status_json
    from fedstep.report import PRIVACY_PLOT, plots

    dp = DPSettings("central", 1.1, 0.5, 1e-5, epsilon_budget=8.0)
    rounds = [replace(s, epsilon=1.5 * s.round, delta=1e-5) for s in view.rounds]
    private = replace(view, record=replace(view.record, dp=dp), rounds=rounds)
    assert plots(private) == (*PLOTS, PRIVACY_PLOT)
    page = write_report(private, tmp_path).read_text()
    png = (tmp_path / "privacy.png").read_bytes()
    assert drawn(png) > 10 and 'id="privacy"' in page
    text = render_status(private)
    assert "DP central: noise multiplier 1.1, clip 0.5, delta 1e-05, budget epsilon 8" in text
    assert "EPSILON" in text and "6.000" in text  # round 4's epsilon
    rows = json.loads(render_status_json(private))["rounds"]
    assert [(r["epsilon"], r["delta"]) for r in rows] == [(1.5 * r, 1e-5) for r in (1, 2, 3, 4)]


LAMBDA_ERROR = (
    '{"errorMessage": "krum needs at least 2 * num_malicious + 3 updates, got 3", "errorType": "StrategyFailed", '
    '"requestId": "0f1e", "stackTrace": ["  File \\"/var/task/lambdas/aggregate.py\\", line 88, in handler\\n"]}'
)


def test_status_and_report_show_a_lambda_error_cause_as_type_and_message_not_json(view, tmp_path):
    """`fedstep status` of a run whose execution failed with a Lambda error payload as its cause."""
    from dataclasses import replace

    from fedstep.render.status import render_status

    started = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
    failed = replace(view, execution=Execution("FAILED", started, started, {}, "States.TaskFailed", LAMBDA_ERROR))
    text = render_status(failed)
    expected = "States.TaskFailed: StrategyFailed: krum needs at least 2 * num_malicious + 3 updates, got 3"
    assert f"failed: {expected}" in text.splitlines()
    assert "errorMessage" not in text and "stackTrace" not in text and "{" not in text.split("failed:")[1]
    same_error = replace(failed, execution=replace(failed.execution, error="StrategyFailed"))
    assert "failed: StrategyFailed: krum needs" in render_status(same_error)  # the type is not said twice
    html = write_report(failed, tmp_path).read_text()
    assert f"Failed: {expected}" in html and "errorMessage" not in html


def test_status_shows_a_plain_text_cause_as_it_is(view):
    from dataclasses import replace

    from fedstep.render.status import render_status

    started = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
    cause = "round 2: 1 valid update(s) of 3, quorum 2"
    failed = replace(view, execution=Execution("FAILED", started, started, {}, "QuorumNotMet", cause))
    assert f"failed: QuorumNotMet: {cause}" in render_status(failed).splitlines()


# -- issue 21, findings 4 and 11: what the plots and tables say -------------------------------------


def dp_view(view):
    from dataclasses import replace

    from fedstep.core.schemas import DPSettings

    dp = DPSettings("central", 2.0, 0.5, 1e-5)
    rounds = [replace(s, epsilon=1.5 * s.round, delta=1e-5) for s in view.rounds]
    return replace(view, record=replace(view.record, dp=dp), rounds=rounds)


def test_privacy_is_paired_with_the_accuracy_of_the_model_each_round_released_not_the_clients(view, tmp_path):
    """The clients' accuracy after local training (0.6 ... 0.9) is not what the noise costs: each
    round's epsilon sits beside the accuracy of the global model it released, which the next round
    evaluated before training (round r + 1's test_accuracy_before: 0.6, 0.7, 0.8; the last is not
    evaluated yet)."""
    import json

    from fedstep.render.status import render_status, render_status_json
    from fedstep.report import privacy_rows

    private = dp_view(view)
    assert privacy_rows(private) == [
        (1, "1.500", "0.6000", "0.6000"),
        (2, "3.000", "0.7000", "0.7000"),
        (3, "4.500", "0.8000", "0.8000"),
        (4, "6.000", "-", "0.9000"),
    ]
    page = write_report(private, tmp_path).read_text()
    table = page.split('<table id="privacy-utility">', 1)[1].split("</table>", 1)[0]
    assert "global model accuracy (federated evaluation) of the model it released" in table
    assert "clients' accuracy after local training (not the global model's)" in table
    assert "<tr><td>4</td><td>6.000</td><td>-</td><td>0.9000</td></tr>" in table
    rows = [cells for line in render_status(private).splitlines() if (cells := line.split()) and "/" in cells[1]]
    assert [(r[0], r[5], r[6], r[-2]) for r in rows] == [
        ("1", "0.6000", "0.6000", "1.500"),
        ("2", "0.7000", "0.7000", "3.000"),
        ("3", "0.8000", "0.8000", "4.500"),
        ("4", "0.9000", "-", "6.000"),
    ]
    assert "MODEL ACC" in render_status(private)
    model = [r["model_accuracy"] for r in json.loads(render_status_json(private))["rounds"]]
    assert model == [pytest.approx(0.6), pytest.approx(0.7), pytest.approx(0.8), None]


def test_the_round_axis_ticks_whole_rounds_only():
    from fedstep.render.plotting import pyplot, round_axis

    fig, ax = pyplot().subplots(figsize=(7, 3.6), dpi=110)
    ax.plot([1, 2, 3], [0.1, 0.5, 0.7])  # left to matplotlib: ticks at 1.00, 1.25, 1.50, ...
    round_axis(ax)
    fig.canvas.draw()
    ticks = [t for t in ax.get_xticks() if 1 <= t <= 3]
    pyplot().close(fig)
    assert ticks == [1.0, 2.0, 3.0]


def test_a_legend_beside_the_plot_is_inside_the_saved_image(view, tmp_path):
    """The legends of labels.png, participation.png and clients.png sit right of the axes, and may be
    taller than them (ten labels for three clients); the saved image has a white margin on every side,
    never a legend cut off at its edge."""
    from dataclasses import replace

    from fedstep.core.label_counts import LabelCounts
    from fedstep.render.client_metrics import ClientRound

    counts = LabelCounts.of("digits", "iid", 0, range(10), {c: [10] * 10 for c in CLIENTS})
    per_client = {
        r: [ClientRound(r, c, "aggregated", 10, {"test_accuracy_before": 0.1 * r}) for c in CLIENTS] for r in (1, 2)
    }
    write_report(replace(view, partition=counts, clients=per_client), tmp_path)
    for name in ("labels", "participation", "clients"):
        pixels = np.asarray(Image.open(tmp_path / f"{name}.png").convert("L"))
        edges = {"top": pixels[:3], "bottom": pixels[-3:], "left": pixels[:, :3], "right": pixels[:, -3:]}
        assert [side for side, band in edges.items() if band.min() < 255] == [], f"{name}.png is cut off"


def test_a_clients_line_has_a_gap_at_a_round_it_skipped_not_a_bridge():
    from fedstep.render.client_metrics import ClientRound, client_lines

    def seen(r, c, accuracy):
        return ClientRound(r, c, "aggregated", 10, {"test_accuracy_before": accuracy})

    per_round = {
        1: [seen(1, "hospital-a", 0.1), seen(1, "hospital-b", 0.2)],
        2: [seen(2, "hospital-a", 0.3)],  # hospital-b not selected
        3: [seen(3, "hospital-a", 0.5), seen(3, "hospital-b", 0.6)],
    }
    rounds, lines = client_lines(per_round)
    assert rounds == [1, 2, 3] and lines["hospital-a"] == [0.1, 0.3, 0.5]
    b = lines["hospital-b"]
    assert b[0] == 0.2 and np.isnan(b[1]) and b[2] == 0.6  # NaN: matplotlib draws no segment through round 2


def test_the_accuracy_plot_draws_the_runs_target_on_the_global_models_line(view):
    from dataclasses import replace

    from fedstep.core.schemas import Target
    from fedstep.render.plotting import pyplot
    from fedstep.report import target_line

    targeted = replace(view, record=replace(view.record, target=Target("test_accuracy", 0.9)))
    fig, ax = pyplot().subplots()
    target_line(ax, targeted, "accuracy")
    target_line(ax, targeted, "loss")  # judged on accuracy: nothing on the loss plot
    target_line(ax, view, "accuracy")  # no target: nothing
    [line] = ax.get_lines()
    pyplot().close(fig)
    assert list(line.get_ydata()) == [0.9, 0.9] and line.get_label() == "target test_accuracy>=0.9 (global model)"


def test_the_settings_line_names_the_clients_with_their_own_example_cap(view):
    """Not "(1 per client)", which read as one example: the clients and their caps."""
    from dataclasses import replace

    from fedstep.core.schemas import Bounds
    from fedstep.render.status import settings_line

    one = replace(view, record=replace(view.record, bounds=Bounds(5000, {"hospital-b": 20000})))
    assert "examples capped at 5000 (own caps: hospital-b 20000)," in settings_line(one)
    many = replace(view, record=replace(view.record, bounds=Bounds(5000, {f"site-{i}": 10 * i for i in range(1, 6)})))
    assert "examples capped at 5000 (own caps: site-1 10, site-2 20, site-3 30, +2)," in settings_line(many)


def test_the_report_names_the_clients_krum_kept_each_round(view, tmp_path):
    from dataclasses import replace

    kept = replace(view, rounds=[replace(s, kept=s.participants[:1]) for s in view.rounds])
    html = write_report(kept, tmp_path).read_text()
    assert "<li>round 2: strategy kept hospital-a (1 of 2 updates)</li>" in html
    assert 'id="kept"' not in write_report(view, tmp_path / "fedavg").read_text()  # FedAvg keeps every update
