"""Federated statistics: each site's bounded sums, combined into global per-feature statistics.

Tabular sites that standardize with their own statistics train on features that mean different
things at each site. The operator asks every client for its sums (`fedstep stats`, or a run with
`standardize: federated`), as NVIDIA FLARE's federated statistics do; no example leaves a site.

A client answers a `StatsRequest` with its `SiteStatistics` of its local training split, one row per
feature: the count of values present (NaN is missing), their sum, their squares, min, max and
(when the request asks for it) a histogram. Each site's contribution is bounded: at most
`max_examples` rows count (a larger site takes a seeded sample of that many) and, when the request
gives each feature a range, every value is clipped into it.

**Moments.** Without noise a site sends its sum and the sum of squared deviations from its own mean
(`squares`), combined exactly (Chan, Golub and LeVeque's parallel update), so a feature of large
values with a small spread keeps its precision. With noise (`epsilon`, which needs ranges) a site
maps each value into [0, 1] by its range and sends the sum and the sum of squares of those, each with
Gaussian noise (`noise_std`, the client's own accounting): the server maps them back.

**Histograms.** `bins` equal bins over each feature's range (the last bin includes its upper end):
the same bins at every site, so they add up. A histogram without ranges is not possible in one
exchange; `fedstep stats` then asks twice, the second time over the global min and max.

Numpy only; the client agent computes, the operator combines and checks (`SiteStatistics.check`).
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedstep.core.errors import FedstepError
from fedstep.core.version import SCHEMA_VERSION

STATISTICS_KIND = "statistics"
"""The `kind` of a statistics object (`keys.statistics_key`)."""
MAX_FEATURES = 4096
"""Features a request may cover."""
MAX_BINS = 64
"""Histogram bins per feature."""
MAX_VALUES = 40_000
"""Numbers in one site's answer, features x (5 + bins): 320 KB of float64, inside one DynamoDB item."""
MAX_STATISTICS_BYTES = 8 * 1024 * 1024
"""The largest statistics object a client or the operator reads (4,096 features with 64 bins fit)."""
COLUMNS = ("count", "sum", "squares", "min", "max")
"""A site's numbers per feature, before its histogram."""
MIN_SCALE = 1e-12
"""A feature whose standard deviation is below this is only centred, not scaled."""


class StatisticsError(FedstepError):
    """A statistics request, answer or object that cannot be used, with the reason."""


