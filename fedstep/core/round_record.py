"""A round's server record (`keys.round_item_key`): its typed fields and the rules of its transitions.

The record goes open -> claimed (one invocation holds a lease until `lease_until`, seconds since the
epoch) -> aggregated (its summary written) -> reported; a claim released or whose lease ran out lets
the round be claimed again. The rules are written here once, as predicates on the record:

- `open_round` writes only if the round is new or still open (`reopenable`);
- `claim_round` takes the round if it is open or its claim's lease ended before now (`claimable`);
- `hold_round`, `release_round`, `complete_round`, `count_release` need the claim to hold (`held_by`).

The in-memory table (`fedstep.memory`) evaluates these predicates; the DynamoDB table
(`fedstep.aws.adapters.DynamoRoundTable`) states the same rules as condition expressions, and
tests/test_round_table_contract.py runs one suite against both. The wire format is the item as
stored: `to_item` writes it, `parse` reads it back, keeping every other field (the summary's) as is.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from fedstep.core import keys
from fedstep.core.schemas import (
    ROUND_AGGREGATED,
    ROUND_CLAIMED,
    ROUND_OPEN,
    ROUND_REPORTED,
    ObjectRef,
    RoundSummary,
)
from fedstep.core.version import SCHEMA_VERSION

ROUND_KIND = "round"
ROUND_STATUSES = (ROUND_OPEN, ROUND_CLAIMED, ROUND_AGGREGATED, ROUND_REPORTED)
LIFECYCLE_FIELDS = (
    "status",
    "attempt",
    "task_token",
    "issued_at",
    "first_issued_at",
    "input_model",
    "input_state",
    "selected",
    "skipped",
    "claim_id",
    "lease_until",
    "plan",
    "noisy_releases",
)
"""The record's own fields; the rest of a completed record is its summary (`RoundSummary`)."""


def recorded_selection(item: dict[str, Any]) -> list[str] | None:
    """The clients a round item says it was published to (its string entries), None if it recorded
    no list (a record written before rounds recorded their selection)."""
    selected = item.get("selected")
    return [c for c in selected if isinstance(c, str)] if isinstance(selected, list) else None


def _ref(item: dict[str, Any], name: str) -> ObjectRef | None:
    raw = item.get(name)
    return ObjectRef.parse(raw, f"round record {name}") if raw else None


