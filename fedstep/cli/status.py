"""`fedstep runs` and `fedstep status <run> [--watch]`: plain-text tables an operator reads or a log keeps."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any

from fedstep.cli.client_metrics import render_client_table
from fedstep.cli.run_view import RunListing, RunView
from fedstep.cli.text import clean, duration, lines, table
from fedstep.core.schemas import RoundSummary, headline_metric


def _took(started: datetime, stopped: datetime | None) -> str:
    """How long a run took, or has been running."""
    return duration(((stopped or datetime.now(UTC)) - started).total_seconds())


def _when(moment: datetime | None) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC") if moment else "-"


def _metric(summary: RoundSummary, name: str) -> str:
    value = headline_metric(summary.metrics, name)
    return f"{value:.4f}" if value is not None else "-"


RoundsOf = Callable[[str], tuple[int, "int | None"]]
"""A run id -> (rounds aggregated, rounds planned; None when the run record is missing)."""


def render_runs(runs: list[RunListing], rounds_of: RoundsOf) -> str:
    rows = []
    for r in runs:
        done, planned = rounds_of(r.run_id)
        rows.append((r.run_id, r.status, _when(r.started), _took(r.started, r.stopped), f"{done}/{planned or '?'}"))
    if not rows:
        return "no runs yet: start one with `fedstep start`"
    return lines(table(("RUN", "STATUS", "STARTED", "DURATION", "ROUNDS"), rows))


def run_rows(runs: list[RunListing], rounds_of: RoundsOf) -> list[dict[str, Any]]:
    """One dict per run, newest first: run_id, status, started and stopped (UTC datetimes; stopped
    None while running), duration_s (None while running), rounds_aggregated and rounds_planned (None
    when the run record is missing)."""
    rows = []
    for r in runs:
        done, planned = rounds_of(r.run_id)
        rows.append(
            {
                "run_id": r.run_id,
                "status": r.status,
                "started": r.started,
                "stopped": r.stopped,
                "duration_s": (r.stopped - r.started).total_seconds() if r.stopped else None,
                "rounds_aggregated": done,
                "rounds_planned": planned,
            }
        )
    return rows


def render_runs_json(runs: list[RunListing], rounds_of: RoundsOf) -> str:
    """`fedstep runs --json`: `run_rows`, with the times in ISO 8601 UTC."""
    rows = run_rows(runs, rounds_of)
    for row in rows:
        row["started"] = row["started"].isoformat()
        row["stopped"] = row["stopped"].isoformat() if row["stopped"] else None
    return json.dumps(rows, indent=2)


ROUND_HEADER = (
    "ROUND",
    "CLIENTS",
    "REJECTED",
    "EXAMPLES",
    "LOSS",
    "ACCURACY",
    "ROUND TIME",
    "AGGREGATION",
    "EPSILON",
    "STRATEGY MEASUREMENTS",
)
MEASUREMENTS_SHOWN = 4
"""Measurements shown per round in the table (all of them are in the round record)."""


def measurements_text(s: RoundSummary) -> str:
    """The strategy's measurements of a round, e.g. `step_norm=0.0123 selected=8`; "-" for none."""
    shown = [f"{k}={v:.4g}" for k, v in sorted(s.measurements.items())[:MEASUREMENTS_SHOWN]]
    more = len(s.measurements) - MEASUREMENTS_SHOWN
    return " ".join(shown + ([f"(+{more})"] if more > 0 else [])) or "-"


def epsilon_text(s: RoundSummary) -> str:
    """The run's epsilon after the round, e.g. `1.234`; "-" without DP."""
    return f"{s.epsilon:.3f}" if s.epsilon is not None else "-"


def round_row(s: RoundSummary) -> tuple[object, ...]:
    """One round: participants of selected, rejected updates, examples, weighted test (else train) loss
    and accuracy, the round's duration (from publishing to aggregated) and the aggregation's, and the
    strategy's measurements."""
    return (
        s.round,
        f"{len(s.participants)}/{len(s.selected) or len(s.participants)}",
        len(s.rejected),
        s.num_examples,
        _metric(s, "loss"),
        _metric(s, "accuracy"),
        f"{s.duration_s:.1f} s",
        f"{s.aggregation_s:.2f} s",
        epsilon_text(s),
        measurements_text(s),
    )


def headline(view: RunView) -> str:
    ex = view.execution
    reason = f" ({ex.stop_reason})" if ex and ex.status != "RUNNING" and ex.stop_reason else ""
    took = _took(ex.started, ex.stopped) if ex else "-"
    started = _when(ex.started) if ex else "-"
    progress = f"round {view.last_round} of {view.record.rounds}"
    return f"run {view.run_id}: {view.status}{reason}, {progress}, started {started}, {took}"


def bounds_text(view: RunView) -> str:
    """How far the run trusts one client: its participants floor, weight cap and norm bound."""
    b = view.record.bounds
    caps = f"examples capped at {b.max_examples}" + (
        f" ({len(b.client_max_examples)} per client)" if b.client_max_examples else ""
    )
    return f"at least {view.record.min_participants} participants; {caps}, {norm_text(view)} ({b.action})"


def norm_text(view: RunView) -> str:
    """The bound on an update's norm: the run's own, or the default (the value its rounds applied)."""
    if view.record.bounds.max_update_norm is not None:
        return f"update norm <= {view.record.bounds.max_update_norm:g}"
    applied = next((s.norm_bound for s in reversed(view.rounds) if s.norm_bound is not None), None)
    value = f" {applied:.4g} =" if applied is not None else ""
    return f"update norm <= default{value} 10 x max(initial model norm, sqrt(parameters))"


