"""Choosing the client's local data: a built-in data set name or a user loader `module:function`.

A loader normally returns the client's own ((x_train, y_train), (x_test, y_test)). With a
`partition` (as `fedstep local` writes it, to simulate clients) it instead returns the whole data
set (x, y), and every client takes its part exactly as for the built-in sets
(`client_agent.datasets`: 20% held out, the rest divided by the partition scheme, 80/20 locally).
Under the scheme `natural` it returns the data as its sites hold it, one client per site: either
(x, y, groups), `groups` naming each example's site, or {site: ((x_train, y_train), (x_test, y_test))}.
What a loader returns is checked (`client_agent.data_contract`); a loader that raises, and a
placeholder such as `module:function`, get one line saying what to do.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from client_agent import data_contract, datasets, partitions
from client_agent.config import PLACEHOLDER, placeholder_problem
from client_agent.errors import clean_error
from client_agent.training import Split
from fedstep.core.errors import FedstepError
from fedstep.core.imports import load_callable

MIN_WHOLE_EXAMPLES = 10
"""The fewest examples a whole data set from a loader may have (held-out set plus clients)."""


def load_local_data(spec: str, partition: str | None = None, scheme: str | None = None, seed: int = 0) -> Split:
    """`digits`/`mnist`/`heart`/`heart-raw` (with `partition` "i/n"), or a `module:function` returning
    ((x_train, y_train), (x_test, y_test)) as numpy arrays; with `partition`, a `module:function`
    returns the whole data set (x, y) instead. `scheme` is the partition scheme (default iid) and
    `seed` the data seed (default 0), both the same for every client."""
    try:
        parsed = partitions.parse_scheme(scheme)
    except ValueError as exc:
        raise FedstepError(f"partition_scheme: {exc}") from None
    if not parsed.is_iid and not partition:
        raise FedstepError(f"partition_scheme {parsed} needs a partition i/n: which part is this client's")
    if spec in datasets.BUILTIN:
        try:
            part = datasets.parse_partition(partition) if partition else None
            return datasets.load_partition(spec, part, seed=seed, scheme=parsed)
        except ValueError as exc:
            raise FedstepError(f"data {spec!r}: {exc}") from None
    if ":" not in spec:
        if placeholder_problem("data", spec):
            raise FedstepError(str(placeholder_problem("data", spec)))
        raise FedstepError(
            f"data {spec!r} is neither a built-in data set ({', '.join(sorted(datasets.BUILTIN))}) nor module:function"
        )
    if partition:
        try:
            part = datasets.parse_partition(partition)
            return datasets.local_split(load_prepared(spec, parsed, seed), part, seed, parsed)
        except ValueError as exc:
            raise FedstepError(f"data {spec!r}: {exc}") from None
    return load_own_split(spec)


def load_prepared(spec: str, scheme: partitions.Scheme, seed: int = 0) -> datasets.Prepared:
    """The whole data set of the loader `spec`, checked and split into held-out set and pool
    (`client_agent.datasets` rule 1): from (x, y), or under `scheme` natural from its sites."""
    what = f"data loader {spec!r}"
    result = call_loader(spec)
    if scheme.is_natural:
        return _natural(spec, result, seed)
    if _sites_form(result):
        raise FedstepError(
            f"{what} returns its sites ({_sites_form(result)}): use partition natural for one client per site, "
            f"or return the whole (x, y) to divide it {scheme}"
        )
    return datasets.prepare_arrays(spec, *_whole(what, result), seed=seed)


def _sites_form(result: Any) -> str:
    """Which of the natural forms `result` has: "" for neither."""
    if isinstance(result, dict):
        return "a mapping {site: ((x_train, y_train), (x_test, y_test))}"
    if isinstance(result, tuple | list) and len(result) == 3:
        return "(x, y, groups)"
    return ""


def _natural(spec: str, result: Any, seed: int) -> datasets.Prepared:
    what = f"data loader {spec!r}"
    form = _sites_form(result)
    if not form:
        raise FedstepError(
            f"{what}: partition natural needs the data as its sites hold it: return (x, y, groups), groups "
            "naming each example's site, or {site: ((x_train, y_train), (x_test, y_test))}; got "
            f"{_kind(result)}"
        )
    if isinstance(result, dict):
        return datasets.prepare_sites(spec, _sites(what, result))
    x, y = _whole(what, result[:2])
    groups = _array(result[2], f"{what}: groups")
    if groups.shape != (len(y),):
        raise FedstepError(f"{what}: groups must name one site per example, shape ({len(y)},); got {groups.shape}")
    if not (np.issubdtype(groups.dtype, np.integer) or groups.dtype.kind == "U"):
        raise FedstepError(
            f"{what}: groups must be whole numbers or strings naming the sites, got dtype {groups.dtype}"
        )
    try:
        return datasets.prepare_groups(spec, x, y, groups, seed)
    except ValueError as exc:
        raise FedstepError(f"{what}: {exc}") from None


def _sites(what: str, mapping: dict[Any, Any]) -> dict[str, Split]:
    """Every site's ((x_train, y_train), (x_test, y_test)), checked like a client's own split."""
    if not 1 <= len(mapping) <= datasets.MAX_SITES:
        raise FedstepError(f"{what}: {len(mapping)} sites; give 1 to {datasets.MAX_SITES}")
    sites: dict[str, Split] = {}
    for site, split in mapping.items():
        name = str(site)
        if name in sites:
            raise FedstepError(f"{what}: two sites are named {name!r}")
        try:
            (x_train, y_train), (x_test, y_test) = split
        except (TypeError, ValueError):
            raise FedstepError(
                f"{what}: site {name!r} must be ((x_train, y_train), (x_test, y_test)), got {_kind(split)}"
            ) from None
        pair = ((x_train, y_train), (x_test, y_test))
        problems = data_contract.split_problems(pair)
        if problems:
            raise FedstepError(f"{what}: site {name!r}: " + "; ".join(problems))
        (x_train, y_train), (x_test, y_test) = data_contract.as_arrays(pair)
        both = (
            (np.concatenate([x_train, x_test]), np.concatenate([y_train, y_test]))
            if len(y_test)
            else (x_train, y_train)
        )
        x, y = _whole(f"{what}: site {name!r}", both, datasets.MIN_CLIENT_EXAMPLES)
        n = len(y_train)
        sites[name] = ((x[:n], y[:n]), (x[n:], y[n:]))
    shapes = {x.shape[1:] for (x, _), _ in sites.values()}
    if len(shapes) > 1:
        raise FedstepError(
            f"{what}: the sites' examples have different shapes {sorted(shapes)}; they need the same features"
        )
    return sites


def user_callable(field: str, spec: str, what: str) -> Any:
    """`load_callable`, with a placeholder (`module:function` from `fedstep client-config`, or one
    that looks like a template and cannot be imported) refused with how to fill it in."""
    problem = placeholder_problem(field, spec)
    if problem and spec == PLACEHOLDER:
        raise FedstepError(problem)
    try:
        return load_callable(spec, what)
    except FedstepError as exc:
        if problem:
            raise FedstepError(f"{problem} ({exc})") from None
        raise


def call_loader(spec: str) -> Any:
    """Import and call the loader `module:function`; what it raises becomes a FedstepError naming the
    loader, the exception's type and its message (no traceback)."""
    loader = user_callable("data", spec, "data loader")
    try:
        return loader()
    except Exception as exc:  # the user's code failed: say how, without a traceback
        raise FedstepError(f"data loader {spec!r} raised {clean_error(exc)}") from None


