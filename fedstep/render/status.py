"""`fedstep runs` and `fedstep status <run> [--watch]`: plain-text tables an operator reads or a log keeps."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any

from fedstep.core.dp import neighbouring
from fedstep.core.schemas import FailureItem, RoundSummary, RunRecord, SecAggSettings, Target, headline_metric
from fedstep.operator.views import RunListing, RunView
from fedstep.render.client_metrics import render_client_table
from fedstep.render.text import clean, duration, lines, table


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
    "MODEL ACC",
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
    """The run's epsilon after the round, e.g. `1.234`, and under distributed DP the operator's beside
    it, `1.234 (operator 2.345)`; "-" without DP."""
    if s.epsilon is None:
        return "-"
    return f"{s.epsilon:.3f}" + (f" (operator {s.operator_epsilon:.3f})" if s.operator_epsilon is not None else "")


def global_evaluation(view: RunView, name: str = "accuracy") -> dict[int, float]:
    """Round r -> the weighted `name` of the global model round r released, for every r whose model was
    evaluated: the next round's federated evaluation (`test_<name>_before` of round r + 1, on its
    participants' test splits); r = 0 is the initial model. The last round's model has none until
    `fedstep evaluate` asks the clients."""
    key = f"test_{name}_before"
    return {s.round - 1: s.metrics[key] for s in view.rounds if key in s.metrics}


def round_row(s: RoundSummary, model_accuracy: float | None = None) -> tuple[object, ...]:
    """One round: participants of selected, rejected updates, examples, the clients' weighted test
    (else train) loss and accuracy after their local training, the accuracy of the global model the
    round released (`model_accuracy`, from `global_evaluation`; "-" until evaluated), the round's
    duration (from publishing to aggregated) and the aggregation's, epsilon, and the strategy's
    measurements."""
    return (
        s.round,
        f"{len(s.participants)}/{len(s.selected) or len(s.participants)}",
        len(s.rejected),
        s.num_examples,
        _metric(s, "loss"),
        _metric(s, "accuracy"),
        f"{model_accuracy:.4f}" if model_accuracy is not None else "-",
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
    own = sorted(b.client_max_examples.items())
    named = ", ".join(f"{client} {cap}" for client, cap in own[:3]) + (f", +{len(own) - 3}" if len(own) > 3 else "")
    caps = f"examples capped at {b.max_examples}" + (f" (own caps: {named})" if own else "")
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
    sampled = f"{per_round} per round"
    if r.selection == "poisson":
        sampled = f"each with probability {per_round / len(r.clients):.3g} per round (poisson, {per_round} on average)"
    parts = [
        f"{len(r.clients)} clients, {sampled}, quorum {r.quorum}"
        + ("" if r.select_online else ", offline clients selected too"),
        f"{r.training.epochs} epoch(s), batch {r.training.batch_size}, learning rate {learning_rate}",
        strategy_text(r.strategy, r.strategy_params),
        f"round deadline {duration(r.round_timeout_s)}",
        bounds_text(view),
    ]
    if r.codec != "float32":
        parts.append(f"updates encoded {r.codec}")
    if r.secagg is not None:
        parts.append(secagg_text(r.secagg))
    if r.training.standardize != "none":
        parts.append(f"features standardized ({r.training.standardize})")
    if r.training.params:
        parts.append("train params " + " ".join(f"{k}={v}" for k, v in sorted(r.training.params.items())))
    if r.target:
        parts.append(f"target {r.target}")
    if r.resumed_from:
        parts.append(f"resumes {r.resumed_from}")
    if r.dp:
        clip = f"clip {r.dp.clip:g}" if r.dp.clip is not None else "adaptive clip"
        budget = f", budget epsilon {r.dp.epsilon_budget:g}" if r.dp.epsilon_budget is not None else ""
        parts.append(
            f"DP {r.dp.mode}: noise multiplier {r.dp.noise_multiplier:g}, {clip}, delta {r.dp.delta:g}{budget}, "
            + neighbouring_text(r)
        )
    return "; ".join(parts)


def secagg_text(secagg: SecAggSettings) -> str:
    """A run's secure aggregation, e.g. `secure aggregation: threshold 3, every other client, clip 10,
    each later phase's deadline 5 min 0 s`."""
    neighbours = "every other client" if secagg.neighbours == 0 else f"{secagg.neighbours} neighbours each"
    return (
        f"secure aggregation: threshold {secagg.threshold}, {neighbours}, clip {secagg.clip:g}, "
        f"each later phase's deadline {duration(secagg.phase_timeout_s)}"
    )