def strategy_text(name: str, params: dict[str, object]) -> str:
    """`fedadam (eta=0.01, beta_1=0.9, ...)`, or the bare name for a strategy without parameters."""
    listed = ", ".join(f"{k}={v}" for k, v in params.items())
    return f"{name} ({listed})" if listed else name


def settings_line(view: RunView) -> str:
    r = view.record
    learning_rate = "the model's own" if r.training.learning_rate is None else f"{r.training.learning_rate:g}"
    per_round = r.clients_per_round or len(r.clients)
    parts = [
        f"{len(r.clients)} clients, {per_round} per round, quorum {r.quorum}",
        f"{r.training.epochs} epoch(s), batch {r.training.batch_size}, learning rate {learning_rate}",
        strategy_text(r.strategy, r.strategy_params),
        f"round deadline {duration(r.round_timeout_s)}",
        bounds_text(view),
    ]
    if r.target:
        parts.append(f"target {r.target}")
    if r.resumed_from:
        parts.append(f"resumes {r.resumed_from}")
    if r.dp:
        clip = f"clip {r.dp.clip:g}" if r.dp.clip is not None else "adaptive clip"
        budget = f", budget epsilon {r.dp.epsilon_budget:g}" if r.dp.epsilon_budget is not None else ""
        parts.append(
            f"DP {r.dp.mode}: noise multiplier {r.dp.noise_multiplier:g}, {clip}, delta {r.dp.delta:g}{budget}"
        )
    return "; ".join(parts)


def footer(view: RunView) -> list[str]:
    lines = [f"  round {s.round}: {rej.client_id} rejected: {rej.reason}" for s in view.rounds for rej in s.rejected]
    lines += [f"  round {s.round}: {c.client_id} clipped: {c.what}" for s in view.rounds for c in s.clipped]
    lines += [f"  round {s.round}: {d.client_id} declined: {d.reason}" for s in view.rounds for d in s.declined]
    if view.last_rejections:
        lines.append("last rejection per client:")
        lines += [f"  {c}: round {f.round}: {f.reason}" for c, f in sorted(view.last_rejections.items())]
    ex = view.execution
    if ex and ex.status == "FAILED":
        lines.append(f"failed: {ex.failure}")
    if view.stop is not None:
        lines.append(f"stopped at {view.stop.stopped_at or 'an unknown time'}: {view.stop.reason}")
    return lines


def render_status_json(view: RunView) -> str:
    """The run (with `stop`: the operator's reason and time, when it was stopped) and one object per
    round (participants, rejected, declined and clipped updates, the norm bound applied, metrics,
    measurements, epsilon, delta and repeated noisy releases; with per-client rows read, `clients`:
    each selected client's status, examples and own metrics)."""
    ex = view.execution
    rows = [
        {
            "round": s.round,
            "selected": s.selected,
            "participants": s.participants,
            "rejected": [asdict(r) for r in s.rejected],
            "declined": [asdict(r) for r in s.declined],
            "clipped": [asdict(c) for c in s.clipped],
            "norm_bound": s.norm_bound,
            "num_examples": s.num_examples,
            "metrics": s.metrics,
            "measurements": s.measurements,
            "epsilon": s.epsilon,
            "delta": s.delta,
            "repeated_releases": s.repeated_releases,
            "duration_s": s.duration_s,
            "aggregation_s": s.aggregation_s,
            **({"clients": [c.to_json() for c in view.clients[s.round]]} if s.round in view.clients else {}),
        }
        for s in view.rounds
    ]
    run = {
        "run_id": view.run_id,
        "status": view.status,
        "stop_reason": ex.stop_reason if ex else None,
        "stop": asdict(view.stop) if view.stop else None,
        "strategy": view.record.strategy,
        "strategy_params": view.record.strategy_params,
        "dp": asdict(view.record.dp) if view.record.dp else None,
        "rounds": rows,
    }
    return json.dumps(run, indent=2)


def render_status(view: RunView) -> str:
    rows = [round_row(s) for s in view.rounds]
    body = table(ROUND_HEADER, rows) if rows else ["no round completed yet"]
    per_client = ["", *render_client_table(view.clients)] if view.clients else []
    return lines([headline(view), settings_line(view), "", *body, *footer(view), *per_client])


def watch(load: Callable[[], RunView], say: Callable[[str], None], interval_s: float = 2.0) -> RunView:
    """Print (`say`) the run's header and each round as it completes, until the run is no longer
    RUNNING; each line `clean`ed (reasons and causes come from clients)."""

    def echo(line: str) -> None:
        say(clean(line))

    view = load()
    echo(headline(view))
    echo(settings_line(view))
    echo("")
    widths = [len(h) for h in ROUND_HEADER]
    shown = 0
    while True:
        rows = [round_row(s) for s in view.rounds]
        if rows and shown == 0:
            widths = [max(w, *(len(str(r[i])) for r in rows)) + 2 for i, w in enumerate(widths)]
            echo("  ".join(h.ljust(w) for h, w in zip(ROUND_HEADER, widths, strict=True)).rstrip())
        for row in rows[shown:]:
            echo("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
        shown = len(rows)
        if view.status != "RUNNING":
            echo(headline(view))
            for line in footer(view):
                echo(line)
            return view
        time.sleep(interval_s)
        view = load()