@dataclass(frozen=True)
class StatsRequest:
    """What the operator asks every site: its statistics of `features` features (None: as many as it
    has), `bins` histogram bins (0: none; needs `ranges`), one `(low, high)` range per feature, or one
    for every feature (None: no clipping), `max_examples` rows at most, and `epsilon`/`delta` for
    Gaussian noise on the sums (None: exact; needs ranges)."""

    features: int | None = None
    bins: int = 0
    ranges: tuple[tuple[float, float], ...] | None = None
    max_examples: int = 1_000_000
    epsilon: float | None = None
    delta: float = 1e-5

    def __post_init__(self) -> None:
        if self.features is not None and not 1 <= self.features <= MAX_FEATURES:
            raise StatisticsError(f"features must be from 1 to {MAX_FEATURES}, got {self.features}")
        if not 0 <= self.bins <= MAX_BINS:
            raise StatisticsError(f"bins must be from 0 to {MAX_BINS}, got {self.bins}")
        if self.epsilon is not None:
            if not 0 < self.epsilon <= 100:
                raise StatisticsError(f"epsilon must be > 0 and at most 100, got {self.epsilon}")
            if self.ranges is None:
                raise StatisticsError("noise needs a range for every feature (--range): it bounds what one record adds")
        if self.bins and self.ranges is None:
            raise StatisticsError(
                "histograms need a range for every feature (--range): every site must use the same bins"
            )
        if not 0 < self.delta < 1:
            raise StatisticsError(f"delta must lie in (0, 1), got {self.delta}")
        if not 1 <= self.max_examples <= 2**40:
            raise StatisticsError(f"max_examples must be from 1 to 2**40, got {self.max_examples}")
        if self.ranges is not None:
            if self.features is not None and len(self.ranges) not in (1, self.features):
                raise StatisticsError(f"{len(self.ranges)} ranges for {self.features} features")
            if not 1 <= len(self.ranges) <= MAX_FEATURES:
                raise StatisticsError(f"ranges must cover 1 to {MAX_FEATURES} features")
            for i, (low, high) in enumerate(self.ranges):
                if not (math.isfinite(low) and math.isfinite(high) and low < high):
                    raise StatisticsError(f"feature {i}: range {low}:{high} must be finite with low < high")
        if self.width * (len(COLUMNS) + self.bins) > MAX_VALUES:
            raise StatisticsError(
                f"{self.width} features x ({len(COLUMNS)} + {self.bins} bins) numbers exceed the {MAX_VALUES} "
                "one answer may hold (DynamoDB's 400 KB item): ask for fewer bins"
            )

    @property
    def width(self) -> int:
        """The features, as far as the request knows them (1 if it does not)."""
        if self.features is not None:
            return self.features
        return len(self.ranges) if self.ranges is not None else 1  # one range for all: at least 1 feature

    def to_dict(self) -> dict[str, Any]:
        return {
            "features": self.features,
            "bins": self.bins,
            "ranges": [list(r) for r in self.ranges] if self.ranges is not None else None,
            "max_examples": self.max_examples,
            "epsilon": self.epsilon,
            "delta": self.delta,
        }

    @classmethod
    def parse(cls, data: Any, where: str = "statistics request") -> StatsRequest:
        if not isinstance(data, dict):
            raise StatisticsError(f"{where}: must be an object")
        ranges = data.get("ranges")
        try:
            if ranges is not None:
                if not isinstance(ranges, list) or len(ranges) > MAX_FEATURES:
                    raise StatisticsError(f"ranges must be a list of at most {MAX_FEATURES} [low, high] pairs")
                ranges = tuple((_number(r[0]), _number(r[1])) for r in ranges if _pair(r))
            return cls(
                features=_optional_int(data.get("features")),
                bins=_int(data.get("bins", 0)),
                ranges=ranges,
                max_examples=_int(data.get("max_examples", 1_000_000)),
                epsilon=None if data.get("epsilon") is None else _number(data["epsilon"]),
                delta=_number(data.get("delta", 1e-5)),
            )
        except StatisticsError as exc:
            raise StatisticsError(f"{where}: {exc}") from None

    def range_arrays(self, features: int) -> tuple[np.ndarray, np.ndarray] | None:
        """(lows, highs) as float64 arrays of `features`, or None without ranges."""
        if self.ranges is None:
            return None
        if len(self.ranges) not in (1, features):
            raise StatisticsError(f"the request gives {len(self.ranges)} ranges, this data has {features} features")
        bounds = np.asarray(self.ranges * (features if len(self.ranges) == 1 else 1), dtype=np.float64)
        return bounds[:, 0], bounds[:, 1]


def _pair(value: Any) -> bool:
    if not isinstance(value, list | tuple) or len(value) != 2:
        raise StatisticsError("each range must be a [low, high] pair")
    return True


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise StatisticsError(f"{value!r:.40} is not a finite number")
    return float(value)


def _int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise StatisticsError(f"{value!r:.40} is not a whole number")
    return value


def _optional_int(value: Any) -> int | None:
    return None if value is None else _int(value)


