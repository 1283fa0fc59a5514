"""Krum and Multi-Krum (Blanchard et al. 2017, "Machine Learning with Adversaries: Byzantine Tolerant
Gradient Descent"; Multi-Krum as in El Mhamdi et al. 2018).

With n updates of which at most f (`num_malicious`) may be Byzantine, each update i is scored by

    score(i) = sum ||delta_i - delta_j||^2   over the n - f - 2 updates j != i nearest to delta_i

which needs n > 2f + 2 (a ValueError names the numbers otherwise). The m (`num_selected`) updates of
lowest score are kept and their plain mean is the step (unweighted: a client's example count does
not move it): m = 1 is Krum (the step is the best-scored delta itself), m > 1 Multi-Krum. The round
summary names the kept clients (`kept`) beside the measurement `selected`, their number. Equal
scores are ranked by client id, so the result does not depend on the order the updates arrive in.

Two names are registered:
- `krum`: num_malicious f = 0 (Flower's default), num_selected m = 1;
- `multikrum`: num_malicious f = 0, num_selected m = 0, meaning n - f (El Mhamdi et al.'s choice).
f = 0 scores each update by its n - 2 nearest neighbours: Krum still keeps the most central update,
but the paper's guarantee covers only the f set; set num_malicious to the attackers to tolerate
(with f = 0, Multi-Krum's default keeps all the updates: their unweighted mean).

Reads the updates by slices, twice: the pairwise squared distances are accumulated slice by slice
in float64 from each slice's Gram matrix, then the selected updates are averaged. Each slice's rows
are first shifted by their coordinate-wise median, which leaves the distances unchanged: the Gram
trick then cancels smaller numbers (the median is not pulled far by an outlier), and values that
are exact in float64 stay exact, so equal distances come out equal. Memory: one slice of every
update plus an n x n matrix (O(clients x slice + clients^2)), and the step.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fedstep.core.strategies.aggregation import apply_step, coordinatewise, step_norm
from fedstep.core.strategies.base import Aggregate, GlobalModel, ServerState, Strategy, Updates

_F_HELP = "f, the number of Byzantine updates to tolerate (>= 0); a round needs 2f + 3 updates (min_participants)"


@dataclass(frozen=True)
class KrumParams:
    num_malicious: int = field(default=0, metadata={"help": _F_HELP})
    num_selected: int = field(
        default=1, metadata={"help": "m, the best-scored updates averaged (1: Krum; >1: Multi-Krum; 0: n - f)"}
    )


@dataclass(frozen=True)
class MultiKrumParams:
    num_malicious: int = field(default=0, metadata={"help": _F_HELP})
    num_selected: int = field(default=0, metadata={"help": "m, the best-scored updates averaged (0: n - f)"})


def squared_distances(updates: Updates, order: list[int]) -> np.ndarray:
    """||delta_i - delta_j||^2 for every pair of accepted updates, rows and columns in `order` (indices into
    `updates.accepted()`), accumulated over slices in float64."""
    n = len(order)
    gram = np.zeros((n, n), dtype=np.float64)
    for name, shape in updates.spec.shapes.items():
        size = int(np.prod(shape, dtype=np.int64))
        for start in range(0, size, updates.slice_elements):
            rows = updates.slice(name, start, min(size, start + updates.slice_elements))[order].astype(np.float64)
            rows -= np.median(rows, axis=0)  # the same distances from smaller numbers (see the module docstring)
            gram += rows @ rows.T
    norms = np.diag(gram).copy()
    distances = norms[:, None] + norms[None, :] - 2.0 * gram
    np.maximum(distances, 0.0, out=distances)
    np.fill_diagonal(distances, 0.0)
    return distances


def krum_scores(distances: np.ndarray, neighbours: int) -> np.ndarray:
    """Each update's sum of squared distances to its `neighbours` nearest other updates."""
    others = distances + np.diag(np.full(len(distances), np.inf))  # never its own neighbour
    return np.sort(others, axis=1)[:, :neighbours].sum(axis=1)


class Krum(Strategy):
    """x <- x + mean of the m deltas of lowest Krum score (n - f - 2 nearest neighbours).
    Defaults: num_malicious 0, num_selected 1 (Krum)."""

    name = "krum"
    summary = "Krum: the update closest to its neighbours (Blanchard et al. 2017)"
    Params = KrumParams
    access = "slices"
    accepts_sparse = False
    sparse_refusal = (
        "scores updates by their distances, which between sparse updates measure which coordinates each kept"
    )
    secure_aggregation = False
    secure_refusal = "scores each update by its distances to the others, which needs each update"

    def check(self, params: Any) -> None:
        for param in ("num_malicious", "num_selected"):
            value = getattr(params, param)
            if value < 0:
                raise ValueError(f"parameter {param!r} of strategy {self.name!r} must be >= 0, got {value}")

    def min_updates(self) -> tuple[int, str]:
        """n >= 2f + 3 (each update is scored by its n - f - 2 nearest neighbours), and n >= m when
        `num_selected` m is set."""
        f, m = int(self.params.num_malicious), int(self.params.num_selected)
        needed = max(2 * f + 3, m)
        why = f"2 x num_malicious + 3 with num_malicious {f}" if needed == 2 * f + 3 else f"num_selected {m}"
        return needed, why

    def aggregate(
        self, round_number: int, global_model: GlobalModel, state: ServerState, updates: Updates
    ) -> Aggregate:
        accepted = updates.accepted()
        n, f = len(accepted), int(self.params.num_malicious)
        if n == 0:
            raise ValueError("no updates to aggregate")
        if n <= 2 * f + 2:
            raise ValueError(
                f"strategy {self.name!r} with num_malicious f = {f} needs more than 2f + 2 = {2 * f + 2} updates, "
                f"got {n}"
            )
        m = int(self.params.num_selected) or n - f
        if m > n:
            raise ValueError(f"parameter 'num_selected' {m} of strategy {self.name!r} is more than the {n} updates")
        ids = [u.client_id for u in accepted]
        order = sorted(range(n), key=lambda i: (ids[i], i))  # by client id: invariant to the arrival order
        scores = krum_scores(squared_distances(updates, order), n - f - 2)
        ranked = sorted(range(n), key=lambda k: (scores[k], k))  # k indexes `order`: ties go by client id
        chosen = sorted(ranked[:m])
        rows = np.array([order[k] for k in chosen])  # the chosen updates' rows in a slice, by client id

        def mean_of_chosen(slice_rows: np.ndarray, weights: np.ndarray) -> np.ndarray:
            return slice_rows[rows].astype(np.float64).sum(axis=0) / m

        step = coordinatewise(updates, mean_of_chosen)
        norm = step_norm(step)
        measurements = {
            "step_norm": norm,
            "selected": float(m),
            "best_score": float(scores[ranked[0]]),
            "worst_selected_score": float(scores[ranked[m - 1]]),
        }
        kept = [ids[order[k]] for k in chosen]  # by client id
        return Aggregate(apply_step(global_model, step), ServerState(), measurements, kept=kept)


class MultiKrum(Krum):
    """Krum keeping the m best-scored updates. Defaults: num_malicious 0, num_selected 0 (n - f)."""

    name = "multikrum"
    summary = "Multi-Krum: mean of the m updates closest to their neighbours (Blanchard et al. 2017)"
    Params = MultiKrumParams
