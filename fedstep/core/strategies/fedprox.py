"""FedProx (Li et al. 2020, "Federated Optimization in Heterogeneous Networks"): the clients add the
proximal term (mu/2)*||w - w_global||^2 to their local loss; the server side is FedAvg (the
example-weighted mean of the deltas). Each round's message tells the clients mu as the instruction
"proximal_mu". Default mu 0.01 (mu = 0 is FedAvg)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fedstep.core.strategies.base import Instructions, Scalar
from fedstep.core.strategies.fedavg import FedAvg


@dataclass(frozen=True)
class FedProxParams:
    mu: float = field(default=0.01, metadata={"help": "proximal term weight mu (>= 0), sent to the clients"})


class FedProx(FedAvg):
    """Server: x <- x + sum n_i delta_i / sum n_i (FedAvg). Clients: instructed {"proximal_mu": mu}. Default mu 0.01."""

    name = "fedprox"
    summary = "FedAvg with a proximal term in the clients' loss (Li et al. 2020)"
    Params = FedProxParams

    def check(self, params: Any) -> None:
        if not params.mu >= 0:
            raise ValueError(f"parameter 'mu' of strategy {self.name!r} must be >= 0, got {params.mu}")

    def configure_round(self, round_number: int, state_values: dict[str, Scalar]) -> Instructions:
        return {"proximal_mu": float(self.params.mu)}
