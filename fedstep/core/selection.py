"""Which clients take part in a round: a seeded, reproducible sample of the run's clients, less
those whose heartbeat says they are offline (`select_online`).

The aggregation function selects when it publishes a round (`fedstep.core.rounds.publish_round`) and
records the selection in the round record, which is what the round waits for; `fedstep start`
computes the same for round 1 from the heartbeats it reads, to warn before a run starts.

With `select_online`, how the offline clients are left out depends on the run's privacy:

- without client-level DP, the sample is drawn from the clients not known to be offline, so a round
  keeps its size while enough are there (who is online changes who is sampled);
- under central DP the sample is drawn from all the run's clients, exactly as the accountant assumes
  (a fixed-size sample of `per_round` out of all of them), and its offline members are then left out,
  like clients that never answer: the round is smaller, the guarantee unchanged.

Either way, when leaving the offline clients out would leave fewer than the round needs (its quorum
and `min_participants`), the plain sample is selected, offline clients included: they may come back
before the deadline, and a round that could not be aggregated without them is no worse off waiting.

Two samplings (the run's `selection`, docs/privacy.md "Two conventions"):
- "fixed" (the default): exactly `per_round` of the N clients, drawn without replacement;
- "poisson": each client independently with probability q = per_round / N, so a round selects
  q N clients on average, and sometimes fewer or none (McMahan et al. 2018's DP-FedAvg).
Both are seeded with (seed, round): every invocation that publishes, retries or takes over a round
computes the same sample.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

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


SELECTIONS = ("fixed", "poisson")
"""The run's `selection`: how a round samples its clients (see the module docstring)."""


def select(clients: list[str], per_round: int, seed: int, round_number: int, sampling: str = "fixed") -> list[str]:
    """The clients of round `round_number` (sorted), by a generator seeded with (seed, round): all of
    them when `per_round` is all; else `per_round` drawn without replacement ("fixed"), or each client
    with probability per_round / len(clients) ("poisson")."""
    pool = sorted(clients)
    if per_round >= len(pool):
        return pool
    rng = np.random.default_rng([seed, round_number])
    if sampling == "poisson":
        draws = rng.random(len(pool))
        return [c for c, u in zip(pool, draws, strict=True) if u < per_round / len(pool)]
    return sorted(str(c) for c in rng.choice(pool, size=per_round, replace=False))


@dataclass(frozen=True)
class Selection:
    """A round's selection: `selected` (sorted) is what the round is sent to and waits for."""

    selected: list[str]
    skipped: dict[str, str] = field(default_factory=dict)
    """Clients of the sample (or of the pool) left out as offline, with their heartbeat's status."""
    kept_offline: dict[str, str] = field(default_factory=dict)
    """Selected clients whose heartbeat says offline, kept because the round needs them."""


def select_round(
    clients: list[str],
    per_round: int,
    seed: int,
    round_number: int,
    away: dict[str, str],
    *,
    needs: int,
    redraw: bool,
    sampling: str = "fixed",
) -> Selection:
    """Round `round_number`'s clients when `away` (client -> "offline"/"stopped") are not there: drawn
    from the others (`redraw`) or the seeded sample less them (not `redraw`: central DP), unless that
    leaves fewer than `needs`; then the plain sample, offline clients kept. `sampling`: "fixed" or
    "poisson" (a redraw from the others keeps the expected size: probability per_round / the others).
    See the module's docstring."""
    sample = select(clients, per_round, seed, round_number, sampling)
    if not away:
        return Selection(sample)
    if redraw:
        pool = [c for c in clients if c not in away]
        chosen = select(pool, min(per_round, len(pool)), seed, round_number, sampling) if pool else []
        left_out = {c: s for c, s in sorted(away.items()) if c in clients}
    else:
        chosen = [c for c in sample if c not in away]
        left_out = {c: away[c] for c in sample if c in away}
    if len(chosen) >= max(1, needs):
        return Selection(chosen, skipped=left_out)
    return Selection(sample, kept_offline={c: away[c] for c in sample if c in away})
