"""Each client's own metrics per round, read from its update items: `fedstep status --clients`,
`status --round r`, `status --json` and the report's per-client section.

A round record keeps only the example-weighted means; every participant's update item keeps its own
metrics, among them `test_accuracy_before` / `test_loss_before`: the previous global model evaluated
on that client's test split (a federated evaluation). An item is the client's claim: it is shown
only after `UpdateItem.parse` bounded it (`fedstep.core.limits`), and only for clients whose update
the round aggregated. A rejected or declined client shows its reason, never its metrics.
"""

from __future__ import annotations

from pathlib import Path

from fedstep.operator.client_rounds import (  # noqa: F401 (re-exported for the report)
    AGGREGATED,
    CLIPPED,
    DECLINED,
    INVALID,
    NO_UPDATE,
    REJECTED,
    ClientRound,
    client_rounds,
    load_client_rounds,
)
from fedstep.render.text import html_text, table

CLIENTS_PLOT = "clients"
"""The report's plot of each client's test accuracy of the global model, per round."""


def _number(metrics: dict[str, float], name: str) -> str:
    value = metrics.get(name)
    return f"{value:.4f}" if value is not None else "-"


CLIENT_HEADER = ("ROUND", "CLIENT", "STATUS", "EXAMPLES", "LOSS BEFORE", "ACCURACY BEFORE", "LOSS", "ACCURACY")


def client_row(row: ClientRound) -> tuple[object, ...]:
    """The global model of the previous round on the client's test split (before), and its own
    model after local training (test split, else train)."""
    m = row.metrics
    return (
        row.round,
        row.client_id,
        row.status,
        row.num_examples if row.num_examples is not None else "-",
        _number(m, "test_loss_before"),
        _number(m, "test_accuracy_before"),
        _number(m, "test_loss") if "test_loss" in m else _number(m, "train_loss"),
        _number(m, "test_accuracy") if "test_accuracy" in m else _number(m, "train_accuracy"),
    )


def render_client_table(per_round: dict[int, list[ClientRound]]) -> list[str]:
    """The per-client table, and under it the reasons of rejected, declined, clipped or invalid rows."""
    rows = [row for r in sorted(per_round) for row in per_round[r]]
    if not rows:
        return ["no per-client metrics: no round completed yet"]
    notes = [f"  round {r.round}: {r.client_id} {r.status}: {r.detail}" for r in rows if r.detail]
    return [*table(CLIENT_HEADER, [client_row(r) for r in rows]), *notes]


def accuracy_series(per_round: dict[int, list[ClientRound]]) -> dict[str, list[tuple[int, float]]]:
    """Per client, (round, test_accuracy_before) where it reported one: the previous round's global
    model on that client's test split."""
    series: dict[str, list[tuple[int, float]]] = {}
    for r in sorted(per_round):
        for row in per_round[r]:
            if "test_accuracy_before" in row.metrics:
                series.setdefault(row.client_id, []).append((r, row.metrics["test_accuracy_before"]))
    return series


def client_lines(per_round: dict[int, list[ClientRound]]) -> tuple[list[int], dict[str, list[float]]]:
    """(every round, per client its `accuracy_series` value in each, NaN where it has none): NaN breaks
    the plotted line, so no line crosses a round the client skipped."""
    rounds = sorted(per_round)
    lines = {}
    for client, points in sorted(accuracy_series(per_round).items()):
        known = dict(points)
        lines[client] = [known.get(r, float("nan")) for r in rounds]
    return rounds, lines


def clients_plot(per_round: dict[int, list[ClientRound]], path: Path) -> None:
    """One line per client: the global model's accuracy on its test split, per round. A round the
    client had no figure in (not selected, no update) is a gap in its line, never bridged."""
    from fedstep.render.plotting import pyplot, round_axis, save

    fig, ax = pyplot().subplots(figsize=(7, 3.6), dpi=110)
    rounds, series = client_lines(per_round)
    for client, values in series.items():
        ax.plot(rounds, values, marker="o", label=client)
    round_axis(ax)
    ax.set_ylabel("accuracy before local training")
    ax.set_title("Previous global model on each client's test split")
    ax.grid(alpha=0.3)
    if series and len(series) <= 20:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small")
    elif not series:
        ax.text(0.5, 0.5, "no client reported test_accuracy_before", ha="center", va="center", transform=ax.transAxes)
    save(fig, path)


def clients_html(per_round: dict[int, list[ClientRound]], figure: str) -> str:
    """The report's section: the plot (`figure`, an embedded image) and the last round's table."""
    if not per_round:
        return ""
    e = html_text
    last = max(per_round)
    head = "".join(f"<th>{e(h)}</th>" for h in CLIENT_HEADER)
    rows = "\n".join(
        "<tr>" + "".join(f"<td>{e(str(c))}</td>" for c in client_row(row)) + "</tr>" for row in per_round[last]
    )
    notes = "".join(
        f"<li>{e(row.client_id)} {e(row.status)}: {e(row.detail)}</li>" for row in per_round[last] if row.detail
    )
    return f"""
<h2>Per client</h2>
<p>Each client's own metrics (from its update item, bounded before they are shown; only aggregated
updates): "before" is the previous global model on the client's test split.
<code>fedstep status &lt;run&gt; --clients</code> lists every round.</p>
{figure}
<table id="clients"><thead><tr>{head}</tr></thead><tbody>
{rows}
</tbody></table>{f"<ul>{notes}</ul>" if notes else ""}
"""
