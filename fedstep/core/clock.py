"""Timestamps as the wire formats carry them: ISO 8601 in UTC, millisecond precision."""

from __future__ import annotations

from datetime import UTC, datetime


def utc_now() -> str:
    """Now, e.g. `2026-11-30T05:27:29.123+00:00`."""
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def seconds_since(iso: str, now: float) -> float:
    """Seconds from the timestamp `iso` to `now` (epoch seconds), at least 0; 0 for a malformed one."""
    try:
        started = datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return 0.0
    return round(max(0.0, now - started), 3)
