"""`fedstep strategies`: every aggregation strategy, its parameters, their types and defaults."""

from __future__ import annotations

import json

from fedstep.core.strategies import STRATEGIES
from fedstep.core.strategies.params import describe


def render_strategies(as_json: bool = False) -> str:
    """The strategies as text (one block each) or as a JSON list."""
    if as_json:
        listing = [
            {
                "name": cls.name,
                "summary": cls.summary,
                "reads_updates": cls.access,
                "params": [
                    {"name": p.name, "type": p.kind, "default": p.default, "help": p.help} for p in describe(cls.Params)
                ],
            }
            for cls in STRATEGIES.values()
        ]
        return json.dumps(listing, indent=2)
    blocks = []
    for cls in STRATEGIES.values():
        lines = [f"{cls.name}  {cls.summary}"]
        for p in describe(cls.Params):
            lines.append(f"    {p.name} ({p.kind}, default {p.default}): {p.help}")
        if len(lines) == 1:
            lines.append("    (no parameters)")
        blocks.append("\n".join(lines))
    usage = "use: fedstep start --strategy NAME --strategy-param NAME=VALUE ...; or in a run file: "
    usage += '"strategy": {"name": NAME, "params": {...}}'
    return "\n\n".join([*blocks, usage])
