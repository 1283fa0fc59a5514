"""Timestamps as the wire formats carry them: ISO 8601 in UTC, millisecond precision."""

from __future__ import annotations

from datetime import UTC, datetime


def utc_now() -> str:
    """Now, e.g. `2026-11-30T05:27:29.123+00:00`."""
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def parse_utc(iso: str) -> float:
    """The timestamp `iso` (ISO 8601 with a UTC offset or `Z`) in epoch seconds; ValueError saying
    why for anything else (a time without an offset would be read in the local time zone)."""
    try:
        when = datetime.fromisoformat(iso.replace("Z", "+00:00"))
    except (AttributeError, TypeError, ValueError):
        raise ValueError(f"must be an ISO 8601 time such as 2026-11-30T12:00:00Z, got {str(iso)[:40]!r}") from None
    if when.tzinfo is None:
        raise ValueError(f"must say its UTC offset (Z or +00:00), got {iso[:40]!r}")
    return when.timestamp()


def seconds_since(iso: str, now: float) -> float:
    """Seconds from the timestamp `iso` to `now` (epoch seconds), at least 0; 0 for a malformed one."""
    try:
        started = parse_utc(iso)
    except ValueError:
        return 0.0
    return round(max(0.0, now - started), 3)


def duration(seconds: float | None) -> str:
    """ "42 s", "3 min 5 s", "2 h 10 min"; "-" for None."""
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds // 60:.0f} min {seconds % 60:.0f} s"
    return f"{seconds // 3600:.0f} h {seconds % 3600 // 60:.0f} min"
