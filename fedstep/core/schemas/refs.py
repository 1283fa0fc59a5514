"""A reference to a stored object: its key, sha256 and size."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fedstep.core.schemas.validation import InvalidMessage, get_field, positive_int, short_str


@dataclass(frozen=True)
class ObjectRef:
    """An S3 object: key, sha256 (hex) and size in bytes."""

    key: str
    sha256: str
    bytes: int

    @classmethod
    def parse(cls, data: Any, where: str) -> ObjectRef:
        sha = get_field(data, "sha256", str, where)
        if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
            raise InvalidMessage(f"{where}: sha256 must be 64 lowercase hex digits")
        key = short_str(data, "key", where, 1024)  # S3's own limit on key length
        return cls(key, sha, positive_int(data, "bytes", where, 0))