@dataclass(frozen=True)
class SiteStatistics:
    """One site's answer: a float64 matrix, one row per feature, columns `COLUMNS` then the histogram's
    bins; min and max are NaN under noise (never sent) and for a feature with no value present."""

    values: np.ndarray
    noise_std: float = 0.0
    """The Gaussian noise's standard deviation on the range-normalised sums (0: exact)."""

    @property
    def features(self) -> int:
        return int(self.values.shape[0])

    @property
    def bins(self) -> int:
        return int(self.values.shape[1]) - len(COLUMNS)

    def column(self, name: str) -> np.ndarray:
        return self.values[:, COLUMNS.index(name)]

    @property
    def histogram(self) -> np.ndarray:
        return self.values[:, len(COLUMNS) :]

    def encode(self) -> bytes:
        return np.ascontiguousarray(self.values, dtype="<f8").tobytes()

    @classmethod
    def decode(cls, data: bytes, features: int, bins: int, noise_std: float = 0.0) -> SiteStatistics:
        """The answer's matrix from its bytes; StatisticsError unless it has exactly that shape."""
        if not 1 <= features <= MAX_FEATURES or not 0 <= bins <= MAX_BINS:
            raise StatisticsError(f"an answer of {features} features and {bins} bins is outside the bounds")
        expected = features * (len(COLUMNS) + bins) * 8
        if len(data) != expected:
            raise StatisticsError(f"{len(data)} bytes, expected {expected} ({features} features, {bins} bins)")
        values = np.frombuffer(data, dtype="<f8").reshape(features, len(COLUMNS) + bins).copy()
        return cls(values, noise_std)

    def check(self, request: StatsRequest) -> None:
        """StatisticsError unless this answer is one an honest site could send for `request`: its
        shape, finite sums, counts within `max_examples`, and without noise the sums consistent with
        the counts, the min/max within the ranges, the histogram counting every value once."""
        if request.features is not None and self.features != request.features:
            raise StatisticsError(f"{self.features} features, the request asks {request.features}")
        if self.bins != request.bins:
            raise StatisticsError(f"{self.bins} histogram bins, the request asks {request.bins}")
        sums = self.values[:, :3]
        if not np.all(np.isfinite(sums)) or not np.all(np.isfinite(self.histogram)):
            raise StatisticsError("counts, sums and histogram must be finite numbers")
        if request.epsilon is not None:
            if not self.noise_std > 0:
                raise StatisticsError("the request asks for noise and the answer has none")
            return
        count = self.column("count")
        if np.any(count < 0) or np.any(count > request.max_examples) or np.any(count != np.round(count)):
            raise StatisticsError(f"counts must be whole numbers from 0 to max_examples {request.max_examples}")
        present = count > 0
        low, high = self.column("min"), self.column("max")
        if np.any(present & ~(np.isfinite(low) & np.isfinite(high) & (low <= high))):
            raise StatisticsError("a feature with values must have a finite min <= max")
        if np.any(~present & (self.column("sum") != 0)) or np.any(self.column("squares") < 0):
            raise StatisticsError("sums must be 0 where nothing is counted and squares must be >= 0")
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = np.where(present, self.column("sum") / np.maximum(count, 1), 0.0)
        slack = 1e-9 * np.maximum(np.abs(low), np.abs(high))
        if np.any(present & ((mean < low - slack) | (mean > high + slack))):
            raise StatisticsError("a feature's mean (sum / count) lies outside its min and max")
        spread = np.where(present, (high - low) ** 2 * count / 4.0, 0.0)  # Popoviciu: variance <= range^2 / 4
        if np.any(self.column("squares") > spread * (1 + 1e-9) + 1e-9):
            raise StatisticsError("a feature's squared deviations exceed what its min and max allow")
        bounds = request.range_arrays(self.features)
        if bounds is not None and np.any(present & ((low < bounds[0]) | (high > bounds[1]))):
            raise StatisticsError("a feature's min or max lies outside the range the request gives")
        if self.bins:
            hist = self.histogram
            if np.any(hist < 0) or np.any(hist != np.round(hist)) or np.any(hist.sum(axis=1) != count):
                raise StatisticsError("each feature's histogram must count each of its values once")


