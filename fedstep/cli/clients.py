"""`fedstep clients`: who is online, from the agents' heartbeat items.

A client is *online* when its last heartbeat is at most two intervals (plus 15 s of slack) old,
*stopped* when its agent said so on a clean exit, *offline* when its heartbeats stopped otherwise,
and *never seen* when no agent has ever written one. LAST REJECTION is the last update the
aggregation function rejected from it in any run (run, round, reason), from the copy of its latest
rejection in its feedback partition (`keys.last_rejection_item_key`). EPSILON is the
record-level epsilon (at the delta in `--json`) the client reports for the run it serves or last
trained with DP-SGD, from its heartbeat ("-": none).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from typing import Any

from fedstep.cli.text import duration, lines, table
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


def _ago(seconds: float | None) -> str:
    return "-" if seconds is None else f"{duration(seconds)} ago"


def _hardware(hw: dict[str, Any]) -> str:
    if not hw:
        return "-"
    parts = [f"{hw.get('os', '?')}/{hw.get('arch', '?')}", f"{hw.get('cpus', '?')} CPUs"]
    if "memory_gib" in hw:
        parts.append(f"{hw['memory_gib']} GiB")
    gpus = hw.get("gpus") or []
    parts.append(f"{len(gpus)} GPU ({', '.join(gpus)})" if gpus else "no GPU")
    return ", ".join(parts)


def render_table(rows: list[ClientStatus]) -> str:
    header = ("CLIENT", "STATUS", "ACTIVITY", "EPSILON", "LAST SEEN", "AGENT", "HARDWARE", "LAST REJECTION")
    body = [
        (
            r.client_id,
            r.status,
            r.activity or "-",
            "-" if r.epsilon is None else f"{r.epsilon:.2f}",
            _ago(r.seconds_ago),
            r.agent_version or "-",
            _hardware(r.hardware),
            r.last_rejection or "-",
        )
        for r in rows
    ]
    rendered = table(header, body)
    online = sum(r.status == "online" for r in rows)
    return lines([*rendered, f"{online} of {len(rows)} client(s) online"])


def render_json(rows: list[ClientStatus]) -> str:
    return json.dumps([asdict(r) for r in rows], indent=2)