def neighbouring_text(r: RunRecord) -> str:
    """What a DP run's epsilon compares, e.g. `epsilon for replace-one neighbours (a client's data
    replaced)`; "" without DP (docs/privacy.md, Two conventions)."""
    relation = neighbouring(r.dp, r.selection)
    if relation is None or r.dp is None:
        return ""
    unit = "a client" if r.dp.client_level else "a record"
    what = f"{unit}'s data replaced" if relation == "replace-one" else f"{unit} added or removed"
    return f"epsilon for {relation.replace('add-remove', 'add/remove')} neighbours ({what})"


def target_met_by(view: RunView) -> int | None:
    """The round whose global model met the run's target (the run stopped one round later), or None."""
    ex = view.execution
    if ex is None or ex.stop_reason != "target_reached" or not view.rounds:
        return None
    return Target.met_by_round(view.last_round)


def target_met_text(view: RunView) -> str | None:
    """`target test_accuracy>=0.9 met by round 3's global model ...`, after a run the target stopped."""
    met = target_met_by(view)
    if met is None:
        return None
    return (
        f"target {view.record.target} met by round {met}'s global model (the clients' federated evaluation "
        f"during round {met + 1}): fedstep download {view.run_id} --round {met}"
    )


def kept_line(s: RoundSummary) -> str:
    """The clients whose updates the strategy kept in a round (Krum, Multi-Krum), e.g.
    `  round 2: strategy kept c1, c4 (2 of 5 updates)`."""
    kept = s.kept or []
    return f"  round {s.round}: strategy kept {_named(kept)} ({len(kept)} of {len(s.participants)} updates)"


def footer(view: RunView) -> list[str]:
    lines = [f"  round {s.round}: {rej.client_id} rejected: {rej.reason}" for s in view.rounds for rej in s.rejected]
    lines += [f"  round {s.round}: {c.client_id} clipped: {c.what}" for s in view.rounds for c in s.clipped]
    lines += [f"  round {s.round}: {d.client_id} declined: {d.reason}" for s in view.rounds for d in s.declined]
    lines += [kept_line(s) for s in view.rounds if s.kept is not None]
    if view.failures:
        lines.append("last failure per client (its agent's log has the details):")
        lines += [f"  {c}: {f.line()}" for c, f in sorted(view.failures.items())]
    if view.last_rejections:
        lines.append("last rejection per client:")
        lines += [f"  {c}: round {f.round}: {f.reason}" for c, f in sorted(view.last_rejections.items())]
    ex = view.execution
    if ex and ex.status == "FAILED":
        lines.append(f"failed: {ex.failure}")
    if view.stop is not None:
        lines.append(f"stopped at {view.stop.stopped_at or 'an unknown time'}: {view.stop.reason}")
    if met := target_met_text(view):
        lines.append(met)
    return lines


def _named(clients: dict[str, str] | list[str]) -> str:
    if isinstance(clients, dict):
        return ", ".join(f"{c} ({why})" for c, why in clients.items()) or "-"
    return ", ".join(clients) or "-"


def open_round_lines(view: RunView, now: datetime | None = None) -> list[str]:
    """The round in progress: whom it was sent to, who has sent, declined, failed or is pending (with
    its heartbeat's status), who was left out as offline, and the attempt's deadline; [] between rounds."""
    o = view.current
    if o is None:
        return []
    now = now or datetime.now(UTC)
    if o.deadline is None:
        deadline = "deadline unknown"
    elif o.deadline > now:
        deadline = f"deadline {_when(o.deadline)} (in {duration((o.deadline - now).total_seconds())})"
    else:
        deadline = f"deadline {_when(o.deadline)} (passed; the round is being closed)"
    state = "being aggregated" if o.status == "claimed" else "in progress"
    attempt = f", attempt {o.attempt + 1}" if o.attempt else ""
    out = [
        f"round {o.round} {state}{attempt}: {len(o.sent)} of {len(o.selected)} selected client(s) sent, {deadline}",
        f"  selected  {_named(o.selected)}",
        f"  sent      {_named(o.sent)}",
        f"  pending   {_named(o.pending)}",
        f"  failed    {_named(o.failed)}",
    ]
    if o.declined:
        out.append(f"  declined  {_named(o.declined)}")
    if o.skipped:
        out.append(f"  left out  {_named(o.skipped)} (offline when the round was selected)")
    return out


