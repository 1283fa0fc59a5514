"""A simulated run's partition: how many examples of each label every client holds.

`fedstep local` computes it (it has the data and the seed) and writes it once, as JSON, to
`keys.partition_key(run)` (`runs/<run>/partition.json`) and into `summary.json`; clients never
write it. `fedstep report` draws it. Runs without it (every run on a real deployment, whose data
the operator never sees) simply have no label histogram.

    {"schema": 1, "kind": "partition", "dataset": "digits", "scheme": "dirichlet:0.5", "seed": 0,
     "labels": [0, 1, ..., 9], "clients": {"client-1": [12, 0, ..., 40], ...}}

`clients[c][j]` is the number of client c's examples (its local train and test splits together)
with label `labels[j]`. Under the scheme `natural`, `"sites": {"client-1": "Cleveland", ...}` names
each client's site.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from fedstep.core import keys

SCHEMA = 1
KIND = "partition"
MAX_LABELS = 10_000
"""The most labels a partition object may list (a sanity bound for reading it)."""
MAX_SITE_CHARS = 200
"""The longest site name a partition object may hold."""


@dataclass(frozen=True)
class LabelCounts:
    dataset: str
    """The data set: a built-in name or the loader's module:function."""
    scheme: str
    """The partition scheme, e.g. iid or dirichlet:0.5."""
    seed: int
    labels: tuple[int, ...]
    clients: Mapping[str, tuple[int, ...]]
    """Client id -> examples per label, aligned with `labels`."""
    sites: Mapping[str, str] = field(default_factory=dict)
    """Client id -> the site whose data it holds (natural splits only)."""

    @classmethod
    def of(
        cls,
        dataset: str,
        scheme: str,
        seed: int,
        labels: Sequence[int],
        clients: Mapping[str, Sequence[int]],
        sites: Mapping[str, str] | None = None,
    ) -> LabelCounts:
        return cls.parse(
            {
                "schema": SCHEMA,
                "kind": KIND,
                "dataset": dataset,
                "scheme": scheme,
                "seed": seed,
                "labels": [int(v) for v in labels],
                "clients": {c: [int(n) for n in counts] for c, counts in clients.items()},
                **({"sites": dict(sites)} if sites else {}),
            }
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "kind": KIND,
            "dataset": self.dataset,
            "scheme": self.scheme,
            "seed": self.seed,
            "labels": list(self.labels),
            "clients": {c: list(counts) for c, counts in self.clients.items()},
            **({"sites": dict(self.sites)} if self.sites else {}),
        }

    def name(self, client: str) -> str:
        """`client-1 (Cleveland)` under a natural split, else the client id."""
        return f"{client} ({self.sites[client]})" if client in self.sites else client

    @classmethod
    def parse(cls, obj: Any) -> LabelCounts:
        """Check a partition object (as read from JSON); ValueError naming what is wrong."""
        if not isinstance(obj, dict) or obj.get("kind") != KIND or obj.get("schema") != SCHEMA:
            raise ValueError(f"not a partition object of schema {SCHEMA}")
        dataset, scheme, seed, labels = obj.get("dataset"), obj.get("scheme"), obj.get("seed"), obj.get("labels")
        if not isinstance(dataset, str) or not isinstance(scheme, str) or not _whole(seed):
            raise ValueError("dataset and scheme must be strings and seed a whole number")
        if not isinstance(labels, list) or not 1 <= len(labels) <= MAX_LABELS or not all(map(_whole, labels)):
            raise ValueError(f"labels must be a list of 1 to {MAX_LABELS} whole numbers")
        if len(set(labels)) != len(labels):
            raise ValueError("labels must not repeat")
        clients = obj.get("clients")
        if not isinstance(clients, dict) or not clients:
            raise ValueError("clients must be an object of client id -> counts")
        parsed: dict[str, tuple[int, ...]] = {}
        for client, counts in clients.items():
            keys.check_id("client id", client)
            if not isinstance(counts, list) or len(counts) != len(labels):
                raise ValueError(f"client {client}: one count per label ({len(labels)}) expected")
            if not all(_whole(n) and n >= 0 for n in counts):
                raise ValueError(f"client {client}: counts must be whole numbers >= 0")
            parsed[client] = tuple(counts)
        sites = obj.get("sites", {})
        if not isinstance(sites, dict) or not set(sites) <= set(parsed):
            raise ValueError("sites must be an object of client id -> site name, for clients listed")
        if not all(isinstance(v, str) and 0 < len(v) <= MAX_SITE_CHARS for v in sites.values()):
            raise ValueError(f"a site name must be a string of 1 to {MAX_SITE_CHARS} characters")
        return cls(dataset, scheme, seed, tuple(labels), parsed, sites)

    def total(self, client: str) -> int:
        return sum(self.clients[client])

    def top(self, client: str, k: int = 3) -> list[tuple[int, int]]:
        """The client's `k` most frequent labels as (label, count), most frequent first; zeros left out."""
        pairs = sorted(zip(self.labels, self.clients[client], strict=True), key=lambda p: (-p[1], p[0]))
        return [(label, n) for label, n in pairs[:k] if n > 0]

    def describe(self, client: str, k: int = 3) -> str:
        """One line: `479 examples, 8 labels; top 3 33%, 7 25%, 1 19%`."""
        total = self.total(client)
        present = sum(1 for n in self.clients[client] if n > 0)
        top = ", ".join(f"{label} {n / total:.0%}" for label, n in self.top(client, k)) if total else "-"
        return f"{total} examples, {present} label{'s' if present != 1 else ''}; top {top}"


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
