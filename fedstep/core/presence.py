"""Whether a client's agent is there, from its heartbeat item: what `fedstep clients` shows and what
the round's selection skips (`select_online`).

A heartbeat is written by the client itself, so it is only a claim: a client that says it is online
is believed (it is selected, and the round waits for it as for any selected client); nothing in it
but its state, time and interval is used here.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fedstep.core import limits
from fedstep.core.schemas import Heartbeat, InvalidMessage

SLACK_S = 15
"""Seconds of slack on top of two heartbeat intervals before a silent agent counts as offline."""

AWAY = ("offline", "stopped")
"""The states in which a heartbeat says its agent is not there: `select_online` skips these clients."""


def presence_of(beat: Heartbeat, now: datetime) -> tuple[str, float]:
    """(status, seconds since the beat): "stopped" (its agent said so on a clean exit), "online" (its
    last beat at most two intervals plus `SLACK_S` old) or "offline". ValueError for a beat more than
    `limits.MAX_CLOCK_SKEW_S` in the future or an unreadable time."""
    seen = datetime.fromisoformat(beat.last_seen)
    ago = (now - seen).total_seconds()
    if ago < -limits.MAX_CLOCK_SKEW_S:
        raise ValueError(f"last_seen {beat.last_seen} is in the future")
    ago = max(0.0, ago)
    if beat.state == "stopped":
        return "stopped", ago
    return ("online" if ago <= 2 * beat.interval_s + SLACK_S else "offline"), ago


def presence(item: dict[str, Any] | None, now: datetime) -> str:
    """A client's status from its heartbeat item: online, offline, stopped, "never seen" (no item: an
    agent with heartbeats off, or none yet) or "invalid" (an item that does not parse)."""
    if item is None:
        return "never seen"
    try:
        return presence_of(Heartbeat.parse(item), now)[0]
    except (InvalidMessage, ValueError, TypeError):
        return "invalid"


def away(clients: list[str], items: dict[str, dict[str, Any]], now: datetime) -> dict[str, str]:
    """The clients whose heartbeat says their agent is offline or stopped, with that status. A client
    never seen, or with an unreadable heartbeat, is not counted away: heartbeats may be off."""
    found = {client: presence(items.get(client), now) for client in clients}
    return {client: status for client, status in found.items() if status in AWAY}
