"""The selected clients' update items sorted into updates, rejections and refusals; and what a
round's failure cause says of the clients that sent nothing."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fedstep.core import limits
from fedstep.core.ports import RoundTable
from fedstep.core.schemas import (
    DeclineItem,
    FailureItem,
    InvalidMessage,
    Rejection,
    UpdateItem,
    parse_client_item,
)

log = logging.getLogger(__package__)


@dataclass
class Intake:
    """The selected clients' items, sorted into parsed updates, rejections and refusals."""

    items: list[UpdateItem] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)
    declined: list[Rejection] = field(default_factory=list)


def sort_items(raw: dict[str, dict[str, Any]], selected: list[str], on_rejected: Callable[..., None]) -> Intake:
    intake = Intake()
    for client in selected:
        if client not in raw:
            continue
        try:
            item = parse_client_item(raw[client])  # its key (the client's partition) must match its fields
        except InvalidMessage as exc:
            reason = f"malformed update item: {exc}"
            intake.rejected.append(Rejection(client, reason))
            on_rejected(client, raw[client], reason)
            continue
        if isinstance(item, DeclineItem):
            intake.declined.append(Rejection(client, item.reason))
        else:
            intake.items.append(item)
    return intake


def claimed_sha(raw_item: dict[str, Any]) -> str:
    update = raw_item.get("update")
    sha = update.get("sha256") if isinstance(update, dict) else None
    return sha if isinstance(sha, str) and len(sha) == 64 else ""


def missing_clients(run_id: str, missing: list[str], table: RoundTable) -> str:
    """What a round's failure cause says of the selected clients that sent nothing: each (at most
    `limits.MAX_FAILURES_NAMED`) with its last error in the run, from its failure item, e.g.
    `; client-2: no update, its last error: round 1 failed (attempt 3) at ...: ValueError: ...`."""
    if not missing:
        return ""
    named = missing[: limits.MAX_FAILURES_NAMED]
    try:
        raw = table.get_failures(run_id, named)
    except Exception as exc:  # the cause still names the clients; the round's error stays its own
        log.warning("could not read the failure items of %s: %s", ", ".join(named), exc)
        raw = {}
    parts = []
    for client in named:
        if client not in raw:
            parts.append(f"{client}: no update and no failure reported (is its agent running? `fedstep clients`)")
            continue
        try:
            failure = FailureItem.parse(raw[client])
        except InvalidMessage as exc:
            parts.append(f"{client}: no update; its failure item is invalid: {limits.reason(str(exc))}")
            continue
        parts.append(f"{client}: no update, its last error: {failure.line()}")
    more = len(missing) - len(named)
    if more > 0:
        parts.append(f"and {more} more client(s) without an update")
    return "".join(f"; {part}" for part in parts)
