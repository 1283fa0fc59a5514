"""Choosing the client's local data: a built-in data set name or a user loader `module:function`."""

from __future__ import annotations

import numpy as np

from client_agent import datasets
from client_agent.training import Split
from fedstep.errors import FedstepError
from fedstep.imports import load_callable


def load_local_data(spec: str, partition: str | None = None) -> Split:
    """`digits`/`mnist`/`heart` (with `partition` "i/n"), or a `module:function` returning
    ((x_train, y_train), (x_test, y_test)) as numpy arrays."""
    if spec in datasets.BUILTIN:
        try:
            part = datasets.parse_partition(partition) if partition else None
            return datasets.load_partition(spec, part)
        except ValueError as exc:
            raise FedstepError(f"data {spec!r}: {exc}") from None
    if ":" not in spec:
        raise FedstepError(
            f"data {spec!r} is neither a built-in data set ({', '.join(sorted(datasets.BUILTIN))}) nor module:function"
        )
    if partition:
        raise FedstepError("--partition applies to the built-in data sets only; a custom loader returns its own data")
    result = load_callable(spec, "data loader")()
    try:
        (x_train, y_train), (x_test, y_test) = result
    except (TypeError, ValueError):
        raise FedstepError(f"data loader {spec!r} must return ((x_train, y_train), (x_test, y_test))") from None
    arrays = [np.asarray(a) for a in (x_train, y_train, x_test, y_test)]
    if len(arrays[0]) != len(arrays[1]) or len(arrays[2]) != len(arrays[3]) or len(arrays[0]) == 0:
        raise FedstepError(f"data loader {spec!r}: x and y lengths differ, or the training set is empty")
    return (arrays[0], arrays[1]), (arrays[2], arrays[3])
