"""The size of a record on the wire, as the in-memory ports check it against the services' limits."""

from __future__ import annotations

import json
from typing import Any


def record_bytes(value: Any) -> int:
    """An upper estimate of a record's size on the wire, bytes: its JSON (quotes and separators
    included, which DynamoDB and Step Functions do not count as generously)."""
    return len(json.dumps(value, default=str, separators=(",", ":"), ensure_ascii=False).encode())
