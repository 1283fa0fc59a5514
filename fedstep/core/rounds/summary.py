"""A round's summary, built in one place: by the aggregation (`aggregate_round`), as the draft a
sliced round's plan carries (`plan_round`), and finished when its slices are assembled; what the round
record stores of it and what the round's task returns to Step Functions."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

from fedstep.core import keys
from fedstep.core.clock import seconds_since, utc_now
from fedstep.core.round_record import RoundRecord
from fedstep.core.schemas import Adjustment, ObjectRef, Rejection, RoundSummary, RunRecord, UpdateItem

DRAFT_TIMING: dict[str, Any] = {"duration_s": 0.0, "aggregation_s": 0.0, "completed_at": ""}
"""The timing fields of a summary not yet finished (a sliced round's draft, until it is assembled)."""


@dataclass(frozen=True)
class Tally:
    """What checking a round's updates left: the accepted updates with their bounded examples, the
    rejected and declined clients (with their reasons) and the updates clipped to the run's bounds."""

    accepted: list[tuple[UpdateItem, int]]
    rejected: list[Rejection]
    declined: list[Rejection]
    clipped: list[Adjustment] = field(default_factory=list)


def finished(first_issued_at: str, started: float) -> dict[str, Any]:
    """The timing fields of a summary finished now: `duration_s` since the round's first publication,
    `aggregation_s` since `started` (time.time(), s) and `completed_at`."""
    now = time.time()
    return {
        "duration_s": seconds_since(first_issued_at, now),
        "aggregation_s": round(now - started, 3),
        "completed_at": utc_now(),
    }


def build_summary(
    run: RunRecord,
    round_number: int,
    record: RoundRecord,
    selected: list[str],
    tally: Tally,
    global_model: ObjectRef,
    timing: dict[str, Any],
    privacy: tuple[float | None, float | None, bool],
    norm_bound: float | None,
    **strategy_results: Any,
) -> RoundSummary:
    """The round's summary from its tally. `timing`: `finished(...)` or `DRAFT_TIMING`; `privacy`:
    (epsilon, delta, budget spent) from `privacy_spent`; `strategy_results`: the fields only an
    aggregation in one function knows (measurements, state, repeated_releases, kept)."""
    accepted = tally.accepted
    epsilon, delta, budget_spent = privacy
    return RoundSummary(
        run_id=run.run_id,
        round=round_number,
        selected=selected,
        participants=[item.client_id for item, _ in accepted],
        num_examples=sum(n for _, n in accepted),
        rejected=tally.rejected,
        metrics=weighted_metrics(accepted),
        global_model=global_model,
        bytes_aggregated=sum(item.update.bytes for item, _ in accepted),
        clipped=tally.clipped,
        attempt=record.attempt,
        epsilon=epsilon,
        delta=delta,
        declined=tally.declined,
        privacy_budget_spent=budget_spent,
        norm_bound=norm_bound,
        **timing,
        **strategy_results,
    )


def weighted_metrics(accepted: list[tuple[UpdateItem, int]]) -> dict[str, float]:
    """Each metric averaged over the clients reporting it, weighted by their bounded examples."""
    names = sorted(set().union(*(item.metrics for item, _ in accepted))) if accepted else []
    out: dict[str, float] = {}
    for name in names:
        having = [(item.metrics[name], n) for item, n in accepted if name in item.metrics]
        total = sum(n for _, n in having)
        out[name] = round(sum(v * n for v, n in having) / total, 6)
    return out


def summary_item(summary: RoundSummary) -> dict[str, Any]:
    """The round record's fields once the round is aggregated."""
    return {**keys.round_item_key(summary.run_id, summary.round), "kind": "round", **summary.to_dict()}


def task_output(summary: RoundSummary, run: RunRecord) -> dict[str, Any]:
    """What the round's task returns to Step Functions: this round in brief, the new model, and
    whether the run's target is reached. Its size does not grow with the number of rounds."""
    return {
        "summary": summary.brief(),
        "global_model": asdict(summary.global_model),
        "target_reached": bool(run.target and run.target.reached(summary.metrics)),
        "privacy_budget_spent": summary.privacy_budget_spent,
    }
