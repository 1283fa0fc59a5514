"""Each selected client's own figures per round: its status (aggregated, clipped, rejected, declined,
no update, invalid item), examples and validated metrics, from the round summary and its update item."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from fedstep.core.schemas import InvalidMessage, RoundSummary, UpdateItem

AGGREGATED, CLIPPED, REJECTED, DECLINED, NO_UPDATE, INVALID = (
    "aggregated",
    "clipped",
    "rejected",
    "declined",
    "no update",
    "invalid item",
)


@dataclass(frozen=True)
class ClientRound:
    """One selected client in one round: `status` (aggregated, clipped, rejected, declined, no update,
    invalid item), its examples and validated metrics (aggregated or clipped only), and `detail`: the
    reason it was rejected, declined or clipped, or why its item is invalid."""

    round: int
    client_id: str
    status: str
    num_examples: int | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    detail: str = ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def client_rounds(summary: RoundSummary, items: dict[str, dict[str, Any]]) -> list[ClientRound]:
    """The round's selected clients, in order, from the summary and their update items (by client id)."""
    rejected = {r.client_id: r.reason for r in summary.rejected}
    declined = {d.client_id: d.reason for d in summary.declined}
    clipped = {c.client_id: c.what for c in summary.clipped}
    rows = []
    for client in summary.selected or summary.participants:
        if client in rejected:
            rows.append(ClientRound(summary.round, client, REJECTED, detail=rejected[client]))
        elif client in declined:
            rows.append(ClientRound(summary.round, client, DECLINED, detail=declined[client]))
        elif client not in summary.participants or client not in items:
            rows.append(ClientRound(summary.round, client, NO_UPDATE))
        else:
            try:
                item = UpdateItem.parse(items[client])
            except InvalidMessage as exc:
                rows.append(ClientRound(summary.round, client, INVALID, detail=str(exc)))
                continue
            status, detail = (CLIPPED, clipped[client]) if client in clipped else (AGGREGATED, "")
            rows.append(ClientRound(summary.round, client, status, item.num_examples, item.metrics, detail))
    return rows


def load_client_rounds(
    run_id: str, rounds: list[RoundSummary], table_: Any, only: int | None = None
) -> dict[int, list[ClientRound]]:
    """Per round (or only round `only`), its clients' rows; `table_` is a `DynamoRoundTable` (one
    BatchGetItem per round and 100 clients)."""
    out: dict[int, list[ClientRound]] = {}
    for summary in rounds:
        if only is not None and summary.round != only:
            continue
        wanted = summary.selected or summary.participants
        out[summary.round] = client_rounds(summary, table_.get_updates(run_id, summary.round, wanted))
    return out
