"""Which clients take part in a round: a seeded, reproducible sample of the run's clients.

The operator (for round 1) and the aggregation function (for every next round) compute the same
selection from the run record, so it never has to be stored per round.
"""

from __future__ import annotations

import math

import numpy as np


def per_round_count(spec: str | int | float | None, n_clients: int) -> int:
    """How many clients a round selects: a whole number ("3"), a fraction ("0.5", rounded up), or
    None for all. ValueError for anything else."""
    if spec is None:
        return n_clients
    text = str(spec).strip()
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"clients per round {spec!r} must be a whole number or a fraction like 0.5") from None
    count = math.ceil(value * n_clients) if "." in text else int(value)
    if not 1 <= count <= n_clients or (("." in text) and not 0 < value <= 1):
        raise ValueError(f"clients per round {spec!r} must select 1 to {n_clients} of the {n_clients} clients")
    return count


def select(clients: list[str], per_round: int, seed: int, round_number: int) -> list[str]:
    """The clients of round `round_number` (sorted): all of them, or `per_round` drawn without
    replacement by a generator seeded with (seed, round)."""
    pool = sorted(clients)
    if per_round >= len(pool):
        return pool
    rng = np.random.default_rng([seed, round_number])
    return sorted(str(c) for c in rng.choice(pool, size=per_round, replace=False))