def load_own_split(spec: str) -> Split:
    """A loader's ((x_train, y_train), (x_test, y_test)), checked (`client_agent.data_contract`) and
    returned as numpy arrays; FedstepError naming every problem and its fix."""
    result = call_loader(spec)
    try:
        (x_train, y_train), (x_test, y_test) = result
    except (TypeError, ValueError):
        raise FedstepError(
            f"data loader {spec!r} must return ((x_train, y_train), (x_test, y_test)), got {_kind(result)}"
        ) from None
    split = ((x_train, y_train), (x_test, y_test))
    problems = data_contract.split_problems(split)
    if problems:
        raise FedstepError(f"data loader {spec!r}: " + "; ".join(problems))
    return data_contract.as_arrays(split)


def load_whole_data(spec: str) -> tuple[np.ndarray, np.ndarray]:
    """Call the loader `module:function` for a whole data set and check what it returns:
    `x` numeric of shape (n, features...) with finite values, `y` integer class labels >= 0 of
    shape (n,). Returns (x float32, y int64); FedstepError naming the problem otherwise."""
    return _whole(f"data loader {spec!r}", call_loader(spec))


def _whole(what: str, result: Any, min_examples: int = MIN_WHOLE_EXAMPLES) -> tuple[np.ndarray, np.ndarray]:
    """`load_whole_data`'s checks of a loader's (x, y), which must hold at least `min_examples`."""
    if not isinstance(result, tuple | list) or len(result) != 2:
        raise FedstepError(f"{what} must return (x, y), the whole data set as numpy arrays; got {_kind(result)}")
    if all(isinstance(r, tuple | list) and len(r) == 2 and all(hasattr(a, "__len__") for a in r) for r in result):
        raise FedstepError(
            f"{what} returned a pair of pairs, like ((x_train, y_train), (x_test, y_test)); for a simulation it "
            "must return the whole data set (x, y): the held-out set and each client's split are made from it"
        )
    x = _array(result[0], f"{what}: x")
    y = _array(result[1], f"{what}: y")
    if x.ndim < 2:
        raise FedstepError(f"{what}: x must have one row per example, shape (n, features...); got shape {x.shape}")
    if not (np.issubdtype(x.dtype, np.number) or x.dtype == np.bool_) or np.iscomplexobj(x):
        raise FedstepError(f"{what}: x must hold real numbers, got dtype {x.dtype}")
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise FedstepError(f"{what}: y must be one class label per example, shape (n,); got shape {y.shape}")
    if not (np.issubdtype(y.dtype, np.integer) or y.dtype == np.bool_):
        fix = (
            "number the classes: return np.unique(y, return_inverse=True)[1]"
            if y.dtype.kind in "US"
            else "return y.astype(int) if they are whole numbers"
        )
        raise FedstepError(f"{what}: y must be integer class labels 0, 1, ..., got dtype {y.dtype} ({fix})")
    if len(x) != len(y):
        raise FedstepError(f"{what}: x has {len(x)} examples but y has {len(y)}")
    if len(y) < min_examples:
        raise FedstepError(f"{what}: {len(y)} examples; a simulation needs at least {min_examples}")
    if y.min() < 0:
        raise FedstepError(f"{what}: y must be class labels 0, 1, ..., but has {int(y.min())}")
    finite = np.isfinite(x.reshape(len(x), -1)).all(axis=1) if np.issubdtype(x.dtype, np.floating) else None
    if finite is not None and not finite.all():
        bad = np.flatnonzero(~finite)
        raise FedstepError(
            f"{what}: x has non-finite values (NaN or Inf) in {len(bad)} example(s), the first at row {int(bad[0])}; "
            "drop or impute them in the loader"
        )
    return np.ascontiguousarray(x, dtype=np.float32), np.ascontiguousarray(y, dtype=np.int64)


def _array(value: Any, what: str) -> np.ndarray:
    try:
        array = np.asarray(value)
    except (TypeError, ValueError) as exc:  # ragged lists, objects numpy cannot convert
        raise FedstepError(f"{what} is not an array: {exc}") from None
    if array.dtype == object:
        raise FedstepError(f"{what} must be a numeric numpy array, got {_kind(value)} of Python objects")
    return array


def _kind(value: Any) -> str:
    shape = getattr(value, "shape", None)
    return f"{type(value).__name__}" + (f" of shape {shape}" if shape is not None else "")
