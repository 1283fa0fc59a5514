"""`fedstep stats`' output: the per-feature table (count, mean, std, min, max, an ASCII histogram), the
asked clients' answers and the noise."""

from __future__ import annotations

import numpy as np

from fedstep.core.statistics import FederatedStatistics
from fedstep.operator.statistics import ANSWERED, Answer
from fedstep.render.text import lines, table

SPARK = " .:-=+*#%@"


def sparkline(counts: tuple[float, ...]) -> str:
    """A histogram in ASCII, one character per bin ("@" the fullest)."""
    most = max(counts, default=0.0)
    if most <= 0:
        return "-"
    return "".join(SPARK[min(len(SPARK) - 1, round(c / most * (len(SPARK) - 1)))] for c in counts)


def _number(value: float | None) -> str:
    return "-" if value is None or not np.isfinite(value) else f"{value:.4g}"


HEADER = ("FEATURE", "COUNT", "MEAN", "STD", "MIN", "MAX", "HISTOGRAM")


def render(stats: FederatedStatistics, answers: list[Answer] | None, title: str) -> str:
    """The per-feature table, the asked clients' answers and the noise, as `fedstep stats` prints them."""
    rows = []
    for i in range(stats.features):
        name = stats.names[i] if stats.names else str(i)
        hist = sparkline(stats.histogram[i]) if stats.histogram else "-"
        low = stats.minimum[i] if stats.minimum else None
        high = stats.maximum[i] if stats.maximum else None
        rows.append(
            (
                name,
                f"{stats.count[i]:.0f}",
                _number(stats.mean[i]),
                _number(stats.std[i]),
                _number(low),
                _number(high),
                hist,
            )
        )
    out = [title, "", *table(HEADER, rows)]
    if stats.histogram and stats.edges:
        out.append(f"histograms: {len(stats.histogram[0])} equal bins per feature from MIN to MAX (--range, if given)")
    if stats.epsilon is not None:
        out.append(
            f"noise: each client's sums carry Gaussian noise of std {stats.noise_std:.3g} (range-normalised), "
            f"(epsilon {stats.epsilon:g}, delta {stats.delta:g}) per client and request, add/remove-one records; "
            "min and max are not released"
        )
    for answer in answers or []:
        if answer.status != ANSWERED:
            out.append(f"  {answer.client_id} {answer.status}" + (f": {answer.detail}" if answer.detail else ""))
    return lines(out)