def open_round_brief(view: RunView) -> str:
    """One line for `--watch` when a round opens: whom it was sent to, whom it left out, its deadline."""
    o = view.current
    if o is None:
        return ""
    left_out = f" (left out as offline: {_named(o.skipped)})" if o.skipped else ""
    deadline = f", deadline {_when(o.deadline)}" if o.deadline else ""
    return f"round {o.round} sent to {_named(o.selected)}{left_out}{deadline}"


def open_round_json(view: RunView) -> dict[str, Any] | None:
    """`status --json`'s `current_round`: the round in progress (see `open_round_lines`), or None."""
    o = view.current
    if o is None:
        return None
    return {**asdict(o), "deadline": o.deadline.isoformat() if o.deadline else None}


def render_status_json(view: RunView) -> str:
    """The run (with `stop`: the operator's reason and time, when it was stopped) and one object per
    round (participants, rejected, declined and clipped updates, the norm bound applied, metrics,
    measurements, epsilon (under distributed DP also `operator_epsilon`), delta, repeated noisy
    releases and `kept`, the clients the strategy kept; with per-client rows read, `clients`: each
    selected client's status, examples and own metrics);
    `failures`: each client's last failed round in the run, as its agent reported it."""
    ex = view.execution
    evaluated = global_evaluation(view)
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
            "model_accuracy": evaluated.get(s.round),
            "measurements": s.measurements,
            "epsilon": s.epsilon,
            "operator_epsilon": s.operator_epsilon,
            "delta": s.delta,
            "repeated_releases": s.repeated_releases,
            "kept": s.kept,
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
        "codec": view.record.codec,
        "dp": asdict(view.record.dp) if view.record.dp else None,
        "neighbouring": neighbouring(view.record.dp, view.record.selection),
        "target_met_by_round": target_met_by(view),
        "settings": {k: v for k, v in asdict(view.record).items() if k not in ("run_id", "model", "initial_state")},
        "failures": [asdict(f) for _, f in sorted(view.failures.items())],
        "select_online": view.record.select_online,
        "clients": view.record.clients,
        "rounds": rows,
        "current_round": open_round_json(view),
    }
    return json.dumps(run, indent=2)


def table_rows(view: RunView) -> list[tuple[object, ...]]:
    """`round_row` of every round of `view`, each with the accuracy of the model it released."""
    evaluated = global_evaluation(view)
    return [round_row(s, evaluated.get(s.round)) for s in view.rounds]


def render_status(view: RunView) -> str:
    rows = table_rows(view)
    body = table(ROUND_HEADER, rows) if rows else ["no round completed yet"]
    current = open_round_lines(view)
    per_client = ["", *render_client_table(view.clients)] if view.clients else []
    return lines(
        [
            headline(view),
            settings_line(view),
            "",
            *body,
            *(["", *current] if current else []),
            *footer(view),
            *per_client,
        ]
    )


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
    told: set[FailureItem] = set()
    announced: set[tuple[int, int]] = set()
    while True:
        for client, failure in sorted(view.failures.items()):
            if failure not in told:  # live: each failure as soon as its agent reports it
                told.add(failure)
                echo(f"{client}: {failure.line()}")
        rows = table_rows(view)
        if rows and shown == 0:
            widths = [max(w, *(len(str(r[i])) for r in rows)) + 2 for i, w in enumerate(widths)]
            echo("  ".join(h.ljust(w) for h, w in zip(ROUND_HEADER, widths, strict=True)).rstrip())
        for row in rows[shown:]:
            echo("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
        shown = len(rows)
        opened = view.current
        if opened is not None and (opened.round, opened.attempt) not in announced and view.status == "RUNNING":
            announced.add((opened.round, opened.attempt))
            echo(open_round_brief(view))
        if view.status != "RUNNING":
            echo(headline(view))
            for line in footer(view):
                echo(line)
            return view
        time.sleep(interval_s)
        view = load()