def site_statistics(
    x: np.ndarray, request: StatsRequest, noise_std: float = 0.0, seed: int | None = 0
) -> SiteStatistics:
    """This site's answer to `request` from its examples `x` (2-D, one column per feature; NaN is a
    missing value): at most `request.max_examples` rows (a seeded sample of a larger site), values
    clipped into the request's ranges, and under noise the range-normalised sums with Gaussian noise
    of standard deviation `noise_std` (`fedstep.privacy.accounting.statistics_noise_std`), drawn from
    `seed` (None: the operating system's randomness, what the agent uses)."""
    data = np.asarray(x, dtype=np.float64)
    if data.ndim != 2:
        data = data.reshape(len(data), -1)
    features = data.shape[1]
    if request.features is not None and features != request.features:
        raise StatisticsError(f"this site's data has {features} features, the request asks {request.features}")
    if not 1 <= features <= MAX_FEATURES:
        raise StatisticsError(f"this site's data has {features} features, at most {MAX_FEATURES} are supported")
    rng = np.random.default_rng(seed)
    if len(data) > request.max_examples:
        data = data[np.sort(rng.choice(len(data), request.max_examples, replace=False))]
    bounds = request.range_arrays(features)
    if bounds is not None:
        data = np.clip(data, bounds[0], bounds[1])  # NaN stays NaN
    present = ~np.isnan(data)
    count = present.sum(axis=0).astype(np.float64)
    values = np.zeros((features, len(COLUMNS) + request.bins))
    values[:, 0] = count
    if request.epsilon is not None:
        assert bounds is not None  # checked by the request
        unit = np.where(present, (data - bounds[0]) / (bounds[1] - bounds[0]), 0.0)
        values[:, 1] = unit.sum(axis=0)
        values[:, 2] = (unit**2).sum(axis=0)
        values[:, 3:5] = np.nan
    else:
        filled = np.where(present, data, 0.0)
        total = filled.sum(axis=0)
        mean = np.divide(total, count, out=np.zeros(features), where=count > 0)
        values[:, 1] = total
        values[:, 2] = np.where(present, (data - mean) ** 2, 0.0).sum(axis=0)
        with np.errstate(invalid="ignore"):
            values[:, 3] = np.where(count > 0, np.nanmin(np.where(present, data, np.inf), axis=0), np.nan)
            values[:, 4] = np.where(count > 0, np.nanmax(np.where(present, data, -np.inf), axis=0), np.nan)
    if request.bins:
        assert bounds is not None
        for j in range(features):
            column = data[present[:, j], j]
            values[j, len(COLUMNS) :] = np.histogram(column, bins=request.bins, range=(bounds[0][j], bounds[1][j]))[0]
    if request.epsilon is not None:
        noisy = [0, 1, 2, *range(len(COLUMNS), values.shape[1])]
        values[:, noisy] += rng.normal(0.0, noise_std, size=(features, len(noisy)))
    return SiteStatistics(values, noise_std if request.epsilon is not None else 0.0)


