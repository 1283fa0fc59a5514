"""Server-written records about a client or a run: the feedback on a rejected update and the
operator's stop marker."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from fedstep.core import keys, limits
from fedstep.core.schemas.validation import (
    InvalidMessage,
    check_schema,
    get_field,
    id_field,
    positive_int,
    short_str,
    timestamp,
)
from fedstep.core.version import SCHEMA_VERSION


@dataclass(frozen=True)
class Feedback:
    """Why a client's last update in a run was rejected: written by the aggregation function to the
    client's feedback partition, which its role may read but not write, once per run
    (`keys.rejection_item_key`) and as the client's latest rejection in any run
    (`keys.last_rejection_item_key`). An agent whose update of a retried round was rejected trains
    again (it reads its run's item, so two runs at once never mix up their rejections); `fedstep
    status` shows the run's items, `fedstep clients` the latest ones."""

    client_id: str
    run_id: str
    round: int
    update_sha256: str
    reason: str
    at: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "reason", limits.reason(self.reason))

    def to_item(self) -> dict[str, Any]:
        """The run's feedback item for this client."""
        return {**keys.rejection_item_key(self.client_id, self.run_id), "schema": SCHEMA_VERSION, **asdict(self)}

    def to_items(self) -> list[dict[str, Any]]:
        """What the server writes: the run's item, and the same facts as the client's latest rejection."""
        item = self.to_item()
        return [item, {**item, **keys.last_rejection_item_key(self.client_id)}]

    @classmethod
    def parse(cls, data: dict[str, Any]) -> Feedback:
        where = "feedback item"
        check_schema(data, where)
        return cls(
            client_id=id_field(data, "client_id", "client id", where),
            run_id=id_field(data, "run_id", "run id", where),
            round=positive_int(data, "round", where),
            update_sha256=get_field(data, "update_sha256", str, where),
            reason=get_field(data, "reason", str, where),
            at=get_field(data, "at", str, where),
        )


STOP_KIND = "stop"


@dataclass(frozen=True)
class RunStop:
    """The run was stopped (`fedstep stop`): its marker (`keys.stop_item_key`), written once by the
    operator before the execution is stopped. While it exists no round of the run is published,
    claimed or committed (the aggregation function's commit checks it in the same transaction), and
    an agent neither trains nor uploads for the run. `reason` is the operator's `--reason` (one
    line, at most `limits.MAX_STOP_REASON_CHARS`), shown by `fedstep status` and to the run's agents."""

    run_id: str
    reason: str
    stopped_at: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "reason", limits.reason(self.reason, limits.MAX_STOP_REASON_CHARS))

    def to_item(self) -> dict[str, Any]:
        return {**keys.stop_item_key(self.run_id), "schema": SCHEMA_VERSION, "kind": STOP_KIND, **asdict(self)}

    @classmethod
    def parse(cls, data: dict[str, Any]) -> RunStop:
        where = "stop marker"
        check_schema(data, where)
        return cls(
            run_id=id_field(data, "run_id", "run id", where),
            reason=short_str(data, "reason", where, limits.MAX_STOP_REASON_CHARS),
            stopped_at=timestamp(data, "stopped_at", where),
        )

    @classmethod
    def of_item(cls, run_id: str, item: dict[str, Any] | None) -> RunStop | None:
        """The stop marker read at `keys.stop_item_key(run_id)` (None: there is none, the run was not
        stopped). A marker that cannot be parsed still means stopped: the commit's check is its existence."""
        if item is None:
            return None
        try:
            return cls.parse(item)
        except InvalidMessage as exc:
            return cls(run_id, f"(unreadable stop marker: {exc})", str(item.get("stopped_at", ""))[:40])
