"""How a federated training pool is divided among clients: IID or non-IID, deterministic for a seed.

Schemes (the text form is what ``parse_scheme`` reads and ``str(scheme)`` writes):

``iid``
    Shuffle the pool with the seed and cut it into ``n`` nearly equal parts (``np.array_split``).
``dirichlet:ALPHA``
    Label skew (Hsu, Qi and Brown 2019, as Flower Datasets' ``DirichletPartitioner`` without
    self-balancing): for every class, proportions over the ``n`` clients are drawn from
    Dirichlet(ALPHA, ..., ALPHA) and the class's examples are cut accordingly. ALPHA > 0; small
    values (0.1) give each client few labels, large ones (100) approach IID. A draw that leaves a
    client with fewer than ``preferred`` examples (default ``min_examples``) is drawn again, at most
    ``MAX_ATTEMPTS`` times; if none of those draws gives every client ``preferred``, the first that
    gives every client ``min_examples`` is kept.
``shards:K``
    Pathological label skew (McMahan et al. 2017): sort the pool by label, cut it into ``n * K``
    shards of nearly equal size and give each client ``K`` shards at random. A client sees at most
    ``K`` labels when the shards align with the classes, at most ``2 * K`` when no shard is larger
    than the smallest class (a shard then straddles at most one class boundary).
``quantity:ALPHA``
    Quantity skew: labels stay IID but the client sizes are proportions drawn from
    Dirichlet(ALPHA, ..., ALPHA) (redrawn like ``dirichlet``). Small ALPHA, very unequal sizes.
``natural``
    The data set's own split, as it is held: one client per site (as Flower Datasets'
    ``NaturalIdPartitioner``). Nothing is drawn: the sites come with the data (``heart``'s hospitals,
    or a loader that returns ``(x, y, groups)`` or ``{site: ((x_train, y_train), (x_test, y_test))}``;
    see ``client_agent.datasets``), so ``split`` refuses it.

All randomness comes from ``numpy.random.default_rng(seed)``, so every client computes the same
partition from the same labels and seed and takes its own part. numpy only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

KINDS = ("iid", "dirichlet", "shards", "quantity", "natural")
MAX_ATTEMPTS = 100
"""Draws of a Dirichlet scheme before giving up on giving every client ``min_examples``."""
SYNTAX = "iid, dirichlet:ALPHA, shards:K, quantity:ALPHA (e.g. dirichlet:0.5, shards:2) or natural"


@dataclass(frozen=True)
class Scheme:
    """A parsed partition scheme; ``alpha`` for dirichlet and quantity, ``shards`` (K) for shards."""

    kind: str = "iid"
    alpha: float | None = None
    shards: int | None = None

    def __str__(self) -> str:
        if self.kind in ("dirichlet", "quantity"):
            return f"{self.kind}:{self.alpha:g}"
        if self.kind == "shards":
            return f"shards:{self.shards}"
        return self.kind  # iid, natural

    @property
    def is_iid(self) -> bool:
        return self.kind == "iid"

    @property
    def is_natural(self) -> bool:
        return self.kind == "natural"


IID = Scheme()
NATURAL = Scheme("natural")


def parse_scheme(text: str | Scheme | None) -> Scheme:
    """``'dirichlet:0.5' -> Scheme('dirichlet', alpha=0.5)``; None or ``''`` is iid; ValueError
    with the accepted forms otherwise."""
    if isinstance(text, Scheme):
        return text
    if text is None or not str(text).strip():
        return IID
    spec = str(text).strip()
    kind, sep, value = spec.partition(":")
    kind, value = kind.strip().lower(), value.strip()
    if kind not in KINDS:
        raise ValueError(f"unknown partition scheme {spec!r}; use {SYNTAX}")
    if kind in ("iid", "natural"):
        if sep:
            raise ValueError(f"partition scheme {spec!r}: {kind} takes no parameter; write just {kind!r}")
        return NATURAL if kind == "natural" else IID
    if kind == "shards":
        if not value:
            raise ValueError(f"partition scheme {spec!r}: give the shards per client, e.g. shards:2")
        try:
            shards = int(value)
        except ValueError:
            shards = 0
        if shards < 1:
            raise ValueError(f"partition scheme {spec!r}: K (shards per client) must be a whole number of at least 1")
        return Scheme("shards", shards=shards)
    if not value:
        raise ValueError(
            f"partition scheme {spec!r}: give the concentration ALPHA, e.g. {kind}:0.5 (smaller is more skewed)"
        )
    try:
        alpha = float(value)
    except ValueError:
        alpha = math.nan
    if not math.isfinite(alpha) or alpha <= 0:
        raise ValueError(
            f"partition scheme {spec!r}: ALPHA must be a number above 0, e.g. {kind}:0.5 (smaller is more skewed)"
        )
    return Scheme(kind, alpha=alpha)


def split(
    labels: np.ndarray,
    clients: int,
    scheme: Scheme | str | None = None,
    seed: int = 0,
    min_examples: int = 2,
    *,
    preferred: int | None = None,
) -> list[np.ndarray]:
    """Divide positions ``0 .. len(labels) - 1`` among ``clients``: one index array per client,
    disjoint and together covering every position.

    ``labels`` are the integer class labels of the pool; ``min_examples`` (default 2, the least a
    local 80/20 train/test split needs) is guaranteed for the non-IID schemes, which raise
    ValueError when they cannot meet it; ``preferred`` (at least ``min_examples``; default the
    same) is what the Dirichlet schemes redraw for (the module doc). ``iid`` parts are in shuffled
    order (the caller checks their size), the others sorted.
    """
    scheme = parse_scheme(scheme)
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must be one-dimensional, got shape {labels.shape}")
    if clients < 1:
        raise ValueError(f"the number of clients must be at least 1, got {clients}")
    if scheme.is_natural:
        raise ValueError(
            "partition natural keeps the sites the data comes with: it needs a data set that has them "
            "(heart, or a loader returning (x, y, groups) or {site: ((x_train, y_train), (x_test, y_test))})"
        )
    rng = np.random.default_rng(seed)
    size = len(labels)
    if scheme.is_iid:
        return list(np.array_split(rng.permutation(size), clients))
    if size < clients * min_examples:
        raise ValueError(
            f"{scheme}: a pool of {size} examples cannot give each of {clients} clients at least "
            f"{min_examples}; use fewer clients"
        )
    if scheme.kind == "shards":
        return _shards(labels, clients, scheme, rng, min_examples)
    draw = _by_label if scheme.kind == "dirichlet" else _by_quantity
    wanted = max(min_examples, preferred or 0)
    if size < clients * wanted:  # no draw can give every client that many
        wanted = min_examples
    fallback = None  # the first draw that gives every client min_examples, when one gives none wanted
    for _ in range(MAX_ATTEMPTS):
        parts = draw(labels, clients, float(scheme.alpha or 0), rng)
        smallest = min(len(p) for p in parts) if parts is not None else -1
        if smallest >= wanted:
            return [np.sort(p) for p in parts]
        if fallback is None and smallest >= min_examples:
            fallback = parts
    if fallback is not None:
        return [np.sort(p) for p in fallback]
    larger = f"{scheme.kind}:{(scheme.alpha or 0) * 10:g}"
    fewer = "no examples" if min_examples == 1 else f"fewer than {min_examples} examples"
    raise ValueError(
        f"{scheme} left some client with {fewer} in each of {MAX_ATTEMPTS} draws "
        f"(seed {seed}, {clients} clients, {size} examples); use a larger ALPHA (e.g. {larger}) or fewer clients"
    )


def _cut(members: np.ndarray, proportions: np.ndarray) -> list[np.ndarray] | None:
    """``members`` cut into consecutive chunks of the given proportions; None if they are not usable."""
    if not np.all(np.isfinite(proportions)) or proportions.sum() <= 0:
        return None
    bounds = (np.cumsum(proportions / proportions.sum())[:-1] * len(members)).astype(np.int64)
    return np.split(members, bounds)


def _by_label(labels: np.ndarray, clients: int, alpha: float, rng: np.random.Generator) -> list[np.ndarray] | None:
    chunks: list[list[np.ndarray]] = [[] for _ in range(clients)]
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        cut = _cut(members, rng.dirichlet(np.full(clients, alpha)))
        if cut is None:
            return None
        for client, chunk in enumerate(cut):
            chunks[client].append(chunk)
    return [np.concatenate(c) for c in chunks]


def _by_quantity(labels: np.ndarray, clients: int, alpha: float, rng: np.random.Generator) -> list[np.ndarray] | None:
    return _cut(rng.permutation(len(labels)), rng.dirichlet(np.full(clients, alpha)))


def _shards(
    labels: np.ndarray, clients: int, scheme: Scheme, rng: np.random.Generator, min_examples: int
) -> list[np.ndarray]:
    per_client = int(scheme.shards or 1)
    total = clients * per_client
    if total > len(labels):
        raise ValueError(
            f"{scheme}: {clients} clients x {per_client} shards = {total} shards, more than the pool's "
            f"{len(labels)} examples; use a smaller K or fewer clients"
        )
    shuffled = rng.permutation(len(labels))  # which examples of a class fall into which shard
    by_label = shuffled[np.argsort(labels[shuffled], kind="stable")]
    shards = np.array_split(by_label, total)
    owners = rng.permutation(total).reshape(clients, per_client)
    parts = [np.sort(np.concatenate([shards[s] for s in row])) for row in owners]
    smallest = min(len(p) for p in parts)
    if smallest < min_examples:
        raise ValueError(
            f"{scheme}: some client would get only {smallest} examples ({total} shards of a pool of "
            f"{len(labels)}); each needs at least {min_examples}: use fewer clients"
        )
    return parts