@dataclass(frozen=True)
class FederatedStatistics:
    """Global per-feature statistics of every answering site: count, mean, standard deviation
    (population, ddof 0), min and max (None under noise), histogram edges and counts (None without
    bins), which sites answered, and the noise (None: exact)."""

    clients: tuple[str, ...]
    count: tuple[float, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    minimum: tuple[float, ...] | None
    maximum: tuple[float, ...] | None
    edges: tuple[tuple[float, ...], ...] | None = None
    histogram: tuple[tuple[float, ...], ...] | None = None
    epsilon: float | None = None
    delta: float | None = None
    noise_std: float | None = None
    names: tuple[str, ...] | None = None

    @property
    def features(self) -> int:
        return len(self.mean)

    def standardization(self) -> Standardization:
        """Centre on the mean, scale by the standard deviation (1 where it is below `MIN_SCALE`)."""
        std = np.asarray(self.std)
        return Standardization(np.asarray(self.mean), np.where(std < MIN_SCALE, 1.0, std))

    def to_dict(self) -> dict[str, Any]:
        def listed(values: Any) -> Any:
            if values is None:
                return None
            return [listed(v) if isinstance(v, tuple) else _json_float(v) for v in values]

        return {
            "schema": SCHEMA_VERSION,
            "kind": STATISTICS_KIND,
            "features": self.features,
            "clients": list(self.clients),
            "count": listed(self.count),
            "mean": listed(self.mean),
            "std": listed(self.std),
            "min": listed(self.minimum),
            "max": listed(self.maximum),
            "histogram": None
            if self.histogram is None
            else {"edges": listed(self.edges), "counts": listed(self.histogram)},
            "noise": None
            if self.epsilon is None
            else {"epsilon": self.epsilon, "delta": self.delta, "std": self.noise_std},
            "names": list(self.names) if self.names else None,
        }

    def encode(self) -> bytes:
        return json.dumps(self.to_dict(), separators=(",", ":")).encode()

    @classmethod
    def decode(cls, data: bytes, where: str = "statistics") -> FederatedStatistics:
        """A statistics object as `encode` wrote it; StatisticsError if it is not one."""
        if len(data) > MAX_STATISTICS_BYTES:
            raise StatisticsError(f"{where}: {len(data)} bytes, more than {MAX_STATISTICS_BYTES}")
        try:
            doc = json.loads(data)
            if not isinstance(doc, dict) or doc.get("kind") != STATISTICS_KIND:
                raise StatisticsError(f"kind must be {STATISTICS_KIND!r}")
            features = _int(doc["features"])
            if not 1 <= features <= MAX_FEATURES:
                raise StatisticsError(f"features {features} outside 1-{MAX_FEATURES}")
            mean, std = _floats(doc["mean"], features), _floats(doc["std"], features)
            if np.any(np.asarray(std) < 0):
                raise StatisticsError("a standard deviation is negative")
            hist = doc.get("histogram")
            noise = doc.get("noise")
            names = doc.get("names")
            return cls(
                clients=tuple(str(c)[:64] for c in doc.get("clients", [])[:10_000]),
                count=_floats(doc["count"], features),
                mean=mean,
                std=std,
                minimum=None if doc.get("min") is None else _floats(doc["min"], features, allow_nan=True),
                maximum=None if doc.get("max") is None else _floats(doc["max"], features, allow_nan=True),
                edges=None if hist is None else tuple(_floats(e, None) for e in hist["edges"][:features]),
                histogram=None if hist is None else tuple(_floats(c, None) for c in hist["counts"][:features]),
                epsilon=None if noise is None else _number(noise["epsilon"]),
                delta=None if noise is None else _number(noise["delta"]),
                noise_std=None if noise is None else _number(noise["std"]),
                names=None if not names else tuple(str(n)[:64] for n in names[:features]),
            )
        except StatisticsError as exc:
            raise StatisticsError(f"{where}: {exc}") from None
        except (ValueError, KeyError, TypeError, IndexError) as exc:
            raise StatisticsError(f"{where}: not a statistics object ({type(exc).__name__}: {exc})") from None


def _json_float(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def _floats(values: Any, length: int | None, allow_nan: bool = False) -> tuple[float, ...]:
    if not isinstance(values, list) or (length is not None and len(values) != length) or len(values) > MAX_FEATURES:
        raise StatisticsError(f"expected a list of {length or f'at most {MAX_FEATURES}'} numbers")
    out = []
    for v in values:
        if v is None and allow_nan:
            out.append(math.nan)
        else:
            out.append(_number(v))
    return tuple(out)


def combine(
    answers: dict[str, SiteStatistics], request: StatsRequest, names: tuple[str, ...] | None = None
) -> FederatedStatistics:
    """The global statistics of the sites' checked answers (`SiteStatistics.check`), in client order.
    Under noise, counts are floored at 0, means clipped into the ranges and variances at 0."""
    if not answers:
        raise StatisticsError("no site answered: there is nothing to combine")
    widths = {a.features for a in answers.values()}
    if len(widths) != 1:
        shown = ", ".join(f"{c}: {a.features}" for c, a in answers.items())
        raise StatisticsError(f"the sites' data have different numbers of features ({shown})")
    [features] = widths
    stacked = np.stack([a.values for a in answers.values()])  # sites x features x columns
    count = stacked[:, :, 0].sum(axis=0)
    bounds = request.range_arrays(features)
    minimum = maximum = None
    if request.epsilon is not None:
        assert bounds is not None
        low, width = bounds[0], bounds[1] - bounds[0]
        n = np.maximum(count, 0.0)
        safe = np.maximum(n, 1.0)
        unit_mean = np.clip(stacked[:, :, 1].sum(axis=0) / safe, 0.0, 1.0)
        unit_square = np.clip(stacked[:, :, 2].sum(axis=0) / safe, 0.0, 1.0)
        variance = np.maximum(unit_square - unit_mean**2, 0.0) * width**2
        mean = np.where(n > 0, low + width * unit_mean, 0.0)
        count = n
    else:
        site_count = stacked[:, :, 0]
        site_mean = np.divide(stacked[:, :, 1], site_count, out=np.zeros_like(site_count), where=site_count > 0)
        mean = np.divide(stacked[:, :, 1].sum(axis=0), count, out=np.zeros(features), where=count > 0)
        between = (site_count * (site_mean - mean) ** 2).sum(axis=0)
        variance = np.divide(stacked[:, :, 2].sum(axis=0) + between, count, out=np.zeros(features), where=count > 0)
        with np.errstate(invalid="ignore"):
            minimum = tuple(np.where(count > 0, np.nanmin(stacked[:, :, 3], axis=0), np.nan).tolist())
            maximum = tuple(np.where(count > 0, np.nanmax(stacked[:, :, 4], axis=0), np.nan).tolist())
    edges = hist = None
    if request.bins:
        assert bounds is not None
        counts = np.maximum(stacked[:, :, len(COLUMNS) :].sum(axis=0), 0.0)
        hist = tuple(tuple(row) for row in np.round(counts, 3).tolist())
        edges = tuple(tuple(np.linspace(lo, hi, request.bins + 1).tolist()) for lo, hi in zip(*bounds, strict=True))
    noise = max(a.noise_std for a in answers.values())
    return FederatedStatistics(
        clients=tuple(answers),
        count=tuple(np.round(count, 3).tolist()),
        mean=tuple(mean.tolist()),
        std=tuple(np.sqrt(variance).tolist()),
        minimum=minimum,
        maximum=maximum,
        edges=edges,
        histogram=hist,
        epsilon=request.epsilon,
        delta=request.delta if request.epsilon is not None else None,
        noise_std=noise if request.epsilon is not None else None,
        names=names,
    )


@dataclass(frozen=True)
class Standardization:
    """`(x - mean) / scale` per feature; a missing value (NaN) becomes 0, the mean."""

    mean: np.ndarray
    scale: np.ndarray

    def apply(self, x: np.ndarray) -> np.ndarray:
        """`x` standardized, float32, same shape; StatisticsError if its features do not match."""
        data = np.asarray(x, dtype=np.float64)
        flat = data.reshape(len(data), -1) if data.ndim != 2 else data
        if flat.shape[1] != len(self.mean):
            raise StatisticsError(
                f"the data has {flat.shape[1]} features, the standardization {len(self.mean)} "
                "(were the statistics computed for this data set?)"
            )
        out = np.nan_to_num((flat - self.mean) / self.scale, nan=0.0, posinf=0.0, neginf=0.0)
        return np.ascontiguousarray(out.reshape(data.shape), dtype=np.float32)

    @classmethod
    def local(cls, x: np.ndarray) -> Standardization:
        """A site's own statistics (`standardize: local`): what sites do without federated statistics."""
        data = np.asarray(x, dtype=np.float64)
        flat = data.reshape(len(data), -1) if data.ndim != 2 else data
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # an all-missing column's mean is NaN
            mean = np.nan_to_num(np.nanmean(flat, axis=0), nan=0.0)
            std = np.nan_to_num(np.nanstd(flat, axis=0), nan=0.0)
        return cls(mean, np.where(std < MIN_SCALE, 1.0, std))
