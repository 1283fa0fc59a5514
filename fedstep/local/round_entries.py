"""A round as `fedstep local` reports it, whichever engine ran it: its entry in summary.json and its
console line."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from fedstep.core.schemas import RoundSummary, headline_metric


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def round_entry(summary: RoundSummary, heldout: dict[str, float], relation: str) -> dict[str, Any]:
    """The round's entry in `<out>/summary.json` (a row of `fedstep.api.history_frame`): the round
    summary's figures, the held-out evaluation of its global model (`heldout`: test_accuracy,
    test_loss) and the neighbouring relation its epsilon is accounted under (`relation`)."""
    return {
        "round": summary.round,
        "participants": len(summary.participants),
        "accuracy": headline_metric(summary.metrics, "accuracy"),
        "loss": headline_metric(summary.metrics, "loss"),
        "heldout_accuracy": heldout["test_accuracy"],
        "heldout_loss": heldout["test_loss"],
        "metrics": summary.metrics,
        "rejected": [asdict(r) for r in summary.rejected],
        "duration_s": summary.duration_s,
        "bytes_up": summary.bytes_aggregated,
        "measurements": summary.measurements,
        "kept": summary.kept,
        "epsilon": summary.epsilon,
        "operator_epsilon": summary.operator_epsilon,
        "delta": summary.delta,
        "neighbouring": relation,
    }


def round_line(summary: RoundSummary, entry: dict[str, Any], total: int, relation: str) -> str:
    """The round's console line, e.g. `round 2/5  participants 3  loss 0.4123  accuracy 0.8812
    held-out accuracy 0.8944  1.2 s` (then rejected updates and epsilon, when there are)."""
    return (
        f"round {summary.round}/{total}  participants {entry['participants']}  "
        f"loss {_fmt(entry['loss'])}  accuracy {_fmt(entry['accuracy'])}  "
        f"held-out accuracy {_fmt(entry['heldout_accuracy'])}  {summary.duration_s:.1f} s"
        + (f"  rejected {len(summary.rejected)}" if summary.rejected else "")
        + (f"  epsilon {summary.epsilon:.3f} ({relation})" if summary.epsilon is not None else "")
        + (f"  operator epsilon {summary.operator_epsilon:.3f}" if summary.operator_epsilon is not None else "")
    )
