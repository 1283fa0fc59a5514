"""`fedstep report <run>`: one self-contained HTML file, and its plots as PNG files beside it.

report.html        the run's headline and settings, per-round table, plots (embedded), rejections
accuracy.png       weighted accuracy per round: test after training, train, and the global model
                   on the clients' test splits before training (a federated evaluation)
loss.png           the same for the loss
participation.png  client x round: aggregated, rejected, selected but no update, not selected
labels.png         each client's examples per label, stacked (only for runs with label counts:
                   those of `fedstep local`, see fedstep.core.label_counts)
model card         the final global model: sha256s, each client's examples, final metrics (when
                   the run's card was written: finished runs, or promoted rounds)
privacy.png        epsilon per round beside the accuracy of the model each round released, from the
                   federated evaluation of the next round, with the budget (DP runs only)
clients.png        per client, the previous global model's accuracy on its test split, per round, with
                   the last round's per-client table (fedstep.render.client_metrics)
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

from fedstep.core.dp import neighbouring
from fedstep.operator.views import RunView
from fedstep.render.client_metrics import CLIENTS_PLOT, clients_html, clients_plot
from fedstep.render.cost import report_section as cost_section
from fedstep.render.plotting import pyplot, round_axis, save
from fedstep.render.status import (
    ROUND_HEADER,
    global_evaluation,
    headline,
    kept_line,
    settings_line,
    table_rows,
    target_met_text,
)
from fedstep.render.text import html_text

PLOTS = ("accuracy", "loss", "participation")
LABELS_PLOT = "labels"
PRIVACY_PLOT = "privacy"
_SERIES = (
    ("test_{}", "test (after local training)"),
    ("train_{}", "train"),
    ("test_{}_before", "global model (before)"),
)
_STATES = ("not selected", "no update", "rejected", "aggregated")
_COLOURS = ("#f2f2f2", "#f0b429", "#d64545", "#2f9e44")


def target_line(ax, view: RunView, name: str) -> None:
    """The run's target, on the plot of the metric it is judged on (the global model's, "before")."""
    target = view.record.target
    if target and target.judged_on == f"test_{name}_before":
        ax.axhline(target.value, color="#d64545", linestyle="--", label=f"target {target} (global model)")


def _metric_plot(view: RunView, name: str, path: Path) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.6), dpi=110)
    keys = [(pattern.format(name), label) for pattern, label in _SERIES]
    series = [(label, [(s.round, s.metrics[k]) for s in view.rounds if k in s.metrics]) for k, label in keys]
    for label, points in series:
        if points:
            ax.plot(*zip(*points, strict=True), marker="o", label=label)
    target_line(ax, view, name)
    round_axis(ax)
    ax.set_ylabel(f"weighted {name}")
    ax.set_title(f"{name.capitalize()} per round, weighted by examples")
    ax.grid(alpha=0.3)
    if not any(points for _, points in series):
        ax.text(0.5, 0.5, f"no {name} reported yet", ha="center", va="center", transform=ax.transAxes)
    if ax.get_legend_handles_labels()[0]:
        ax.legend()
    save(fig, path)


def participation(view: RunView) -> tuple[list[str], list[int], list[list[int]]]:
    """(clients, rounds, matrix) with matrix[client][round index] an index into `_STATES`."""
    clients = sorted(view.record.clients)
    rounds = [s.round for s in view.rounds]
    matrix = [[0] * len(rounds) for _ in clients]
    for j, s in enumerate(view.rounds):
        rejected = {r.client_id for r in s.rejected}
        for i, client in enumerate(clients):
            if client in s.participants:
                matrix[i][j] = 3
            elif client in rejected:
                matrix[i][j] = 2
            elif client in s.selected:
                matrix[i][j] = 1
    return clients, rounds, matrix


def _participation_plot(view: RunView, path: Path) -> None:
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    plt = pyplot()
    clients, rounds, matrix = participation(view)
    fig, ax = plt.subplots(figsize=(7, 1.2 + 0.32 * len(clients)), dpi=110)
    if rounds:
        ax.imshow(matrix, aspect="auto", cmap=ListedColormap(_COLOURS), vmin=0, vmax=3, interpolation="nearest")
        ax.set_xticks(range(len(rounds)), [str(r) for r in rounds])
        ax.set_xticks([x - 0.5 for x in range(1, len(rounds))], minor=True)
        ax.set_yticks([y - 0.5 for y in range(1, len(clients))], minor=True)
        ax.grid(which="minor", color="white", linewidth=2)
        ax.tick_params(which="minor", length=0)
    ax.set_yticks(range(len(clients)), clients)
    ax.set_xlabel("round")
    ax.set_title("Participation per client")
    ax.legend(
        handles=[Patch(color=c, label=s) for c, s in zip(_COLOURS, _STATES, strict=True)],
        loc="upper left",
        bbox_to_anchor=(1.01, 1.0),
        fontsize="small",
    )
    save(fig, path)


def plots(view: RunView) -> tuple[str, ...]:
    """The PNG files (without `.png`) a report of `view` has: `PLOTS`, plus `labels` with label counts."""
    extra = ((PRIVACY_PLOT,) if view.record.dp else ()) + ((LABELS_PLOT,) if view.partition else ())
    extra += (CLIENTS_PLOT,) if view.clients else ()
    return (*PLOTS, *extra)


GLOBAL_ACCURACY_LABEL = "global model accuracy (federated evaluation)"
"""What the privacy plot and table call the utility they pair with epsilon."""


def _privacy_plot(view: RunView, path: Path) -> None:
    """Epsilon after each round (left axis, with the run's budget; under distributed DP also the
    operator's) beside the accuracy of the model that
    round released (right axis): the global model's, from the federated evaluation, never the clients'
    accuracy after their local training, which noise added to the global model does not touch."""
    dp = view.record.dp
    assert dp is not None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.6), dpi=110)
    points = [(s.round, s.epsilon) for s in view.rounds if s.epsilon is not None]
    if points:
        ax.plot(*zip(*points, strict=True), marker="o", color="#5b21b6", label="epsilon")
    operator = [(s.round, s.operator_epsilon) for s in view.rounds if s.operator_epsilon is not None]
    if operator:  # distributed DP: the operator knows the selection (no amplification by sampling)
        ax.plot(*zip(*operator, strict=True), marker=".", color="#0e7490", label="against the operator")
    if dp.epsilon_budget is not None:
        ax.axhline(dp.epsilon_budget, color="#d64545", linestyle="--", label=f"budget {dp.epsilon_budget:g}")
    round_axis(ax)
    ax.set_ylabel(f"epsilon (delta {dp.delta:g}, {neighbouring(dp, view.record.selection)})")
    ax.set_title(f"Privacy loss per round ({dp.mode}, noise multiplier {dp.noise_multiplier:g})")
    ax.grid(alpha=0.3)
    accuracy = sorted(global_evaluation(view).items())
    if accuracy:
        right = ax.twinx()
        right.plot(*zip(*accuracy, strict=True), marker="s", color="#2f9e44", label=GLOBAL_ACCURACY_LABEL)
        right.set_ylabel("global model accuracy")
        right.set_ylim(0, 1)
        right.legend(loc="lower right", fontsize="small")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="upper left", fontsize="small")
    save(fig, path)


def privacy_rows(view: RunView) -> list[tuple[int, str, str, str]]:
    """Per round: epsilon after it, the accuracy of the model it released (federated evaluation, "-"
    until a later round evaluates it), and the clients' accuracy after their local training."""
    from fedstep.core.schemas import headline_metric
    from fedstep.render.status import epsilon_text

    evaluated = global_evaluation(view)
    rows = []
    for s in view.rounds:
        trained = headline_metric(s.metrics, "accuracy")
        rows.append(
            (
                s.round,
                epsilon_text(s),
                f"{evaluated[s.round]:.4f}" if s.round in evaluated else "-",
                f"{trained:.4f}" if trained is not None else "-",
            )
        )
    return rows


def _labels_plot(view: RunView, path: Path) -> None:
    """One horizontal bar per client, stacked by label: examples per label (train and test splits)."""
    from matplotlib.patches import Patch

    counts = view.partition
    assert counts is not None
    plt = pyplot()
    clients = list(counts.clients)
    labels = counts.labels
    if len(labels) <= 10:
        colours = [plt.get_cmap("tab10")(i) for i in range(len(labels))]
    elif len(labels) <= 20:
        colours = [plt.get_cmap("tab20")(i) for i in range(len(labels))]
    else:
        colours = [plt.get_cmap("viridis")(i / (len(labels) - 1)) for i in range(len(labels))]
    fig, ax = plt.subplots(figsize=(7, 1.4 + 0.34 * len(clients)), dpi=110)
    left = [0] * len(clients)
    for j, colour in enumerate(colours):
        widths = [counts.clients[c][j] for c in clients]
        ax.barh(range(len(clients)), widths, left=left, color=colour, edgecolor="white", linewidth=0.4)
        left = [a + b for a, b in zip(left, widths, strict=True)]
    ax.set_yticks(range(len(clients)), [counts.name(c) for c in clients])
    ax.invert_yaxis()  # the first client on top, as in the participation plot
    ax.set_xlabel("examples (local train + test)")
    ax.set_title(f"Labels per client: {counts.dataset}, {counts.scheme}, seed {counts.seed}")
    if len(labels) <= 20:
        ax.legend(
            handles=[Patch(color=c, label=str(label)) for c, label in zip(colours, labels, strict=True)],
            title="label",
            loc="upper left",
            bbox_to_anchor=(1.01, 1.0),
            fontsize="small",
        )
    else:
        ax.text(1.01, 1.0, f"{len(labels)} labels,\nfirst dark,\nlast yellow", transform=ax.transAxes, va="top")
    ax.grid(axis="x", alpha=0.3)
    save(fig, path)


def write_report(view: RunView, out_dir: Path, card: dict[str, Any] | None = None) -> Path:
    """Write report.html and the PNG plots into `out_dir`; the path of the HTML file. `card`: the
    model card of the last round's global model (`fedstep.core.model_card`), if it was written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in ("accuracy", "loss"):
        _metric_plot(view, name, out_dir / f"{name}.png")
    _participation_plot(view, out_dir / "participation.png")
    if view.record.dp:
        _privacy_plot(view, out_dir / f"{PRIVACY_PLOT}.png")
    if view.partition:
        _labels_plot(view, out_dir / f"{LABELS_PLOT}.png")
    if view.clients:
        clients_plot(view.clients, out_dir / f"{CLIENTS_PLOT}.png")
    page = out_dir / "report.html"
    page.write_text(_html(view, out_dir).replace("<h2>Run config</h2>", _card_html(card) + "<h2>Run config</h2>", 1))
    return page


def _figure(name: str, png: Path) -> str:
    """An embedded PNG, so that report.html is one self-contained file."""
    data = base64.b64encode(png.read_bytes()).decode()
    return (
        f'<figure><img id="{name}" alt="{name} plot" src="data:image/png;base64,{data}">'
        f"<figcaption>{name}.png</figcaption></figure>"
    )


def _html(view: RunView, out_dir: Path) -> str:
    e = html_text
    shown = (*PLOTS, PRIVACY_PLOT) if view.record.dp else PLOTS
    images = "\n".join(_figure(name, out_dir / f"{name}.png") for name in shown)
    rows = "\n".join("<tr>" + "".join(f"<td>{e(str(c))}</td>" for c in row) + "</tr>" for row in table_rows(view))
    head = "".join(f"<th>{e(h)}</th>" for h in ROUND_HEADER)
    record = view.record
    config = {
        "run id": view.run_id,
        "clients": ", ".join(record.clients),
        "rounds": record.rounds,
        "clients per round": record.clients_per_round or len(record.clients),
        "client selection": record.selection,
        "quorum": record.quorum,
        "local epochs": record.training.epochs,
        "batch size": record.training.batch_size,
        "learning rate": record.training.learning_rate or "the model's own",
        "strategy": record.strategy,
        "round deadline (s)": record.round_timeout_s,
        "round retries": record.round_retries,
        "target": str(record.target) if record.target else "none",
        "selection seed": record.seed,
        "resumes": record.resumed_from or "-",
        "created": record.created_at,
    }
    config_rows = "\n".join(f"<tr><th>{e(k)}</th><td>{e(str(v))}</td></tr>" for k, v in config.items())
    rejections = [f"round {s.round}: {r.client_id}: {r.reason}" for s in view.rounds for r in s.rejected]
    partition = _partition_html(view, out_dir)
    if view.clients:  # each client's own metrics, after the data partition
        partition += clients_html(view.clients, _figure(CLIENTS_PLOT, out_dir / f"{CLIENTS_PLOT}.png"))
    cost = cost_section(view)
    kept = _kept_html(view)
    failure = ""
    if view.execution and view.execution.status == "FAILED":
        failure = f"<p class=failed>Failed: {e(view.execution.failure)}</p>"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>fedstep run {e(view.run_id)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em auto; max-width: 62em; color: #222; }}
table {{ border-collapse: collapse; margin: 1em 0; }}
td, th {{ border: 1px solid #ccc; padding: .25em .6em; text-align: left; }}
figure {{ display: inline-block; margin: .5em; }} img {{ max-width: 100%; }} .failed {{ color: #b00020; }}
</style></head><body>
<h1>fedstep run {e(view.run_id)}</h1>
<p id="headline">{e(headline(view))}</p>{f'<p id="target">{e(met)}</p>' if (met := target_met_text(view)) else ""}
<p>{e(settings_line(view))}</p>{failure}
<h2>Rounds</h2>
<table id="rounds"><thead><tr>{head}</tr></thead><tbody>
{rows}
</tbody></table>
<h2>Plots</h2>
{images}{_privacy_html(view)}
<h2>Rejected updates</h2>
<ul id="rejections">{"".join(f"<li>{e(r)}</li>" for r in rejections) or "<li>none</li>"}</ul>{kept}{partition}{cost}
<h2>Run config</h2>
<table id="config">{config_rows}</table>
<p><small>Made by <code>fedstep report</code>. Metrics are the clients' own, weighted by their number of
training examples; "before" is the global model of the previous round on the clients' test splits.</small></p>
</body></html>
"""


def _kept_html(view: RunView) -> str:
    """The clients whose updates the strategy kept, per round (Krum, Multi-Krum); "" for other strategies."""
    kept = [kept_line(s).strip() for s in view.rounds if s.kept is not None]
    if not kept:
        return ""
    items = "".join(f"<li>{html_text(k)}</li>" for k in kept)
    return f'\n<h2>Updates the strategy kept</h2>\n<ul id="kept">{items}</ul>'


def _privacy_html(view: RunView) -> str:
    """For DP runs, the privacy plot's numbers: epsilon beside the global model's accuracy."""
    if not view.record.dp:
        return ""
    e = html_text
    relation = neighbouring(view.record.dp, view.record.selection)
    rows = "\n".join("<tr>" + "".join(f"<td>{e(str(c))}</td>" for c in row) + "</tr>" for row in privacy_rows(view))
    return f"""
<table id="privacy-utility"><thead><tr><th>round</th><th>epsilon after it ({e(relation)} neighbours)</th>
<th>{e(GLOBAL_ACCURACY_LABEL)} of the model it released</th>
<th>clients' accuracy after local training (not the global model's)</th></tr></thead><tbody>
{rows}
</tbody></table>
<p><small>A round's model is evaluated on the clients' test splits when the next round starts; the last
round's, with <code>fedstep evaluate</code>.</small></p>
"""


def _partition_html(view: RunView, out_dir: Path) -> str:
    """The data partition section (label histogram and a line per client), or nothing without label counts."""
    counts = view.partition
    if counts is None:
        return ""
    e = html_text
    rows = "\n".join(
        f"<tr><td>{e(counts.name(c))}</td><td>{counts.total(c)}</td><td>{e(counts.describe(c))}</td></tr>"
        for c in counts.clients
    )
    return f"""
<h2>Data partition</h2>
<p>Data set {e(counts.dataset)}, partition {e(counts.scheme)}, seed {counts.seed}: each client's examples
per label, its local train and test splits together (as <code>fedstep local</code> divided them).</p>
{_figure(LABELS_PLOT, out_dir / f"{LABELS_PLOT}.png")}
<table id="partition"><thead><tr><th>client</th><th>examples</th><th>labels</th></tr></thead><tbody>
{rows}
</tbody></table>
"""


def _card_html(card: dict[str, Any] | None) -> str:
    """The model card section: which model, its sha256s, each client's examples, its metrics."""
    if card is None:
        return ""
    e = html_text
    model = card["model"]
    facts = {
        "model": f"run {model['run_id']}, round {model['round']}, version {model['version']}",
        "card": model["card_key"],
        "global model sha256": model["global_model"]["sha256"],
        "architecture sha256": model["architecture"]["sha256"],
        "examples per client": ", ".join(f"{c}: {s['num_examples']}" for c, s in card["data"]["clients"].items()),
        "final metrics": ", ".join(f"{k} {v:.4g}" for k, v in card["metrics"].items()) or "none",
        "federated evaluation (before)": ", ".join(f"{k} {v:.4g}" for k, v in card["evaluation_before"].items())
        or "none",
    }
    rows = "\n".join(f"<tr><th>{e(k)}</th><td><code>{e(str(v))}</code></td></tr>" for k, v in facts.items())
    return f"""<h2>Model card</h2>
<table id="model-card">{rows}</table>
"""
