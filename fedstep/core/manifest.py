"""A round's update manifest: which updates it aggregated, as checked, written once beside its model.

For every accepted update: the client, its key, sha256 and size, the object version that was checked
(None where the store names none), the examples it was weighted by (`weight`, after the run's
`max_examples` cap) and the factor its norm bound scaled it by (`clip_factor`, 1.0 when it was not
clipped). The manifest is a JSON object at `keys.manifest_key(run, round, version)`, written with
`If-None-Match: *` like the round's model, and the round summary names it by an `ObjectRef` (its
sha256), so `fedstep verify` checks it like every other object a record names. It lives in S3, not
in the round record, so a round of 1,000 clients does not grow the record (DynamoDB's 400 KB item).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

from fedstep.core.schemas import InvalidMessage, UpdateItem
from fedstep.core.version import SCHEMA_VERSION

MANIFEST_KIND = "update_manifest"


@dataclass(frozen=True)
class ManifestEntry:
    """One aggregated update: its object (key, sha256, bytes, the checked `version`), the examples it
    was weighted by and its norm-bound scale (1.0: not clipped)."""

    client_id: str
    key: str
    sha256: str
    bytes: int
    version: str | None
    weight: int
    clip_factor: float = 1.0

    @classmethod
    def of(cls, item: UpdateItem, version: str | None, weight: int, scale: Any) -> ManifestEntry:
        """The entry of an accepted update item, checked at object `version`, weighted by `weight`
        examples and scaled by `scale` (None: not clipped)."""
        ref = item.update
        return cls(item.client_id, ref.key, ref.sha256, ref.bytes, version, int(weight), clip_factor(scale))


@dataclass(frozen=True)
class UpdateManifest:
    """The updates round `round` of `run_id` aggregated (aggregation `version`), in aggregation order."""

    run_id: str
    round: int
    version: str
    updates: list[ManifestEntry]

    def encode(self) -> bytes:
        """Sorted, compact JSON: the same manifest always gives the same bytes."""
        body = {"schema": SCHEMA_VERSION, "kind": MANIFEST_KIND, **asdict(self)}
        return json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()

    @classmethod
    def decode(cls, data: bytes) -> UpdateManifest:
        """A stored manifest; InvalidMessage if it is not one."""
        try:
            raw: dict[str, Any] = json.loads(data)
            if raw.get("kind") != MANIFEST_KIND:
                raise ValueError(f"kind is {raw.get('kind')!r}, not {MANIFEST_KIND!r}")
            updates = [ManifestEntry(**u) for u in raw["updates"]]
            return cls(str(raw["run_id"]), int(raw["round"]), str(raw["version"]), updates)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise InvalidMessage(f"not an update manifest: {exc}") from None


def clip_factor(scale: Any) -> float:
    """An update's norm-bound scale as the manifest records it: 1.0 when it was not scaled (None)."""
    return 1.0 if scale is None else float(scale)
