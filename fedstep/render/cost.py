"""`fedstep cost <run> [--json]`: the run's estimated AWS cost, per service and per participant.

The facts come from the run view (`fedstep.operator.views`: its record, execution and round records),
the stack's outputs (`MaxModelBytes` sizes the aggregation function, `infra.config`) and, when the
execution still exists, its history (the billed state transitions); `fedstep.costs.model` prices
them with `fedstep.costs.prices`. The report's "Cost estimate" section uses the same estimate.
"""

from __future__ import annotations

import html
import json

from fedstep.costs.model import (
    Estimate,
)
from fedstep.costs.prices import PRICES_READ, REGION, REGION_NOTE
from fedstep.operator.cost import (  # noqa: F401 (re-exported: the command's names)
    deployed_paths,
    estimate_run,
    estimate_view,
    lambda_memory_mb,
    observed_transitions,
    run_facts,
)
from fedstep.operator.views import RunView
from fedstep.render.text import table


def _usd(value: float) -> str:
    return f"{value:.6f}"


def _quantity(value: float) -> str:
    return f"{value:,.0f}" if float(value).is_integer() else f"{value:.4g}"


def headline(est: Estimate) -> str:
    return (
        f"cost estimate for run {est.run_id}: ${est.usd:.6f} (USD, {REGION} on-demand prices read {PRICES_READ}; "
        "other regions differ)"
    )


def detail(est: Estimate) -> str:
    so_far = "so far (the run is still running); " if est.ended == "running" else ""
    return (
        f"{so_far}{_quantity(est.transitions)} state transitions, counted from the {est.transitions_source}; "
        f"aggregation function {est.lambda_memory_mb} MB; free tiers not subtracted; assumptions in docs/cost.md"
    )


def service_rows(est: Estimate) -> list[tuple[str, ...]]:
    return [(line.service, line.item, _quantity(line.quantity), line.unit, _usd(line.usd)) for line in est.lines()]


def party_rows(est: Estimate) -> list[tuple[str, ...]]:
    rows = [
        (name, str(p.rounds), _usd(p.direct.usd()), _usd(p.share.usd()), _usd(p.usd))
        for name, p in sorted(est.clients.items())
    ]
    rows.append(("server (shared)", "-", "-", _usd(est.server.usd()), _usd(est.server.usd())))
    return rows


SERVICE_HEADER = ("SERVICE", "ITEM", "QUANTITY", "UNIT", "USD")
PARTY_HEADER = ("PARTICIPANT", "ROUNDS", "OWN REQUESTS USD", "SHARE OF ROUNDS USD", "TOTAL USD")


def render_text(est: Estimate, region: str | None = None) -> str:
    lines = [headline(est), detail(est)]
    if region and region != REGION:
        lines.append(f"note: the stack is in {region}; {REGION_NOTE}")
    lines += ["", *table(SERVICE_HEADER, [*service_rows(est), ("TOTAL", "", "", "", _usd(est.usd))])]
    lines += ["", *table(PARTY_HEADER, party_rows(est))]
    return "\n".join(lines)


def render_json(est: Estimate, region: str | None = None) -> str:
    data = {
        **est.to_dict(),
        "currency": "USD",
        "prices": {"region": REGION, "read": PRICES_READ, "note": REGION_NOTE},
        "stack_region": region,
    }
    return json.dumps(data, indent=2)


def report_section(view: RunView) -> str:
    """The report's "Cost estimate" section (HTML)."""
    est = estimate_view(view)
    e = html.escape

    def rows(header: tuple[str, ...], body: list[tuple[str, ...]]) -> str:
        head = "".join(f"<th>{e(h)}</th>" for h in header)
        cells = "\n".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>" for row in body)
        return f"<thead><tr>{head}</tr></thead><tbody>\n{cells}\n</tbody>"

    services = [*service_rows(est), ("TOTAL", "", "", "", _usd(est.usd))]
    return f"""
<h2>Cost estimate</h2>
<p id="cost-headline">{e(headline(est))}</p>
<p>{e(detail(est))}. The report assumes the default <code>max_model_mb</code>; <code>fedstep cost
{e(view.run_id)}</code> reads the stack's own, and the execution's history.</p>
<table id="cost">{rows(SERVICE_HEADER, services)}</table>
<table id="cost-participants">{rows(PARTY_HEADER, party_rows(est))}</table>
"""
