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
from dataclasses import asdict
from typing import Any

from fedstep.operator.clients import ClientStatus, rejection_line, status_of, statuses  # noqa: F401
from fedstep.render.text import duration, lines, table


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
