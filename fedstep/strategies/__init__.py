"""Aggregation strategies, one algorithm per module; `get(name)` picks one by its name."""

from fedstep.strategies.base import ClientUpdate, GlobalModel, Strategy
from fedstep.strategies.fedavg import FedAvg

STRATEGIES: dict[str, type[Strategy]] = {FedAvg.name: FedAvg}


def get(name: str) -> Strategy:
    """The strategy called `name`; ValueError listing the known names otherwise."""
    try:
        return STRATEGIES[name]()
    except KeyError:
        raise ValueError(f"unknown strategy {name!r}; known: {', '.join(sorted(STRATEGIES))}") from None


__all__ = ["STRATEGIES", "ClientUpdate", "FedAvg", "GlobalModel", "Strategy", "get"]
