"""Which client agents are online, from their heartbeat items, and each client's last rejected update
(what `fedstep clients` shows; the rules are in the CLI module's docstring, `fedstep.render.clients`)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from fedstep.core.presence import presence_of
from fedstep.core.schemas import Feedback, Heartbeat, InvalidMessage


@dataclass(frozen=True)
class ClientStatus:
    client_id: str
    status: str  # online, offline, stopped, never seen, invalid
    activity: str  # idle, training run-x round 3, ...
    last_seen: str | None
    seconds_ago: float | None
    agent_version: str | None
    hardware: dict[str, Any]
    last_rejection: str = ""
    """run, round and reason of the client's last rejected update ("" if none)."""
    epsilon: float | None = None
    """The client's record-level epsilon in `privacy_run_id` (DP-SGD), at `delta`; None if it reports none."""
    delta: float | None = None
    privacy_run_id: str | None = None


def status_of(client_id: str, item: dict[str, Any] | None, now: datetime) -> ClientStatus:
    if item is None:
        return ClientStatus(client_id, "never seen", "", None, None, None, {})
    try:
        beat = Heartbeat.parse(item)
        status, ago = presence_of(beat, now)
    except (InvalidMessage, ValueError, TypeError) as exc:
        return ClientStatus(client_id, "invalid", f"unreadable heartbeat: {exc}", None, None, None, {})
    activity = {
        "training": f"training {beat.run_id} round {beat.round}",
        "declined": f"declined {beat.run_id} round {beat.round}",
        "idle": "idle",
    }.get(beat.state, "")
    privacy = beat.privacy or {}
    return ClientStatus(
        client_id,
        status,
        activity,
        beat.last_seen,
        round(ago, 1),
        beat.agent_version,
        beat.hardware,
        epsilon=privacy.get("epsilon"),
        delta=privacy.get("delta"),
        privacy_run_id=beat.run_id if "epsilon" in privacy else None,
    )


def rejection_line(item: dict[str, Any] | None) -> str:
    """ "run-x round 3: <reason>" from a feedback item ("" when there is none)."""
    if item is None:
        return ""
    try:
        told = Feedback.parse(item)
    except InvalidMessage as exc:
        return f"unreadable feedback: {exc}"
    return f"{told.run_id} round {told.round}: {told.reason}"


def statuses(
    client_ids: list[str],
    items: dict[str, dict[str, Any]],
    now: datetime | None = None,
    feedback: dict[str, dict[str, Any]] | None = None,
) -> list[ClientStatus]:
    now = now or datetime.now(UTC)
    feedback = feedback or {}
    return [
        replace(status_of(cid, items.get(cid), now), last_rejection=rejection_line(feedback.get(cid)))
        for cid in client_ids
    ]