@dataclass(frozen=True)
class RoundRecord:
    """A round record as stored. `task_token` is the newest attempt's Step Functions token (removed
    once reported); `claim_id` and `lease_until` (seconds since the epoch) name the invocation that
    holds the round and until when; `plan` is the slice plan of a sliced aggregation; `noisy_releases`
    counts the noisy models written under central DP. `selected` is None for a record written before
    rounds recorded their selection. `item` is the whole item as read (summary fields included)."""

    run_id: str
    round: int
    status: str
    attempt: int = 0
    task_token: str | None = None
    issued_at: str = ""
    first_issued_at: str = ""
    input_model: ObjectRef | None = None
    input_state: ObjectRef | None = None
    selected: list[str] | None = None
    skipped: dict[str, str] | None = None
    claim_id: str | None = None
    lease_until: float | None = None
    plan: ObjectRef | None = None
    noisy_releases: int = 0
    item: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def parse(cls, item: dict[str, Any]) -> RoundRecord:
        """The record of a stored round item (server-written: read as leniently as the round logic
        always has, e.g. a `selected` that is not a list counts as none recorded)."""
        skipped = item.get("skipped")
        lease = item.get("lease_until")
        token = item.get("task_token")
        claim = item.get("claim_id")
        return cls(
            run_id=str(item.get("run_id") or item.get(keys.PK, "")),
            round=int(item.get("round", 0)),
            status=str(item.get("status", "")),
            attempt=int(item.get("attempt", 0)),
            task_token=None if token is None else str(token),
            issued_at=str(item.get("issued_at", "")),
            first_issued_at=str(item.get("first_issued_at", "")),
            input_model=_ref(item, "input_model"),
            input_state=_ref(item, "input_state"),
            selected=recorded_selection(item),
            skipped=dict(skipped) if isinstance(skipped, dict) else None,
            claim_id=None if claim is None else str(claim),
            lease_until=None if lease is None else float(lease),
            plan=_ref(item, "plan"),
            noisy_releases=int(item.get("noisy_releases", 0)),
            item=dict(item),
        )

    @classmethod
    def opened(
        cls,
        run_id: str,
        round_number: int,
        attempt: int,
        task_token: str,
        issued_at: str,
        input_model: ObjectRef,
        input_state: ObjectRef | None = None,
        selected: list[str] | None = None,
        skipped: dict[str, str] | None = None,
        first_issued_at: str | None = None,
    ) -> RoundRecord:
        """A round's record as `RoundTable.open_round` writes it (`first_issued_at`: the first
        publication's time, kept across attempts; default `issued_at`)."""
        return cls(
            run_id=run_id,
            round=round_number,
            status=ROUND_OPEN,
            attempt=attempt,
            task_token=task_token,
            issued_at=issued_at,
            first_issued_at=issued_at if first_issued_at is None else first_issued_at,
            input_model=input_model,
            input_state=input_state,
            selected=None if selected is None else list(selected),
            skipped=None if skipped is None else dict(skipped),
        )

    def to_item(self) -> dict[str, Any]:
        """The item as stored: the other fields of `item` (a summary's), then the record's own; a
        field that is None is absent, except `input_state` (None: the round starts from no state)."""
        own: dict[str, Any] = {
            "schema": SCHEMA_VERSION,
            "kind": ROUND_KIND,
            "run_id": self.run_id,
            "round": self.round,
            "status": self.status,
            "attempt": self.attempt,
            "task_token": self.task_token,
            "issued_at": self.issued_at,
            "first_issued_at": self.first_issued_at,
            "input_model": asdict(self.input_model) if self.input_model else None,
            "input_state": asdict(self.input_state) if self.input_state else None,
            "selected": self.selected,
            "skipped": self.skipped,
            "claim_id": self.claim_id,
            "lease_until": self.lease_until,
            "plan": asdict(self.plan) if self.plan else None,
            "noisy_releases": self.noisy_releases or None,
        }
        rest = {k: v for k, v in self.item.items() if k not in own}
        kept = {k: v for k, v in own.items() if v is not None or k == "input_state"}
        return {**rest, **keys.round_item_key(self.run_id, self.round), **kept}

    # -- the rules ---------------------------------------------------------------------------------
    @property
    def completed(self) -> bool:
        """The round's summary is written (aggregated, reported or not yet)."""
        return self.status in (ROUND_AGGREGATED, ROUND_REPORTED)

    @property
    def reopenable(self) -> bool:
        """A new attempt may be recorded: the round is still open (not claimed nor completed)."""
        return self.status == ROUND_OPEN

    def lease_active(self, now: float) -> bool:
        """Claimed, with a lease that has not ended at `now` (seconds since the epoch)."""
        return self.status == ROUND_CLAIMED and self.lease_until is not None and self.lease_until > now

    def claimable(self, now: float) -> bool:
        """Open, or claimed by a holder whose lease ended before `now` (it crashed): a takeover."""
        expired = self.status == ROUND_CLAIMED and self.lease_until is not None and self.lease_until < now
        return self.status == ROUND_OPEN or expired

    def held_by(self, claim_id: str) -> bool:
        """The claim `claim_id` holds the round (whatever its lease: it is only checked by a claim)."""
        return self.status == ROUND_CLAIMED and self.claim_id == claim_id

    def summary(self) -> RoundSummary:
        """The completed round's summary (InvalidMessage if the record holds none)."""
        return RoundSummary.parse(self.item)

    def require_input_model(self) -> ObjectRef:
        """The model the round starts from (KeyError for a record without one: never written so)."""
        if self.input_model is None:
            raise KeyError(f"round {self.round} of run {self.run_id} has no input_model")
        return self.input_model
