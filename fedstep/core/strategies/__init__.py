"""Aggregation strategies, one algorithm per module (in the manner of Flower's `strategy/`).

`build(name, params)` makes one from its name and its typed parameters; `STRATEGIES` lists them all
(`fedstep strategies` prints it). To add one: a module with a `Strategy` subclass (name, summary,
`Params`, `aggregate`), registered below, and a case in `tests/test_strategy_conformance.py`.
"""

from __future__ import annotations

from typing import Any

from fedstep.core.strategies import params as _params
from fedstep.core.strategies.base import (
    Aggregate,
    ClientUpdate,
    GlobalModel,
    Instructions,
    ServerState,
    Strategy,
    UpdateInfo,
    Updates,
)
from fedstep.core.strategies.fedadagrad import FedAdagrad
from fedstep.core.strategies.fedadam import FedAdam
from fedstep.core.strategies.fedavg import FedAvg
from fedstep.core.strategies.fedavg_normbound import NormBoundedFedAvg
from fedstep.core.strategies.fedavgm import FedAvgM
from fedstep.core.strategies.fedprox import FedProx
from fedstep.core.strategies.fedyogi import FedYogi
from fedstep.core.strategies.krum import Krum, MultiKrum
from fedstep.core.strategies.median import Median
from fedstep.core.strategies.trimmed_mean import TrimmedMean
from fedstep.core.strategies.update_list import UpdateList

STRATEGIES: dict[str, type[Strategy]] = {
    cls.name: cls
    for cls in (
        FedAvg,
        FedProx,
        FedAvgM,
        FedAdam,
        FedYogi,
        FedAdagrad,
        NormBoundedFedAvg,
        Median,
        TrimmedMean,
        Krum,
        MultiKrum,
    )
}


def build(name: str, params: dict[str, Any] | None = None) -> Strategy:
    """The strategy called `name` with these parameters (JSON values or command-line text; the
    rest take their defaults). ValueError naming an unknown strategy or parameter, or an ill-typed
    or impossible value."""
    try:
        cls = STRATEGIES[name]
    except KeyError:
        raise ValueError(f"unknown strategy {name!r}; known: {', '.join(sorted(STRATEGIES))}") from None
    return cls(_params.parse(cls.Params, dict(params or {}), name))


__all__ = [
    "STRATEGIES",
    "Aggregate",
    "ClientUpdate",
    "FedAdagrad",
    "FedAdam",
    "FedAvg",
    "FedAvgM",
    "FedProx",
    "FedYogi",
    "GlobalModel",
    "Instructions",
    "Krum",
    "Median",
    "MultiKrum",
    "NormBoundedFedAvg",
    "ServerState",
    "Strategy",
    "TrimmedMean",
    "UpdateInfo",
    "UpdateList",
    "Updates",
    "build",
]
