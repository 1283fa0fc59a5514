"""A round's outcome: the round summary in its round record, the statuses of that record, and the
rejections and adjustments it lists."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from fedstep.core import limits
from fedstep.core.schemas.refs import ObjectRef
from fedstep.core.schemas.validation import (
    check_kept,
    check_measurements,
    check_schema,
    get_field,
    optional_number,
    positive_int,
)
from fedstep.core.version import SCHEMA_VERSION


def headline_metric(metrics: dict[str, float], name: str) -> float | None:
    """The metric `name` ("loss", "accuracy") people see for a round: the clients' test split after
    local training, else their train split; None if neither was reported."""
    return metrics.get(f"test_{name}", metrics.get(f"train_{name}"))


@dataclass(frozen=True)
class Rejection:
    """A client whose update did not count, and why (cut to `limits.MAX_REASON_CHARS`)."""

    client_id: str
    reason: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "reason", limits.reason(self.reason))


@dataclass(frozen=True)
class Adjustment:
    """A client whose update counted within the run's bounds only after it was clipped: `what`
    says which bound and by how much (e.g. "examples 1000000000 -> 100000")."""

    client_id: str
    what: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "what", limits.reason(self.what, limits.MAX_ADJUSTMENT_CHARS))


ROUND_OPEN, ROUND_CLAIMED, ROUND_AGGREGATED, ROUND_REPORTED = "open", "claimed", "aggregated", "reported"
"""A round record's status: published and collecting updates; being aggregated by one invocation
(which holds a lease); aggregated (its summary written, its task not yet told); reported."""


@dataclass(frozen=True)
class RoundSummary:
    """The outcome of a round: written once to its round record in DynamoDB.

    Durations are seconds; `duration_s` runs from the round's first publication to the end of
    aggregation. `num_examples` and the weighted `metrics` use the clients' examples as capped by
    the run's `max_examples`."""

    run_id: str
    round: int
    selected: list[str]
    participants: list[str]
    num_examples: int
    rejected: list[Rejection]
    metrics: dict[str, float]
    global_model: ObjectRef
    duration_s: float
    aggregation_s: float
    completed_at: str
    bytes_aggregated: int = 0
    """Size of the accepted update files, bytes."""
    clipped: list[Adjustment] = field(default_factory=list)
    attempt: int = 0
    measurements: dict[str, float] = field(default_factory=dict)
    """The strategy's measurements of the round (e.g. `step_norm`, `selected`)."""
    state: ObjectRef | None = None
    """The strategy's state after this round (None: a stateless strategy)."""
    epsilon: float | None = None
    """The run's privacy loss after this round, at `delta` (None: no DP): client-level under the
    central modes (dp-accounting's RDP accountant) and, for the published model, under distributed DP;
    the largest participant's record-level epsilon under dp-sgd."""
    delta: float | None = None
    declined: list[Rejection] = field(default_factory=list)
    """Selected clients that declined the round (e.g. their privacy budget), with their reason."""
    privacy_budget_spent: bool = False
    """The next round would take the run's epsilon past its budget: the run stops here."""
    norm_bound: float | None = None
    """The bound on an update's L2 norm in this round: the run's `max_update_norm`, or its default
    (`fedstep.core.influence.default_norm_bound`); None in summaries of earlier versions."""
    repeated_releases: int = 0
    """Central DP: noisy models released beyond one per round, in this round and every earlier one of
    the run (and of the runs it continues): an aggregation whose model was written but not committed
    (a crash, a lost claim) and then done again. The accountant counts each (docs/privacy.md)."""
    manifest: ObjectRef | None = None
    """The round's update manifest (`fedstep.core.manifest`: each aggregated update's key, sha256, object
    version, weight and clip factor), written once beside its model; None in summaries of earlier versions."""
    kept: list[str] | None = None
    """The participants whose updates the strategy kept for its step, by client id, when it keeps some
    and drops the others (Krum, Multi-Krum; `check_kept`); None: every participant's update counted."""
    operator_epsilon: float | None = None
    """Distributed DP: the run's client-level epsilon after this round against the operator, who sees
    the noisy sums and knows whom each round selected (no amplification by sampling; the discrete
    noise's correction; at least the threshold's honest survivors), at `delta`
    (`fedstep.core.rounds.operator_privacy_spent`); None otherwise."""

    def to_dict(self) -> dict[str, Any]:
        """As stored in the round record: `kept` as positions in `participants` (1,000 of them take
        about 4 KB rather than 66 KB of client ids, so the largest record stays inside DynamoDB's item)."""
        data = {"schema": SCHEMA_VERSION, **asdict(self)}
        if self.kept is not None:
            position = {client: i for i, client in enumerate(self.participants)}
            data["kept"] = [position[c] for c in self.kept]
        return data

    def brief(self) -> dict[str, Any]:
        """The round in a few fields of bounded size: what the state machine carries and shows."""
        return {
            "run_id": self.run_id,
            "round": self.round,
            "selected": len(self.selected),
            "participants": len(self.participants),
            "rejected": len(self.rejected),
            "clipped": len(self.clipped),
            "num_examples": self.num_examples,
            "metrics": self.metrics,
            "measurements": self.measurements,
            "epsilon": self.epsilon,
            "delta": self.delta,
            **({"operator_epsilon": self.operator_epsilon} if self.operator_epsilon is not None else {}),
            "duration_s": self.duration_s,
        }

    @classmethod
    def parse(cls, data: dict[str, Any]) -> RoundSummary:
        where = "round summary"
        check_schema(data, where)
        return cls(
            run_id=get_field(data, "run_id", str, where),
            round=positive_int(data, "round", where),
            selected=list(data.get("selected", [])),
            participants=list(get_field(data, "participants", list, where)),
            num_examples=positive_int(data, "num_examples", where, 0),
            rejected=[Rejection(**r) for r in get_field(data, "rejected", list, where)],
            metrics=dict(get_field(data, "metrics", dict, where)),
            global_model=ObjectRef.parse(get_field(data, "global_model", dict, where), f"{where} global_model"),
            duration_s=get_field(data, "duration_s", float, where),
            aggregation_s=get_field(data, "aggregation_s", float, where),
            completed_at=get_field(data, "completed_at", str, where),
            bytes_aggregated=positive_int(data, "bytes_aggregated", where, 0) if "bytes_aggregated" in data else 0,
            clipped=[Adjustment(**c) for c in data.get("clipped", [])],
            attempt=int(data.get("attempt", 0)),
            measurements=check_measurements(data.get("measurements", {}), f"{where} measurements"),
            state=ObjectRef.parse(data["state"], f"{where} state") if data.get("state") else None,
            epsilon=optional_number(data, "epsilon", where),
            delta=optional_number(data, "delta", where),
            declined=[Rejection(**r) for r in data.get("declined", [])],
            privacy_budget_spent=bool(data.get("privacy_budget_spent", False)),
            norm_bound=optional_number(data, "norm_bound", where),
            repeated_releases=positive_int(data, "repeated_releases", where, 0) if "repeated_releases" in data else 0,
            kept=check_kept(data.get("kept"), list(data.get("participants") or []), f"{where} kept"),
            manifest=ObjectRef.parse(data["manifest"], f"{where} manifest") if data.get("manifest") else None,
            operator_epsilon=optional_number(data, "operator_epsilon", where),
        )


def is_completed(round_item: dict[str, Any]) -> bool:
    """Whether a round record holds a summary (aggregated, reported or not yet)."""
    return round_item.get("status") in (ROUND_AGGREGATED, ROUND_REPORTED)
